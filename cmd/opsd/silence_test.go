package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// fakeSilenceAPI mimics /api/v1/silences as docs/ROUTING.md documents it.
type fakeSilenceAPI struct {
	mu       sync.Mutex
	silences []silenceView
	requests []string
}

func (f *fakeSilenceAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.requests = append(f.requests, r.Method+" "+r.URL.RequestURI()+" "+r.Header.Get("Authorization"))
	problem := func(status int, detail string) {
		w.Header().Set("Content-Type", "application/problem+json")
		w.WriteHeader(status)
		json.NewEncoder(w).Encode(map[string]any{"type": "about:blank", "title": http.StatusText(status), "detail": detail})
	}
	switch {
	case r.Method == "POST" && r.URL.Path == "/api/v1/silences":
		var req silenceRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			problem(http.StatusBadRequest, err.Error())
			return
		}
		if strings.Contains(strings.Join(req.Matchers, ""), "bad") {
			problem(http.StatusBadRequest, `invalid input: invalid matcher "bad"`)
			return
		}
		s := silenceView{ID: "s1", Matchers: req.Matchers, StartsAt: time.Now().UTC(), EndsAt: req.EndsAt,
			CreatedBy: req.CreatedBy, Comment: req.Comment, State: "active"}
		if req.StartsAt != nil {
			s.StartsAt = *req.StartsAt
		}
		f.silences = append(f.silences, s)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Location", "/api/v1/silences/s1")
		w.WriteHeader(http.StatusCreated)
		json.NewEncoder(w).Encode(s)
	case r.Method == "GET" && r.URL.Path == "/api/v1/silences":
		items := []silenceView{}
		for _, s := range f.silences {
			if st := r.URL.Query().Get("state"); st == "" || st == s.State {
				items = append(items, s)
			}
		}
		json.NewEncoder(w).Encode(map[string]any{"items": items, "next_cursor": ""})
	case r.Method == "DELETE" && strings.HasPrefix(r.URL.Path, "/api/v1/silences/"):
		id := strings.TrimPrefix(r.URL.Path, "/api/v1/silences/")
		for i := range f.silences {
			if f.silences[i].ID == id {
				f.silences[i].State = "expired"
				w.WriteHeader(http.StatusNoContent)
				return
			}
		}
		problem(http.StatusNotFound, "silence "+id+" not found")
	default:
		problem(http.StatusNotFound, "no route")
	}
}

func TestSilenceCommands(t *testing.T) {
	api := &fakeSilenceAPI{}
	srv := httptest.NewServer(api)
	defer srv.Close()
	vars := map[string]string{"OPSD_ADDR": srv.URL, "OPSD_TOKEN": "tok", "USER": "alice"}
	run := func(f func(context.Context, *env, []string) error, args ...string) (string, error) {
		var out, errb bytes.Buffer
		e := &env{getenv: func(k string) string { return vars[k] }, stdin: strings.NewReader(""), stdout: &out, stderr: &errb}
		err := f(context.Background(), e, args)
		return out.String(), err
	}

	out, err := run(runSilenceAdd, `alertname="BackupStale"`, `source=~"orders-.*"`, "--end", "2099-01-02T03:04:05Z", "--comment", "migration")
	if err != nil {
		t.Fatalf("silence add: %v", err)
	}
	if want := "silence s1 active until 2099-01-02T03:04:05Z: alertname=\"BackupStale\" source=~\"orders-.*\"\n"; out != want {
		t.Errorf("silence add printed %q, want %q", out, want)
	}
	want := silenceView{ID: "s1", Matchers: []string{`alertname="BackupStale"`, `source=~"orders-.*"`},
		EndsAt: time.Date(2099, 1, 2, 3, 4, 5, 0, time.UTC), CreatedBy: "alice", Comment: "migration", State: "active"}
	if diff := cmp.Diff(want, api.silences[0], cmp.FilterPath(func(p cmp.Path) bool { return p.String() == "StartsAt" }, cmp.Ignore())); diff != "" {
		t.Errorf("created silence (-want +got):\n%s", diff)
	}

	out, err = run(runSilenceList, "--state", "active")
	if err != nil {
		t.Fatalf("silence list: %v", err)
	}
	if !strings.Contains(out, "ID") || !strings.Contains(out, "s1") || !strings.Contains(out, "migration") {
		t.Errorf("silence list printed:\n%s", out)
	}
	out, err = run(runSilenceList, "--json")
	if err != nil {
		t.Fatalf("silence list --json: %v", err)
	}
	var doc struct{ Items []silenceView }
	if err := json.Unmarshal([]byte(out), &doc); err != nil || len(doc.Items) != 1 || doc.Items[0].ID != "s1" {
		t.Errorf("silence list --json = %s (%v)", out, err)
	}

	if out, err = run(runSilenceExpire, "s1"); err != nil || out != "silence s1 expired\n" {
		t.Errorf("silence expire = %q, %v", out, err)
	}
	if api.silences[0].State != "expired" {
		t.Errorf("silence state after expire = %s", api.silences[0].State)
	}

	// Errors.
	_, err = run(runSilenceExpire, "nope")
	var ae *apiError
	if !errors.As(err, &ae) || ae.Status != http.StatusNotFound {
		t.Errorf("silence expire nope = %v, want a 404 apiError", err)
	}
	if _, err = run(runSilenceAdd, "bad"); !errors.As(err, &ae) || ae.Status != http.StatusBadRequest || !strings.Contains(err.Error(), "invalid matcher") {
		t.Errorf("silence add bad = %v, want a 400 naming the matcher", err)
	}
	for _, tc := range []struct {
		f    func(context.Context, *env, []string) error
		args []string
	}{
		{runSilenceAdd, nil},
		{runSilenceAdd, []string{`a="b"`, "--duration", "-1h"}},
		{runSilenceAdd, []string{`a="b"`, "--end", "tomorrow"}},
		{runSilenceList, []string{"--state", "firing"}},
		{runSilenceExpire, nil},
	} {
		if _, err := run(tc.f, tc.args...); !errors.As(err, new(usageError)) {
			t.Errorf("%q: err = %v, want a usage error", tc.args, err)
		}
	}
	for _, r := range api.requests {
		if !strings.HasSuffix(r, "Bearer tok") {
			t.Errorf("request without token: %s", r)
		}
	}
}
