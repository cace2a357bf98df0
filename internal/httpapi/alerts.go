package httpapi

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	alertroute "github.com/opsd-dev/opsd/internal/alerts/route"
	"github.com/opsd-dev/opsd/internal/alerts/rules"
)

// Alerts is what the alert, rule and silence routes need: the rules
// engine and the router (docs/ROUTING.md). Errors wrap alertroute.ErrInvalid
// (400) or alertroute.ErrNotFound (404).
type Alerts interface {
	// Alerts returns routing's alerts (active or suppressed) and the
	// rules' pending ones.
	Alerts(ctx context.Context) ([]alertroute.AlertStatus, error)
	Rules(ctx context.Context) ([]rules.GroupStatus, error)
	AddSilence(ctx context.Context, matchers []string, startsAt, endsAt time.Time, createdBy, comment string) (string, error)
	ExpireSilence(ctx context.Context, id string) error
	GetSilence(ctx context.Context, id string) (alertroute.Silence, error)
	ListSilences(ctx context.Context, f alertroute.SilenceFilter) ([]alertroute.Silence, error)
}

type alertList struct {
	Items      []alertroute.AlertStatus `json:"items"`
	NextCursor string                   `json:"next_cursor"`
}

type ruleList struct {
	Groups []rules.GroupStatus `json:"groups"`
}

type silenceList struct {
	Items      []alertroute.Silence `json:"items"`
	NextCursor string               `json:"next_cursor"`
}

// SilenceRequest is the body of POST /api/v1/silences.
type SilenceRequest struct {
	Matchers  []string   `json:"matchers"`
	StartsAt  *time.Time `json:"startsAt,omitempty"`
	EndsAt    time.Time  `json:"endsAt"`
	CreatedBy string     `json:"createdBy"`
	Comment   string     `json:"comment"`
}

func (s *Server) alertsOr(w http.ResponseWriter, r *http.Request) (Alerts, bool) {
	if s.deps.Alerts == nil {
		writeProblem(w, r, probUnavailable.with("alerting not available"))
		return nil, false
	}
	return s.deps.Alerts, true
}

func (s *Server) alertError(w http.ResponseWriter, r *http.Request, what string, err error) {
	switch {
	case errors.Is(err, alertroute.ErrNotFound):
		writeProblem(w, r, probNotFound.with(err.Error()))
	case errors.Is(err, alertroute.ErrInvalid):
		writeProblem(w, r, probBadRequest.with(err.Error()))
	default:
		s.log.Error(what, "err", err, "request_id", requestIDFrom(r.Context()))
		writeProblem(w, r, probInternal.with(what+" failed; see the daemon log for request "+requestIDFrom(r.Context())))
	}
}

// handleListAlerts: GET /api/v1/alerts[?state=active|suppressed|pending][&filter=MATCHER...]
// The filter takes label=value pairs; every one must match.
func (s *Server) handleListAlerts(w http.ResponseWriter, r *http.Request) {
	al, ok := s.alertsOr(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	states := map[string]bool{}
	for _, st := range splitList(q["state"]) {
		switch st {
		case alertroute.StateActive, alertroute.StateSuppressed, "pending":
			states[st] = true
		default:
			writeProblem(w, r, probBadRequest.with("unknown alert state "+strconv.Quote(st)+" (want active, suppressed or pending)"))
			return
		}
	}
	want := map[string]string{}
	for _, f := range splitList(q["label"]) {
		k, v, ok := strings.Cut(f, "=")
		if !ok || k == "" {
			writeProblem(w, r, probBadRequest.with("label filter "+strconv.Quote(f)+": want name=value"))
			return
		}
		want[k] = v
	}
	items, err := al.Alerts(r.Context())
	if err != nil {
		s.alertError(w, r, "list alerts", err)
		return
	}
	out := []alertroute.AlertStatus{}
	for _, a := range items {
		if len(states) > 0 && !states[a.State] {
			continue
		}
		if !labelsMatch(a.Labels, want) {
			continue
		}
		out = append(out, a)
	}
	writeJSON(w, http.StatusOK, alertList{Items: out})
}

func labelsMatch(have, want map[string]string) bool {
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}

// splitList flattens repeated and comma-separated query values.
func splitList(vs []string) []string {
	var out []string
	for _, v := range vs {
		for _, one := range strings.Split(v, ",") {
			if one = strings.TrimSpace(one); one != "" {
				out = append(out, one)
			}
		}
	}
	return out
}

// handleListRules: GET /api/v1/rules, in the shape of Prometheus's.
func (s *Server) handleListRules(w http.ResponseWriter, r *http.Request) {
	al, ok := s.alertsOr(w, r)
	if !ok {
		return
	}
	groups, err := al.Rules(r.Context())
	if err != nil {
		s.alertError(w, r, "list rules", err)
		return
	}
	if groups == nil {
		groups = []rules.GroupStatus{}
	}
	writeJSON(w, http.StatusOK, ruleList{Groups: groups})
}

func (s *Server) handleListSilences(w http.ResponseWriter, r *http.Request) {
	al, ok := s.alertsOr(w, r)
	if !ok {
		return
	}
	f := alertroute.SilenceFilter{States: splitList(r.URL.Query()["state"])}
	items, err := al.ListSilences(r.Context(), f)
	if err != nil {
		s.alertError(w, r, "list silences", err)
		return
	}
	if items == nil {
		items = []alertroute.Silence{}
	}
	writeJSON(w, http.StatusOK, silenceList{Items: items})
}

func (s *Server) handleGetSilence(w http.ResponseWriter, r *http.Request) {
	al, ok := s.alertsOr(w, r)
	if !ok {
		return
	}
	sil, err := al.GetSilence(r.Context(), r.PathValue("id"))
	if err != nil {
		s.alertError(w, r, "get silence", err)
		return
	}
	writeJSON(w, http.StatusOK, sil)
}

// handleAddSilence: POST /api/v1/silences. createdBy defaults to the
// token's name; the audit log records the token whatever the body says.
func (s *Server) handleAddSilence(w http.ResponseWriter, r *http.Request) {
	al, ok := s.alertsOr(w, r)
	if !ok {
		return
	}
	var body SilenceRequest
	if !decodeJSON(w, r, &body) {
		return
	}
	if len(body.Matchers) == 0 {
		writeProblem(w, r, probBadRequest.with("matchers: at least one is required"))
		return
	}
	if body.EndsAt.IsZero() {
		writeProblem(w, r, probBadRequest.with("endsAt is required"))
		return
	}
	if body.CreatedBy == "" {
		body.CreatedBy = reqInfoFrom(r.Context()).token
	}
	var start time.Time
	if body.StartsAt != nil {
		start = *body.StartsAt
	}
	id, err := al.AddSilence(r.Context(), body.Matchers, start, body.EndsAt, body.CreatedBy, body.Comment)
	if err != nil {
		s.alertError(w, r, "add silence", err)
		return
	}
	sil, err := al.GetSilence(r.Context(), id)
	if err != nil {
		s.alertError(w, r, "get silence", err)
		return
	}
	w.Header().Set("Location", "/api/v1/silences/"+id)
	writeJSON(w, http.StatusCreated, sil)
}

func (s *Server) handleExpireSilence(w http.ResponseWriter, r *http.Request) {
	al, ok := s.alertsOr(w, r)
	if !ok {
		return
	}
	if err := al.ExpireSilence(r.Context(), r.PathValue("id")); err != nil {
		s.alertError(w, r, "expire silence", err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
