package rules

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql"
	promrules "github.com/prometheus/prometheus/rules"
)

// Remote describes a Prometheus-compatible query API (Prometheus, Thanos
// Query, Mimir, VictoriaMetrics) that rule files are evaluated against, as
// Thanos Ruler does.
type Remote struct {
	// URL is the API root, e.g. http://127.0.0.1:9090 (…/api/v1/query is
	// appended). Credentials in the URL are sent as basic auth and never
	// appear in errors.
	URL string
	// BearerToken, if set, is sent as "Authorization: Bearer …".
	BearerToken string
	// BasicAuthUser and BasicAuthPassword, if set, are sent as basic auth.
	BasicAuthUser, BasicAuthPassword string
	// Headers are added to every request.
	Headers map[string]string
	// TLS configures HTTPS (CA, client certificate); nil uses the defaults.
	TLS *tls.Config
	// Timeout bounds one query; 0 means 2m, Prometheus's query timeout.
	Timeout time.Duration
}

// NewRemoteQueryFunc returns a rules.QueryFunc that runs instant queries
// against r's /api/v1/query. (client_golang's api/prometheus/v1 would do,
// but its json-iterator dependency is not in go.mod; the API is small.)
// An error from the API (bad_data, timeout, execution, an HTTP failure or
// an answer that is not the API's) is returned with r's credentials
// redacted and otherwise as is, so the rules manager
// records it as the rule's health "err" and LastError(), keeps the alert's
// state unchanged for the round and tries again next round — what
// Prometheus does when its own query fails.
func NewRemoteQueryFunc(r Remote) (promrules.QueryFunc, error) {
	base, err := url.Parse(r.URL)
	if err != nil || (base.Scheme != "http" && base.Scheme != "https") || base.Host == "" {
		return nil, fmt.Errorf("datasource URL %s: want http(s)://host[:port][/prefix]", redactURL(r.URL))
	}
	endpoint := base.JoinPath("api", "v1", "query")
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if r.TLS != nil {
		tr.TLSClientConfig = r.TLS
	}
	client := &http.Client{Transport: authRoundTripper{next: tr, r: r}}
	timeout := r.Timeout
	if timeout <= 0 {
		timeout = 2 * time.Minute
	}
	secrets := r.secrets(base)
	return func(ctx context.Context, qs string, t time.Time) (promql.Vector, error) {
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		val, err := instantQuery(ctx, client, endpoint.String(), qs, t, timeout)
		if err != nil {
			return nil, redactSecrets(err, secrets)
		}
		return toVector(val)
	}, nil
}

// secrets are the credentials that must not show in an error, also as
// the base64 of a basic-auth header a gateway's error page may echo.
func (r Remote) secrets(base *url.URL) []string {
	var out []string
	add := func(user, pw string) {
		if pw != "" {
			out = append(out, pw, base64.StdEncoding.EncodeToString([]byte(user+":"+pw)))
		}
	}
	add(r.BasicAuthUser, r.BasicAuthPassword)
	if pw, ok := base.User.Password(); ok {
		add(base.User.Username(), pw)
	}
	if r.BearerToken != "" {
		out = append(out, r.BearerToken)
	}
	return out
}

// redactSecrets replaces the secrets in err's text. net/http already
// redacts the URL's password; an answer's body (bad_response, or the
// API's own error text) is the server's and may quote what it was sent.
func redactSecrets(err error, secrets []string) error {
	msg := err.Error()
	redacted := msg
	for _, s := range secrets {
		redacted = strings.ReplaceAll(redacted, s, "xxxxx")
	}
	if redacted == msg {
		return err
	}
	var ae *apiError
	if errors.As(err, &ae) {
		return &apiError{Type: ae.Type, Msg: strings.TrimPrefix(redacted, ae.Type+": ")}
	}
	return errors.New(redacted) // not wrapped: the original still holds the secret
}

// apiError is an error answer of the Prometheus HTTP API; it prints as
// client_golang's v1.Error does ("bad_data: parse error …").
type apiError struct {
	Type string
	Msg  string
}

func (e *apiError) Error() string { return e.Type + ": " + e.Msg }

// instantQuery POSTs to /api/v1/query as promtool and Grafana do (long
// expressions do not fit a URL) and decodes the answer.
func instantQuery(ctx context.Context, c *http.Client, endpoint, qs string, t time.Time, timeout time.Duration) (model.Value, error) {
	// The timeout goes in seconds, which every Prometheus-compatible API
	// parses; a Go duration such as "1.5s" is refused (bad_data) by
	// Prometheus 2.x, failing every query.
	form := url.Values{
		"query":   {qs},
		"time":    {strconv.FormatFloat(float64(t.UnixMilli())/1000, 'f', -1, 64)},
		"timeout": {strconv.FormatFloat(timeout.Seconds(), 'f', -1, 64)},
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, strings.NewReader(form.Encode()))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := c.Do(req)
	if err != nil {
		return nil, err // *url.Error, password already redacted
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
	if err != nil {
		return nil, fmt.Errorf("read query response: %w", err)
	}
	var out struct {
		Status    string          `json:"status"`
		Data      json.RawMessage `json:"data"`
		ErrorType string          `json:"errorType"`
		Error     string          `json:"error"`
	}
	if err := json.Unmarshal(body, &out); err != nil {
		// Not the API's JSON: a proxy's error page, a 404 from a wrong URL.
		return nil, &apiError{Type: "bad_response", Msg: fmt.Sprintf("%s: %s", resp.Status, snippet(body))}
	}
	if out.Status != "success" {
		if out.Status != "error" || out.Error == "" {
			// JSON, but not the API's: a gateway's {"message": …}.
			return nil, &apiError{Type: "bad_response", Msg: fmt.Sprintf("%s: %s", resp.Status, snippet(body))}
		}
		if out.ErrorType == "" {
			out.ErrorType = "server_error"
		}
		return nil, &apiError{Type: out.ErrorType, Msg: out.Error}
	}
	var data struct {
		Type   model.ValueType `json:"resultType"`
		Result json.RawMessage `json:"result"`
	}
	if err := json.Unmarshal(out.Data, &data); err != nil {
		return nil, &apiError{Type: "bad_response", Msg: err.Error()}
	}
	var v model.Value
	switch data.Type {
	case model.ValVector:
		var vec model.Vector
		err = json.Unmarshal(data.Result, &vec)
		v = vec
	case model.ValScalar:
		var sc model.Scalar
		err = json.Unmarshal(data.Result, &sc)
		v = &sc
	default:
		return nil, errors.New("rule result is not a vector or scalar")
	}
	if err != nil {
		return nil, &apiError{Type: "bad_response", Msg: err.Error()}
	}
	return v, nil
}

func snippet(b []byte) string {
	const maxLen = 200
	s := strings.TrimSpace(string(b))
	if len(s) > maxLen {
		s = s[:maxLen] + "…"
	}
	return s
}

func toVector(val model.Value) (promql.Vector, error) {
	switch v := val.(type) {
	case model.Vector:
		out := make(promql.Vector, 0, len(v))
		for _, s := range v {
			if s.Histogram != nil {
				return nil, errors.New("remote query returned a native histogram sample, which alerting rules cannot compare")
			}
			b := labels.NewScratchBuilder(len(s.Metric))
			for n, lv := range s.Metric {
				b.Add(string(n), string(lv))
			}
			b.Sort()
			out = append(out, promql.Sample{Metric: b.Labels(), T: int64(s.Timestamp), F: float64(s.Value)})
		}
		return out, nil
	case *model.Scalar:
		return promql.Vector{promql.Sample{Metric: labels.EmptyLabels(), T: int64(v.Timestamp), F: float64(v.Value)}}, nil
	default:
		return nil, errors.New("rule result is not a vector or scalar")
	}
}

type authRoundTripper struct {
	next http.RoundTripper
	r    Remote
}

func (a authRoundTripper) RoundTrip(req *http.Request) (*http.Response, error) {
	if a.r.BearerToken == "" && a.r.BasicAuthUser == "" && len(a.r.Headers) == 0 {
		return a.next.RoundTrip(req)
	}
	req = req.Clone(req.Context())
	for k, v := range a.r.Headers {
		req.Header.Set(k, v)
	}
	switch {
	case a.r.BearerToken != "":
		req.Header.Set("Authorization", "Bearer "+a.r.BearerToken)
	case a.r.BasicAuthUser != "":
		req.SetBasicAuth(a.r.BasicAuthUser, a.r.BasicAuthPassword)
	}
	return a.next.RoundTrip(req)
}
