package notify

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opsd-dev/opsd/internal/config"
	"github.com/opsd-dev/opsd/internal/testenv"
)

// TestDocsShellVerification runs the signature check of
// docs/NOTIFICATIONS.md against a request the webhook sender signed.
func TestDocsShellVerification(t *testing.T) {
	testenv.Commands(t, "sh", "openssl")
	doc, err := os.ReadFile(filepath.Join("..", "..", "..", "docs", "NOTIFICATIONS.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(doc), "<!-- verify-sh -->\n```sh\n")
	script, _, ok2 := strings.Cut(rest, "```")
	if !ok || !ok2 {
		t.Fatal("docs/NOTIFICATIONS.md has no <!-- verify-sh --> sh block")
	}

	srv, reqs := newWebhookServer(t, nil)
	const secret = "docs-secret-123"
	r, err := New("chat", config.Receiver{Webhook: &config.Webhook{URL: config.Secret(srv.URL)}},
		Deps{HTTPClient: srv.Client()}, WithWebhookSecret(secret))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Notify(context.Background(), firing(2)); err != nil {
		t.Fatal(err)
	}
	req := reqs()[0]

	run := func(body []byte) (string, error) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "body.json"), body, 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("sh", "-c", script)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "OPSD_WEBHOOK_SECRET="+secret, "SIG="+req.Header.Get(SignatureHeader))
		out, err := cmd.CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	if out, err := run(req.Body); err != nil || out != "valid" {
		t.Errorf("docs snippet on the signed body = %q, %v; want valid", out, err)
	}
	tampered := []byte(strings.Replace(string(req.Body), `"firing"`, `"resolved"`, 1))
	if out, err := run(tampered); err == nil || out != "INVALID" {
		t.Errorf("docs snippet on a tampered body = %q, %v; want INVALID and a failure", out, err)
	}
}

// TestDocsGoVerification keeps the Go snippet of docs/NOTIFICATIONS.md
// identical to the verifySignature that ExampleSign runs.
func TestDocsGoVerification(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "..", "..", "docs", "NOTIFICATIONS.md"))
	if err != nil {
		t.Fatal(err)
	}
	src, err := os.ReadFile("example_test.go")
	if err != nil {
		t.Fatal(err)
	}
	_, fn, _ := strings.Cut(string(src), "func verifySignature(")
	fn, _, _ = strings.Cut(fn, "\n}\n")
	fn = "func verifySignature(" + fn + "\n}\n"
	if !strings.Contains(string(doc), fn) {
		t.Errorf("docs/NOTIFICATIONS.md does not contain example_test.go's verifySignature:\n%s", fn)
	}
}
