package httpapi

import (
	"context"
	"errors"
	"net/http"
)

func (s *Server) handleStatus(w http.ResponseWriter, r *http.Request) {
	s.serveDocument(w, r, "status", s.deps.Status)
}

func (s *Server) handleCluster(w http.ResponseWriter, r *http.Request) {
	s.serveDocument(w, r, "cluster view", s.deps.Cluster)
}

// serveDocument answers with the JSON document build makes.
func (s *Server) serveDocument(w http.ResponseWriter, r *http.Request, what string, build func(context.Context) (any, error)) {
	if build == nil {
		writeProblem(w, r, probUnavailable.with(what+" not available"))
		return
	}
	st, err := build(r.Context())
	if err != nil {
		s.log.Error("build "+what, "err", err, "request_id", requestIDFrom(r.Context()))
		writeProblem(w, r, probInternal.with("could not build the "+what+"; see the daemon log for request "+requestIDFrom(r.Context())))
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
