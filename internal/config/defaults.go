package config

import (
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/opsd-dev/opsd/internal/yamlnode"
)

// Defaults that other packages may want to show or compare with.
const (
	DefaultDataDir           = "/var/lib/opsd"
	DefaultListen            = "127.0.0.1:8470"
	DefaultWorkers           = 16
	DefaultBackupConcurrency = 4
	DefaultZstdLevel         = 3
	DefaultCurrency          = "USD"
	BuiltinPrices            = "builtin"
	DefaultMaxBodyBytes      = Size(1 << 20)
	DefaultSegmentSize       = Size(64 << 20)
)

// applyDefaults fills what the file left out. A value written explicitly,
// even a zero, is kept, so that validation can refuse it rather than have
// a default silently replace it.
func (l *loader) applyDefaults(c *Config) {
	setString := func(path string, v *string, def string) {
		if !l.isSet(path) {
			*v = def
		}
	}
	setDuration := func(path string, v *time.Duration, def time.Duration) {
		if !l.isSet(path) {
			*v = def
		}
	}
	setString("data_dir", &c.DataDir, DefaultDataDir)
	if !l.isSet("state.workers") {
		c.State.Workers = DefaultWorkers
	}
	if !l.isSet("state.backup_concurrency") {
		c.State.BackupConcurrency = DefaultBackupConcurrency
	}

	s := &c.Server
	setString("server.listen", &s.Listen, DefaultListen)
	setDuration("server.read_timeout", &s.ReadTimeout, 30*time.Second)
	setDuration("server.write_timeout", &s.WriteTimeout, 60*time.Second)
	setDuration("server.idle_timeout", &s.IdleTimeout, 120*time.Second)
	setDuration("server.read_header_timeout", &s.ReadHeaderTimeout, 10*time.Second)
	setDuration("server.shutdown_grace", &s.ShutdownGrace, 30*time.Second)
	if !l.isSet("server.max_body_bytes") {
		s.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if !l.isSet("server.rate_limit.per_second") {
		s.RateLimit.PerSecond = 20
	}
	if !l.isSet("server.rate_limit.burst") {
		s.RateLimit.Burst = 40
	}
	setString("server.log.level", &s.Log.Level, "info")
	setString("server.log.format", &s.Log.Format, "json")

	a := &c.Audit
	setString("audit.signing_key_file", &a.SigningKeyFile, filepath.Join(c.DataDir, "keys", "audit.key"))
	if !l.isSet("audit.origin") {
		a.Origin = "opsd/" + hostname()
	}
	setDuration("audit.checkpoint_interval", &a.CheckpointInterval, 10*time.Second)
	if !l.isSet("audit.segment_size") {
		a.SegmentSize = DefaultSegmentSize
	}

	for name, src := range c.Sources {
		if !l.isSet(yamlnode.JoinKey(yamlnode.JoinKey("sources", name), "compression") + ".zstd_level") {
			src.Compression.ZstdLevel = DefaultZstdLevel
		}
	}
	for i := range c.Runbooks.Schedules {
		setString(yamlnode.JoinIndex("runbooks.schedules", i)+".mode", &c.Runbooks.Schedules[i].Mode, "drill")
	}
	for name, ds := range c.Alerts.Datasources {
		setString(yamlnode.JoinKey("alerts.datasources", name)+".type", &ds.Type, "prometheus")
		setDuration(yamlnode.JoinKey("alerts.datasources", name)+".timeout", &ds.Timeout, 2*time.Minute)
	}
	setDuration("alerts.evaluation_interval", &c.Alerts.EvaluationInterval, 15*time.Second)
	if c.Alerts.DrillSilences == nil {
		yes := true
		c.Alerts.DrillSilences = &yes
	}
	if hb := c.Alerts.Heartbeat; hb != nil {
		setDuration("alerts.heartbeat.interval", &hb.Interval, time.Minute)
		setString("alerts.heartbeat.method", &hb.Method, "POST")
	}
	if c.Alerts.RuleDatasource == "" && len(c.Alerts.Datasources) == 1 {
		for name := range c.Alerts.Datasources {
			c.Alerts.RuleDatasource = name
		}
	}
	for _, r := range c.Alerts.Receivers {
		if r.Email != nil && r.Email.RequireTLS == nil {
			yes := true
			r.Email.RequireTLS = &yes
		}
	}
	setString("cost.currency", &c.Cost.Currency, DefaultCurrency)
	setString("cost.prices", &c.Cost.Prices, BuiltinPrices)
	for name, b := range c.Cost.Budgets {
		p := yamlnode.JoinKey("cost.budgets", name) + ".scope"
		if !l.isSet(p+".targets") && !l.isSet(p+".sources") {
			b.Scope.Targets.All = true
		}
	}
}

// hostname names this host in the default audit origin. Characters a
// signed-note key name cannot hold are replaced rather than failing
// startup on an odd hostname.
func hostname() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "localhost"
	}
	return strings.Map(func(r rune) rune {
		if r == '+' || r <= ' ' {
			return '-'
		}
		return r
	}, h)
}

// resolvePaths makes relative paths relative to the config's directory.
func (l *loader) resolvePaths(c *Config) {
	r := func(p *string) { *p = l.resolve(*p) }
	r(&c.DataDir)
	if t := c.Server.TLS; t != nil {
		r(&t.CertFile)
		r(&t.KeyFile)
		r(&t.ClientCAFile)
	}
	for i := range c.Server.Tokens {
		r(&c.Server.Tokens[i].SHA256File)
	}
	r(&c.Audit.SigningKeyFile)
	for _, t := range c.Targets {
		r(&t.Path)
		r(&t.CredentialsFile)
	}
	for _, s := range c.Sources {
		for i := range s.Paths {
			r(&s.Paths[i])
		}
		// A bare program name is looked up in PATH when the backup runs.
		if strings.ContainsRune(s.PGDump, filepath.Separator) {
			r(&s.PGDump)
		}
		if e := s.Encryption; e != nil {
			r(&e.AgeRecipientsFile)
			r(&e.AgeIdentityFile)
		}
	}
	r(&c.Runbooks.Dir)
	r(&c.Plugins.Dir)
	for i := range c.Alerts.RuleFiles {
		r(&c.Alerts.RuleFiles[i])
	}
	for _, rc := range c.Alerts.Receivers {
		if rc.Slack != nil {
			r(&rc.Slack.TokenFile)
		}
		if rc.Email != nil {
			r(&rc.Email.AuthPasswordFile)
		}
		if rc.Webhook != nil {
			r(&rc.Webhook.URLFile)
			r(&rc.Webhook.SigningSecretFile)
		}
	}
	for _, ds := range c.Alerts.Datasources {
		r(&ds.BearerTokenFile)
		if ds.BasicAuth != nil {
			r(&ds.BasicAuth.PasswordFile)
		}
		if t := ds.TLS; t != nil {
			r(&t.CAFile)
			r(&t.CertFile)
			r(&t.KeyFile)
		}
	}
	if hb := c.Alerts.Heartbeat; hb != nil {
		r(&hb.URLFile)
	}
	if c.Cost.Prices != BuiltinPrices {
		r(&c.Cost.Prices)
	}
}
