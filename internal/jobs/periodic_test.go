package jobs

import (
	"context"
	"encoding/json"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"
)

func TestAheadSchedule(t *testing.T) {
	day := func(h, m, s, ms int) time.Time { return time.Date(2026, 3, 2, h, m, s, ms*1e6, time.UTC) }
	tests := []struct {
		name  string
		spec  string
		ahead time.Duration
		from  time.Time
		// want are the slots of the first calls: Next(from), then Next of
		// what the previous call returned (River's sequence).
		want []time.Time
	}{
		{name: "every minute", spec: "@every 1m", ahead: time.Second, from: day(10, 0, 0, 300),
			want: []time.Time{day(10, 1, 0, 0), day(10, 2, 0, 0), day(10, 3, 0, 0)}},
		{name: "daily, registered less than ahead before the slot", spec: "0 4 * * *", ahead: time.Second, from: day(3, 59, 59, 500),
			want: []time.Time{day(4, 0, 0, 0), day(4, 0, 0, 0).AddDate(0, 0, 1), day(4, 0, 0, 0).AddDate(0, 0, 2)}},
		{name: "no lead", spec: "*/15 * * * *", ahead: 0, from: day(10, 7, 0, 0),
			want: []time.Time{day(10, 15, 0, 0), day(10, 30, 0, 0), day(10, 45, 0, 0)}},
		{name: "lead longer than the period", spec: "@every 1s", ahead: 3 * time.Second, from: day(10, 0, 0, 0),
			want: []time.Time{day(10, 0, 1, 0), day(10, 0, 2, 0), day(10, 0, 3, 0)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sched, err := ParseSchedule(tt.spec)
			if err != nil {
				t.Fatal(err)
			}
			a := &aheadSchedule{sched: sched, ahead: tt.ahead}
			at := tt.from
			for i, want := range tt.want {
				at = a.Next(at)
				if got := a.current(); !got.Equal(want) {
					t.Fatalf("call %d: slot %v, want %v", i, got, want)
				}
				if !at.Equal(want.Add(-tt.ahead)) {
					t.Fatalf("call %d: Next = %v, want the slot %v minus %v", i, at, want, tt.ahead)
				}
			}
			// A call with any other time (a new leader, a reload) starts
			// from that time again.
			restart := tt.from.Add(time.Millisecond)
			if a.Next(restart); !a.current().Equal(sched.Next(restart)) {
				t.Errorf("Next(%v) after the sequence: slot %v, want %v", restart, a.current(), sched.Next(restart))
			}
		})
	}
}

// TestAheadScheduleReload: a schedule registered again (a config reload)
// less than ahead before a slot its previous registration inserted does
// not insert that slot again.
func TestAheadScheduleReload(t *testing.T) {
	sched, err := ParseSchedule("@every 1m")
	if err != nil {
		t.Fatal(err)
	}
	slot := time.Date(2026, 3, 2, 10, 1, 0, 0, time.UTC)
	reload := slot.Add(-500 * time.Millisecond)
	a := &aheadSchedule{sched: &fixedNext{next: slot, sched: sched}, ahead: time.Second, done: slot}
	a.Next(reload)
	if got := a.current(); !got.Equal(slot.Add(time.Minute)) {
		t.Errorf("slot after a reload at %v = %v, want %v (the next one)", reload, got, slot.Add(time.Minute))
	}
	fresh := &aheadSchedule{sched: &fixedNext{next: slot, sched: sched}, ahead: time.Second}
	if fresh.Next(reload); !fresh.current().Equal(slot) {
		t.Errorf("first registration at %v: slot %v, want %v", reload, fresh.current(), slot)
	}
}

// fixedNext returns next for the first call, then defers to sched.
type fixedNext struct {
	next  time.Time
	sched interface{ Next(time.Time) time.Time }
	used  bool
}

func (f *fixedNext) Next(t time.Time) time.Time {
	if !f.used {
		f.used = true
		return f.next
	}
	return f.sched.Next(t)
}

func TestPeriodicOpts(t *testing.T) {
	slot := time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC)
	called := slot.Add(-time.Second)
	if got := periodicOpts(nil, slot, called); !got.ScheduledAt.Equal(slot) {
		t.Errorf("no opts: ScheduledAt = %v, want the slot %v", got.ScheduledAt, slot)
	}
	in := &river.InsertOpts{Queue: "q", Priority: 2, ScheduledAt: called.Add(30 * time.Second)} // jitter 30s
	got := periodicOpts(in, slot, called)
	if !got.ScheduledAt.Equal(slot.Add(30*time.Second)) || got.Queue != "q" || got.Priority != 2 {
		t.Errorf("jittered opts = %+v, want ScheduledAt = slot + 30s, queue and priority kept", got)
	}
	if !in.ScheduledAt.Equal(called.Add(30 * time.Second)) {
		t.Error("periodicOpts modified its argument")
	}
	late := slot.Add(3 * time.Second) // River inserted after the slot
	if got := periodicOpts(&river.InsertOpts{ScheduledAt: late.Add(10 * time.Second)}, slot, late); !got.ScheduledAt.Equal(slot.Add(10 * time.Second)) {
		t.Errorf("late insert: ScheduledAt = %v, want slot + 10s", got.ScheduledAt)
	}
}

func TestWaker(t *testing.T) {
	calls := make(chan []string, 10)
	w := &waker{
		notify: func(_ context.Context, queues []string) error {
			slices.Sort(queues)
			calls <- queues
			return nil
		},
		logger:  testLogger(t),
		pending: map[int64]*wake{},
	}
	due := time.Now().Add(time.Hour).Truncate(time.Second)
	w.at(due, "default")
	w.at(due, "other")
	w.at(due, "default")
	key := due.UnixMilli() + 1
	w.mu.Lock()
	p, n := w.pending[key], len(w.pending)
	w.mu.Unlock()
	if n != 1 || p == nil || len(p.queues) != 2 {
		t.Fatalf("pending = %d wake-ups, %+v; want one for default and other at %v", n, p, due)
	}
	if !p.timer.Stop() {
		t.Fatal("an hour's timer fired")
	}
	w.fire(key)
	if got := <-calls; !slices.Equal(got, []string{"default", "other"}) {
		t.Errorf("notified %v, want [default other]", got)
	}

	w.at(time.Now().Add(-time.Minute), "late") // already due: at once
	select {
	case got := <-calls:
		if !slices.Equal(got, []string{"late"}) {
			t.Errorf("notified %v, want [late]", got)
		}
	case <-time.After(10 * time.Second):
		t.Error("a wake-up already due was not sent")
	}

	w.at(time.Now().Add(time.Hour), "default")
	w.stop()
	w.at(time.Now(), "default") // after stop: ignored
	select {
	case got := <-calls:
		t.Errorf("notified %v after stop", got)
	default:
	}
	if len(w.pending) != 0 {
		t.Errorf("%d wake-ups pending after stop", len(w.pending))
	}
}

// slotArgs is a periodic job whose runs are recorded.
type slotArgs struct{}

func (slotArgs) Kind() string { return "test_slot" }

type slotRun struct {
	started, scheduled time.Time
	slot               string
}

type slotWorker struct {
	river.WorkerDefaults[slotArgs]
	mu   sync.Mutex
	runs []slotRun
}

func (w *slotWorker) Work(_ context.Context, job *river.Job[slotArgs]) error {
	started := time.Now()
	var meta struct {
		Slot string `json:"opsd_slot"`
	}
	_ = json.Unmarshal(job.Metadata, &meta)
	w.mu.Lock()
	w.runs = append(w.runs, slotRun{started: started, scheduled: job.ScheduledAt, slot: meta.Slot})
	w.mu.Unlock()
	return nil
}

// insertSpy records the rows River inserts.
type insertSpy struct {
	river.MiddlewareDefaults
	mu   sync.Mutex
	rows []*rivertype.JobRow
	at   []time.Time
}

func (s *insertSpy) InsertMany(ctx context.Context, params []*rivertype.JobInsertParams, doInner func(context.Context) ([]*rivertype.JobInsertResult, error)) ([]*rivertype.JobInsertResult, error) {
	res, err := doInner(ctx)
	s.mu.Lock()
	for _, r := range res {
		s.rows = append(s.rows, r.Job)
		s.at = append(s.at, time.Now())
	}
	s.mu.Unlock()
	return res, err
}

// TestPeriodicAhead: a periodic job is inserted before its slot, available
// with the slot as ScheduledAt, and runs at or after the slot, never before;
// the producers find it although their poll interval is an hour (woken at
// the slot).
func TestPeriodicAhead(t *testing.T) {
	forEachBackend(t, func(t *testing.T, h *harness) {
		w := &slotWorker{}
		spy := &insertSpy{}
		workers := river.NewWorkers()
		river.AddWorker(workers, w)
		e := h.engine(func(o *Options) {
			o.Workers = workers
			o.FetchPollInterval = time.Hour
			o.EnqueueAhead = 1500 * time.Millisecond
			o.extraMiddleware = []rivertype.Middleware{spy}
			o.Periodic = []Periodic{{Name: "slot-every-2s", Spec: "@every 2s",
				Construct: func() (river.JobArgs, *river.InsertOpts) { return slotArgs{}, nil }}}
		})
		start(t, e)
		waitFor(t, 30*time.Second, "three periodic runs", func() bool {
			w.mu.Lock()
			defer w.mu.Unlock()
			return len(w.runs) >= 3
		})
		w.mu.Lock()
		runs := slices.Clone(w.runs)
		w.mu.Unlock()
		for i, r := range runs {
			if r.scheduled.Nanosecond() != 0 {
				t.Errorf("run %d: ScheduledAt %v, want a whole second (the slot)", i, r.scheduled)
			}
			if r.slot != slotMeta(r.scheduled) {
				t.Errorf("run %d: metadata slot %q, want %q", i, r.slot, slotMeta(r.scheduled))
			}
			if r.started.Before(r.scheduled) {
				t.Errorf("run %d started at %v, before its slot %v", i, r.started, r.scheduled)
			}
			if i > 0 && r.scheduled.Sub(runs[i-1].scheduled) != 2*time.Second {
				t.Errorf("runs %d and %d: slots %v and %v, want 2s apart", i-1, i, runs[i-1].scheduled, r.scheduled)
			}
		}
		spy.mu.Lock()
		defer spy.mu.Unlock()
		ahead := 0
		for i, row := range spy.rows {
			if row.State != rivertype.JobStateAvailable {
				t.Errorf("inserted job %d in state %s, want available", row.ID, row.State)
			}
			if spy.at[i].Before(row.ScheduledAt) {
				ahead++
			}
		}
		if ahead == 0 {
			t.Errorf("no job inserted before its slot (%d inserted)", len(spy.rows))
		}
	})
}
