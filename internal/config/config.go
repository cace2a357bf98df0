package config

import (
	"crypto/sha256"
	"encoding/hex"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"filippo.io/age"
)

// Config is a loaded, defaulted and validated opsd.yaml. Relative paths in
// it are already resolved against the config file's directory.
type Config struct {
	DataDir  string             `yaml:"data_dir"`
	State    State              `yaml:"state"`
	Server   Server             `yaml:"server"`
	Audit    Audit              `yaml:"audit"`
	Targets  map[string]*Target `yaml:"targets"`
	Sources  map[string]*Source `yaml:"sources"`
	Runbooks Runbooks           `yaml:"runbooks"`
	Plugins  Plugins            `yaml:"plugins"`
	Alerts   Alerts             `yaml:"alerts"`
	Cost     Cost               `yaml:"cost"`

	// File is the config file's name as given to Load or Parse.
	File string `yaml:"-"`
	hash string
}

// Hash returns the hex SHA-256 of the config file's bytes before
// expansion. Replicas compare it to notice they run different configs; it
// is taken before expansion so that it never depends on secrets.
func (c *Config) Hash() string { return c.hash }

// State selects where opsd keeps its state.
type State struct {
	// Postgres is a PostgreSQL DSN; empty means embedded SQLite in DataDir.
	Postgres Secret `yaml:"postgres"`
	// Workers is how many background jobs run at once (default 16,
	// 1..256): scheduled jobs start on time even when many fall due
	// together.
	Workers int `yaml:"workers"`
	// BackupConcurrency is how many backups move data at once on this
	// replica (default 4, 1..256); more wait, queued, for a slot.
	BackupConcurrency int `yaml:"backup_concurrency"`
}

// Server configures the HTTP API.
type Server struct {
	Listen            string        `yaml:"listen"` // host:port, default 127.0.0.1:8470
	TLS               *TLS          `yaml:"tls"`    // nil: plain HTTP
	Tokens            []Token       `yaml:"tokens"`
	MetricsPublic     bool          `yaml:"metrics_public"`
	ReadTimeout       time.Duration `yaml:"read_timeout"`        // default 30s
	WriteTimeout      time.Duration `yaml:"write_timeout"`       // default 60s
	IdleTimeout       time.Duration `yaml:"idle_timeout"`        // default 120s
	ReadHeaderTimeout time.Duration `yaml:"read_header_timeout"` // default 10s
	MaxBodyBytes      Size          `yaml:"max_body_bytes"`      // default 1MiB
	RateLimit         RateLimit     `yaml:"rate_limit"`
	ShutdownGrace     time.Duration `yaml:"shutdown_grace"` // default 30s
	Log               Log           `yaml:"log"`
	// ExternalURL is how users reach this opsd (behind a proxy, say);
	// notifications link to it. Default: http(s)://<listen>.
	ExternalURL string `yaml:"external_url"`
}

// TLS enables HTTPS; with ClientCAFile set, clients must present a
// certificate signed by that CA (mTLS).
type TLS struct {
	CertFile     string `yaml:"cert_file"`
	KeyFile      string `yaml:"key_file"`
	ClientCAFile string `yaml:"client_ca_file"`
}

// Token is an API bearer token. The config holds only the SHA-256 of the
// token, so a leaked config does not leak API access.
type Token struct {
	Name string `yaml:"name"`
	Role string `yaml:"role"` // viewer | operator | admin
	// SHA256Hex and SHA256File are the two ways to give the hash; exactly
	// one is set. The file holds the hex digest (sha256sum output works).
	SHA256Hex  Secret `yaml:"sha256"`
	SHA256File string `yaml:"sha256_file"`
	// SHA256 is the decoded hash, from whichever of the two was set.
	SHA256 [32]byte `yaml:"-"`
}

// RateLimit limits API requests per token.
type RateLimit struct {
	PerSecond float64 `yaml:"per_second"` // default 20
	Burst     int     `yaml:"burst"`      // default 40
}

// Log configures the daemon's own log.
type Log struct {
	Level  string `yaml:"level"`  // debug | info | warn | error, default info
	Format string `yaml:"format"` // json | text, default json
}

// Audit configures the signed audit log.
type Audit struct {
	// SigningKeyFile is the Ed25519 key made by `opsd keygen`
	// (default <data_dir>/keys/audit.key).
	SigningKeyFile string `yaml:"signing_key_file"`
	// Origin is the checkpoint origin line and note key name
	// (default "opsd/" + hostname).
	Origin             string        `yaml:"origin"`
	CheckpointInterval time.Duration `yaml:"checkpoint_interval"` // default 10s
	// Witnesses are names of targets that receive every checkpoint.
	Witnesses []string `yaml:"witnesses"`
	// LogReads also records read-only API calls.
	LogReads    bool `yaml:"log_reads"`
	SegmentSize Size `yaml:"segment_size"` // default 64MiB
}

// Target types.
const (
	TargetLocal = "local"
	TargetS3    = "s3"
	TargetGCS   = "gcs"
)

// Target is a place backup copies go. Fields apply to the types noted;
// setting a field on another type is a problem.
type Target struct {
	Type string `yaml:"type"` // local | s3 | gcs

	Path string `yaml:"path"` // local, required

	Bucket       string      `yaml:"bucket"`        // s3, gcs; required
	Region       string      `yaml:"region"`        // s3
	Endpoint     string      `yaml:"endpoint"`      // s3, gcs; empty = the provider's
	PathStyle    bool        `yaml:"path_style"`    // s3
	StorageClass string      `yaml:"storage_class"` // s3, gcs
	SSE          string      `yaml:"sse"`           // s3: AES256 | aws:kms
	KMSKeyID     string      `yaml:"kms_key_id"`    // s3, with sse aws:kms
	Prefix       string      `yaml:"prefix"`        // s3, gcs
	ObjectLock   *ObjectLock `yaml:"object_lock"`   // s3

	CredentialsFile string     `yaml:"credentials_file"` // gcs; empty = default credentials
	Retention       *Retention `yaml:"retention"`        // gcs bucket retention policy
	// Anonymous sends no credentials (gcs: emulators and public test
	// buckets only).
	Anonymous bool `yaml:"anonymous"`

	// PartSize of S3 multipart uploads (default 8MiB, raised from the
	// previous backup's size so twice that fits in 9,000 parts; an object
	// can have at most 10,000) and UploadConcurrency parts in flight
	// (default 2): memory per S3 copy is about PartSize*(UploadConcurrency+2).
	PartSize          Size `yaml:"part_size"`
	UploadConcurrency int  `yaml:"upload_concurrency"`
	// ChunkSize of GCS resumable uploads (default 8MiB, a multiple of
	// 256KiB): memory per GCS copy is about this; each chunk is one request
	// and is resent on a transient error. 0 uploads in one streaming
	// request: no buffer, but an error fails the whole copy.
	ChunkSize *Size `yaml:"chunk_size"`

	// Offsite overrides the default: false for local, true otherwise.
	Offsite *bool `yaml:"offsite"`
	// MediumOverride overrides the medium derived from the type.
	MediumOverride string `yaml:"medium"`
}

// ObjectLock is the S3 Object Lock retention written on every object.
type ObjectLock struct {
	Mode string `yaml:"mode"` // GOVERNANCE | COMPLIANCE
	Days int    `yaml:"days"` // > 0
}

// Retention is a GCS bucket retention policy opsd expects on the bucket.
type Retention struct {
	Days int `yaml:"days"` // > 0
}

// IsOffsite reports whether copies on t count as offsite for 3-2-1:
// the configured value, else false for local and true for object stores.
func (t *Target) IsOffsite() bool {
	if t.Offsite != nil {
		return *t.Offsite
	}
	return t.Type != TargetLocal
}

// Medium names the storage medium for the "2 distinct media" rule: the
// configured medium, else "local:<path>", "s3:<endpoint host>" or "s3:aws",
// "gcs" or "gcs:<endpoint host>". The config cannot know which filesystem a
// local path lives on; the backup package may refine local media at run
// time, but an explicit medium always wins.
func (t *Target) Medium() string {
	if t.MediumOverride != "" {
		return t.MediumOverride
	}
	switch t.Type {
	case TargetLocal:
		return "local:" + t.Path
	case TargetS3:
		if t.Endpoint == "" {
			return "s3:aws"
		}
		return "s3:" + endpointHost(t.Endpoint)
	case TargetGCS:
		if t.Endpoint == "" {
			return "gcs"
		}
		return "gcs:" + endpointHost(t.Endpoint)
	}
	return t.Type
}

// Source types; plugin sources are "plugin:<name>".
const (
	SourcePostgres = "postgres"
	SourceFiles    = "files"
	SourceCommand  = "command"
	sourcePlugin   = "plugin:"
)

// Source is something opsd backs up. Fields apply to the types noted.
type Source struct {
	Type string `yaml:"type"` // postgres | files | command | plugin:<name>

	DSN    Secret `yaml:"dsn"`     // postgres, required
	PGDump string `yaml:"pg_dump"` // postgres; default "pg_dump" from PATH

	Paths         []string `yaml:"paths"`           // files, non-empty
	Exclude       []string `yaml:"exclude"`         // files; path.Match globs
	OneFileSystem bool     `yaml:"one_file_system"` // files

	Command   Argv              `yaml:"command"`   // command; argv, never a shell string
	Env       map[string]Secret `yaml:"env"`       // command
	Extension string            `yaml:"extension"` // command; suffix of the data object

	PluginConfig map[string]any `yaml:"config" opsd:"secret"` // plugin:<name>

	Schedule    Cron          `yaml:"schedule"`
	Targets     []string      `yaml:"targets"` // non-empty, names of targets
	Policy      Policy        `yaml:"policy"`
	Encryption  *Encryption   `yaml:"encryption"` // required; "none" must be explicit
	Compression Compression   `yaml:"compression"`
	Retention   Keep          `yaml:"retention"`
	Verify      Verify        `yaml:"verify"`
	Objectives  Objectives    `yaml:"objectives"`
	Timeout     time.Duration `yaml:"timeout"` // 0 = none
	// Missed says what happens at start when a scheduled slot passed while
	// opsd was down: MissedRun (default) runs one backup now, MissedSkip
	// waits for the next slot.
	Missed string `yaml:"missed"`
	// Overlap says what a scheduled slot does while the previous backup
	// of the source still runs: OverlapSkip (default) skips the slot,
	// OverlapQueue waits for it. Backups asked for through the API always
	// wait. Two backups of one source never run at once.
	Overlap string `yaml:"overlap"`
	// Jitter delays each scheduled backup by a random time up to this, so
	// many sources on one schedule do not start in the same second.
	Jitter time.Duration `yaml:"jitter"`
}

// Overlap policies.
const (
	OverlapSkip  = "skip"
	OverlapQueue = "queue"
)

// Missed-run policies.
const (
	MissedRun  = "run"
	MissedSkip = "skip"
)

// PluginName returns the plugin of a "plugin:<name>" source, or "".
func (s *Source) PluginName() string {
	name, ok := strings.CutPrefix(s.Type, sourcePlugin)
	if !ok {
		return ""
	}
	return name
}

// Argv is a command and its arguments. It is a list on purpose: opsd never
// runs a shell, so nothing in a config or a parameter can be interpreted by
// one.
type Argv []string

// Encryption says how a source's backups are encrypted. Either None is set
// (the config said `encryption: none`), or at least one recipient source:
// age_recipients, age_recipients_file or age_identity_file.
//
// age_identity_file with generate: true means opsd creates that age
// identity on first start if it is absent and encrypts to its recipient;
// this lets a quickstart config be encrypted without a key made by hand.
// Without generate, the identity file must exist.
type Encryption struct {
	None              bool     `yaml:"-"`
	AgeRecipients     []string `yaml:"age_recipients"`
	AgeRecipientsFile string   `yaml:"age_recipients_file"` // one recipient per line, # comments
	AgeIdentityFile   string   `yaml:"age_identity_file"`
	Generate          bool     `yaml:"generate"`

	// Recipients are the parsed recipients from age_recipients,
	// age_recipients_file and an existing age_identity_file. When the
	// identity file is still to be generated its recipient is not here.
	Recipients []age.Recipient `yaml:"-"`
}

// Compression configures zstd.
type Compression struct {
	ZstdLevel int `yaml:"zstd_level"` // 1..22, default 3
}

// Keep is a retention policy in restic's terms: a backup is kept if any
// rule keeps it. All zero means keep everything.
type Keep struct {
	Last    int           `yaml:"keep_last"`
	Hourly  int           `yaml:"keep_hourly"`
	Daily   int           `yaml:"keep_daily"`
	Weekly  int           `yaml:"keep_weekly"`
	Monthly int           `yaml:"keep_monthly"`
	Yearly  int           `yaml:"keep_yearly"`
	Within  time.Duration `yaml:"keep_within"`
}

// Verify schedules verification of a source's copies.
type Verify struct {
	Checksum Cron           `yaml:"checksum"` // re-read and hash every copy
	Restore  *VerifyRestore `yaml:"restore"`
}

// VerifyRestore schedules a test restore. For postgres sources Into is the
// scratch database and Checks run there; other sources restore into a
// scratch directory and compare the file index.
type VerifyRestore struct {
	Schedule Cron    `yaml:"schedule"`
	Into     Secret  `yaml:"into"`   // postgres, required
	Checks   []Check `yaml:"checks"` // postgres
}

// Check is a SQL query whose single numeric result must satisfy Expect.
type Check struct {
	SQL    string `yaml:"sql"`
	Expect string `yaml:"expect"` // e.g. "> 0", "== 42"
}

// Objectives are the recovery objectives alerts and drills compare with.
type Objectives struct {
	RPO time.Duration `yaml:"rpo"`
	RTO time.Duration `yaml:"rto"`
}

// Runbooks configures DR runbooks.
type Runbooks struct {
	Dir       string            `yaml:"dir"`
	Schedules []RunbookSchedule `yaml:"schedules"`
}

// RunbookSchedule runs a runbook on a cron schedule.
type RunbookSchedule struct {
	Runbook string            `yaml:"runbook"`
	Cron    Cron              `yaml:"cron"`
	Mode    string            `yaml:"mode"` // drill | live, default drill
	Params  map[string]Secret `yaml:"params"`
}

// Plugins configures go-plugin binaries.
type Plugins struct {
	Dir string `yaml:"dir"`
	// Pinned maps a plugin name to "sha256:<hex>"; a binary whose hash
	// differs is refused.
	Pinned map[string]string `yaml:"pinned"`
}

// Alerts configures rule evaluation and notification, in Prometheus and
// Alertmanager terms.
type Alerts struct {
	Datasources map[string]*Datasource `yaml:"datasources"`
	RuleFiles   []string               `yaml:"rule_files"` // globs
	// RuleDatasource names the datasource rule_files are evaluated
	// against; empty means the only datasource, or opsd's local TSDB
	// when there is none.
	RuleDatasource string `yaml:"rule_datasource"`
	// EvaluationInterval of rule groups that set no interval (default 15s).
	EvaluationInterval time.Duration        `yaml:"evaluation_interval"`
	Builtin            map[string]*Builtin  `yaml:"builtin"`
	Route              *Route               `yaml:"route"`
	InhibitRules       []InhibitRule        `yaml:"inhibit_rules"`
	Receivers          map[string]*Receiver `yaml:"receivers"`
	// DrillSilences silences the alerts of a source while a drill runs
	// on it (default true).
	DrillSilences *bool `yaml:"drill_silences"`
	// Heartbeat is the dead man's switch: a request to an external URL
	// every interval while opsd is healthy.
	Heartbeat *Heartbeat `yaml:"heartbeat"`
}

// Datasource is a Prometheus-compatible query API.
type Datasource struct {
	Type string `yaml:"type"` // prometheus (the default)
	URL  string `yaml:"url"`
	// At most one of bearer_token, bearer_token_file, basic_auth.
	BearerToken     Secret            `yaml:"bearer_token"`
	BearerTokenFile string            `yaml:"bearer_token_file"`
	BasicAuth       *BasicAuth        `yaml:"basic_auth"`
	Headers         map[string]Secret `yaml:"headers"`
	TLS             *ClientTLS        `yaml:"tls"`
	Timeout         time.Duration     `yaml:"timeout"` // one query; default 2m
}

// BasicAuth is HTTP basic authentication; one of Password, PasswordFile.
type BasicAuth struct {
	Username     string `yaml:"username"`
	Password     Secret `yaml:"password"`
	PasswordFile string `yaml:"password_file"`
}

// ClientTLS configures a TLS client: the CA to trust, an optional client
// certificate (both cert_file and key_file), the name to verify.
type ClientTLS struct {
	CAFile             string `yaml:"ca_file"`
	CertFile           string `yaml:"cert_file"`
	KeyFile            string `yaml:"key_file"`
	ServerName         string `yaml:"server_name"`
	InsecureSkipVerify bool   `yaml:"insecure_skip_verify"`
}

// Heartbeat pings an external dead man's switch (healthchecks.io, a
// PagerDuty heartbeat, a webhook) so someone learns when opsd is down.
// Exactly one of URL, URLFile.
type Heartbeat struct {
	URL      Secret        `yaml:"url"`
	URLFile  string        `yaml:"url_file"`
	Interval time.Duration `yaml:"interval"` // default 1m
	Method   string        `yaml:"method"`   // GET or POST (default)
}

// Builtin tunes one of opsd's built-in alert rules.
type Builtin struct {
	For      time.Duration     `yaml:"for"`
	Severity string            `yaml:"severity"`
	Disabled bool              `yaml:"disabled"`
	Labels   map[string]string `yaml:"labels"`
}

// BuiltinAlerts are the names of the built-in rules, the keys allowed in
// alerts.builtin.
var BuiltinAlerts = []string{
	"backup_stale", "backup_failed", "backup_never_succeeded",
	"verification_failed", "compliance_below_policy", "drill_failed",
	"rto_breached", "rpo_breached", "budget_threshold",
	"target_unreachable", "audit_unhealthy", "notifications_failing",
}

// Route is an Alertmanager routing tree node.
type Route struct {
	Receiver       string        `yaml:"receiver"` // required at the root
	GroupBy        []string      `yaml:"group_by"`
	GroupWait      time.Duration `yaml:"group_wait"`
	GroupInterval  time.Duration `yaml:"group_interval"`
	RepeatInterval time.Duration `yaml:"repeat_interval"`
	Matchers       []string      `yaml:"matchers"` // Alertmanager matcher syntax
	Continue       bool          `yaml:"continue"`
	Routes         []*Route      `yaml:"routes"`
}

// InhibitRule mutes target alerts while a source alert fires.
type InhibitRule struct {
	SourceMatchers []string `yaml:"source_matchers"`
	TargetMatchers []string `yaml:"target_matchers"`
	Equal          []string `yaml:"equal"`
}

// Receiver is a set of notification channels; at least one is configured.
type Receiver struct {
	Slack   *Slack   `yaml:"slack"`
	Email   *Email   `yaml:"email"`
	Webhook *Webhook `yaml:"webhook"`
}

// Slack posts through the Slack Web API; exactly one of Token, TokenFile.
type Slack struct {
	Token     Secret `yaml:"token"`
	TokenFile string `yaml:"token_file"`
	Channel   string `yaml:"channel"`
	APIURL    string `yaml:"api_url"` // empty = Slack's
}

// Email sends mail through a smarthost.
type Email struct {
	To               []string `yaml:"to"`
	From             string   `yaml:"from"`
	Smarthost        string   `yaml:"smarthost"` // host:port
	AuthUsername     string   `yaml:"auth_username"`
	AuthPassword     Secret   `yaml:"auth_password"`
	AuthPasswordFile string   `yaml:"auth_password_file"`
	// RequireTLS defaults to true: mail with alert details should not
	// cross the network in clear unless the config says so.
	RequireTLS *bool `yaml:"require_tls"`
}

// Webhook posts Alertmanager-style JSON; exactly one of URL, URLFile.
// The URL is a Secret because webhook URLs usually embed a token.
type Webhook struct {
	URL       Secret `yaml:"url"`
	URLFile   string `yaml:"url_file"`
	MaxAlerts int    `yaml:"max_alerts"` // 0 = all
	// SigningSecret (or the file holding it) signs each body with
	// HMAC-SHA256 in the X-Opsd-Signature header; at most one is set.
	SigningSecret     Secret `yaml:"signing_secret"`
	SigningSecretFile string `yaml:"signing_secret_file"`
}

// Cost configures cost tracking.
type Cost struct {
	Currency string             `yaml:"currency"` // ISO 4217, default USD
	Prices   string             `yaml:"prices"`   // "builtin" (default) or a price file
	Budgets  map[string]*Budget `yaml:"budgets"`
}

// Budget is a monthly spending limit with alert thresholds.
type Budget struct {
	Monthly float64         `yaml:"monthly"` // > 0, in Cost.Currency
	Scope   Scope           `yaml:"scope"`
	AlertOn []BudgetTrigger `yaml:"alert_on"`
}

// Scope is what a budget counts. An absent scope counts all targets.
type Scope struct {
	Targets TargetSet `yaml:"targets"`
	Sources []string  `yaml:"sources"`
}

// TargetSet is either all targets ("all") or the named ones.
type TargetSet struct {
	All   bool
	Names []string
}

// BudgetTrigger fires at a percentage of the budget; exactly one of
// Actual (month to date) and Forecast (end of month) is set.
type BudgetTrigger struct {
	Actual   Percent `yaml:"actual"`
	Forecast Percent `yaml:"forecast"`
}

// Load reads path, expands variables, decodes strictly, applies defaults
// and validates. On any problem it returns a Problems error listing every
// problem found; reading errors are reported the same way. getenv is
// injected so tests and `opsd config check` control the environment; an
// empty result counts as unset, and a nil getenv sets nothing.
func Load(path string, getenv func(string) string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, Problems{{File: path, Msg: "cannot read config: " + pathErrText(err)}}
	}
	return Parse(path, data, getenv)
}

// Parse is Load for a file already read. Relative paths resolve against
// filepath.Dir(filename).
func Parse(filename string, data []byte, getenv func(string) string) (*Config, error) {
	sum := sha256.Sum256(data)
	l := &loader{
		file:   filename,
		dir:    filepath.Dir(filename),
		getenv: getenv,
		nodes:  map[string]nodePos{},
	}
	l.w.ErrAt = l.errAt
	c := &Config{File: filename, hash: hex.EncodeToString(sum[:])}
	if !l.decodeFile(data, c) {
		return nil, l.problems()
	}
	l.applyDefaults(c)
	l.resolvePaths(c)
	l.validate(c)
	if len(l.probs) > 0 {
		return nil, l.problems()
	}
	return c, nil
}

// endpointHost is the host:port of an endpoint URL; the medium names the
// store, not the scheme or path used to reach it.
func endpointHost(endpoint string) string {
	if u, err := url.Parse(endpoint); err == nil && u.Host != "" {
		return u.Host
	}
	return endpoint
}
