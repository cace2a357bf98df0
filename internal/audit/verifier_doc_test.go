package audit

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

// TestDocVerifierMatchesFile checks that docs/AUDIT.md shows exactly
// docs/audit-verifier/main.go.
func TestDocVerifierMatchesFile(t *testing.T) {
	code, err := os.ReadFile("../../docs/audit-verifier/main.go")
	if err != nil {
		t.Fatal(err)
	}
	doc, err := os.ReadFile("../../docs/AUDIT.md")
	if err != nil {
		t.Fatal(err)
	}
	start := bytes.Index(doc, []byte("```go\n// Command audit-verifier"))
	if start < 0 {
		t.Fatal("docs/AUDIT.md has no ```go block starting with the verifier")
	}
	block := doc[start+len("```go\n"):]
	end := bytes.Index(block, []byte("\n```\n"))
	if end < 0 {
		t.Fatal("unterminated code block in docs/AUDIT.md")
	}
	if got := string(block[:end+1]); got != string(code) {
		t.Errorf("the verifier in docs/AUDIT.md differs from docs/audit-verifier/main.go")
	}
}

// auditAPI is a minimal stand-in for the audit routes of internal/httpapi.
func auditAPI(l *Log, token string, tamper func(*Page)) http.Handler {
	mux := http.NewServeMux()
	auth := func(h http.HandlerFunc) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get("Authorization") != "Bearer "+token {
				http.Error(w, "unauthorized", http.StatusUnauthorized)
				return
			}
			h(w, r)
		}
	}
	mux.HandleFunc("GET /api/v1/audit/checkpoint", auth(func(w http.ResponseWriter, r *http.Request) {
		ck, err := l.Checkpoint()
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write(ck)
	}))
	mux.HandleFunc("GET /api/v1/audit/entries", auth(func(w http.ResponseWriter, r *http.Request) {
		from, _ := strconv.ParseInt(r.URL.Query().Get("from"), 10, 64)
		limit, _ := strconv.Atoi(r.URL.Query().Get("limit"))
		page, err := l.EntriesPage(from, limit)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if tamper != nil {
			tamper(&page)
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(page)
	}))
	return mux
}

func TestIndependentVerifier(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the verifier")
	}
	bin := buildTool(t, "github.com/opsd-dev/opsd/docs/audit-verifier")
	key := testKey(t, "opsd.test/api")
	l := openLog(t, t.TempDir(), key, func(o *Options) { o.SegmentSize = 64 << 10 })
	defer l.Close()
	fill(t, l, 0, 2500) // several pages and segments
	mustCheckpoint(t, l)
	fill(t, l, 2500, 10) // entries past the checkpoint are ignored

	tests := []struct {
		name    string
		tamper  func(*Page)
		token   string
		wantErr string
	}{
		{name: "intact", token: "t0k"},
		{name: "flipped byte", token: "t0k", tamper: func(p *Page) {
			for i := range p.Items {
				if p.Items[i].Index == 1234 {
					p.Items[i].Raw[10] ^= 1
				}
			}
		}, wantErr: "root of 2501 entries"},
		{name: "dropped entry", token: "t0k", tamper: func(p *Page) {
			if len(p.Items) > 1 && p.Items[0].Index == 1000 {
				p.Items = p.Items[1:]
			}
		}, wantErr: "asked for entry 1000"},
		{name: "wrong token", token: "nope", wantErr: "401"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(auditAPI(l, "t0k", tt.tamper))
			defer srv.Close()
			cmd := exec.Command(bin, "-url", srv.URL, "-token", tt.token, "-key", key.VerifierKey)
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			if tt.wantErr == "" {
				if err != nil || !strings.HasPrefix(stdout.String(), "OK: 2501 entries") {
					t.Errorf("verifier = %v, stdout %q, stderr %q", err, stdout.String(), stderr.String())
				}
				return
			}
			if err == nil || !strings.Contains(stderr.String(), tt.wantErr) {
				t.Errorf("verifier = %v, stderr %q; want failure mentioning %q", err, stderr.String(), tt.wantErr)
			}
		})
	}
}
