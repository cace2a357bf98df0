package deploy_test

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/opsd-dev/opsd/internal/testenv"
)

// unit is a parsed systemd unit file: section → key → values in order. An
// empty assignment ("Key=") resets the list, as in systemd, but keeps the key
// present with no values.
type unit map[string]map[string][]string

// get returns the values of key in section and whether the key is set.
func (u unit) get(section, key string) ([]string, bool) {
	v, ok := u[section][key]
	return v, ok
}

// last returns the effective value of a single-valued key.
func (u unit) last(section, key string) (string, bool) {
	v, ok := u.get(section, key)
	if !ok || len(v) == 0 {
		return "", ok
	}
	return v[len(v)-1], true
}

// knownSections are the sections a service unit may have.
var knownSections = []string{"Unit", "Service", "Install"}

// parseUnit parses the INI dialect of systemd.syntax(7): [Section] headers,
// Key=Value lines, '#' and ';' comments, and backslash line continuation.
func parseUnit(text string) (unit, error) {
	u := unit{}
	section := ""
	sc := bufio.NewScanner(strings.NewReader(text))
	lineNo, pending, pendingLine := 0, "", 0
	for sc.Scan() {
		lineNo++
		line := strings.TrimSpace(sc.Text())
		if pending == "" && (line == "" || line[0] == '#' || line[0] == ';') {
			continue
		}
		if pending != "" && (strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";")) {
			continue // comments inside a continued line are dropped
		}
		if cont, ok := strings.CutSuffix(line, `\`); ok {
			if pending == "" {
				pendingLine = lineNo
			}
			pending += cont + " "
			continue
		}
		start := lineNo
		if pending != "" {
			line, start, pending = pending+line, pendingLine, ""
		}
		if strings.HasPrefix(line, "[") {
			if !strings.HasSuffix(line, "]") {
				return nil, fmt.Errorf("line %d: malformed section header %q", start, line)
			}
			section = line[1 : len(line)-1]
			if !slices.Contains(knownSections, section) {
				return nil, fmt.Errorf("line %d: unknown section [%s]", start, section)
			}
			if u[section] == nil {
				u[section] = map[string][]string{}
			}
			continue
		}
		key, value, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("line %d: want Key=Value, got %q", start, line)
		}
		if section == "" {
			return nil, fmt.Errorf("line %d: %q outside any section", start, line)
		}
		key, value = strings.TrimSpace(key), strings.TrimSpace(value)
		if key == "" || strings.ContainsAny(key, " \t") {
			return nil, fmt.Errorf("line %d: bad key %q", start, key)
		}
		if value == "" {
			u[section][key] = []string{}
			continue
		}
		u[section][key] = append(u[section][key], value)
	}
	if pending != "" {
		return nil, fmt.Errorf("line %d: file ends inside a continued line", pendingLine)
	}
	return u, sc.Err()
}

// parseSystemdTime parses a systemd.time(7) time span such as "45s",
// "1min 30s" or "90" (seconds).
func parseSystemdTime(s string) (time.Duration, error) {
	units := map[string]time.Duration{
		"": time.Second, "us": time.Microsecond, "usec": time.Microsecond,
		"ms": time.Millisecond, "msec": time.Millisecond,
		"s": time.Second, "sec": time.Second, "second": time.Second, "seconds": time.Second,
		"m": time.Minute, "min": time.Minute, "minute": time.Minute, "minutes": time.Minute,
		"h": time.Hour, "hr": time.Hour, "hour": time.Hour, "hours": time.Hour,
		"d": 24 * time.Hour, "day": 24 * time.Hour, "days": 24 * time.Hour,
	}
	re := regexp.MustCompile(`^\s*(\d+)\s*([a-z]*)`)
	rest, total := strings.TrimSpace(s), time.Duration(0)
	if rest == "" {
		return 0, fmt.Errorf("empty time span")
	}
	for rest != "" {
		m := re.FindStringSubmatch(rest)
		if m == nil {
			return 0, fmt.Errorf("bad time span %q", s)
		}
		n, err := strconv.Atoi(m[1])
		if err != nil {
			return 0, fmt.Errorf("bad time span %q: %w", s, err)
		}
		mult, ok := units[m[2]]
		if !ok {
			return 0, fmt.Errorf("bad time unit %q in %q", m[2], s)
		}
		total += time.Duration(n) * mult
		rest = strings.TrimSpace(rest[len(m[0]):])
	}
	return total, nil
}

func TestParseUnit(t *testing.T) {
	tests := []struct {
		name    string
		give    string
		want    unit
		wantErr bool
	}{
		{
			name: "sections keys comments",
			give: "# c\n[Unit]\nDescription=x y\n; c\n[Service]\nType=notify\n",
			want: unit{"Unit": {"Description": {"x y"}}, "Service": {"Type": {"notify"}}},
		},
		{
			name: "repeated keys accumulate and empty resets",
			give: "[Service]\nSystemCallFilter=@a\nSystemCallFilter=~@b\nCapabilityBoundingSet=CAP_X\nCapabilityBoundingSet=\n",
			want: unit{"Service": {"SystemCallFilter": {"@a", "~@b"}, "CapabilityBoundingSet": {}}},
		},
		{
			name: "continuation",
			give: "[Service]\nExecStart=/bin/a \\\n  --b \\\n# dropped\n  --c\n",
			want: unit{"Service": {"ExecStart": {"/bin/a  --b  --c"}}},
		},
		{name: "key outside section", give: "Type=notify\n", wantErr: true},
		{name: "no equals", give: "[Service]\nType notify\n", wantErr: true},
		{name: "unknown section", give: "[Servce]\nType=notify\n", wantErr: true},
		{name: "dangling continuation", give: "[Service]\nExecStart=/bin/a \\\n", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseUnit(tt.give)
			if (err != nil) != tt.wantErr {
				t.Fatalf("parseUnit(%q) error = %v, wantErr %v", tt.give, err, tt.wantErr)
			}
			if diff := cmp.Diff(tt.want, got); !tt.wantErr && diff != "" {
				t.Errorf("parseUnit(%q) mismatch (-want +got):\n%s", tt.give, diff)
			}
		})
	}
}

func TestParseSystemdTime(t *testing.T) {
	tests := []struct {
		give    string
		want    time.Duration
		wantErr bool
	}{
		{give: "45s", want: 45 * time.Second},
		{give: "90", want: 90 * time.Second},
		{give: "1min 30s", want: 90 * time.Second},
		{give: "2m", want: 2 * time.Minute},
		{give: "500ms", want: 500 * time.Millisecond},
		{give: "infinity", wantErr: true},
		{give: "", wantErr: true},
		{give: "10 parsecs", wantErr: true},
	}
	for _, tt := range tests {
		got, err := parseSystemdTime(tt.give)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("parseSystemdTime(%q) = %v, %v; want %v, error %v", tt.give, got, err, tt.want, tt.wantErr)
		}
	}
}

const unitPath = "systemd/opsd.service"

func TestSystemdUnit(t *testing.T) {
	text := readFile(t, unitPath)
	u, err := parseUnit(text)
	if err != nil {
		t.Fatalf("parse %s: %v", unitPath, err)
	}

	// Exact values of single-valued directives.
	want := []struct{ section, key, value string }{
		{"Service", "Type", "notify"},
		{"Service", "NotifyAccess", "main"},
		{"Service", "ExecStart", "/usr/local/bin/opsd serve --config /etc/opsd/opsd.yaml"},
		{"Service", "ExecReload", "/bin/kill -HUP $MAINPID"},
		{"Service", "User", "opsd"},
		{"Service", "Group", "opsd"},
		{"Service", "StateDirectory", "opsd"},
		{"Service", "Restart", "on-failure"},
		{"Service", "UMask", "0077"},
		{"Service", "NoNewPrivileges", "true"},
		{"Service", "ProtectSystem", "strict"},
		{"Service", "ProtectHome", "true"},
		{"Service", "PrivateTmp", "true"},
		{"Service", "PrivateDevices", "true"},
		{"Service", "ProtectKernelTunables", "true"},
		{"Service", "ProtectKernelModules", "true"},
		{"Service", "ProtectKernelLogs", "true"},
		{"Service", "ProtectControlGroups", "true"},
		{"Service", "ProtectClock", "true"},
		{"Service", "ProtectHostname", "true"},
		{"Service", "RestrictNamespaces", "true"},
		{"Service", "LockPersonality", "true"},
		{"Service", "MemoryDenyWriteExecute", "true"},
		{"Service", "RestrictRealtime", "true"},
		{"Service", "RestrictSUIDSGID", "true"},
		{"Service", "SystemCallArchitectures", "native"},
		{"Install", "WantedBy", "multi-user.target"},
	}
	for _, w := range want {
		got, ok := u.last(w.section, w.key)
		if !ok || got != w.value {
			t.Errorf("[%s] %s = %q (set: %v), want %q", w.section, w.key, got, ok, w.value)
		}
	}
	if v, ok := u.last("Service", "DynamicUser"); ok && v != "no" && v != "false" {
		t.Errorf("[Service] DynamicUser = %q; the unit relies on a fixed opsd user owning its state", v)
	}
	if !strings.Contains(text, "useradd --system") {
		t.Errorf("%s: header comment does not explain creating the user with useradd --system", unitPath)
	}

	// An empty CapabilityBoundingSet= drops every capability.
	if v, ok := u.get("Service", "CapabilityBoundingSet"); !ok || len(v) != 0 {
		t.Errorf("[Service] CapabilityBoundingSet = %q (set: %v), want an empty assignment", v, ok)
	}
	if v, _ := u.get("Service", "SystemCallFilter"); !slices.Contains(v, "@system-service") {
		t.Errorf("[Service] SystemCallFilter = %q, want one of them to be @system-service", v)
	}
	for _, ls := range []struct {
		key  string
		want []string
	}{
		{"RestrictAddressFamilies", []string{"AF_INET", "AF_INET6", "AF_UNIX"}},
		{"ReadWritePaths", []string{"/var/backups/opsd", "/var/lib/opsd"}},
	} {
		v, _ := u.get("Service", ls.key)
		got := strings.Fields(strings.Join(v, " "))
		slices.Sort(got)
		if diff := cmp.Diff(ls.want, got); diff != "" {
			t.Errorf("[Service] %s mismatch (-want +got):\n%s", ls.key, diff)
		}
	}

	for _, d := range []struct {
		key string
		min time.Duration
	}{
		{"WatchdogSec", time.Second},
		{"TimeoutStopSec", drainGraceSeconds*time.Second + time.Second},
	} {
		v, ok := u.last("Service", d.key)
		if !ok {
			t.Errorf("[Service] %s not set", d.key)
			continue
		}
		got, err := parseSystemdTime(v)
		if err != nil {
			t.Errorf("[Service] %s: %v", d.key, err)
			continue
		}
		if got < d.min {
			t.Errorf("[Service] %s = %v, want at least %v", d.key, got, d.min)
		}
	}
	if v, ok := u.last("Service", "LimitNOFILE"); !ok {
		t.Errorf("[Service] LimitNOFILE not set")
	} else if n, err := strconv.Atoi(strings.Split(v, ":")[0]); err != nil || n < 4096 {
		t.Errorf("[Service] LimitNOFILE = %q, want a number of at least 4096", v)
	}
	// KillMode=control-group (the default) would SIGTERM pg_dump children at
	// once and defeat the drain; process would leave them running after stop.
	if v, _ := u.last("Service", "KillMode"); v != "mixed" {
		t.Errorf("[Service] KillMode = %q, want mixed", v)
	}
}

// TestSystemdAnalyze runs the real systemd-analyze over the unit: verify
// (syntax and semantics as systemd itself reads them) and the offline
// security exposure score. .ci/run installs systemd for it.
func TestSystemdAnalyze(t *testing.T) {
	sa := testenv.LookPath(t, "systemd-analyze", "systemd")
	// verify insists that ExecStart's binary exists; stage a copy of the unit
	// that points at a stub, changing nothing else.
	dir := t.TempDir()
	stub := filepath.Join(dir, "opsd")
	if err := os.WriteFile(stub, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	text := readFile(t, unitPath)
	if !strings.Contains(text, "/usr/local/bin/opsd ") {
		t.Fatalf("%s: ExecStart does not run /usr/local/bin/opsd", unitPath)
	}
	staged := filepath.Join(dir, "opsd.service")
	if err := os.WriteFile(staged, []byte(strings.ReplaceAll(text, "/usr/local/bin/opsd ", stub+" ")), 0o644); err != nil {
		t.Fatal(err)
	}

	out, err := exec.Command(sa, "verify", "--man=no", "--generators=no", staged).CombinedOutput()
	// verify exits 0 even for unknown keys and unparsable values; it only
	// warns. Any warning about this unit is a failure.
	var problems []string
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "opsd.service") || strings.Contains(line, staged) {
			problems = append(problems, line)
		}
	}
	if err != nil || len(problems) > 0 {
		t.Errorf("systemd-analyze verify %s: %v\n%s", unitPath, err, strings.Join(problems, "\n"))
	}

	// The exposure score (0 = locked down, 10 = unprotected). The unit scores
	// about 1.4; 2 leaves room for systemd versions that weigh things differently.
	out, err = exec.Command(sa, "security", "--offline=true", "--no-pager", "--threshold=20", staged).CombinedOutput()
	if err != nil {
		if strings.Contains(string(out), "offline") || strings.Contains(string(out), "threshold") {
			t.Logf("systemd-analyze too old for offline security analysis: %s", out)
			return
		}
		t.Fatalf("systemd-analyze security: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`Overall exposure level for opsd\.service: ([0-9.]+)`).FindStringSubmatch(string(out))
	if m == nil {
		t.Fatalf("systemd-analyze security: no exposure level in output:\n%s", out)
	}
	if score, _ := strconv.ParseFloat(m[1], 64); score > 2.0 {
		t.Errorf("systemd-analyze security exposure = %v, want at most 2.0:\n%s", score, out)
	}
}

func TestSystemdTmpfilesSysusers(t *testing.T) {
	u, err := parseUnit(readFile(t, unitPath))
	if err != nil {
		t.Fatal(err)
	}
	rw, _ := u.get("Service", "ReadWritePaths")
	// StateDirectory= creates /var/lib/opsd; every other ReadWritePaths entry
	// must be created by tmpfiles, or the namespace setup fails (226/NAMESPACE).
	created := map[string]string{}
	for _, line := range strings.Split(readFile(t, "systemd/opsd.tmpfiles"), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		if len(f) < 5 {
			t.Errorf("opsd.tmpfiles: short line %q", line)
			continue
		}
		if f[0] == "d" {
			created[f[1]] = f[3]
		}
	}
	for _, p := range strings.Fields(strings.Join(rw, " ")) {
		p = strings.TrimLeft(p, "-+")
		if p == "/var/lib/opsd" {
			continue
		}
		if owner, ok := created[p]; !ok || owner != "opsd" {
			t.Errorf("opsd.tmpfiles: ReadWritePaths entry %s is not created owned by opsd (owner %q)", p, owner)
		}
	}

	found := false
	for _, line := range strings.Split(readFile(t, "systemd/opsd.sysusers"), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "u" && f[1] == "opsd" {
			found = true
		}
	}
	if !found {
		t.Errorf("opsd.sysusers: no `u opsd` line")
	}
}
