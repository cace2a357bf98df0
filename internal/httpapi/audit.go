package httpapi

import (
	"encoding/json"
	"net/http"
	"strconv"

	"golang.org/x/mod/sumdb/tlog"
)

// AuditLog is what the audit routes read (SPEC §10).
type AuditLog interface {
	// Checkpoint returns the latest signed checkpoint note.
	Checkpoint() ([]byte, error)
	// Size is the number of entries in the log.
	Size() int64
	// Entries returns up to limit entries starting at index from.
	Entries(from int64, limit int) ([]AuditEntry, error)
	// ProveRecord proves entry i is in the tree of the given size.
	ProveRecord(i, size int64) (tlog.RecordProof, error)
	// ProveTree proves the tree of size from is a prefix of the one of size to.
	ProveTree(from, to int64) (tlog.TreeProof, error)
}

// AuditEntry is one stored leaf: its exact bytes and their decoding.
type AuditEntry struct {
	Index int64           `json:"index"`
	Raw   []byte          `json:"raw"` // base64 in JSON, as SPEC §10 says
	Entry json.RawMessage `json:"entry"`
}

type auditEntriesResponse struct {
	Items      []AuditEntry `json:"items"`
	NextCursor string       `json:"next_cursor,omitempty"`
}

type auditProofResponse struct {
	Index    int64       `json:"index"`
	TreeSize int64       `json:"tree_size"`
	Hashes   []tlog.Hash `json:"hashes"`
}

type auditConsistencyResponse struct {
	From   int64       `json:"from"`
	To     int64       `json:"to"`
	Hashes []tlog.Hash `json:"hashes"`
}

const (
	defaultPageSize = 100
	maxPageSize     = 1000
)

func (s *Server) auditLog(w http.ResponseWriter, r *http.Request) (AuditLog, bool) {
	if s.deps.Audit == nil {
		writeProblem(w, r, probUnavailable.with("audit log not open"))
		return nil, false
	}
	return s.deps.Audit, true
}

func (s *Server) handleAuditCheckpoint(w http.ResponseWriter, r *http.Request) {
	log, ok := s.auditLog(w, r)
	if !ok {
		return
	}
	note, err := log.Checkpoint()
	if err != nil {
		writeProblem(w, r, probUnavailable.with("no checkpoint yet: "+err.Error()))
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = w.Write(note)
}

func (s *Server) handleAuditEntries(w http.ResponseWriter, r *http.Request) {
	log, ok := s.auditLog(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	from, err := intParam(q.Get("from"), 0)
	if err == nil && q.Get("cursor") != "" {
		from, err = intParam(q.Get("cursor"), 0)
	}
	if err != nil || from < 0 {
		writeProblem(w, r, probBadRequest.with("from/cursor must be a non-negative integer"))
		return
	}
	limit, err := intParam(q.Get("limit"), defaultPageSize)
	if err != nil || limit < 1 || limit > maxPageSize {
		writeProblem(w, r, probBadRequest.with("limit must be between 1 and "+itoa(maxPageSize)))
		return
	}
	items, err := log.Entries(from, int(limit))
	if err != nil {
		writeProblem(w, r, probBadRequest.with(err.Error()))
		return
	}
	resp := auditEntriesResponse{Items: items}
	if resp.Items == nil {
		resp.Items = []AuditEntry{}
	}
	if next := from + int64(len(items)); len(items) == int(limit) && next < log.Size() {
		resp.NextCursor = itoa(next)
	}
	writeJSON(w, http.StatusOK, resp)
}

func (s *Server) handleAuditProof(w http.ResponseWriter, r *http.Request) {
	log, ok := s.auditLog(w, r)
	if !ok {
		return
	}
	idx, err := intParam(r.PathValue("index"), -1)
	if err != nil || idx < 0 {
		writeProblem(w, r, probBadRequest.with("index must be a non-negative integer"))
		return
	}
	size, err := intParam(r.URL.Query().Get("size"), log.Size())
	if err != nil || size <= idx || size > log.Size() {
		writeProblem(w, r, probBadRequest.with("size must be greater than index and at most the tree size "+itoa(log.Size())))
		return
	}
	proof, err := log.ProveRecord(idx, size)
	if err != nil {
		writeProblem(w, r, probBadRequest.with(err.Error()))
		return
	}
	writeJSON(w, http.StatusOK, auditProofResponse{Index: idx, TreeSize: size, Hashes: nonNil(proof)})
}

func (s *Server) handleAuditConsistency(w http.ResponseWriter, r *http.Request) {
	log, ok := s.auditLog(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	from, err1 := intParam(q.Get("from"), -1)
	to, err2 := intParam(q.Get("to"), log.Size())
	if err1 != nil || err2 != nil || from < 1 || to < from || to > log.Size() {
		writeProblem(w, r, probBadRequest.with("want 1 <= from <= to <= tree size "+itoa(log.Size())))
		return
	}
	proof, err := log.ProveTree(from, to)
	if err != nil {
		writeProblem(w, r, probBadRequest.with(err.Error()))
		return
	}
	writeJSON(w, http.StatusOK, auditConsistencyResponse{From: from, To: to, Hashes: nonNil(proof)})
}

func nonNil(h []tlog.Hash) []tlog.Hash {
	if h == nil {
		return []tlog.Hash{}
	}
	return h
}

func intParam(s string, def int64) (int64, error) {
	if s == "" {
		return def, nil
	}
	return strconv.ParseInt(s, 10, 64)
}
