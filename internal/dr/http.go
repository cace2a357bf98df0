package dr

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
)

// maxHTTPBody bounds the response body kept as the step's `body` output.
const maxHTTPBody = 1 << 20

// httpAction is http.request, or http.check when check is set.
type httpAction struct {
	client *http.Client
	check  bool
}

func (a *httpAction) Run(ctx context.Context, sc *StepContext) (map[string]any, error) {
	name := "http.request"
	if a.check {
		name = "http.check"
	}
	raw := sc.String("url")
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("%s: url must be an http:// or https:// URL", name)
	}
	method := strings.ToUpper(sc.String("method"))
	if method == "" {
		method = http.MethodGet
	}
	var body io.Reader
	if b := sc.String("body"); b != "" && !a.check {
		body = strings.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, raw, body)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if h, ok := sc.With["headers"].(map[string]any); ok {
		for k, v := range h {
			req.Header.Set(k, fmt.Sprint(v))
		}
	}
	resp, err := a.client.Do(req)
	if err != nil {
		// url.Error quotes the URL, which may carry a token in its query:
		// name only the host.
		return nil, fmt.Errorf("%s %s %s: %w", name, method, u.Host, unwrapURLError(err))
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxHTTPBody))
	if err != nil {
		return nil, fmt.Errorf("%s %s %s: read body: %w", name, method, u.Host, unwrapURLError(err))
	}
	out := map[string]any{"status": resp.StatusCode, "body": strings.ToValidUTF8(string(data), "\uFFFD")}
	if !a.check {
		hs := map[string]any{}
		for k := range resp.Header {
			hs[k] = resp.Header.Get(k)
		}
		out["headers"] = hs
	}
	var want []int
	if v, ok := sc.With["expect_status"].([]any); ok {
		for _, s := range v {
			if n, ok := toInt(s); ok {
				want = append(want, n)
			}
		}
	}
	switch {
	case len(want) > 0 && !slices.Contains(want, resp.StatusCode):
		return out, fmt.Errorf("%s %s %s: status %d, want one of %v", name, method, u.Host, resp.StatusCode, want)
	case len(want) == 0 && a.check && resp.StatusCode != http.StatusOK:
		return out, fmt.Errorf("%s %s %s: status %d, want 200", name, method, u.Host, resp.StatusCode)
	case len(want) == 0 && !a.check && (resp.StatusCode < 200 || resp.StatusCode > 299):
		return out, fmt.Errorf("%s %s %s: status %d, want 2xx", name, method, u.Host, resp.StatusCode)
	}
	if s := sc.String("body_contains"); a.check && s != "" && !strings.Contains(string(data), s) {
		return out, fmt.Errorf("%s %s %s: body does not contain the expected text", name, method, u.Host)
	}
	return out, nil
}

func unwrapURLError(err error) error {
	if ue, ok := err.(*url.Error); ok {
		return ue.Err
	}
	return err
}

func toInt(v any) (int, bool) {
	switch x := v.(type) {
	case int:
		return x, true
	case int64:
		return int(x), true
	case float64:
		if x == float64(int(x)) {
			return int(x), true
		}
	}
	return 0, false
}
