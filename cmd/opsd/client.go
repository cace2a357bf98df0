package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"
)

// apiClient talks to a running daemon.
type apiClient struct {
	base  string
	token string
	http  *http.Client
}

// clientFlags registers --addr on fs and returns a constructor for the
// client, reading OPSD_ADDR, OPSD_TOKEN and OPSD_TOKEN_FILE.
func clientFlags(e *env, fs *flag.FlagSet) func() (*apiClient, error) {
	def := e.getenv("OPSD_ADDR")
	if def == "" {
		def = "http://127.0.0.1:8470"
	}
	addr := fs.String("addr", def, "daemon address (OPSD_ADDR)")
	return func() (*apiClient, error) {
		tok := e.getenv("OPSD_TOKEN")
		if tok == "" {
			if f := e.getenv("OPSD_TOKEN_FILE"); f != "" {
				b, err := os.ReadFile(f)
				if err != nil {
					return nil, fmt.Errorf("read OPSD_TOKEN_FILE: %w", err)
				}
				tok = strings.TrimSpace(string(b))
			}
		}
		base := strings.TrimRight(*addr, "/")
		if !strings.Contains(base, "://") {
			base = "http://" + base
		}
		return &apiClient{base: base, token: tok, http: &http.Client{Timeout: 60 * time.Second}}, nil
	}
}

// apiError is a problem+json answer from the daemon.
type apiError struct {
	Status int
	Type   string
	Title  string
	Detail string
	Errors []string
}

func (e *apiError) Error() string {
	msg := fmt.Sprintf("%d %s", e.Status, e.Title)
	if e.Detail != "" {
		msg += ": " + e.Detail
	}
	for _, p := range e.Errors {
		msg += "\n  " + p
	}
	return msg
}

// do sends a request and decodes a JSON answer into out (when non-nil).
func (c *apiClient) do(ctx context.Context, method, path string, body io.Reader, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("reach opsd at %s: %w", c.base, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 400 {
		var p apiError
		if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/problem+json") {
			_ = json.NewDecoder(resp.Body).Decode(&p)
		}
		p.Status = resp.StatusCode
		if p.Title == "" {
			p.Title = http.StatusText(resp.StatusCode)
		}
		if resp.StatusCode == http.StatusUnauthorized && c.token == "" {
			p.Detail = "set OPSD_TOKEN"
		}
		return &p
	}
	if out == nil {
		return nil
	}
	if w, ok := out.(io.Writer); ok {
		_, err := io.Copy(w, resp.Body)
		return err
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("decode %s %s: %w", method, path, err)
	}
	return nil
}
