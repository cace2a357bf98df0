package audit

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/opsd-dev/opsd/internal/action"
)

// EntryVersion is the schema version written in every entry's "v" field.
const EntryVersion = 1

// TimeFormat is how entry times are written: RFC 3339, UTC, always nine
// fractional digits, so times sort as strings.
const TimeFormat = "2006-01-02T15:04:05.000000000Z"

// Actions the log writes about itself.
const (
	ActionGenesis = "audit.genesis" // entry 0
	ActionRecover = "audit.recover" // a torn tail was cut at open
)

// SecretPrefix starts every parameter value that was replaced by its HMAC.
const SecretPrefix = "hmac-sha256:"

// Entry is one audit record (schema v1, docs/AUDIT.md). Its canonical JSON
// is the Merkle leaf; keys in that JSON are sorted:
//
//	accepted_index (finishing entries only), action, actor {kind, name},
//	error (if any), index, object, outcome, params (if any),
//	request_id (if any), time, v
type Entry struct {
	Index     int64
	Time      time.Time // UTC, nanoseconds
	Actor     action.Actor
	Action    string
	Object    string
	RequestID string
	// Params with secret values replaced by SecretPrefix + hex HMAC-SHA256.
	Params  map[string]any
	Outcome action.Outcome
	Error   string
	// AcceptedIndex links a finishing entry to the one that accepted the
	// action; -1 when there is no link.
	AcceptedIndex int64
	// V is the schema version.
	V int
}

// entryJSON is Entry's wire shape for decoding.
type entryJSON struct {
	AcceptedIndex *int64         `json:"accepted_index,omitempty"`
	Action        string         `json:"action"`
	Actor         action.Actor   `json:"actor"`
	Error         string         `json:"error,omitempty"`
	Index         int64          `json:"index"`
	Object        string         `json:"object"`
	Outcome       action.Outcome `json:"outcome"`
	Params        map[string]any `json:"params,omitempty"`
	RequestID     string         `json:"request_id,omitempty"`
	Time          string         `json:"time"`
	V             int            `json:"v"`
}

// MarshalJSON returns the entry's canonical JSON, the exact leaf bytes.
func (e Entry) MarshalJSON() ([]byte, error) {
	pre, post, err := e.encodeParts()
	if err != nil {
		return nil, err
	}
	return joinParts(nil, pre, e.Index, post), nil
}

// UnmarshalJSON decodes an entry.
func (e *Entry) UnmarshalJSON(raw []byte) error {
	var j entryJSON
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&j); err != nil {
		return fmt.Errorf("decode audit entry: %w", err)
	}
	t, err := time.Parse(time.RFC3339Nano, j.Time)
	if err != nil {
		return fmt.Errorf("decode audit entry %d: time: %w", j.Index, err)
	}
	*e = Entry{Index: j.Index, Time: t, Actor: j.Actor, Action: j.Action, Object: j.Object,
		RequestID: j.RequestID, Params: j.Params, Outcome: j.Outcome, Error: j.Error, AcceptedIndex: -1, V: j.V}
	if j.AcceptedIndex != nil {
		e.AcceptedIndex = *j.AcceptedIndex
	}
	return nil
}

// DecodeEntry decodes a leaf.
func DecodeEntry(raw []byte) (Entry, error) {
	var e Entry
	err := e.UnmarshalJSON(raw)
	return e, err
}

// encodeParts encodes everything but the index: the leaf is
// pre + `"index":N,` + post. The committer assigns N.
func (e *Entry) encodeParts() (pre, post []byte, err error) {
	pre = make([]byte, 0, 128)
	pre = append(pre, '{')
	if e.AcceptedIndex >= 0 {
		pre = append(pre, `"accepted_index":`...)
		pre = strconv.AppendInt(pre, e.AcceptedIndex, 10)
		pre = append(pre, ',')
	}
	pre = append(pre, `"action":`...)
	pre = appendString(pre, e.Action)
	pre = append(pre, `,"actor":{"kind":`...)
	pre = appendString(pre, string(e.Actor.Kind))
	pre = append(pre, `,"name":`...)
	pre = appendString(pre, e.Actor.Name)
	pre = append(pre, "},"...)
	if e.Error != "" {
		pre = append(pre, `"error":`...)
		pre = appendString(pre, e.Error)
		pre = append(pre, ',')
	}
	post = make([]byte, 0, 160)
	post = append(post, `"object":`...)
	post = appendString(post, e.Object)
	post = append(post, `,"outcome":`...)
	post = appendString(post, string(e.Outcome))
	if len(e.Params) > 0 {
		post = append(post, `,"params":`...)
		n, err := normalize(e.Params)
		if err != nil {
			return nil, nil, fmt.Errorf("params: %w", err)
		}
		if post, err = appendCanonical(post, n); err != nil {
			return nil, nil, fmt.Errorf("params: %w", err)
		}
	}
	if e.RequestID != "" {
		post = append(post, `,"request_id":`...)
		post = appendString(post, e.RequestID)
	}
	post = append(post, `,"time":"`...)
	post = e.Time.UTC().AppendFormat(post, TimeFormat)
	post = append(post, `","v":`...)
	v := e.V
	if v == 0 {
		v = EntryVersion
	}
	post = strconv.AppendInt(post, int64(v), 10)
	post = append(post, '}')
	return pre, post, nil
}

func joinParts(buf, pre []byte, index int64, post []byte) []byte {
	buf = append(buf, pre...)
	buf = append(buf, `"index":`...)
	buf = strconv.AppendInt(buf, index, 10)
	buf = append(buf, ',')
	return append(buf, post...)
}

// isSensitive reports parameter names hashed even when the caller did not
// list them as secrets: a forgotten Secrets entry must not put a password in
// the log.
func isSensitive(key string) bool {
	k := strings.ToLower(key)
	for _, s := range [...]string{"password", "passwd", "secret", "token", "dsn", "credential", "private_key", "api_key", "authorization", "cookie"} {
		if strings.Contains(k, s) {
			return true
		}
	}
	return false
}

// HashSecret returns the value recorded in place of a secret: SecretPrefix
// and the hex HMAC-SHA256 under key of the value's bytes (a string's UTF-8
// bytes; any other value's canonical JSON). Whoever holds the HMAC key can
// check whether two entries carried the same secret, or a given one.
func HashSecret(key []byte, v any) (string, error) {
	m := hmac.New(sha256.New, key)
	if s, ok := v.(string); ok {
		m.Write([]byte(s))
	} else {
		n, err := normalize(v)
		if err != nil {
			return "", err
		}
		raw, err := appendCanonical(nil, n)
		if err != nil {
			return "", err
		}
		m.Write(raw)
	}
	return SecretPrefix + hex.EncodeToString(m.Sum(nil)), nil
}

// redactParams returns a normalized copy of params with every value under a
// key in secrets, or under a sensitive-looking key at any depth, replaced by
// its HMAC.
func redactParams(hkey []byte, params map[string]any, secrets []string) (map[string]any, error) {
	if len(params) == 0 {
		return nil, nil
	}
	n, err := normalize(params)
	if err != nil {
		return nil, err
	}
	m := n.(map[string]any)
	var walk func(v any, top bool) (any, error)
	walk = func(v any, top bool) (any, error) {
		switch x := v.(type) {
		case map[string]any:
			for k, e := range x {
				if (top && slices.Contains(secrets, k)) || isSensitive(k) {
					if e == nil {
						continue
					}
					h, err := HashSecret(hkey, e)
					if err != nil {
						return nil, fmt.Errorf("%s: %w", k, err)
					}
					x[k] = h
					continue
				}
				w, err := walk(e, false)
				if err != nil {
					return nil, err
				}
				x[k] = w
			}
		case []any:
			for i, e := range x {
				w, err := walk(e, false)
				if err != nil {
					return nil, err
				}
				x[i] = w
			}
		}
		return v, nil
	}
	if _, err := walk(m, true); err != nil {
		return nil, fmt.Errorf("redact params: %w", err)
	}
	return m, nil
}

// entryFromRecord builds the entry for an action record.
func entryFromRecord(hkey []byte, r action.Record) (Entry, error) {
	params, err := redactParams(hkey, r.Params, r.Secrets)
	if err != nil {
		return Entry{}, err
	}
	t := r.Time
	if t.IsZero() {
		t = time.Now()
	}
	return Entry{Time: t.UTC(), Actor: r.Actor, Action: r.Action, Object: r.Object, RequestID: r.RequestID,
		Params: params, Outcome: r.Outcome, Error: r.Error, AcceptedIndex: r.AcceptedIndex, V: EntryVersion}, nil
}

// leafIndex reads the top-level "index" member of a canonical leaf without
// decoding the rest, so verification stays fast.
func leafIndex(raw []byte) (int64, error) {
	errMalformed := errors.New("malformed leaf: no top-level index")
	if len(raw) == 0 || raw[0] != '{' {
		return 0, errMalformed
	}
	i := 1
	for i < len(raw) {
		if raw[i] != '"' {
			return 0, errMalformed
		}
		end := skipString(raw, i)
		if end < 0 || end >= len(raw) || raw[end] != ':' {
			return 0, errMalformed
		}
		key := raw[i+1 : end-1]
		i = end + 1
		if string(key) == "index" {
			j := i
			for j < len(raw) && (raw[j] == '-' || (raw[j] >= '0' && raw[j] <= '9')) {
				j++
			}
			n, err := strconv.ParseInt(string(raw[i:j]), 10, 64)
			if err != nil {
				return 0, errMalformed
			}
			return n, nil
		}
		i = skipValue(raw, i)
		if i < 0 || i >= len(raw) || raw[i] != ',' {
			return 0, errMalformed
		}
		i++
	}
	return 0, errMalformed
}

// skipString returns the offset just past the string starting at raw[i].
func skipString(raw []byte, i int) int {
	for j := i + 1; j < len(raw); j++ {
		switch raw[j] {
		case '\\':
			j++
		case '"':
			return j + 1
		}
	}
	return -1
}

// skipValue returns the offset just past the JSON value starting at raw[i].
func skipValue(raw []byte, i int) int {
	depth := 0
	for i < len(raw) {
		switch c := raw[i]; c {
		case '"':
			i = skipString(raw, i)
			if i < 0 {
				return -1
			}
			if depth == 0 {
				return i
			}
			continue
		case '{', '[':
			depth++
		case '}', ']':
			depth--
			if depth < 0 {
				return i
			}
			if depth == 0 {
				return i + 1
			}
		case ',':
			if depth == 0 {
				return i
			}
		}
		i++
	}
	return i
}
