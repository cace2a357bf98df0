package daemon

import (
	"context"
	"errors"
	"fmt"

	"github.com/riverqueue/river"

	"github.com/opsd-dev/opsd/internal/config"
	"github.com/opsd-dev/opsd/internal/dr"
	"github.com/opsd-dev/opsd/internal/dr/runbook"
	"github.com/opsd-dev/opsd/internal/httpapi"
	"github.com/opsd-dev/opsd/internal/jobs"
)

// DrillArgs is the River job a `runbooks.schedules` entry inserts: it
// starts one run of the runbook; the run itself belongs to the DR engine.
type DrillArgs struct {
	Runbook string            `json:"runbook"`
	Mode    string            `json:"mode"`
	Params  map[string]string `json:"params,omitempty"`
}

// Kind implements river.JobArgs.
func (DrillArgs) Kind() string { return "drill" }

// AuditObject names the runbook in the job's audit entry.
func (a DrillArgs) AuditObject() string { return "runbook/" + a.Runbook }

// drillWorker starts scheduled runs.
type drillWorker struct {
	river.WorkerDefaults[DrillArgs]
	d *Daemon
}

// Work starts the run. A runbook that is still running (concurrency
// reached) skips this slot; a runbook that is gone is cancelled.
func (w *drillWorker) Work(ctx context.Context, job *river.Job[DrillArgs]) error {
	set := w.d.drills
	if set == nil {
		return errors.New("the DR engine is not running yet")
	}
	rb, ok := set.Runbook(job.Args.Runbook)
	if !ok {
		return river.JobCancel(fmt.Errorf("scheduled drill: runbook %q is not loaded", job.Args.Runbook))
	}
	params := make(map[string]any, len(job.Args.Params))
	for k, v := range job.Args.Params {
		params[k] = v
	}
	// The schedule is in the config, which only an admin writes: a live
	// schedule runs with the admin role it needs.
	role := httpapi.RoleOperator
	if job.Args.Mode == runbook.ModeLive {
		role = httpapi.RoleAdmin
	}
	actor := dr.Actor{Name: "scheduler:drill:" + job.Args.Runbook, Role: role.String()}
	id, err := set.Start(ctx, rb, params, job.Args.Mode, false, actor)
	switch {
	case errors.Is(err, dr.ErrBusy):
		w.d.log.Warn("scheduled drill skipped: the runbook is still running", "runbook", rb.Name)
		return nil
	case err != nil:
		return river.JobCancel(fmt.Errorf("scheduled drill of %s: %w", rb.Name, err))
	}
	w.d.log.Info("scheduled drill started", "runbook", rb.Name, "run", id, "mode", job.Args.Mode)
	return nil
}

// drillSchedules are runbooks.schedules as periodic jobs.
func drillSchedules(cfg *config.Config) []jobs.Periodic {
	var out []jobs.Periodic
	for i, s := range cfg.Runbooks.Schedules {
		args := DrillArgs{Runbook: s.Runbook, Mode: s.Mode}
		if args.Mode == "" {
			args.Mode = runbook.ModeDrill
		}
		if len(s.Params) > 0 {
			args.Params = map[string]string{}
			for k, v := range s.Params {
				args.Params[k] = string(v)
			}
		}
		out = append(out, jobs.Periodic{Name: fmt.Sprintf("drill:%s:%d", s.Runbook, i), Spec: string(s.Cron),
			Construct: func() (river.JobArgs, *river.InsertOpts) { return args, nil }})
	}
	return out
}
