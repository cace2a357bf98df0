package route

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/prometheus/alertmanager/pkg/labels"
	"github.com/prometheus/alertmanager/silence"
	pb "github.com/prometheus/alertmanager/silence/silencepb"
	"github.com/prometheus/common/model"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Silence states.
const (
	SilenceActive  = string(silence.SilenceStateActive)
	SilencePending = string(silence.SilenceStatePending)
	SilenceExpired = string(silence.SilenceStateExpired)
)

// Silence annotations set by SilenceForDrill, and alert annotations added to
// notifications of alerts that began during a drill.
const (
	AnnotationDrillRun    = "opsd_drill_run"
	AnnotationDrillSource = "opsd_drill_source"
	AnnotationDrill       = "opsd_drill"
	// DrillCreatedBy is the createdBy of drill silences.
	DrillCreatedBy = "opsd (drill)"
)

// Silence is one silence as the API shows it.
type Silence struct {
	ID          string            `json:"id"`
	Matchers    []string          `json:"matchers"` // e.g. `source="orders-db"`
	StartsAt    time.Time         `json:"startsAt"`
	EndsAt      time.Time         `json:"endsAt"`
	UpdatedAt   time.Time         `json:"updatedAt"`
	CreatedBy   string            `json:"createdBy"`
	Comment     string            `json:"comment"`
	State       string            `json:"state"` // active | pending | expired
	Annotations map[string]string `json:"annotations,omitempty"`
}

// SilenceFilter selects silences to list; its zero value lists all.
type SilenceFilter struct {
	// States keeps silences in one of these states.
	States []string
	// Labels keeps silences that would mute an alert with these labels.
	Labels map[string]string
}

// AddSilence creates a silence muting alerts that match every matcher
// (Alertmanager syntax, one per string) between startsAt (zero: now) and
// endsAt, and returns its ID. The silence is durable when AddSilence
// returns.
func (r *Router) AddSilence(ctx context.Context, matchers []string, startsAt, endsAt time.Time, createdBy, comment string) (string, error) {
	return r.addSilence(ctx, matchers, startsAt, endsAt, createdBy, comment, nil)
}

func (r *Router) addSilence(ctx context.Context, matchers []string, startsAt, endsAt time.Time, createdBy, comment string, annotations map[string]string) (string, error) {
	ms, err := parseMatchers(matchers)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	switch {
	case endsAt.IsZero():
		return "", fmt.Errorf("%w: endsAt is required", ErrInvalid)
	case !startsAt.IsZero() && endsAt.Before(startsAt):
		return "", fmt.Errorf("%w: endsAt %s is before startsAt %s", ErrInvalid, endsAt.Format(time.RFC3339), startsAt.Format(time.RFC3339))
	case !endsAt.After(time.Now()):
		return "", fmt.Errorf("%w: endsAt %s is in the past", ErrInvalid, endsAt.Format(time.RFC3339))
	case strings.TrimSpace(createdBy) == "":
		return "", fmt.Errorf("%w: createdBy is required", ErrInvalid)
	}
	set := &pb.MatcherSet{}
	for _, m := range ms {
		set.Matchers = append(set.Matchers, &pb.Matcher{Type: matchType(m.Type), Name: m.Name, Pattern: m.Value})
	}
	sil := &pb.Silence{
		MatcherSets: []*pb.MatcherSet{set},
		EndsAt:      timestamppb.New(endsAt),
		CreatedBy:   createdBy,
		Comment:     comment,
		Annotations: annotations,
	}
	if !startsAt.IsZero() {
		sil.StartsAt = timestamppb.New(startsAt)
	}
	r.silMu.Lock()
	defer r.silMu.Unlock()
	if err := r.silences.Set(ctx, sil); err != nil {
		return "", fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if err := r.persistSilencesLocked(ctx); err != nil {
		return sil.Id, fmt.Errorf("silence %s created but not persisted: %w", sil.Id, err)
	}
	return sil.Id, nil
}

func matchType(t labels.MatchType) pb.Matcher_Type {
	switch t {
	case labels.MatchNotEqual:
		return pb.Matcher_NOT_EQUAL
	case labels.MatchRegexp:
		return pb.Matcher_REGEXP
	case labels.MatchNotRegexp:
		return pb.Matcher_NOT_REGEXP
	default:
		return pb.Matcher_EQUAL
	}
}

// ExpireSilence ends the silence id now; expiring an expired silence is not
// an error. It returns an error wrapping ErrNotFound for an unknown id.
func (r *Router) ExpireSilence(ctx context.Context, id string) error {
	r.silMu.Lock()
	defer r.silMu.Unlock()
	if err := r.silences.Expire(ctx, id); err != nil {
		if errors.Is(err, silence.ErrNotFound) {
			return fmt.Errorf("silence %q: %w", id, ErrNotFound)
		}
		return fmt.Errorf("expire silence %q: %w", id, err)
	}
	if err := r.persistSilencesLocked(ctx); err != nil {
		return fmt.Errorf("silence %s expired but not persisted: %w", id, err)
	}
	return nil
}

// GetSilence returns the silence id, or an error wrapping ErrNotFound.
func (r *Router) GetSilence(ctx context.Context, id string) (Silence, error) {
	sils, _, err := r.silences.Query(ctx, silence.QIDs(id))
	if err != nil {
		return Silence{}, fmt.Errorf("query silence %q: %w", id, err)
	}
	if len(sils) == 0 {
		return Silence{}, fmt.Errorf("silence %q: %w", id, ErrNotFound)
	}
	return toSilence(sils[0], time.Now()), nil
}

// ListSilences returns the silences matching f: active ones first (ending
// soonest first), then pending (starting soonest first), then expired (most
// recently ended first), as Alertmanager's UI orders them.
func (r *Router) ListSilences(ctx context.Context, f SilenceFilter) ([]Silence, error) {
	var q []silence.QueryParam
	for _, s := range f.States {
		if s != SilenceActive && s != SilencePending && s != SilenceExpired {
			return nil, fmt.Errorf("%w: unknown silence state %q (want active, pending or expired)", ErrInvalid, s)
		}
	}
	if len(f.States) > 0 {
		states := make([]silence.SilenceState, len(f.States))
		for i, s := range f.States {
			states[i] = silence.SilenceState(s)
		}
		q = append(q, silence.QState(states...))
	}
	if f.Labels != nil {
		q = append(q, silence.QMatches(labelSet(f.Labels)))
	}
	sils, _, err := r.silences.Query(ctx, q...)
	if err != nil {
		return nil, fmt.Errorf("query silences: %w", err)
	}
	now := time.Now()
	out := make([]Silence, 0, len(sils))
	for _, s := range sils {
		out = append(out, toSilence(s, now))
	}
	rank := map[string]int{SilenceActive: 0, SilencePending: 1, SilenceExpired: 2}
	sort.SliceStable(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if rank[a.State] != rank[b.State] {
			return rank[a.State] < rank[b.State]
		}
		switch a.State {
		case SilenceActive:
			return a.EndsAt.Before(b.EndsAt)
		case SilencePending:
			return a.StartsAt.Before(b.StartsAt)
		default:
			return a.EndsAt.After(b.EndsAt)
		}
	})
	return out, nil
}

func toSilence(s *pb.Silence, now time.Time) Silence {
	out := Silence{
		ID:        s.Id,
		StartsAt:  s.StartsAt.AsTime().UTC(),
		EndsAt:    s.EndsAt.AsTime().UTC(),
		UpdatedAt: s.UpdatedAt.AsTime().UTC(),
		CreatedBy: s.CreatedBy,
		Comment:   s.Comment,
		Matchers:  []string{},
	}
	sets := s.MatcherSets
	if len(sets) == 0 && len(s.Matchers) > 0 { // snapshots from before matcher sets
		sets = []*pb.MatcherSet{{Matchers: s.Matchers}}
	}
	for _, set := range sets {
		for _, m := range set.Matchers {
			out.Matchers = append(out.Matchers, matcherString(m))
		}
	}
	if len(s.Annotations) > 0 {
		out.Annotations = s.Annotations
	}
	switch {
	case now.Before(out.StartsAt):
		out.State = SilencePending
	case now.After(out.EndsAt):
		out.State = SilenceExpired
	default:
		out.State = SilenceActive
	}
	return out
}

func matcherString(m *pb.Matcher) string {
	t := labels.MatchEqual
	switch m.Type {
	case pb.Matcher_NOT_EQUAL:
		t = labels.MatchNotEqual
	case pb.Matcher_REGEXP:
		t = labels.MatchRegexp
	case pb.Matcher_NOT_REGEXP:
		t = labels.MatchNotRegexp
	}
	lm, err := labels.NewMatcher(t, m.Name, m.Pattern)
	if err != nil {
		return fmt.Sprintf("%s%s%q", m.Name, t, m.Pattern)
	}
	return lm.String()
}

// SilenceForDrill silences every alert labelled source="<source>" from now
// until the drill run runID ends (EndDrill) or until, whichever is first;
// until bounds a drill whose end is never reported. The silence's comment
// names the run, and alerts that began during the drill carry the
// annotations opsd_drill_run and opsd_drill in later notifications.
func (r *Router) SilenceForDrill(ctx context.Context, source, runID string, until time.Time) (string, error) {
	if source == "" || runID == "" {
		return "", fmt.Errorf("%w: drill silence needs a source and a run", ErrInvalid)
	}
	m, err := labels.NewMatcher(labels.MatchEqual, "source", source)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return r.addSilence(ctx, []string{m.String()}, time.Time{}, until, DrillCreatedBy,
		fmt.Sprintf("drill run %s on source %s: alerts of the source are silenced while the drill runs", runID, source),
		map[string]string{AnnotationDrillRun: runID, AnnotationDrillSource: source})
}

// EndDrill expires the silences SilenceForDrill created for runID. Ending
// a drill without a silence is not an error.
func (r *Router) EndDrill(ctx context.Context, runID string) error {
	sils, _, err := r.silences.Query(ctx, silence.QState(silence.SilenceStateActive, silence.SilenceStatePending))
	if err != nil {
		return fmt.Errorf("query silences: %w", err)
	}
	var errs []error
	for _, s := range sils {
		if s.CreatedBy == DrillCreatedBy && s.Annotations[AnnotationDrillRun] == runID {
			if err := r.ExpireSilence(ctx, s.Id); err != nil && !errors.Is(err, ErrNotFound) {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// drillNotes returns the drill silences still kept (active or expired
// within the retention), for annotating notifications.
func (r *Router) drillNotes(ctx context.Context) []drillSilence {
	sils, _, err := r.silences.Query(ctx)
	if err != nil {
		r.logger.Warn("query drill silences", "err", err)
		return nil
	}
	var out []drillSilence
	for _, s := range sils {
		if s.CreatedBy != DrillCreatedBy || s.Annotations[AnnotationDrillRun] == "" {
			continue
		}
		source := s.Annotations[AnnotationDrillSource]
		out = append(out, drillSilence{
			id:      s.Id,
			source:  source,
			runID:   s.Annotations[AnnotationDrillRun],
			start:   s.StartsAt.AsTime(),
			end:     s.EndsAt.AsTime(),
			matches: func(ls model.LabelSet) bool { return string(ls["source"]) == source },
		})
	}
	// The most recent drill explains an alert best.
	slices.SortFunc(out, func(a, b drillSilence) int { return b.start.Compare(a.start) })
	return out
}
