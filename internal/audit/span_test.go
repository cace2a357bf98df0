package audit

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/opsd-dev/opsd/internal/action"
)

// TestSpan: the span of a time window holds exactly the window's entries,
// widened to the acceptance of an action finished in it and to the
// finishing entry, shortly after, of an action accepted in it; entries a
// little out of time order are found; a checkpoint covers the span.
func TestSpan(t *testing.T) {
	l := openLog(t, t.TempDir(), testKey(t, "opsd.test/span"))
	defer l.Close()
	// After whatever the log holds already (Open may record itself).
	base := time.Now().UTC().Add(time.Hour)
	n0 := l.Size()
	at := func(sec float64) time.Time { return base.Add(time.Duration(sec * float64(time.Second))) }
	rec := func(sec float64, outcome action.Outcome, accepted int64) int64 {
		t.Helper()
		i, err := l.Record(context.Background(), action.Record{
			Request: action.Request{Actor: action.Actor{Kind: action.ActorToken, Name: "ci"}, Action: "x", Object: "o"},
			Time:    at(sec), Outcome: outcome, AcceptedIndex: accepted})
		if err != nil {
			t.Fatal(err)
		}
		return i
	}
	// 0..199: one entry a second, long before the window.
	for i := range 200 {
		rec(float64(i), action.Accepted, -1)
	}
	start := rec(1000, action.Accepted, -1)   // 200: accepted before the window
	in1 := rec(1010, action.Succeeded, start) // 201: finishes 200, in the window
	in2 := rec(1009.9, action.Accepted, -1)   // 202: out of order, in the window
	in3 := rec(1020, action.Accepted, -1)     // 203: in the window, finished after it
	after := rec(1031, action.Succeeded, in3) // 204: within linger after end
	late := rec(1100, action.Succeeded, in2)  // 205: past linger
	rec(1101, action.Accepted, -1)            // 206
	_ = in1

	tests := []struct {
		name        string
		start, end  float64
		linger      time.Duration
		first, last int64
		err         error
	}{
		{"window with links", 1005, 1030, 5 * time.Second, start, after, nil},
		{"no linger", 1005, 1030, 0, start, in3, nil},
		{"only the early part", 0, 9.5, 0, n0, n0 + 9, nil},
		{"exact bounds", 50, 52, 0, n0 + 50, n0 + 52, nil},
		{"empty window", 1040, 1050, 0, -1, -1, ErrNoEntries},
		{"late entry alone", 1099, 1100, 0, in2, late, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			first, last, err := l.Span(at(tt.start), at(tt.end), tt.linger)
			if !errors.Is(err, tt.err) || first != tt.first || last != tt.last {
				t.Fatalf("Span = %d, %d, %v; want %d, %d, %v", first, last, err, tt.first, tt.last, tt.err)
			}
			if err != nil {
				return
			}
			signed, err := l.CheckpointCovering(last + 1)
			if err != nil {
				t.Fatal(err)
			}
			c, err := OpenCheckpoint(signed, l.key.Verifier)
			if err != nil {
				t.Fatal(err)
			}
			if c.Size <= last {
				t.Errorf("checkpoint of size %d does not cover entry %d", c.Size, last)
			}
		})
	}
	if _, err := l.CheckpointCovering(l.Size() + 1); !errors.Is(err, ErrNotFound) {
		t.Errorf("checkpoint covering more than the log = %v, want ErrNotFound", err)
	}
}
