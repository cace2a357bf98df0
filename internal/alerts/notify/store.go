package notify

import (
	"context"
	"sync"
	"time"
)

// MessageKey names the message (Slack) or thread (email) of one alert
// group at one integration of one receiver.
type MessageKey struct {
	Receiver    string
	Integration string // "slack" or "email"
	GroupKey    string
}

// MessageRef is what a sender remembers about a group's message.
type MessageRef struct {
	// Channel is the Slack channel ID the message lives in (chat.update
	// needs the ID, not the configured name); empty for email.
	Channel string
	// ID is the Slack message's ts, or the Message-ID of the email that
	// started the group's thread.
	ID string
	// Sent counts the messages sent for the group (emails) or the posts
	// and updates made (Slack); it keeps repeated emails' Message-IDs
	// distinct.
	Sent int
	// Resolved is set once the group's resolved notification went out. A
	// later firing notification starts a new message or thread rather
	// than reviving an old one far up the channel.
	Resolved bool
	// Updated is when the ref was last written, for expiry: a store may
	// drop refs not updated for longer than the longest repeat_interval.
	Updated time.Time
}

// MessageStore persists MessageRefs so that a restarted opsd updates the
// Slack message and continues the email thread it started before. It is
// implemented over the state store elsewhere; MemStore serves tests and
// runs without persistence. Implementations are safe for concurrent use.
type MessageStore interface {
	// GetMessage returns the ref stored under k; ok is false if none.
	GetMessage(ctx context.Context, k MessageKey) (ref MessageRef, ok bool, err error)
	// PutMessage stores ref under k, replacing any.
	PutMessage(ctx context.Context, k MessageKey, ref MessageRef) error
}

// MemStore is an in-memory MessageStore.
type MemStore struct {
	mu   sync.Mutex
	refs map[MessageKey]MessageRef
}

var _ MessageStore = (*MemStore)(nil)

// NewMemStore returns an empty MemStore.
func NewMemStore() *MemStore {
	return &MemStore{refs: make(map[MessageKey]MessageRef)}
}

// GetMessage implements MessageStore.
func (s *MemStore) GetMessage(_ context.Context, k MessageKey) (MessageRef, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ref, ok := s.refs[k]
	return ref, ok, nil
}

// PutMessage implements MessageStore.
func (s *MemStore) PutMessage(_ context.Context, k MessageKey, ref MessageRef) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.refs[k] = ref
	return nil
}

// Len returns the number of stored refs.
func (s *MemStore) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.refs)
}
