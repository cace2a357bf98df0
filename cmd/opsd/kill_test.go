package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestKill9KeepsAcknowledgedAuditEntries drives a real opsd with 64
// concurrent writers (admin reloads, each audited as accepted + succeeded),
// kills it with SIGKILL mid-stream, restarts it and checks that every
// request the daemon acknowledged has both entries in the log, and that the
// log verifies offline.
func TestKill9KeepsAcknowledgedAuditEntries(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: skipping the kill -9 test")
	}
	dir := t.TempDir()
	cfgPath := writeConfig(t, dir, "", "  rate_limit: {per_second: 100000, burst: 100000}\n")
	d := startDaemon(t, cfgPath, true)

	var (
		mu    sync.Mutex
		acked []string
		wg    sync.WaitGroup
	)
	stop := make(chan struct{})
	client := &http.Client{Timeout: 5 * time.Second}
	for w := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				id := fmt.Sprintf("w%02d-%06d", w, i)
				req, _ := http.NewRequest("POST", "http://"+d.addr+"/api/v1/reload", nil)
				req.Header.Set("Authorization", "Bearer "+testToken)
				req.Header.Set("X-Request-Id", id)
				resp, err := client.Do(req)
				if err != nil {
					return // the daemon is gone
				}
				resp.Body.Close()
				if resp.StatusCode == 200 {
					mu.Lock()
					acked = append(acked, id)
					mu.Unlock()
				}
			}
		}()
	}
	// Kill once the load is on (at least 1.5 s and 100 acknowledged
	// requests; a loaded CI machine may need longer for the second).
	time.Sleep(1500 * time.Millisecond)
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		mu.Lock()
		n := len(acked)
		mu.Unlock()
		if n >= 100 {
			break
		}
	}
	if err := d.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	d.wait(t)
	close(stop)
	wg.Wait()
	if len(acked) < 100 {
		t.Fatalf("only %d requests acknowledged before the kill; the test needs load", len(acked))
	}

	d2 := startDaemon(t, cfgPath, true)
	outcomes := map[string][]string{}
	next := 0
	for {
		var page struct {
			Items []struct {
				Entry struct {
					RequestID string `json:"request_id"`
					Outcome   string `json:"outcome"`
				} `json:"entry"`
			} `json:"items"`
			NextCursor string `json:"next_cursor"`
		}
		if code := d2.api(t, "GET", fmt.Sprintf("/api/v1/audit/entries?from=%d&limit=1000", next), testToken, &page); code != 200 {
			t.Fatalf("entries = %d", code)
		}
		for _, it := range page.Items {
			if it.Entry.RequestID != "" {
				outcomes[it.Entry.RequestID] = append(outcomes[it.Entry.RequestID], it.Entry.Outcome)
			}
		}
		next += len(page.Items)
		if page.NextCursor == "" {
			break
		}
	}
	lost := 0
	for _, id := range acked {
		got, _ := json.Marshal(outcomes[id])
		if string(got) != `["accepted","succeeded"]` {
			if lost < 5 {
				t.Errorf("acknowledged request %s has entries %s, want accepted and succeeded", id, got)
			}
			lost++
		}
	}
	t.Logf("%d requests acknowledged before kill -9, %d entries after restart, %d lost", len(acked), next, lost)
	if err := d2.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := d2.wait(t); code != 0 {
		t.Errorf("exit = %d", code)
	}
	code, out, stderr := cli(t, nil, "audit", "verify", "--config", cfgPath)
	if code != 0 {
		t.Errorf("audit verify after kill -9 = %d\n%s%s", code, out, stderr)
	}
}
