// Command webhook is the webhook receiver of the routing benchmark
// (internal/alerts/route, BenchmarkRouting10k): a separate process, so that
// neither opsd's Router nor Alertmanager shares a runtime with it. It
// listens on loopback, prints its URL on stdout, decodes Alertmanager's
// webhook payload (version 4), and serves its counts as JSON on GET /stats:
// payloads, alerts in them, distinct firing alerts (by alertname, source
// and instance) and the wall-clock times of the first payload and of the
// payload that completed -expect distinct alerts. It exits when its stdin
// is closed.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"sync"
	"time"
)

type payload struct {
	Alerts []struct {
		Status string            `json:"status"`
		Labels map[string]string `json:"labels"`
	} `json:"alerts"`
}

// Stats is the body of GET /stats.
type Stats struct {
	Payloads  int   `json:"payloads"`
	Alerts    int   `json:"alerts"`
	Notified  int   `json:"notified"`
	FirstNano int64 `json:"first_unix_nano"`
	DoneNano  int64 `json:"done_unix_nano"` // 0 until -expect distinct alerts were notified
	Errors    int   `json:"errors"`
}

type receiver struct {
	expect int
	mu     sync.Mutex
	seen   map[string]struct{}
	stats  Stats
}

func (rc *receiver) hook(w http.ResponseWriter, r *http.Request) {
	var p payload
	err := json.NewDecoder(r.Body).Decode(&p)
	now := time.Now().UnixNano()
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if err != nil {
		rc.stats.Errors++
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if rc.stats.Payloads == 0 {
		rc.stats.FirstNano = now
	}
	rc.stats.Payloads++
	rc.stats.Alerts += len(p.Alerts)
	for _, a := range p.Alerts {
		if a.Status != "firing" {
			continue
		}
		k := a.Labels["alertname"] + "/" + a.Labels["source"] + "/" + a.Labels["instance"]
		if _, ok := rc.seen[k]; ok {
			continue
		}
		rc.seen[k] = struct{}{}
		if len(rc.seen) == rc.expect {
			rc.stats.DoneNano = now
		}
	}
	rc.stats.Notified = len(rc.seen)
}

func (rc *receiver) serveStats(w http.ResponseWriter, _ *http.Request) {
	rc.mu.Lock()
	s := rc.stats
	rc.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(s)
}

func main() {
	expect := flag.Int("expect", 10_000, "distinct firing alerts that complete the run")
	flag.Parse()
	rc := &receiver{expect: *expect, seen: make(map[string]struct{}, *expect)}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /hook", rc.hook)
	mux.HandleFunc("GET /stats", rc.serveStats)
	// The benchmark holds our stdin open; when it ends, however it ends,
	// so do we.
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}()
	fmt.Fprintf(os.Stdout, "http://%s\n", ln.Addr())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	log.Fatal(srv.Serve(ln))
}
