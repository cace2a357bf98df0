package httpapi

import (
	"encoding/json"
	"errors"
	"net/http"
)

// problemBase prefixes every problem type. Types are stable: clients may
// branch on them. docs/API.md lists them all.
const problemBase = "https://opsd.dev/problems/"

// Problem is an RFC 9457 problem details object.
type Problem struct {
	Type     string `json:"type"`
	Title    string `json:"title"`
	Status   int    `json:"status"`
	Detail   string `json:"detail,omitempty"`
	Instance string `json:"instance,omitempty"`
	// RequestID lets an operator find the request in the access log.
	RequestID string `json:"request_id,omitempty"`
	// Errors lists every problem when there are several (an invalid config).
	Errors []string `json:"errors,omitempty"`
}

// Stable problem kinds.
var (
	probBadRequest      = problemKind{"bad-request", "Bad request", http.StatusBadRequest}
	probMalformedJSON   = problemKind{"malformed-json", "Malformed JSON body", http.StatusBadRequest}
	probUnauthorized    = problemKind{"unauthorized", "Missing or invalid bearer token", http.StatusUnauthorized}
	probForbidden       = problemKind{"forbidden", "Role not allowed", http.StatusForbidden}
	probNotFound        = problemKind{"not-found", "Not found", http.StatusNotFound}
	probMethod          = problemKind{"method-not-allowed", "Method not allowed", http.StatusMethodNotAllowed}
	probTooLarge        = problemKind{"body-too-large", "Request body too large", http.StatusRequestEntityTooLarge}
	probUnsupportedType = problemKind{"unsupported-media-type", "Request body must be application/json", http.StatusUnsupportedMediaType}
	probRateLimited     = problemKind{"rate-limited", "Too many requests", http.StatusTooManyRequests}
	probInvalidConfig   = problemKind{"invalid-config", "Configuration is invalid; the running configuration is unchanged", http.StatusUnprocessableEntity}
	probAuditDown       = problemKind{"audit-unavailable", "Audit log unavailable; mutating actions are refused", http.StatusServiceUnavailable}
	probInternal        = problemKind{"internal", "Internal error", http.StatusInternalServerError}
	probNotImplemented  = problemKind{"not-implemented", "Not implemented in this version of opsd", http.StatusNotImplemented}
	probUnavailable     = problemKind{"unavailable", "Service unavailable", http.StatusServiceUnavailable}
	probReloadRefused   = problemKind{"reload-refused", "Reload refused; the running configuration is unchanged", http.StatusConflict}
	probNotVerifiable   = problemKind{"not-verifiable", "Backup has nothing to verify", http.StatusConflict}
	probRestoreBusy     = problemKind{"restore-in-progress", "A restore is already writing to this destination", http.StatusConflict}
)

type problemKind struct {
	slug   string
	title  string
	status int
}

func (k problemKind) with(detail string) Problem {
	return Problem{Type: problemBase + k.slug, Title: k.title, Status: k.status, Detail: detail}
}

// writeProblem sends p as application/problem+json.
func writeProblem(w http.ResponseWriter, r *http.Request, p Problem) {
	p.Instance = r.URL.Path
	p.RequestID = requestIDFrom(r.Context())
	w.Header().Set("Content-Type", "application/problem+json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(p.Status)
	_ = json.NewEncoder(w).Encode(p)
}

// writeJSON sends v as JSON with status code.
func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// decodeJSON decodes the request body into v strictly. It answers the
// request itself on failure and returns false.
func decodeJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	if r.ContentLength == 0 && r.Body == http.NoBody {
		return true
	}
	if ct := r.Header.Get("Content-Type"); ct != "" && !isJSON(ct) {
		writeProblem(w, r, probUnsupportedType.with("got "+ct))
		return false
	}
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			writeProblem(w, r, probTooLarge.with("limit is "+formatBytes(tooLarge.Limit)))
			return false
		}
		if errors.Is(err, errEmptyBody) || err.Error() == "EOF" {
			return true
		}
		writeProblem(w, r, probMalformedJSON.with(jsonErrorDetail(err)))
		return false
	}
	if dec.More() {
		writeProblem(w, r, probMalformedJSON.with("trailing data after the JSON value"))
		return false
	}
	return true
}

var errEmptyBody = errors.New("empty body")

// jsonErrorDetail describes a decoding error without echoing the body,
// which may hold secrets.
func jsonErrorDetail(err error) string {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return "syntax error at byte " + itoa(syn.Offset)
	case errors.As(err, &typ):
		return "field " + typ.Field + ": want " + typ.Type.String()
	default:
		msg := err.Error()
		if len(msg) > 200 {
			msg = msg[:200]
		}
		return msg
	}
}
