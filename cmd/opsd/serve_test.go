package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/opsd-dev/opsd/internal/httpapi/apitest"
	"github.com/opsd-dev/opsd/internal/state/pgtest"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// opsdBinary builds the opsd binary once per test run: the lifecycle tests
// drive a real process (signals, kill -9, sd_notify, flock).
func opsdBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "opsd-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "opsd")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

const testToken = "test-admin-token"

// testDaemonYAML is the head of every test config: data_dir, a loopback
// listener on a free port and the admin token testToken; serverExtra is more
// YAML under server:.
func testDaemonYAML(serverExtra string) string {
	sum := sha256.Sum256([]byte(testToken))
	return fmt.Sprintf(`data_dir: ./data
server:
  listen: 127.0.0.1:0
  shutdown_grace: 5s
%s  tokens:
    - {name: root, role: admin, sha256: %s}
`, serverExtra, hex.EncodeToString(sum[:]))
}

// writeConfig writes an opsd.yaml into dir and returns its path.
func writeConfig(t *testing.T, dir, extra string, serverExtra ...string) string {
	t.Helper()
	cfg := testDaemonYAML(strings.Join(serverExtra, "")) + fmt.Sprintf(`targets:
  local: {type: local, path: ./backups}
audit:
  origin: opsd.test/daemon
  checkpoint_interval: 1s
  witnesses: [local]
%s`, extra)
	path := filepath.Join(dir, "opsd.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// daemonProc is a running opsd serve.
type daemonProc struct {
	cmd     *exec.Cmd
	addr    string
	stderr  *syncBuffer
	notify  chan string
	exited  chan struct{}
	exitErr error
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startDaemon starts opsd serve with a NOTIFY_SOCKET the test reads, and
// waits until it is ready unless wantReady is false.
func startDaemon(t *testing.T, config string, wantReady bool) *daemonProc {
	t.Helper()
	return startDaemonEnv(t, config, wantReady)
}

// startDaemonEnv is startDaemon with extra environment variables
// ("NAME=value").
func startDaemonEnv(t *testing.T, config string, wantReady bool, env ...string) *daemonProc {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	d := &daemonProc{stderr: &syncBuffer{}, notify: make(chan string, 64), exited: make(chan struct{})}
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			for _, line := range strings.Split(string(buf[:n]), "\n") {
				if strings.HasPrefix(line, "MONOTONIC_USEC") || strings.HasPrefix(line, "STATUS=") {
					continue
				}
				select {
				case d.notify <- line:
				default: // like systemd, never block the daemon's notifications
				}
			}
		}
	}()
	d.cmd = exec.Command(opsdBinary(t), "serve", "--config", config)
	// WATCHDOG_USEC turns on the systemd watchdog the way systemd does.
	d.cmd.Env = append(append(os.Environ(), "NOTIFY_SOCKET="+sock, "WATCHDOG_USEC=400000"), env...)
	pr, pw := io.Pipe()
	d.cmd.Stderr = io.MultiWriter(d.stderr, pw)
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		d.exitErr = d.cmd.Wait()
		pw.Close()
		close(d.exited)
	}()
	t.Cleanup(func() {
		_ = d.cmd.Process.Kill()
		<-d.exited
		if t.Failed() {
			t.Logf("daemon log %v:\n%s", env, d.stderr.String())
		}
	})
	addrc := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			var line struct {
				Msg    string `json:"msg"`
				Listen string `json:"listen"`
			}
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "opsd ready" {
				addrc <- line.Listen
			}
		}
	}()
	if !wantReady {
		return d
	}
	select {
	case d.addr = <-addrc:
	case <-d.exited:
		t.Fatalf("daemon exited before ready: %v\n%s", d.exitErr, d.stderr.String())
	case <-time.After(60 * time.Second):
		t.Fatalf("daemon not ready after 60s:\n%s", d.stderr.String())
	}
	d.expectNotify(t, "READY=1")
	return d
}

func (d *daemonProc) expectNotify(t *testing.T, want string) {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		select {
		case got := <-d.notify:
			if got == want {
				return
			}
		case <-deadline:
			t.Fatalf("no %s from sd_notify", want)
		}
	}
}

// drainNotify drops the sd_notify messages received so far.
func (d *daemonProc) drainNotify() {
	for {
		select {
		case <-d.notify:
		default:
			return
		}
	}
}

func (d *daemonProc) wait(t *testing.T) int {
	t.Helper()
	select {
	case <-d.exited:
	case <-time.After(60 * time.Second):
		t.Fatalf("daemon did not exit")
	}
	return d.cmd.ProcessState.ExitCode()
}

// api calls the daemon, checks the answer against the OpenAPI document
// and decodes it.
func (d *daemonProc) api(t *testing.T, method, path, token string, out any) int {
	t.Helper()
	req, _ := http.NewRequest(method, "http://"+d.addr+path, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read: %v", method, path, err)
	}
	if err := openAPI(t).Check(req, resp.StatusCode, resp.Header, body); err != nil {
		t.Error(err)
	}
	if out != nil {
		if err := json.Unmarshal(body, out); err != nil {
			t.Fatalf("%s %s: decode: %v", method, path, err)
		}
	}
	return resp.StatusCode
}

var (
	validatorOnce sync.Once
	validator     *apitest.Validator
	validatorErr  error
)

func openAPI(t *testing.T) *apitest.Validator {
	t.Helper()
	validatorOnce.Do(func() { validator, validatorErr = apitest.New() })
	if validatorErr != nil {
		t.Fatal(validatorErr)
	}
	return validator
}

func (d *daemonProc) configHash(t *testing.T) string {
	t.Helper()
	var st struct {
		ConfigHash string `json:"config_hash"`
		StateStore string `json:"state_store"`
	}
	if code := d.api(t, "GET", "/api/v1/status", testToken, &st); code != 200 {
		t.Fatalf("status = %d", code)
	}
	return st.ConfigHash
}

func TestDaemonLifecycle(t *testing.T) {
	dir := t.TempDir()
	cfgPath := writeConfig(t, dir, "")
	d := startDaemon(t, cfgPath, true)

	if code := d.api(t, "GET", "/healthz", "", nil); code != 200 {
		t.Errorf("healthz = %d", code)
	}
	var ready struct {
		Status     string            `json:"status"`
		Components map[string]string `json:"components"`
	}
	if code := d.api(t, "GET", "/readyz", "", &ready); code != 200 || ready.Components["state"] != "ok" || ready.Components["audit"] != "ok" || ready.Components["jobs"] != "ok" {
		t.Errorf("readyz = %d %+v", code, ready)
	}
	if code := d.api(t, "GET", "/api/v1/status", "", nil); code != 401 {
		t.Errorf("status without token = %d, want 401", code)
	}
	env := map[string]string{"OPSD_ADDR": d.addr, "OPSD_TOKEN": testToken}
	code, out, stderr := cli(t, env, "status")
	if code != 0 || !strings.Contains(out, "state sqlite") {
		t.Errorf("opsd status = %d\n%s%s", code, out, stderr)
	}
	if code, _, _ := cli(t, map[string]string{"OPSD_ADDR": d.addr, "OPSD_TOKEN": "wrong"}, "status"); code != exitFailure {
		t.Errorf("opsd status with a bad token = %d, want 1", code)
	}

	t.Run("watchdog is petted while healthy", func(t *testing.T) {
		d.drainNotify()
		d.expectNotify(t, "WATCHDOG=1")
	})

	t.Run("metrics", func(t *testing.T) {
		req, _ := http.NewRequest("GET", "http://"+d.addr+"/metrics", nil)
		req.Header.Set("Authorization", "Bearer "+testToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		for _, m := range []string{"opsd_build_info{", "opsd_audit_tree_size ", "opsd_audit_append_seconds_bucket", "opsd_audit_checkpoint_age_seconds ",
			"opsd_audit_append_failures_total ", "opsd_http_requests_total{", "go_goroutines ", "process_resident_memory_bytes "} {
			if !strings.Contains(string(body), m) {
				t.Errorf("/metrics lacks %s", m)
			}
		}
	})

	t.Run("second daemon on the same data_dir refuses", func(t *testing.T) {
		d2 := startDaemon(t, cfgPath, false)
		if code := d2.wait(t); code != 1 {
			t.Errorf("second daemon exit = %d, want 1", code)
		}
		if !strings.Contains(d2.stderr.String(), "data_dir is in use by another opsd (pid ") {
			t.Errorf("second daemon's error lacks a clear message:\n%s", d2.stderr.String())
		}
	})

	t.Run("reload with a broken config keeps the running one", func(t *testing.T) {
		before := d.configHash(t)
		good, _ := os.ReadFile(cfgPath)
		if err := os.WriteFile(cfgPath, append(good, []byte("bogus_key: 1\n")...), 0o600); err != nil {
			t.Fatal(err)
		}
		var prob struct {
			Type   string   `json:"type"`
			Errors []string `json:"errors"`
		}
		if code := d.api(t, "POST", "/api/v1/reload", testToken, &prob); code != 422 || len(prob.Errors) != 1 || !strings.Contains(prob.Errors[0], `opsd.yaml:13:1: unknown key "bogus_key"`) {
			t.Errorf("reload = %d %+v, want 422 naming the unknown key", code, prob)
		}
		if after := d.configHash(t); after != before {
			t.Errorf("config hash changed from %s to %s after a refused reload", before, after)
		}
		// A setting that needs a restart is refused as a whole.
		if err := os.WriteFile(cfgPath, []byte(strings.Replace(string(good), "127.0.0.1:0", "127.0.0.1:1", 1)), 0o600); err != nil {
			t.Fatal(err)
		}
		if code := d.api(t, "POST", "/api/v1/reload", testToken, &prob); code != 409 {
			t.Errorf("reload changing server.listen = %d, want 409", code)
		}
		// SIGHUP loads a valid change.
		if err := os.WriteFile(cfgPath, []byte(string(good)+"  log_reads: false\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		d.drainNotify()
		if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		d.expectNotify(t, "RELOADING=1")
		d.expectNotify(t, "READY=1")
		if after := d.configHash(t); after == before {
			t.Errorf("config hash unchanged after a valid SIGHUP reload")
		}
	})

	t.Run("mutations are in the audit log", func(t *testing.T) {
		var page struct {
			Items []struct {
				Entry struct {
					Action  string `json:"action"`
					Outcome string `json:"outcome"`
					Actor   struct {
						Kind string `json:"kind"`
						Name string `json:"name"`
					} `json:"actor"`
				} `json:"entry"`
			} `json:"items"`
		}
		var got []string
		// The outcome of the SIGHUP reload is recorded just after systemd
		// hears READY=1; poll briefly.
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			page.Items = nil
			if code := d.api(t, "GET", "/api/v1/audit/entries?limit=100", testToken, &page); code != 200 {
				t.Fatalf("audit entries = %d", code)
			}
			got = got[:0]
			for _, it := range page.Items {
				e := it.Entry
				got = append(got, e.Actor.Kind+":"+e.Actor.Name+" "+e.Action+" "+e.Outcome)
			}
			if strings.Contains(strings.Join(got, "\n"), "system:SIGHUP config.reload succeeded") {
				break
			}
		}
		for _, want := range []string{
			"system:opsd daemon.start succeeded",
			"token:root config.reload failed",
			"system:SIGHUP config.reload succeeded",
		} {
			if !strings.Contains(strings.Join(got, "\n"), want) {
				t.Errorf("audit log lacks %q; has:\n%s", want, strings.Join(got, "\n"))
			}
		}
	})

	pub := filepath.Join(dir, "data", "keys", "audit.key.pub")
	t.Run("audit prove and tail against the daemon", func(t *testing.T) {
		// Wait for a checkpoint covering entry 2 (checkpoint_interval 1s).
		var code int
		var out, stderr string
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
			if code, out, stderr = cli(t, env, "audit", "prove", "--pubkey", pub, "2"); code == 0 {
				break
			}
		}
		if code != 0 || !strings.Contains(out, "OK: entry 2 is included in the tree of size") {
			t.Errorf("audit prove = %d\n%s%s", code, out, stderr)
		}
		if code, _, _ := cli(t, env, "audit", "prove", "--pubkey", "other+00000000+AZsnXkTxMkn3M5YNvca5Jk7nQ8ZSytXLMXiuibzR6I4s", "2"); code == 0 {
			t.Errorf("audit prove with another key succeeded")
		}
		code, out, _ = cli(t, env, "audit", "tail", "-n", "2")
		if lines := strings.Split(strings.TrimSpace(out), "\n"); code != 0 || len(lines) != 2 || !strings.HasPrefix(lines[0], "{") {
			t.Errorf("audit tail -n 2 = %d %q", code, out)
		}
	})

	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	d.expectNotify(t, "STOPPING=1")
	if code := d.wait(t); code != 0 {
		t.Errorf("exit after SIGTERM = %d, want 0\n%s", code, d.stderr.String())
	}

	t.Run("audit verify offline", func(t *testing.T) {
		code, out, stderr := cli(t, nil, "audit", "verify", "--config", cfgPath, "--witness", "local")
		if code != 0 || !strings.Contains(out, "INTACT") || !strings.Contains(out, "consistent") {
			t.Fatalf("audit verify = %d\n%s%s", code, out, stderr)
		}
		segs, _ := filepath.Glob(filepath.Join(dir, "data", "audit", "seg-*.log"))
		if len(segs) == 0 {
			t.Fatal("no audit segment found")
		}
		b, err := os.ReadFile(segs[0])
		if err != nil {
			t.Fatal(err)
		}
		i := strings.Index(string(b), "config.reload")
		b[i] ^= 0x20
		if err := os.WriteFile(segs[0], b, 0o600); err != nil {
			t.Fatal(err)
		}
		code, out, _ = cli(t, nil, "audit", "verify", "--config", cfgPath, "--json")
		var rep struct {
			Status  string `json:"status"`
			Failure struct {
				Index *int64 `json:"index"`
			} `json:"failure"`
		}
		if err := json.Unmarshal([]byte(out), &rep); err != nil {
			t.Fatalf("verify --json: %v\n%s", err, out)
		}
		if code != 1 || rep.Status != "tampered" || rep.Failure.Index == nil {
			t.Errorf("audit verify of a tampered log = %d %s, want 1, tampered, with the bad index", code, out)
		}
	})
}

func TestDaemonKill9LeavesNoStaleLock(t *testing.T) {
	dir := t.TempDir()
	cfgPath := writeConfig(t, dir, "")
	d := startDaemon(t, cfgPath, true)
	if err := d.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	d.wait(t)
	d2 := startDaemon(t, cfgPath, true)
	if code := d2.api(t, "GET", "/readyz", "", nil); code != 200 {
		t.Errorf("readyz after restart = %d", code)
	}
}

func TestDaemonRefusesBadConfig(t *testing.T) {
	d := startDaemon(t, "testdata/broken.yaml", false)
	if code := d.wait(t); code != exitUsage {
		t.Errorf("exit = %d, want 2", code)
	}
	if !strings.Contains(d.stderr.String(), "testdata/broken.yaml:13:15: sources.orders-db.schedule") {
		t.Errorf("serve did not print the config problems:\n%s", d.stderr.String())
	}
}

func TestDaemonOnPostgres(t *testing.T) {
	dsn := pgtest.DSN(t)
	dir := t.TempDir()
	cfgPath := writeConfig(t, dir, "state:\n  postgres: ${TEST_STATE_DSN}\n")
	t.Setenv("TEST_STATE_DSN", dsn)
	d := startDaemon(t, cfgPath, true)
	var st struct {
		StateStore string `json:"state_store"`
	}
	if code := d.api(t, "GET", "/api/v1/status", testToken, &st); code != 200 || st.StateStore != "postgres" {
		t.Errorf("status = %d %+v, want state_store postgres", code, st)
	}
	var cl struct {
		StateStore string `json:"state_store"`
		Self       string `json:"self"`
		Replicas   []struct {
			ID    string `json:"id"`
			Alive bool   `json:"alive"`
		} `json:"replicas"`
	}
	if code := d.api(t, "GET", "/api/v1/cluster", testToken, &cl); code != 200 || len(cl.Replicas) != 1 || cl.Replicas[0].ID != cl.Self || !cl.Replicas[0].Alive {
		t.Errorf("cluster = %d %+v, want this replica alive", code, cl)
	}
	if strings.Contains(d.stderr.String(), dsn) {
		t.Errorf("the daemon log contains the state DSN")
	}
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := d.wait(t); code != 0 {
		t.Errorf("exit after SIGTERM = %d", code)
	}
	_ = context.Background
}
