package jobs

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver"
	"github.com/riverqueue/river/rivertype"
	"github.com/robfig/cron/v3"
)

// Periodic jobs are inserted ahead of their slot and start on time.
//
// River's periodic enqueuer inserts a job when its schedule fires, in one
// transaction for every schedule due at that moment: 1,000 sources on the
// same minute are 1,000 rows written at the slot (50-250 ms on SQLite), and
// only then can a producer fetch them. opsd instead hands River a schedule
// shifted EnqueueAhead earlier (aheadSchedule) and gives each job the real
// slot as its ScheduledAt. River would insert such a job as "scheduled" and
// leave it to its job scheduler, which promotes scheduled jobs every 5 s;
// periodicMiddleware inserts it as "available" instead — producers only
// fetch available jobs whose scheduled_at has come, on both drivers — and
// the waker tells the producers at the slot that jobs are due (River's insert
// notification, which both drivers carry: PostgreSQL's NOTIFY, SQLite's
// notification table polled every 50 ms). If a wake-up is lost the
// producers' FetchPollInterval poll still finds the jobs.

// metaSlot is the metadata key of the slot a periodic job was inserted for.
const metaSlot = "opsd_slot"

// riverInsertTopic and insertPayload are River's insert notification (topic
// river_insert, payload {"queue": ...}), which wakes the queue's producers.
const riverInsertTopic = "river_insert"

type insertPayload struct {
	Queue string `json:"queue"`
}

// aheadSchedule is a cron schedule shifted ahead earlier, for River's
// periodic enqueuer. It remembers the slot it last returned so that the job
// constructor, which River calls before advancing the schedule, knows which
// slot it inserts for.
type aheadSchedule struct {
	sched cron.Schedule
	ahead time.Duration

	// done is the last slot a previous registration of the same name
	// inserted for (in this process): a reload within ahead of a slot must
	// not insert it twice.
	done time.Time

	mu   sync.Mutex
	slot time.Time // the slot River waits for, zero before the first Next
}

// Next implements river.PeriodicSchedule. River calls it once with the
// current time when the schedule is registered or the leader starts, then
// with the time it last got back each time it inserted a job.
func (a *aheadSchedule) Next(t time.Time) time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	from := t
	if !a.slot.IsZero() && t.Equal(a.slot.Add(-a.ahead)) {
		from = a.slot // the run River just inserted: step from its slot
	}
	// On the first call the slot may be less than ahead away: River then
	// inserts at once, still for that slot, unless it was inserted already.
	a.slot = a.sched.Next(from)
	if !a.done.IsZero() && !a.slot.After(a.done) {
		a.slot = a.sched.Next(a.done)
	}
	return a.slot.Add(-a.ahead)
}

// current is the slot River inserts a job for when it calls the
// constructor.
func (a *aheadSchedule) current() time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.slot
}

// periodicOpts returns opts with ScheduledAt at the slot. A ScheduledAt the
// constructor set (jitter: now plus a random delay) is read relative to the
// call, which happens up to EnqueueAhead before the slot, and moved to the
// slot by the same amount.
func periodicOpts(opts *river.InsertOpts, slot, called time.Time) *river.InsertOpts {
	var o river.InsertOpts
	if opts != nil {
		o = *opts
	}
	if slot.IsZero() {
		return &o
	}
	if o.ScheduledAt.IsZero() {
		o.ScheduledAt = slot
	} else {
		o.ScheduledAt = o.ScheduledAt.Add(slot.Sub(called))
	}
	return &o
}

// periodicMiddleware inserts periodic jobs as available at their slot
// instead of scheduled, and has the waker wake the producers then.
type periodicMiddleware struct {
	river.MiddlewareDefaults
	waker *waker
}

var _ rivertype.JobInsertMiddleware = (*periodicMiddleware)(nil)

// InsertMany implements rivertype.JobInsertMiddleware.
func (m *periodicMiddleware) InsertMany(ctx context.Context, manyParams []*rivertype.JobInsertParams,
	doInner func(context.Context) ([]*rivertype.JobInsertResult, error),
) ([]*rivertype.JobInsertResult, error) {
	var due []*rivertype.JobInsertParams
	for _, p := range manyParams {
		if p.State == rivertype.JobStateScheduled && p.ScheduledAt != nil && hasSlot(p.Metadata) {
			p.State = rivertype.JobStateAvailable
			due = append(due, p)
		}
	}
	res, err := doInner(ctx)
	if err != nil {
		return res, err
	}
	// The enqueuer's transaction commits after this returns; a wake-up comes
	// at the slot, normally well after the commit (a wake-up that finds
	// nothing costs one empty fetch, and River's poll is the fallback).
	for _, p := range due {
		m.waker.at(*p.ScheduledAt, p.Queue)
	}
	return res, nil
}

func hasSlot(metadata []byte) bool {
	var m struct {
		Slot *string `json:"opsd_slot"`
	}
	return json.Unmarshal(metadata, &m) == nil && m.Slot != nil
}

// waker sends River's insert notification for a queue at the times
// periodic jobs become due, one per distinct time.
type waker struct {
	notify func(ctx context.Context, queues []string) error
	logger *slog.Logger

	mu      sync.Mutex
	pending map[int64]*wake // by due time in Unix milliseconds
	stopped bool
	wg      sync.WaitGroup
}

type wake struct {
	timer  *time.Timer
	queues map[string]bool
}

// newWaker returns a waker notifying through exec.
func newWaker(exec riverdriver.Executor, logger *slog.Logger) *waker {
	return &waker{
		notify: func(ctx context.Context, queues []string) error {
			payloads := make([]string, 0, len(queues))
			for _, q := range queues {
				b, err := json.Marshal(insertPayload{Queue: q})
				if err != nil {
					return err
				}
				payloads = append(payloads, string(b))
			}
			return exec.NotifyMany(ctx, &riverdriver.NotifyManyParams{Topic: riverInsertTopic, Payload: payloads})
		},
		logger:  logger,
		pending: map[int64]*wake{},
	}
}

// at wakes queue's producers at t (rounded up to the next millisecond:
// SQLite keeps scheduled_at to the millisecond, rounded).
func (w *waker) at(t time.Time, queue string) {
	key := t.Round(time.Millisecond).UnixMilli() + 1
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stopped {
		return
	}
	if p, ok := w.pending[key]; ok {
		p.queues[queue] = true
		return
	}
	p := &wake{queues: map[string]bool{queue: true}}
	w.wg.Add(1)
	p.timer = time.AfterFunc(time.Until(time.UnixMilli(key)), func() { w.fire(key) })
	w.pending[key] = p
}

func (w *waker) fire(key int64) {
	defer w.wg.Done()
	w.mu.Lock()
	p := w.pending[key]
	delete(w.pending, key)
	w.mu.Unlock()
	queues := make([]string, 0, len(p.queues))
	for q := range p.queues {
		queues = append(queues, q)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := w.notify(ctx, queues); err != nil {
		// The producers' poll finds the jobs a little later.
		w.logger.Warn("wake producers for due periodic jobs", "queues", queues, "err", err)
	}
}

// stop cancels pending wake-ups and waits for one in progress.
func (w *waker) stop() {
	w.mu.Lock()
	w.stopped = true
	for key, p := range w.pending {
		if p.timer.Stop() {
			w.wg.Done()
			delete(w.pending, key)
		}
	}
	w.mu.Unlock()
	w.wg.Wait()
}

// slotMeta is the metadata value recording a slot.
func slotMeta(slot time.Time) string {
	return slot.UTC().Format(time.RFC3339Nano)
}

// enqueueAhead resolves Options.EnqueueAhead.
func enqueueAhead(d time.Duration) (time.Duration, error) {
	switch {
	case d == 0:
		return DefaultEnqueueAhead, nil
	case d < 0:
		return 0, nil
	case d > time.Minute:
		return 0, fmt.Errorf("jobs: EnqueueAhead %v: want at most 1m", d)
	}
	return d, nil
}
