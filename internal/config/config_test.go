package config

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"filippo.io/age"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/bad")

// testEnv is the environment the test configs see.
func testEnv(name string) string {
	return map[string]string{
		"OPSD_STATE_DSN": "postgres://opsd:state-pw@db.internal/opsd",
		"ORDERS_DSN":     "postgres://orders:orders-pw@db.internal/orders",
		"SCRATCH_DSN":    "postgres://scratch:scratch-pw@127.0.0.1/scratch",
	}[name]
}

func recipient(t *testing.T, s string) age.Recipient {
	t.Helper()
	r, err := age.ParseX25519Recipient(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func ptr[T any](v T) *T { return &v }

// cmpOpts compares recipients by their text form; they hold unexported
// curve points.
var cmpOpts = cmp.Options{
	cmpopts.IgnoreUnexported(Config{}),
	cmp.Comparer(func(a, b age.Recipient) bool {
		as, aok := a.(*age.X25519Recipient)
		bs, bok := b.(*age.X25519Recipient)
		return aok && bok && as.String() == bs.String()
	}),
}

func TestLoadMinimal(t *testing.T) {
	c, err := Load("testdata/good/minimal.yaml", testEnv)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	want := &Config{
		DataDir: "/var/lib/opsd",
		State:   State{Workers: 16, BackupConcurrency: 4},
		Server: Server{
			Listen:            "127.0.0.1:8470",
			ReadTimeout:       30 * time.Second,
			WriteTimeout:      60 * time.Second,
			IdleTimeout:       120 * time.Second,
			ReadHeaderTimeout: 10 * time.Second,
			MaxBodyBytes:      1 << 20,
			RateLimit:         RateLimit{PerSecond: 20, Burst: 40},
			ShutdownGrace:     30 * time.Second,
			Log:               Log{Level: "info", Format: "json"},
		},
		Audit: Audit{
			SigningKeyFile:     "/var/lib/opsd/keys/audit.key",
			Origin:             "opsd/" + hostname(),
			CheckpointInterval: 10 * time.Second,
			SegmentSize:        64 << 20,
		},
		Targets: map[string]*Target{"local": {Type: "local", Path: "/var/backups/opsd"}},
		Sources: map[string]*Source{"etc": {
			Type:        "files",
			Paths:       []string{"/etc"},
			Schedule:    "@daily",
			Targets:     []string{"local"},
			Encryption:  &Encryption{None: true},
			Compression: Compression{ZstdLevel: 3},
		}},
		Alerts: Alerts{EvaluationInterval: 15 * time.Second, DrillSilences: ptr(true)},
		Cost:   Cost{Currency: "USD", Prices: "builtin"},
		File:   "testdata/good/minimal.yaml",
	}
	if diff := cmp.Diff(want, c, cmpOpts); diff != "" {
		t.Errorf("Load(minimal) mismatch (-want +got):\n%s", diff)
	}
}

func TestLoadFull(t *testing.T) {
	c, err := Load("testdata/good/full.yaml", testEnv)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	dir := "testdata/good"
	common := func(s *Source) *Source {
		s.Schedule = "@hourly"
		s.Targets = []string{"local", "offsite-s3"}
		s.Encryption = &Encryption{
			AgeRecipientsFile: dir + "/files/recipients.txt",
			Recipients: []age.Recipient{
				recipient(t, "age1t0fum6zyvaafc826ag5uuhksqya8d4gd3ksd6pkvqvmqqs8qfygq3wfvh7"),
				recipient(t, "age1a3gylw2t2zaw35m6g8qs0h3xy4ta2620flkcaqz2rtcsfqyw93as2rq8vn"),
			},
		}
		s.Compression.ZstdLevel = 3
		return s
	}
	want := &Config{
		DataDir: dir + "/var/opsd",
		State:   State{Postgres: "postgres://opsd:state-pw@db.internal/opsd", Workers: 8, BackupConcurrency: 4},
		Server: Server{
			Listen: "0.0.0.0:8443",
			TLS: &TLS{
				CertFile:     dir + "/files/cert.pem",
				KeyFile:      dir + "/files/key.pem",
				ClientCAFile: dir + "/files/ca.pem",
			},
			Tokens: []Token{
				{Name: "grafana", Role: "viewer", SHA256Hex: "5a4806aaf8e14a7c4a89f70d1ef7b2324ddae2b85c417a9270d87b4db806b6a0",
					SHA256: sha256.Sum256([]byte("grafana-token"))},
				{Name: "ci", Role: "operator", SHA256File: dir + "/files/ci.sha256",
					SHA256: sha256.Sum256([]byte("ci-token"))},
				{Name: "root", Role: "admin", SHA256Hex: "2cff60a244379d429c1877c36ee7f37da39ad06073d31b8d90fccd15376f2adf",
					SHA256: sha256.Sum256([]byte("root-token"))},
			},
			MetricsPublic:     true,
			ReadTimeout:       20 * time.Second,
			WriteTimeout:      2 * time.Minute,
			IdleTimeout:       3 * time.Minute,
			ReadHeaderTimeout: 5 * time.Second,
			MaxBodyBytes:      4 << 20,
			RateLimit:         RateLimit{PerSecond: 5.5, Burst: 10},
			ShutdownGrace:     45 * time.Second,
			Log:               Log{Level: "debug", Format: "text"},
		},
		Audit: Audit{
			SigningKeyFile:     "/etc/opsd/audit.key",
			Origin:             "opsd.example/db-host-1",
			CheckpointInterval: 15 * time.Second,
			Witnesses:          []string{"offsite-s3", "archive"},
			LogReads:           true,
			SegmentSize:        128 << 20,
		},
		Targets: map[string]*Target{
			"local": {Type: "local", Path: "/var/backups/opsd", Offsite: ptr(false)},
			"usb":   {Type: "local", Path: "/mnt/usb/opsd", Offsite: ptr(true), MediumOverride: "usb-disk"},
			"offsite-s3": {Type: "s3", Bucket: "acme-backups", Region: "eu-west-1", StorageClass: "STANDARD_IA",
				Offsite: ptr(true), ObjectLock: &ObjectLock{Mode: "GOVERNANCE", Days: 35}, SSE: "aws:kms",
				KMSKeyID: "arn:aws:kms:eu-west-1:111122223333:key/abcd", Prefix: "opsd/prod"},
			"archive": {Type: "gcs", Bucket: "acme-archive", StorageClass: "COLDLINE", Offsite: ptr(true), Prefix: "prod",
				CredentialsFile: dir + "/files/gcs-credentials.json", Endpoint: "https://storage.example.com",
				Retention: &Retention{Days: 90}},
			"onprem": {Type: "s3", Bucket: "backups", Endpoint: "https://minio.internal:9000", PathStyle: true,
				Region: "us-east-1", SSE: "AES256"},
		},
		Sources: map[string]*Source{
			"orders-db": {
				Type:     "postgres",
				DSN:      "postgres://orders:orders-pw@db.internal/orders",
				PGDump:   "/usr/lib/postgresql/17/bin/pg_dump",
				Schedule: "CRON_TZ=Europe/Paris 15 * * * *",
				Targets:  []string{"local", "offsite-s3", "archive"},
				Policy:   "3-2-1-1-0",
				Encryption: &Encryption{
					AgeRecipients:   []string{"age1v563nl4uurpsdzvsgcet3ee8arzv5rdxl4sknyx73h4jx3fcwdxsnufhf7"},
					AgeIdentityFile: dir + "/files/identity.txt",
					Recipients: []age.Recipient{
						recipient(t, "age1v563nl4uurpsdzvsgcet3ee8arzv5rdxl4sknyx73h4jx3fcwdxsnufhf7"),
						// The recipient of files/identity.txt; the same key here.
						recipient(t, "age1v563nl4uurpsdzvsgcet3ee8arzv5rdxl4sknyx73h4jx3fcwdxsnufhf7"),
					},
				},
				Compression: Compression{ZstdLevel: 9},
				Retention: Keep{Last: 3, Hourly: 24, Daily: 7, Weekly: 4, Monthly: 12, Yearly: 2,
					Within: 48 * time.Hour},
				Verify: Verify{
					Checksum: "@daily",
					Restore: &VerifyRestore{
						Schedule: "0 4 * * 0",
						Into:     "postgres://scratch:scratch-pw@127.0.0.1/scratch",
						Checks: []Check{
							{SQL: "select count(*) from orders", Expect: "> 0"},
							{SQL: "select count(*) from orders where total < 0", Expect: "== 0"},
						},
					},
				},
				Objectives: Objectives{RPO: time.Hour, RTO: 30 * time.Minute},
				Timeout:    2 * time.Hour,
			},
			"uploads": func() *Source {
				s := common(&Source{
					Type:          "files",
					Paths:         []string{"/srv/uploads", dir + "/uploads-extra"},
					Exclude:       []string{"*.tmp", "cache/*"},
					OneFileSystem: true,
					Policy:        "3-2-1",
					Verify:        Verify{Restore: &VerifyRestore{Schedule: "@weekly"}},
				})
				s.Schedule = "0 */6 * * *"
				return s
			}(),
			"ldap": common(&Source{
				Type:      "command",
				Command:   Argv{"slapcat", "-n", "1", "-o", "ldif-wrap=no"},
				Env:       map[string]Secret{"LDAPTLS_REQCERT": "never", "PRICE": "${not-a-variable}"},
				Extension: "ldif",
			}),
			"dns-zones": func() *Source {
				s := common(&Source{
					Type: "plugin:powerdns",
					PluginConfig: map[string]any{
						"api":     "http://127.0.0.1:8081",
						"zones":   []any{"example.com", "example.org"},
						"verbose": true,
						"retries": 3,
					},
				})
				s.Schedule = "@every 15m"
				s.Encryption = &Encryption{None: true}
				return s
			}(),
		},
		Runbooks: Runbooks{
			Dir: dir + "/runbooks",
			Schedules: []RunbookSchedule{
				{Runbook: "orders-restore-drill", Cron: "0 5 * * 1", Mode: "drill", Params: map[string]Secret{"min_orders": "1"}},
				{Runbook: "dns-failover", Cron: "@monthly", Mode: "live"},
				{Runbook: "quick-check", Cron: "@every 6h", Mode: "drill"},
			},
		},
		Plugins: Plugins{
			Dir:    "/usr/lib/opsd/plugins",
			Pinned: map[string]string{"powerdns": "sha256:3b1f7e3a9c1d4b5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6"},
		},
		Alerts: Alerts{
			Datasources: map[string]*Datasource{
				"prom": {Type: "prometheus", URL: "http://127.0.0.1:9090", Timeout: 2 * time.Minute},
				"thanos": {Type: "prometheus", URL: "https://thanos.internal/", BearerTokenFile: dir + "/files/slack-token",
					Headers: map[string]Secret{"X-Scope-OrgID": "team-a"}, Timeout: 30 * time.Second,
					TLS: &ClientTLS{CAFile: dir + "/files/ca.pem", CertFile: dir + "/files/cert.pem", KeyFile: dir + "/files/key.pem"}},
			},
			RuleFiles:          []string{"/etc/opsd/rules/*.yaml", dir + "/rules/extra.yaml"},
			RuleDatasource:     "prom",
			EvaluationInterval: 30 * time.Second,
			DrillSilences:      ptr(false),
			Heartbeat:          &Heartbeat{URLFile: dir + "/files/webhook-url", Interval: 30 * time.Second, Method: "POST"},
			Builtin: map[string]*Builtin{
				"backup_stale":     {For: 10 * time.Minute},
				"drill_failed":     {Severity: "page", Labels: map[string]string{"team": "sre"}},
				"budget_threshold": {Disabled: true},
			},
			Route: &Route{
				Receiver:       "oncall",
				GroupBy:        []string{"alertname", "source"},
				GroupWait:      30 * time.Second,
				GroupInterval:  5 * time.Minute,
				RepeatInterval: 4 * time.Hour,
				Routes: []*Route{
					{Matchers: []string{`severity="info"`}, Receiver: "chat", Continue: true},
					{Matchers: []string{"team=~sre|dba", "env!=dev"}, GroupBy: []string{"..."},
						Routes: []*Route{{Matchers: []string{`source="orders-db"`}, Receiver: "email-only"}}},
				},
			},
			InhibitRules: []InhibitRule{{
				SourceMatchers: []string{`severity="page"`},
				TargetMatchers: []string{`severity="info"`},
				Equal:          []string{"source"},
			}},
			Receivers: map[string]*Receiver{
				"oncall": {
					Slack: &Slack{TokenFile: dir + "/files/slack-token", Channel: "#ops"},
					Email: &Email{To: []string{"oncall@example.com", "DBA Team <dba@example.com>"}, From: "opsd@example.com",
						Smarthost: "smtp.example.com:587", AuthUsername: "opsd-smtp",
						AuthPasswordFile: dir + "/files/smtp-password", RequireTLS: ptr(true)},
				},
				"chat": {Webhook: &Webhook{URL: "https://hooks.example.com/x", MaxAlerts: 10, SigningSecretFile: dir + "/files/smtp-password"}},
				"email-only": {Email: &Email{To: []string{"db@example.com"}, From: "opsd@example.com",
					Smarthost: "localhost:25", RequireTLS: ptr(false)}},
				"hook-file": {
					Webhook: &Webhook{URLFile: dir + "/files/webhook-url"},
					Slack:   &Slack{Token: "xoxb-inline", Channel: "#alerts", APIURL: "http://127.0.0.1:9999/api/"},
				},
			},
		},
		Cost: Cost{
			Currency: "EUR",
			Prices:   dir + "/files/prices.yaml",
			Budgets: map[string]*Budget{
				"backups": {Monthly: 250, Scope: Scope{Targets: TargetSet{All: true}},
					AlertOn: []BudgetTrigger{{Actual: 80}, {Forecast: 100}}},
				"orders": {Monthly: 99.5, Scope: Scope{Targets: TargetSet{Names: []string{"offsite-s3", "archive"}},
					Sources: []string{"orders-db"}}, AlertOn: []BudgetTrigger{{Actual: 50}}},
				"everything": {Monthly: 1000, Scope: Scope{Targets: TargetSet{All: true}}},
			},
		},
		File: "testdata/good/full.yaml",
	}
	if diff := cmp.Diff(want, c, cmpOpts); diff != "" {
		t.Errorf("Load(full) mismatch (-want +got):\n%s", diff)
	}

	medium := map[string]string{
		"local":      "local:/var/backups/opsd",
		"usb":        "usb-disk",
		"offsite-s3": "s3:aws",
		"archive":    "gcs:storage.example.com",
		"onprem":     "s3:minio.internal:9000",
	}
	offsite := map[string]bool{"local": false, "usb": true, "offsite-s3": true, "archive": true, "onprem": true}
	for name, tg := range c.Targets {
		if got := tg.Medium(); got != medium[name] {
			t.Errorf("targets.%s.Medium() = %q, want %q", name, got, medium[name])
		}
		if got := tg.IsOffsite(); got != offsite[name] {
			t.Errorf("targets.%s.IsOffsite() = %v, want %v", name, got, offsite[name])
		}
	}
	if got := c.Sources["dns-zones"].PluginName(); got != "powerdns" {
		t.Errorf("PluginName() = %q, want powerdns", got)
	}
}

// TestLoadBad checks the exact problems reported for each bad config
// against its golden file. Run with -update to rewrite the goldens.
func TestLoadBad(t *testing.T) {
	files, err := filepath.Glob("testdata/bad/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no bad configs: %v", err)
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			c, err := Load(file, testEnv)
			if err == nil {
				t.Fatalf("Load(%s) = %+v, want problems", file, c)
			}
			var ps Problems
			if !errors.As(err, &ps) {
				t.Fatalf("Load(%s) error is %T, want Problems", file, err)
			}
			got := err.Error() + "\n"
			golden := strings.TrimSuffix(file, ".yaml") + ".golden"
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if diff := cmp.Diff(string(want), got); diff != "" {
				t.Errorf("Load(%s) problems mismatch (-want +got):\n%s", file, diff)
			}
		})
	}
}

// TestManyProblems checks that problems from decoding and from
// validation, all over the file, come back together from one Load.
func TestManyProblems(t *testing.T) {
	_, err := Load("testdata/bad/many.yaml", testEnv)
	var ps Problems
	if !errors.As(err, &ps) {
		t.Fatalf("Load: %v, want Problems", err)
	}
	if len(ps) < 60 {
		t.Errorf("Load(many.yaml) found %d problems, want at least 60:\n%v", len(ps), err)
	}
	lines := map[int]bool{}
	for _, p := range ps {
		lines[p.Line] = true
	}
	if len(lines) < 40 {
		t.Errorf("problems are on %d distinct lines, want at least 40", len(lines))
	}
}

func TestSecretsDoNotLeak(t *testing.T) {
	secrets := []string{
		"hunter2", "s3cr3t-dsn", "tok-3f9a", "xoxb-leaky", "pw-leaky", "hooks.example.com/T0/leaky",
		"env-secret-value", "file-secret-value", "scratch-leaky", "plugin-leaky",
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "secret.txt"), []byte("file-secret-value\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	config := `
state:
  postgres: "s3cr3t-dsn with no scheme"
  workers: ${SECRET_ENV}
server:
  listen: ${file:secret.txt}
  tokens:
    - {name: a, role: admin, sha256: tok-3f9a}
    - {name: b, role: admin, sha256: "${SECRET_ENV}"}
targets:
  t: {type: s3, bucket: b, endpoint: "${file:secret.txt}"}
sources:
  db:
    type: postgres
    dsn: "hunter2"
    schedule: "@daily"
    targets: [t]
    encryption: none
    verify: {restore: {schedule: "@daily", into: "scratch-leaky"}}
    compression: {zstd_level: "${SECRET_ENV}"}
  p:
    type: plugin:x
    config: {password: {nested: plugin-leaky}}
    schedule: "@daily"
    targets: [t]
    encryption: none
    timeout: ${SECRET_ENV}
alerts:
  route: {receiver: r}
  receivers:
    r:
      slack: {token: [xoxb-leaky], channel: "#x"}
      email: {to: [a@example.com], from: b@example.com, smarthost: "${SECRET_ENV}", auth_password: pw-leaky}
      webhook: {url: "hooks.example.com/T0/leaky"}
`
	getenv := func(string) string { return "env-secret-value" }
	_, err := Parse(filepath.Join(dir, "opsd.yaml"), []byte(config), getenv)
	if err == nil {
		t.Fatal("Parse succeeded, want problems")
	}
	msg := err.Error()
	t.Logf("problems:\n%s", msg)
	for _, s := range secrets {
		if strings.Contains(msg, s) {
			t.Errorf("problems reveal secret %q:\n%s", s, msg)
		}
	}
	// The test is only meaningful if the secret-bearing keys are reported.
	for _, key := range []string{
		"state.postgres", "state.workers", "server.listen", "server.tokens[0].sha256", "server.tokens[1].sha256",
		"targets.t.endpoint", "sources.db.dsn", "sources.db.verify.restore.into", "sources.db.compression.zstd_level",
		"sources.p.timeout", "alerts.receivers.r.slack.token", "alerts.receivers.r.email.smarthost",
		"alerts.receivers.r.webhook.url",
	} {
		if !strings.Contains(msg, key+":") {
			t.Errorf("no problem reported for %s:\n%s", key, msg)
		}
	}
}

func TestQuickstart(t *testing.T) {
	file := filepath.Join("..", "..", "examples", "quickstart.yaml")
	c, err := Load(file, func(string) string { return "" })
	if err != nil {
		t.Fatalf("Load(%s):\n%v", file, err)
	}
	if c.State.Postgres != "" {
		t.Errorf("quickstart uses PostgreSQL, want embedded SQLite")
	}
	if got, want := c.Server.Listen, "127.0.0.1:8470"; got != want {
		t.Errorf("listen = %q, want %q", got, want)
	}
	if len(c.Server.Tokens) != 1 || c.Server.Tokens[0].Role != "admin" ||
		c.Server.Tokens[0].SHA256 != sha256.Sum256([]byte("opsd-quickstart-token")) {
		t.Errorf("tokens = %+v, want one admin token for opsd-quickstart-token", c.Server.Tokens)
	}
	demo := c.Sources["demo"]
	if demo == nil {
		t.Fatal("no source demo")
	}
	if diff := cmp.Diff([]string{"local", "second-disk"}, demo.Targets); diff != "" {
		t.Errorf("demo targets (-want +got):\n%s", diff)
	}
	if demo.Encryption == nil || demo.Encryption.None || !demo.Encryption.Generate {
		t.Errorf("demo encryption = %+v, want a generated age identity", demo.Encryption)
	}
	dataDir := filepath.Join("..", "..", "var", "quickstart")
	if c.DataDir != dataDir {
		t.Errorf("data_dir = %q, want %q", c.DataDir, dataDir)
	}
	for name, tg := range c.Targets {
		if !strings.HasPrefix(tg.Path, dataDir+string(filepath.Separator)) {
			t.Errorf("target %s path %q is not under the data dir", name, tg.Path)
		}
	}
	for _, p := range demo.Paths {
		if fi, err := os.Stat(p); err != nil || !fi.IsDir() {
			t.Errorf("demo path %s: %v, want a directory", p, err)
		}
	}
}

func TestHash(t *testing.T) {
	data, err := os.ReadFile("testdata/good/full.yaml")
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	want := hex.EncodeToString(sum[:])
	c1, err := Parse("testdata/good/full.yaml", data, testEnv)
	if err != nil {
		t.Fatal(err)
	}
	// A different environment gives the same hash: it is taken before
	// expansion.
	c2, err := Parse("testdata/good/full.yaml", data, func(name string) string { return "postgres://other/" + name })
	if err != nil {
		t.Fatal(err)
	}
	if c1.Hash() != want || c2.Hash() != want {
		t.Errorf("Hash() = %s, %s, want %s", c1.Hash(), c2.Hash(), want)
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load("testdata/no-such.yaml", testEnv)
	want := "testdata/no-such.yaml: cannot read config: no such file or directory"
	if err == nil || err.Error() != want {
		t.Errorf("Load(missing) = %v, want %s", err, want)
	}
}

func TestParseDuration(t *testing.T) {
	tests := []struct {
		give    string
		want    time.Duration
		wantErr bool
	}{
		{give: "90s", want: 90 * time.Second},
		{give: "36h", want: 36 * time.Hour},
		{give: "1h30m", want: 90 * time.Minute},
		{give: "7d", want: 7 * 24 * time.Hour},
		{give: "1d12h", want: 36 * time.Hour},
		{give: "1.5d", want: 36 * time.Hour},
		{give: "0", want: 0},
		{give: "", wantErr: true},
		{give: "30", wantErr: true},
		{give: "-5s", wantErr: true},
		{give: "d", wantErr: true},
		{give: "1d-1h", wantErr: true},
		{give: "1w", wantErr: true},
		{give: "1d1d", wantErr: true},
		{give: "1e3d", wantErr: true},
		{give: "999999999d", wantErr: true},
	}
	for _, tt := range tests {
		got, err := ParseDuration(tt.give)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v, error %v", tt.give, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestParseSize(t *testing.T) {
	tests := []struct {
		give    string
		want    Size
		wantErr bool
	}{
		{give: "512MiB", want: 512 << 20},
		{give: "1GB", want: 1e9},
		{give: "1.5KiB", want: 1536},
		{give: "1048576", want: 1 << 20},
		{give: "10 MB", want: 10e6},
		{give: "2TiB", want: 2 << 40},
		{give: "7B", want: 7},
		{give: "", wantErr: true},
		{give: "MiB", wantErr: true},
		{give: "1mib", wantErr: true},
		{give: "1 megabyte", wantErr: true},
		{give: "-1MiB", wantErr: true},
		{give: "1..5GB", wantErr: true},
		{give: "99999999999TB", wantErr: true},
	}
	for _, tt := range tests {
		got, err := ParseSize(tt.give)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("ParseSize(%q) = %v, %v; want %v, error %v", tt.give, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestParsePercent(t *testing.T) {
	tests := []struct {
		give    string
		want    Percent
		wantErr bool
	}{
		{give: "80%", want: 80},
		{give: "12.5%", want: 12.5},
		{give: "150 %", want: 150},
		{give: "80", wantErr: true},
		{give: "%", wantErr: true},
		{give: "NaN%", wantErr: true},
	}
	for _, tt := range tests {
		got, err := ParsePercent(tt.give)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("ParsePercent(%q) = %v, %v; want %v, error %v", tt.give, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestPolicyRules(t *testing.T) {
	tests := []struct {
		give Policy
		want int
	}{
		{"", 0}, {"3", 1}, {"3-2", 2}, {"3-2-1", 3}, {"3-2-1-1", 4}, {"3-2-1-1-0", 5}, {"3-2-1-0", 0},
	}
	for _, tt := range tests {
		if got := tt.give.Rules(); got != tt.want {
			t.Errorf("Policy(%q).Rules() = %d, want %d", tt.give, got, tt.want)
		}
	}
}

func TestProblemsError(t *testing.T) {
	ps := Problems{
		{File: "a.yaml", Line: 3, Col: 5, Msg: "c"},
		{File: "a.yaml", Line: 1, Col: 9, Msg: "b"},
		{File: "a.yaml", Line: 1, Col: 2, Msg: "a"},
		{File: "a.yaml", Line: 7, Msg: "no column"},
		{File: "a.yaml", Msg: "whole file"},
	}
	want := "a.yaml: whole file\na.yaml:1:2: a\na.yaml:1:9: b\na.yaml:3:5: c\na.yaml:7: no column"
	if got := ps.Error(); got != want {
		t.Errorf("Error() =\n%s\nwant\n%s", got, want)
	}
}

func TestSecretRedacts(t *testing.T) {
	type holder struct {
		DSN Secret
		Env map[string]Secret
	}
	h := holder{DSN: "postgres://u:hunter2@h/db", Env: map[string]Secret{"K": "hunter2"}}
	var logged strings.Builder
	slog.New(slog.NewTextHandler(&logged, nil)).Info("x", "dsn", h.DSN)
	js, err := json.Marshal(h)
	if err != nil {
		t.Fatal(err)
	}
	for _, out := range []string{
		fmt.Sprint(h), fmt.Sprintf("%+v", h), fmt.Sprintf("%#v", h), fmt.Sprintf("%v", h.Env), string(js), logged.String(),
	} {
		if strings.Contains(out, "hunter2") {
			t.Errorf("secret shown in %s", out)
		}
	}
	if string(h.DSN) != "postgres://u:hunter2@h/db" {
		t.Errorf("string(Secret) = %q, want the value", string(h.DSN))
	}
	if got := Secret("").String(); got != "" {
		t.Errorf(`Secret("").String() = %q, want ""`, got)
	}
}
