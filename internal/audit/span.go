package audit

import (
	"errors"
	"fmt"
	"sort"
	"time"
)

// SpanSkew bounds how far out of time order two entries may be: an entry's
// time is taken when its action is recorded, and concurrent recorders reach
// the committer in any order. Span searches this much beyond its window.
const SpanSkew = time.Minute

// ErrNoEntries: no entry lies in the window Span was asked for.
var ErrNoEntries = errors.New("no audit entries in the window")

// Span returns the index range [first, last] of the entries whose time
// lies in [start, end], widened so actions stay whole: an entry in the
// window that finishes an action pulls in the entry that accepted it
// (accepted before start), and an action accepted in the window whose
// finishing entry came within linger after end pulls that entry in. Every
// index between first and last is part of the range, whatever its time.
// It is ErrNoEntries when the window holds no entry.
//
// Entries are found by binary search on their times, which are in order up
// to SpanSkew, then read forward to end+linger+SpanSkew: the cost is
// logarithmic in the log's size plus linear in the window's entries.
func (l *Log) Span(start, end time.Time, linger time.Duration) (first, last int64, err error) {
	size := l.size.Load()
	if size == 0 || end.Before(start) {
		return -1, -1, ErrNoEntries
	}
	var searchErr error
	from := int64(sort.Search(int(size), func(i int) bool {
		if searchErr != nil {
			return true
		}
		t, err := l.entryTime(int64(i))
		if err != nil {
			searchErr = err
			return true
		}
		return !t.Before(start.Add(-SpanSkew))
	}))
	if searchErr != nil {
		return -1, -1, fmt.Errorf("audit span: %w", searchErr)
	}
	// Any entry before from-1 is older than start: entries are in time
	// order up to SpanSkew and from-1 is older than start-SpanSkew.
	from = max(from-1, 0)
	first, last = -1, -1
	accepted := int64(-1) // smallest accepted entry of an action finished in the window
	stop := end.Add(linger + SpanSkew)
	const chunk = 512
	for i := from; i < size; i += chunk {
		es, err := l.Entries(i, chunk)
		if err != nil {
			return -1, -1, fmt.Errorf("audit span: %w", err)
		}
		done := false
		for _, e := range es {
			t := e.Entry.Time
			switch {
			case !t.Before(start) && !t.After(end):
				if first < 0 {
					first = e.Index
				}
				last = max(last, e.Index)
				if a := e.Entry.AcceptedIndex; a >= 0 && (accepted < 0 || a < accepted) {
					accepted = a
				}
			case t.After(end) && !t.After(end.Add(linger)):
				if a := e.Entry.AcceptedIndex; first >= 0 && a >= first && a <= last {
					last = max(last, e.Index)
				}
			case t.After(stop):
				done = true
			}
			if done {
				break
			}
		}
		if done || len(es) == 0 {
			break
		}
	}
	if first < 0 {
		return -1, -1, ErrNoEntries
	}
	if accepted >= 0 && accepted < first {
		first = accepted
	}
	return first, last, nil
}

// entryTime reads the time of entry i.
func (l *Log) entryTime(i int64) (time.Time, error) {
	es, err := l.Entries(i, 1)
	if err != nil {
		return time.Time{}, err
	}
	if len(es) == 0 {
		return time.Time{}, fmt.Errorf("entry %d: %w", i, ErrNotFound)
	}
	return es[0].Entry.Time, nil
}

// CheckpointCovering returns a signed checkpoint note of a tree holding
// at least size entries: the latest one if it does, otherwise a new one
// signed now (the periodic checkpointer pushes it to the witnesses at its
// next tick).
func (l *Log) CheckpointCovering(size int64) ([]byte, error) {
	if size > l.size.Load() {
		return nil, fmt.Errorf("checkpoint covering %d entries: the log holds %d: %w", size, l.size.Load(), ErrNotFound)
	}
	l.mu.RLock()
	ok := l.latest != nil && l.latestCk.Size >= size
	l.mu.RUnlock()
	if !ok {
		if _, err := l.makeCheckpoint(); err != nil {
			return nil, err
		}
	}
	return l.Checkpoint()
}
