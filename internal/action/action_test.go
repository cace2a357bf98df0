package action

import (
	"context"
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
)

type memRecorder struct {
	recs []Record
	fail error
}

func (m *memRecorder) Record(_ context.Context, r Record) (int64, error) {
	if m.fail != nil {
		return 0, m.fail
	}
	m.recs = append(m.recs, r)
	return int64(len(m.recs) - 1), nil
}

func (m *memRecorder) outcomes() []string {
	var out []string
	for _, r := range m.recs {
		out = append(out, r.Actor.String()+" "+r.Action+" "+string(r.Outcome)+" "+r.Error)
	}
	return out
}

func TestDo(t *testing.T) {
	boom := errors.New("boom")
	tests := []struct {
		name    string
		fnErr   error
		want    []string
		wantErr error
	}{
		{"success", nil, []string{"token:ci backup.run accepted ", "token:ci backup.run succeeded "}, nil},
		{"failure", boom, []string{"token:ci backup.run accepted ", "token:ci backup.run failed boom"}, boom},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := &memRecorder{}
			d := NewDispatcher(rec)
			ctx := WithActor(context.Background(), Actor{Kind: ActorToken, Name: "ci"})
			err := d.Do(ctx, Request{Actor: ActorFrom(ctx), Action: "backup.run"}, func(context.Context) error { return tt.fnErr })
			if !errors.Is(err, tt.wantErr) {
				t.Errorf("Do() = %v, want %v", err, tt.wantErr)
			}
			if diff := cmp.Diff(tt.want, rec.outcomes()); diff != "" {
				t.Errorf("records (-want +got):\n%s", diff)
			}
			if rec.recs[1].AcceptedIndex != 0 || rec.recs[0].AcceptedIndex != -1 {
				t.Errorf("AcceptedIndex = %d, %d; want -1, 0", rec.recs[0].AcceptedIndex, rec.recs[1].AcceptedIndex)
			}
		})
	}
}

func TestDoFailsClosed(t *testing.T) {
	rec := &memRecorder{fail: errors.New("disk full")}
	d := NewDispatcher(rec)
	ran := false
	err := d.Do(context.Background(), Request{Action: "config.reload"}, func(context.Context) error { ran = true; return nil })
	if !errors.Is(err, ErrAuditUnavailable) {
		t.Errorf("Do() = %v, want ErrAuditUnavailable", err)
	}
	if ran {
		t.Error("the action ran although its acceptance was not recorded")
	}
}

func TestFinishSurvivesCancelledCaller(t *testing.T) {
	rec := &memRecorder{}
	d := NewDispatcher(rec)
	ctx, cancel := context.WithCancel(context.Background())
	tk, err := d.Accept(ctx, Request{Action: "x"})
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := tk.Finish(ctx, nil); err != nil {
		t.Fatalf("Finish after cancel = %v", err)
	}
	if len(rec.recs) != 2 {
		t.Errorf("records = %d, want 2", len(rec.recs))
	}
}

func TestActorFromDefaultsToSystem(t *testing.T) {
	if got := ActorFrom(context.Background()); got != (Actor{Kind: ActorSystem, Name: "opsd"}) {
		t.Errorf("ActorFrom(empty) = %v", got)
	}
}
