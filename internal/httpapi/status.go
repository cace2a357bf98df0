package httpapi

import (
	"errors"
	"net/http"
)

func (s *Server) handleStatus(w http.ResponseWriter, r *http.Request) {
	if s.deps.Status == nil {
		writeProblem(w, r, probUnavailable.with("status not available yet"))
		return
	}
	st, err := s.deps.Status(r.Context())
	if err != nil {
		s.log.Error("build status", "err", err, "request_id", requestIDFrom(r.Context()))
		writeProblem(w, r, probInternal.with("could not build status; see the daemon log for request "+requestIDFrom(r.Context())))
		return
	}
	writeJSON(w, http.StatusOK, st)
}

// reloadResponse is the body of a successful POST /api/v1/reload.
type reloadResponse struct {
	State string `json:"state"`
}

func (s *Server) handleReload(w http.ResponseWriter, r *http.Request) {
	var body struct{}
	if !decodeJSON(w, r, &body) {
		return
	}
	if s.deps.Reload == nil {
		writeProblem(w, r, probUnavailable.with("reload not available"))
		return
	}
	err := s.deps.Reload(r.Context())
	var cerr *ConfigError
	switch {
	case errors.As(err, &cerr):
		p := probInvalidConfig.with("the new configuration has " + itoa(int64(len(cerr.Problems))) + " problem(s)")
		p.Errors = cerr.Problems
		writeProblem(w, r, p)
	case err != nil:
		s.log.Error("reload", "err", err)
		writeProblem(w, r, probReloadRefused.with(err.Error()))
	default:
		writeJSON(w, http.StatusOK, reloadResponse{State: "reloaded"})
	}
}
