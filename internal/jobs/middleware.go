package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"strconv"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"

	"github.com/opsd-dev/opsd/internal/action"
)

// dispatchMiddleware runs every job through the action choke point, as the
// actor who enqueued it:
//
//	dispatcher.Do(ctx, {Actor, Action: "job.<kind>", Object, Params}, work)
//
// When the dispatcher refuses the run (the audit log cannot make the
// acceptance durable, action.ErrAuditUnavailable) the job did not run, and
// the middleware cancels it: River records it as cancelled with the refusal
// as its error, and it is not retried. An audit outage must not turn into a
// backlog of jobs that run later without anyone asking again; whatever
// scheduled the job (a periodic schedule, an operator) asks again, and the
// refusal is visible in the job's state and errors and in the log.
type dispatchMiddleware struct {
	river.MiddlewareDefaults
	d      *action.Dispatcher
	logger *slog.Logger
}

var _ rivertype.WorkerMiddleware = (*dispatchMiddleware)(nil)

// Work implements rivertype.WorkerMiddleware.
func (m *dispatchMiddleware) Work(ctx context.Context, job *rivertype.JobRow, doInner func(ctx context.Context) error) error {
	req := request(job)
	ctx = action.WithActor(ctx, req.Actor)

	ran := false
	var panicked any
	err := m.d.Do(ctx, req, func(ctx context.Context) (err error) {
		ran = true
		defer func() {
			if r := recover(); r != nil {
				// Record the outcome as failed, then let River handle the
				// panic as usual (retry, ErrorHandler).
				panicked = r
				m.logger.ErrorContext(ctx, "job panicked", "job", job.ID, "kind", job.Kind,
					"panic", fmt.Sprint(r), "stack", string(debug.Stack()))
				err = fmt.Errorf("job panicked: %v", r)
			}
		}()
		return doInner(ctx)
	})
	if panicked != nil {
		panic(panicked)
	}
	if !ran && err != nil {
		reason := fmt.Errorf("job %s %d refused: %w", job.Kind, job.ID, err)
		if errors.Is(err, action.ErrAuditUnavailable) {
			// Best effort: the log is probably still unavailable.
			_ = m.d.Refuse(context.WithoutCancel(ctx), req, reason)
		}
		m.logger.ErrorContext(ctx, "job refused; cancelled", "job", job.ID, "kind", job.Kind,
			"actor", req.Actor.String(), "err", err)
		return river.JobCancel(reason)
	}
	return err
}

// request describes a job run as an action.
func request(job *rivertype.JobRow) action.Request {
	meta := readMeta(job)
	object := meta.Object
	if object == "" {
		object = "job/" + strconv.FormatInt(job.ID, 10)
	}
	params := map[string]any{
		"job_id":  job.ID,
		"attempt": job.Attempt,
		"queue":   job.Queue,
	}
	var args map[string]any
	if err := json.Unmarshal(job.EncodedArgs, &args); err == nil && len(args) > 0 {
		params["args"] = args
	}
	return action.Request{
		Actor:     actorOf(job),
		Action:    "job." + job.Kind,
		Object:    object,
		RequestID: "job-" + strconv.FormatInt(job.ID, 10) + "-" + strconv.Itoa(job.Attempt),
		Params:    params,
	}
}
