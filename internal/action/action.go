// Package action is the one place every mutating action in opsd passes
// through — an API call, a scheduled job, a CLI-triggered action, a runbook
// step — carrying who asked. The audit log wraps this choke point, so no
// handler or job writes audit entries of its own.
//
// A Dispatcher records that an action was accepted before it runs and records
// its outcome after. If the acceptance cannot be made durable the action is
// refused with ErrAuditUnavailable (fail closed, SPEC §1.5).
package action

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// ActorKind says what kind of principal asked for an action.
type ActorKind string

// Actor kinds.
const (
	ActorToken     ActorKind = "token"     // an API bearer token; Name is the token's name
	ActorScheduler ActorKind = "scheduler" // a schedule fired; Name is the schedule
	ActorCLI       ActorKind = "cli"       // an offline CLI command; Name is the OS user
	ActorSystem    ActorKind = "system"    // opsd itself (start, stop, recovery)
	ActorPlugin    ActorKind = "plugin"    // a plugin; Name is the plugin
)

// Actor is who asked.
type Actor struct {
	Kind ActorKind `json:"kind"`
	Name string    `json:"name"`
}

func (a Actor) String() string { return string(a.Kind) + ":" + a.Name }

// Outcome of an action as recorded in the audit log.
type Outcome string

// Outcomes.
const (
	Accepted  Outcome = "accepted"
	Succeeded Outcome = "succeeded"
	Failed    Outcome = "failed"
	Refused   Outcome = "refused"
)

// Request describes one mutating action.
type Request struct {
	Actor     Actor
	Action    string // dotted verb, e.g. "backup.run", "config.reload", "run.approve"
	Object    string // what it acts on, e.g. "source/orders-db"
	RequestID string
	// Params are the action's parameters. Keys listed in Secrets are
	// replaced by a keyed hash before they are recorded anywhere.
	Params  map[string]any
	Secrets []string
}

// Record is what the Dispatcher hands the Recorder: the request plus its
// outcome. For a finishing record, AcceptedIndex links it to the record
// that accepted the action.
type Record struct {
	Request
	Time          time.Time
	Outcome       Outcome
	Error         string
	AcceptedIndex int64 // -1 when this record is not the end of an accepted action
}

// Recorder makes records durable. Record returns only when the record is
// durable, with its index in the log.
type Recorder interface {
	Record(ctx context.Context, r Record) (index int64, err error)
}

// ErrAuditUnavailable is returned when the acceptance of an action could not
// be recorded; the action did not run.
var ErrAuditUnavailable = errors.New("audit log unavailable: action refused")

// Dispatcher runs actions through the recorder.
type Dispatcher struct {
	rec Recorder
	now func() time.Time
	// OnRecordError is called when the outcome of an action that already ran
	// could not be recorded. It must not block.
	OnRecordError func(r Record, err error)
}

// NewDispatcher returns a Dispatcher writing to rec. A nil rec records nothing
// (for offline tools that have no log).
func NewDispatcher(rec Recorder) *Dispatcher {
	return &Dispatcher{rec: rec, now: time.Now}
}

// Ticket is an accepted action whose outcome is still to come, for actions
// that finish after the call that accepted them (a queued backup).
type Ticket struct {
	d     *Dispatcher
	req   Request
	index int64
}

// Index is the log index of the acceptance record, or -1 without a recorder.
func (t *Ticket) Index() int64 { return t.index }

// Accept records that req was accepted and returns a ticket to finish it.
// If the record cannot be made durable it records a refusal (best effort)
// and returns ErrAuditUnavailable.
func (d *Dispatcher) Accept(ctx context.Context, req Request) (*Ticket, error) {
	if d.rec == nil {
		return &Ticket{d: d, req: req, index: -1}, nil
	}
	idx, err := d.rec.Record(ctx, Record{Request: req, Time: d.now().UTC(), Outcome: Accepted, AcceptedIndex: -1})
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrAuditUnavailable, err)
	}
	return &Ticket{d: d, req: req, index: idx}, nil
}

// Finish records the outcome of an accepted action: succeeded when err is
// nil, failed otherwise.
func (t *Ticket) Finish(ctx context.Context, err error) error {
	if t.d.rec == nil {
		return nil
	}
	r := Record{Request: t.req, Time: t.d.now().UTC(), Outcome: Succeeded, AcceptedIndex: t.index}
	if err != nil {
		r.Outcome, r.Error = Failed, err.Error()
	}
	// The action has already happened; recording its end must not be cut
	// short by a caller that went away.
	if _, rerr := t.d.rec.Record(context.WithoutCancel(ctx), r); rerr != nil {
		if t.d.OnRecordError != nil {
			t.d.OnRecordError(r, rerr)
		}
		return fmt.Errorf("record outcome of %s: %w", t.req.Action, rerr)
	}
	return nil
}

// Do accepts req, runs fn and records its outcome. fn does not run if the
// acceptance could not be recorded. Do returns fn's error.
func (d *Dispatcher) Do(ctx context.Context, req Request, fn func(ctx context.Context) error) error {
	t, err := d.Accept(ctx, req)
	if err != nil {
		return err
	}
	ferr := fn(ctx)
	_ = t.Finish(ctx, ferr) // reported through OnRecordError; fn's result is what the caller needs
	return ferr
}

// Refuse records that req was refused before it ran (bad role, invalid
// input), so the log also shows what was asked and denied.
func (d *Dispatcher) Refuse(ctx context.Context, req Request, reason error) error {
	if d.rec == nil {
		return nil
	}
	_, err := d.rec.Record(ctx, Record{Request: req, Time: d.now().UTC(), Outcome: Refused, Error: reason.Error(), AcceptedIndex: -1})
	return err
}

type ctxKey struct{}

// WithActor returns ctx carrying the actor who asked.
func WithActor(ctx context.Context, a Actor) context.Context {
	return context.WithValue(ctx, ctxKey{}, a)
}

// ActorFrom returns the actor carried by ctx, or the system actor.
func ActorFrom(ctx context.Context) Actor {
	if a, ok := ctx.Value(ctxKey{}).(Actor); ok {
		return a
	}
	return Actor{Kind: ActorSystem, Name: "opsd"}
}
