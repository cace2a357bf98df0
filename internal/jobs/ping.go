package jobs

import (
	"context"
	"fmt"
	"time"

	"github.com/riverqueue/river"

	"github.com/opsd-dev/opsd/internal/state"
)

// PingKey is the state key the ping job writes.
const PingKey = "jobs.ping.last"

// PingArgs is the trivial "ping" job: it proves the job machinery works end
// to end by writing "<job id> <note> <RFC 3339 time>" under PingKey.
type PingArgs struct {
	Note string `json:"note"`
}

// Kind implements river.JobArgs.
func (PingArgs) Kind() string { return "ping" }

// PingWorker works PingArgs jobs.
type PingWorker struct {
	river.WorkerDefaults[PingArgs]
	Store state.Store
	// Now returns the current time; nil means time.Now.
	Now func() time.Time
}

// Work writes the ping record.
func (w *PingWorker) Work(ctx context.Context, job *river.Job[PingArgs]) error {
	now := time.Now
	if w.Now != nil {
		now = w.Now
	}
	v := fmt.Sprintf("%d %s %s", job.ID, job.Args.Note, now().UTC().Format(time.RFC3339))
	if err := w.Store.PutValue(ctx, PingKey, v); err != nil {
		return fmt.Errorf("ping %d: %w", job.ID, err)
	}
	return nil
}
