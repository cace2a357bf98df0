package httpapi

import (
	"context"
	"net/http"
	"time"
)

func (s *Server) handleHealthz(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

// readyResponse is the body of /readyz: each component and its state.
type readyResponse struct {
	Status     string            `json:"status"`
	Components map[string]string `json:"components"`
}

func (s *Server) handleReadyz(w http.ResponseWriter, r *http.Request) {
	resp := readyResponse{Status: "ready", Components: map[string]string{}}
	code := http.StatusOK
	if s.deps.Ready == nil {
		resp.Status, code = "not ready", http.StatusServiceUnavailable
		resp.Components["daemon"] = "starting"
	} else {
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		for _, c := range s.deps.Ready(ctx) {
			if c.Err != nil {
				resp.Components[c.Name] = c.Err.Error()
				resp.Status, code = "not ready", http.StatusServiceUnavailable
				continue
			}
			resp.Components[c.Name] = "ok"
		}
	}
	writeJSON(w, code, resp)
}
