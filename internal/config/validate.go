package config

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/mail"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode"

	"filippo.io/age"
	"github.com/prometheus/alertmanager/pkg/labels"

	"github.com/opsd-dev/opsd/internal/yamlnode"
)

const nameProblem = "invalid name: use lower-case letters, digits, '_' and '-', starting with a letter or digit"

var (
	// nameRE is what target and source names must look like: they appear
	// in object keys, metric labels and URLs, so they stay plain.
	nameRE       = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]*$`)
	paramRE      = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	labelRE      = regexp.MustCompile(`^[a-zA-Z_][a-zA-Z0-9_]*$`)
	expectRE     = regexp.MustCompile(`^(>|>=|<|<=|=|==|!=)\s*-?\d+(\.\d+)?$`)
	pinRE        = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)
	currencyRE   = regexp.MustCompile(`^[A-Z]{3}$`)
	extensionRE  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)
	s3Classes    = []string{"STANDARD", "STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING", "GLACIER", "GLACIER_IR", "DEEP_ARCHIVE", "REDUCED_REDUNDANCY", "EXPRESS_ONEZONE"}
	gcsClasses   = []string{"STANDARD", "NEARLINE", "COLDLINE", "ARCHIVE"}
	roles        = []string{"viewer", "operator", "admin"}
	logLevels    = []string{"debug", "info", "warn", "error"}
	logFormats   = []string{"json", "text"}
	runbookModes = []string{"drill", "live"}
)

// targetKeys lists the target keys that only some types accept; the rest
// apply to every type.
var targetKeys = map[string][]string{
	"path":               {TargetLocal},
	"bucket":             {TargetS3, TargetGCS},
	"region":             {TargetS3},
	"endpoint":           {TargetS3, TargetGCS},
	"path_style":         {TargetS3},
	"storage_class":      {TargetS3, TargetGCS},
	"sse":                {TargetS3},
	"kms_key_id":         {TargetS3},
	"prefix":             {TargetS3, TargetGCS},
	"object_lock":        {TargetS3},
	"credentials_file":   {TargetGCS},
	"retention":          {TargetGCS},
	"anonymous":          {TargetGCS},
	"part_size":          {TargetS3},
	"upload_concurrency": {TargetS3},
	"chunk_size":         {TargetGCS},
}

// sourceKeys is targetKeys for sources; "plugin" stands for plugin:<name>.
var sourceKeys = map[string][]string{
	"dsn":             {SourcePostgres},
	"pg_dump":         {SourcePostgres},
	"paths":           {SourceFiles},
	"exclude":         {SourceFiles},
	"one_file_system": {SourceFiles},
	"command":         {SourceCommand},
	"env":             {SourceCommand},
	"extension":       {SourceCommand},
	"config":          {"plugin"},
}

func (l *loader) validate(c *Config) {
	if c.DataDir == "" {
		l.errPath("data_dir", "must not be empty")
	}
	l.validateState(c)
	l.validateServer(c)
	l.validateAudit(c)
	for _, name := range slices.Sorted(maps.Keys(c.Targets)) {
		l.validateTarget(yamlnode.JoinKey("targets", name), name, c.Targets[name])
	}
	for _, name := range slices.Sorted(maps.Keys(c.Sources)) {
		l.validateSource(c, yamlnode.JoinKey("sources", name), name, c.Sources[name])
	}
	l.validateRunbooks(c)
	l.validatePlugins(c)
	l.validateAlerts(c)
	l.validateCost(c)
}

// require reports key missing from the mapping at parent, or set but empty.
func (l *loader) require(parent, key string, empty bool) bool {
	p := yamlnode.JoinKey(parent, key)
	if l.isBad(p) {
		return false
	}
	if !l.isSet(p) {
		l.errKey(parent, "missing required key %q", key)
		return false
	}
	if empty {
		l.errPath(p, "must not be empty")
		return false
	}
	return true
}

// oneOf reports v at path unless it is one of valid.
func (l *loader) oneOf(path, v string, valid []string) {
	switch {
	case slices.Contains(valid, v):
	case len(valid) == 1:
		l.errPath(path, "%s: must be %q", l.show(path, v), valid[0])
	default:
		l.errPath(path, "%s is not one of %s", l.show(path, v), strings.Join(valid, ", "))
	}
}

// positive reports a set duration or number that is not above zero.
func (l *loader) positive(path string, v float64) {
	if l.isSet(path) && v <= 0 {
		l.errPath(path, "must be greater than zero")
	}
}

// fileExists reports a path that cannot be found. It does not read the
// file: secrets may be readable only by the daemon's user.
func (l *loader) fileExists(path, p string) {
	if p == "" {
		return
	}
	if _, err := os.Stat(p); err != nil {
		l.errPath(path, "%s: %s", p, pathErrText(err))
	}
}

func (l *loader) cron(path string, spec Cron) {
	if !l.isSet(path) {
		return
	}
	if _, err := parseCron(string(spec)); err != nil {
		l.errPath(path, "invalid schedule %s: %v", l.show(path, string(spec)), err)
	}
}

// refs checks a list of names refers to existing entries, once each.
func (l *loader) refs(path, kind string, names []string, exists func(string) bool) {
	seen := map[string]bool{}
	for i, n := range names {
		p := yamlnode.JoinIndex(path, i)
		switch {
		case seen[n]:
			l.errPath(p, "%s %q listed twice", kind, n)
		case !exists(n):
			l.errPath(p, "unknown %s %q", kind, n)
		}
		seen[n] = true
	}
}

func (l *loader) hostPort(path, v string) {
	_, port, err := net.SplitHostPort(v)
	if err != nil {
		l.errPath(path, "%s is not host:port", l.show(path, v))
		return
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		l.errPath(path, "%s: port must be a number from 0 to 65535", l.show(path, v))
	}
}

// httpURL checks an absolute http(s) URL. secret URLs are never quoted:
// webhook URLs embed tokens, others may carry user:password.
func (l *loader) httpURL(path, v string) {
	u, err := url.Parse(v)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		l.errPath(path, "want an absolute http:// or https:// URL")
	}
}

func (l *loader) validateState(c *Config) {
	if l.isSet("state.postgres") {
		dsn := string(c.State.Postgres)
		if dsn == "" {
			l.errPath("state.postgres", "must not be empty (omit it to use embedded SQLite)")
		} else if !looksLikeDSN(dsn) {
			l.errPath("state.postgres", "not a PostgreSQL DSN (want postgres://... or key=value pairs)")
		}
	}
	if w := c.State.Workers; w < 1 || w > 256 {
		l.errPath("state.workers", "must be from 1 to 256")
	}
	if n := c.State.BackupConcurrency; n < 1 || n > 256 {
		l.errPath("state.backup_concurrency", "must be from 1 to 256")
	}
}

func looksLikeDSN(s string) bool {
	return strings.HasPrefix(s, "postgres://") || strings.HasPrefix(s, "postgresql://") || strings.Contains(s, "=")
}

func (l *loader) validateServer(c *Config) {
	s := &c.Server
	l.hostPort("server.listen", s.Listen)
	if t := s.TLS; t != nil {
		cert, key := l.isSet("server.tls.cert_file"), l.isSet("server.tls.key_file")
		switch {
		case cert && !key:
			l.errKey("server.tls", "cert_file needs key_file")
		case key && !cert:
			l.errKey("server.tls", "key_file needs cert_file")
		case !cert && !key:
			l.errKey("server.tls", "set cert_file and key_file")
		}
		l.fileExists("server.tls.cert_file", t.CertFile)
		l.fileExists("server.tls.key_file", t.KeyFile)
		l.fileExists("server.tls.client_ca_file", t.ClientCAFile)
	}
	names := map[string]string{}
	hashes := map[[32]byte]string{}
	for i := range s.Tokens {
		t := &s.Tokens[i]
		p := yamlnode.JoinIndex("server.tokens", i)
		if l.require(p, "name", t.Name == "") {
			if first, dup := names[t.Name]; dup {
				l.errPath(p+".name", "token name %q already used by %s", t.Name, first)
			}
			names[t.Name] = p
		}
		if l.require(p, "role", t.Role == "") {
			l.oneOf(p+".role", t.Role, roles)
		}
		hasHex, hasFile := l.isSet(p+".sha256"), l.isSet(p+".sha256_file")
		ok := false
		switch {
		case hasHex && hasFile:
			l.errKey(p, "set either sha256 or sha256_file, not both")
		case !hasHex && !hasFile:
			l.errKey(p, "missing sha256 or sha256_file")
		case hasHex:
			ok = l.tokenHash(p+".sha256", string(t.SHA256Hex), &t.SHA256)
		case hasFile:
			data, err := os.ReadFile(t.SHA256File)
			if err != nil {
				l.errPath(p+".sha256_file", "%s: %s", t.SHA256File, pathErrText(err))
				break
			}
			// The first field, so that sha256sum output works as is.
			fields := strings.Fields(string(data))
			first := ""
			if len(fields) > 0 {
				first = fields[0]
			}
			if !decodeHash(first, &t.SHA256) {
				l.errPath(p+".sha256_file", "%s does not hold 64 hex digits (the SHA-256 of the token)", t.SHA256File)
				break
			}
			ok = true
		}
		if ok {
			if other, dup := hashes[t.SHA256]; dup {
				l.errKey(p, "same token hash as %s; each token must be distinct", other)
			}
			hashes[t.SHA256] = p
		}
	}
	for _, d := range []struct {
		key string
		v   float64
	}{
		{"read_timeout", float64(s.ReadTimeout)},
		{"write_timeout", float64(s.WriteTimeout)},
		{"idle_timeout", float64(s.IdleTimeout)},
		{"read_header_timeout", float64(s.ReadHeaderTimeout)},
		{"shutdown_grace", float64(s.ShutdownGrace)},
		{"max_body_bytes", float64(s.MaxBodyBytes)},
		{"rate_limit.per_second", s.RateLimit.PerSecond},
		{"rate_limit.burst", float64(s.RateLimit.Burst)},
	} {
		l.positive("server."+d.key, d.v)
	}
	if s.ExternalURL != "" {
		l.httpURL("server.external_url", s.ExternalURL)
	}
	l.oneOf("server.log.level", s.Log.Level, logLevels)
	l.oneOf("server.log.format", s.Log.Format, logFormats)
}

func (l *loader) tokenHash(path, v string, out *[32]byte) bool {
	if !decodeHash(v, out) {
		// The value is not quoted: it might be the token itself.
		l.errPath(path, "want 64 hex digits (the SHA-256 of the token, not the token)")
		return false
	}
	return true
}

func decodeHash(s string, out *[32]byte) bool {
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != 32 {
		return false
	}
	copy(out[:], b)
	return true
}

func (l *loader) validateAudit(c *Config) {
	a := &c.Audit
	if a.SigningKeyFile == "" {
		l.errPath("audit.signing_key_file", "must not be empty")
	}
	switch {
	case a.Origin == "":
		l.errPath("audit.origin", "must not be empty")
	case strings.ContainsFunc(a.Origin, func(r rune) bool { return r == '+' || unicode.IsSpace(r) }):
		// The origin is also the signed note's key name, which cannot
		// hold these.
		l.errPath("audit.origin", "must not contain '+' or whitespace")
	}
	l.positive("audit.checkpoint_interval", float64(a.CheckpointInterval))
	l.positive("audit.segment_size", float64(a.SegmentSize))
	l.refs("audit.witnesses", "target", a.Witnesses, func(n string) bool { return c.Targets[n] != nil })
}

// typeKeys reports keys of the struct at path that its type does not
// accept.
func (l *loader) typeKeys(path string, v any, typ string, allowed map[string][]string) {
	t := reflect.TypeOf(v).Elem()
	for i := range t.NumField() {
		key := t.Field(i).Tag.Get("yaml")
		types, limited := allowed[key]
		if !limited || slices.Contains(types, typ) {
			continue
		}
		if p := yamlnode.JoinKey(path, key); l.isSet(p) {
			l.errKey(p, "not valid for type %s", typ)
		}
	}
}

func (l *loader) validateTarget(p, name string, t *Target) {
	if !nameRE.MatchString(name) {
		l.errKey(p, "%s", nameProblem)
	}
	if !l.require(p, "type", t.Type == "") {
		return
	}
	if !slices.Contains([]string{TargetLocal, TargetS3, TargetGCS}, t.Type) {
		l.errPath(p+".type", "%s is not one of local, s3, gcs", l.show(p+".type", t.Type))
		return
	}
	l.typeKeys(p, t, t.Type, targetKeys)
	switch t.Type {
	case TargetLocal:
		l.require(p, "path", t.Path == "")
	case TargetS3:
		l.require(p, "bucket", t.Bucket == "")
		if t.StorageClass != "" {
			l.oneOf(p+".storage_class", t.StorageClass, s3Classes)
		}
		if l.isSet(p + ".sse") {
			l.oneOf(p+".sse", t.SSE, []string{"AES256", "aws:kms"})
		}
		if l.isSet(p+".kms_key_id") && t.SSE != "aws:kms" {
			l.errKey(p+".kms_key_id", "needs sse: aws:kms")
		}
		if l.isSet(p+".part_size") && (t.PartSize < 5<<20 || t.PartSize > 5<<30) {
			l.errPath(p+".part_size", "must be between 5MiB and 5GiB (S3's part limits)")
		}
		if l.isSet(p + ".upload_concurrency") {
			l.positive(p+".upload_concurrency", float64(t.UploadConcurrency))
		}
		if ol := t.ObjectLock; ol != nil {
			op := p + ".object_lock"
			if l.require(op, "mode", ol.Mode == "") {
				l.oneOf(op+".mode", ol.Mode, []string{"GOVERNANCE", "COMPLIANCE"})
			}
			if l.require(op, "days", false) {
				l.positive(op+".days", float64(ol.Days))
			}
		}
	case TargetGCS:
		l.require(p, "bucket", t.Bucket == "")
		if t.StorageClass != "" {
			l.oneOf(p+".storage_class", t.StorageClass, gcsClasses)
		}
		l.fileExists(p+".credentials_file", t.CredentialsFile)
		if t.Anonymous && t.CredentialsFile != "" {
			l.errPath(p+".anonymous", "contradicts credentials_file")
		}
		if c := t.ChunkSize; c != nil && (*c < 0 || *c%(256<<10) != 0) {
			l.errPath(p+".chunk_size", "must be 0 (one streaming request) or a multiple of 256KiB")
		}
		if r := t.Retention; r != nil && l.require(p+".retention", "days", false) {
			l.positive(p+".retention.days", float64(r.Days))
		}
	}
	if t.Endpoint != "" {
		l.httpURL(p+".endpoint", t.Endpoint)
	}
	if strings.HasPrefix(t.Prefix, "/") {
		l.errPath(p+".prefix", "must not start with /")
	}
	if l.isSet(p+".medium") && t.MediumOverride == "" {
		l.errPath(p+".medium", "must not be empty")
	}
}

// immutable reports whether copies on t can be made immutable, as the
// fourth rule of 3-2-1-1-0 needs.
func (t *Target) immutable() bool {
	return t.ObjectLock != nil || t.Retention != nil
}

func (l *loader) validateSource(c *Config, p, name string, s *Source) {
	if !nameRE.MatchString(name) {
		l.errKey(p, "%s", nameProblem)
	}
	typ := ""
	if l.require(p, "type", s.Type == "") {
		switch {
		case s.Type == SourcePostgres || s.Type == SourceFiles || s.Type == SourceCommand:
			typ = s.Type
		case strings.HasPrefix(s.Type, sourcePlugin):
			if !nameRE.MatchString(s.PluginName()) {
				l.errPath(p+".type", "plugin name %q: %s", s.PluginName(), strings.TrimPrefix(nameProblem, "invalid name: "))
			}
			if c.Plugins.Dir == "" && !l.isBad("plugins.dir") {
				l.errPath(p+".type", "plugin sources need plugins.dir")
			}
			typ = "plugin"
		default:
			l.errPath(p+".type", "%s is not one of postgres, files, command, plugin:<name>", l.show(p+".type", s.Type))
		}
	}
	if typ != "" {
		l.typeKeys(p, s, typ, sourceKeys)
	}
	switch typ {
	case SourcePostgres:
		if l.require(p, "dsn", s.DSN == "") && !looksLikeDSN(string(s.DSN)) {
			l.errPath(p+".dsn", "not a PostgreSQL DSN (want postgres://... or key=value pairs)")
		}
	case SourceFiles:
		if l.require(p, "paths", len(s.Paths) == 0) {
			for i, fp := range s.Paths {
				if fp == "" {
					l.errPath(yamlnode.JoinIndex(p+".paths", i), "must not be empty")
				}
			}
		}
		for i, g := range s.Exclude {
			if _, err := path.Match(g, ""); err != nil {
				l.errPath(yamlnode.JoinIndex(p+".exclude", i), "invalid glob %q", g)
			}
		}
	case SourceCommand:
		if l.require(p, "command", len(s.Command) == 0) && s.Command[0] == "" {
			l.errPath(p+".command[0]", "must name a program")
		}
		for _, k := range slices.Sorted(maps.Keys(s.Env)) {
			if !paramRE.MatchString(k) {
				l.errKey(yamlnode.JoinKey(p+".env", k), "invalid environment variable name %q", k)
			}
		}
		if l.isSet(p+".extension") && !extensionRE.MatchString(s.Extension) {
			l.errPath(p+".extension", "%s: use letters, digits, '.', '_' and '-'", l.show(p+".extension", s.Extension))
		}
	}

	if l.require(p, "schedule", s.Schedule == "") {
		l.cron(p+".schedule", s.Schedule)
	}
	if l.require(p, "targets", len(s.Targets) == 0) {
		l.refs(p+".targets", "target", s.Targets, func(n string) bool { return c.Targets[n] != nil })
	}
	if l.isSet(p + ".policy") {
		if s.Policy.Rules() == 0 {
			l.errPath(p+".policy", "%s is not one of 3, 3-2, 3-2-1, 3-2-1-1, 3-2-1-1-0", l.show(p+".policy", string(s.Policy)))
		} else {
			l.policyReachable(c, p, s)
		}
	}
	if s.Encryption == nil {
		if !l.isBad(p + ".encryption") {
			l.errKey(p, "missing required key \"encryption\" (set age_recipients, or write `encryption: none` to store backups unencrypted)")
		}
	} else {
		l.validateEncryption(p+".encryption", s.Encryption)
	}
	if l.isSet(p+".compression.zstd_level") && (s.Compression.ZstdLevel < 1 || s.Compression.ZstdLevel > 22) {
		l.errPath(p+".compression.zstd_level", "must be from 1 to 22")
	}
	for _, k := range []struct {
		key string
		v   int
	}{
		{"keep_last", s.Retention.Last}, {"keep_hourly", s.Retention.Hourly},
		{"keep_daily", s.Retention.Daily}, {"keep_weekly", s.Retention.Weekly},
		{"keep_monthly", s.Retention.Monthly}, {"keep_yearly", s.Retention.Yearly},
	} {
		if k.v < -1 {
			l.errPath(p+".retention."+k.key, "must be a count, or -1 for unlimited")
		}
	}
	explicit := false
	for _, k := range []string{"keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly", "keep_within"} {
		explicit = explicit || l.isSet(p+".retention."+k)
		if l.bad[p+".retention."+k] {
			explicit = false // already reported; a zero here is not the user's
			break
		}
	}
	if explicit && s.Retention == (Keep{}) {
		l.errPath(p+".retention", "keeps nothing: every rule is zero, which opsd reads as keep everything; set a keep_ rule or remove retention")
	}
	l.cron(p+".verify.checksum", s.Verify.Checksum)
	if r := s.Verify.Restore; r != nil {
		rp := p + ".verify.restore"
		if l.require(rp, "schedule", r.Schedule == "") {
			l.cron(rp+".schedule", r.Schedule)
		}
		if typ == SourcePostgres {
			if l.require(rp, "into", r.Into == "") && !looksLikeDSN(string(r.Into)) {
				l.errPath(rp+".into", "not a PostgreSQL DSN (want postgres://... or key=value pairs)")
			}
		} else if typ != "" {
			for _, key := range []string{"into", "checks"} {
				if l.isSet(rp + "." + key) {
					l.errKey(rp+"."+key, "not valid for type %s", typ)
				}
			}
		}
		for i, ch := range r.Checks {
			cp := yamlnode.JoinIndex(rp+".checks", i)
			l.require(cp, "sql", strings.TrimSpace(ch.SQL) == "")
			if l.require(cp, "expect", ch.Expect == "") && !expectRE.MatchString(strings.TrimSpace(ch.Expect)) {
				l.errPath(cp+".expect", "%s: want an operator and a number, like \"> 0\"", l.show(cp+".expect", ch.Expect))
			}
		}
	}
	l.positive(p+".objectives.rpo", float64(s.Objectives.RPO))
	l.positive(p+".objectives.rto", float64(s.Objectives.RTO))
	l.positive(p+".timeout", float64(s.Timeout))
	if l.isSet(p + ".missed") {
		l.oneOf(p+".missed", s.Missed, []string{MissedRun, MissedSkip})
	}
	if l.isSet(p+".jitter") && s.Jitter < 0 {
		l.errPath(p+".jitter", "must not be negative")
	}
	if l.isSet(p + ".overlap") {
		l.oneOf(p+".overlap", s.Overlap, []string{OverlapSkip, OverlapQueue})
	}
}

// policyReachable reports a policy the source's targets can never meet,
// so the gap shows at config check rather than as a standing alert.
func (l *loader) policyReachable(c *Config, p string, s *Source) {
	var targets []*Target
	for _, n := range s.Targets {
		if t := c.Targets[n]; t != nil && !l.isBad(yamlnode.JoinKey("targets", n)) {
			targets = append(targets, t)
		}
	}
	if len(targets) != len(s.Targets) || l.isBad(p+".targets") {
		return // the dangling reference is reported already
	}
	media := map[string]bool{}
	offsite, immutable := false, false
	for _, t := range targets {
		media[t.Medium()] = true
		offsite = offsite || t.IsOffsite()
		immutable = immutable || t.immutable()
	}
	rules := s.Policy.Rules()
	switch {
	case rules >= 1 && len(targets) < 2:
		l.errPath(p+".policy", "policy %s needs at least 2 targets", s.Policy)
	case rules >= 2 && len(media) < 2:
		l.errPath(p+".policy", "policy %s needs targets on at least 2 distinct media", s.Policy)
	case rules >= 3 && !offsite:
		l.errPath(p+".policy", "policy %s needs an offsite target", s.Policy)
	case rules >= 4 && !immutable:
		l.errPath(p+".policy", "policy %s needs an immutable target (s3 object_lock or gcs retention)", s.Policy)
	}
}

func (l *loader) validateEncryption(p string, e *Encryption) {
	if e.None {
		return
	}
	hasList := l.isSet(p + ".age_recipients")
	hasFile := l.isSet(p + ".age_recipients_file")
	hasIdentity := l.isSet(p + ".age_identity_file")
	if !hasList && !hasFile && !hasIdentity {
		if !l.isBad(p) {
			l.errPath(p, "set age_recipients, age_recipients_file or age_identity_file, or write `encryption: none`")
		}
		return
	}
	if hasList && len(e.AgeRecipients) == 0 {
		l.errPath(p+".age_recipients", "must not be empty")
	}
	for i, r := range e.AgeRecipients {
		rec, err := age.ParseX25519Recipient(strings.TrimSpace(r))
		if err != nil {
			l.errPath(yamlnode.JoinIndex(p+".age_recipients", i), "not an age X25519 recipient (age1...)")
			continue
		}
		e.Recipients = append(e.Recipients, rec)
	}
	if hasFile {
		recs, err := readRecipients(e.AgeRecipientsFile)
		if err != nil {
			l.errPath(p+".age_recipients_file", "%s: %v", e.AgeRecipientsFile, err)
		}
		e.Recipients = append(e.Recipients, recs...)
	}
	if l.isSet(p+".generate") && !hasIdentity {
		l.errKey(p+".generate", "needs age_identity_file")
	}
	if hasIdentity {
		rec, err := readIdentityRecipient(e.AgeIdentityFile)
		switch {
		case errors.Is(err, os.ErrNotExist) && e.Generate:
			// opsd makes it on first start.
		case errors.Is(err, os.ErrNotExist):
			l.errPath(p+".age_identity_file", "%s: %s (add generate: true to create it on first start)", e.AgeIdentityFile, pathErrText(err))
		case err != nil:
			l.errPath(p+".age_identity_file", "%s: %s", e.AgeIdentityFile, pathErrText(err))
		default:
			e.Recipients = append(e.Recipients, rec)
		}
	}
}

// readRecipients parses a recipients file: one X25519 recipient per line,
// blank lines and # comments ignored, as age -R reads it.
func readRecipients(name string) ([]age.Recipient, error) {
	data, err := os.ReadFile(name)
	if err != nil {
		return nil, errors.New(pathErrText(err))
	}
	var recs []age.Recipient
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		r, err := age.ParseX25519Recipient(line)
		if err != nil {
			return nil, fmt.Errorf("line %d is not an age X25519 recipient", n)
		}
		recs = append(recs, r)
	}
	if len(recs) == 0 {
		return nil, errors.New("no recipients in file")
	}
	return recs, nil
}

// readIdentityRecipient returns the recipient of the first X25519
// identity in an age identity file. Errors never quote the file: it holds
// a secret key.
func readIdentityRecipient(name string) (age.Recipient, error) {
	data, err := os.ReadFile(name)
	if err != nil {
		return nil, err
	}
	for line := range strings.Lines(string(data)) {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, "AGE-SECRET-KEY-1") {
			continue
		}
		id, err := age.ParseX25519Identity(line)
		if err != nil {
			return nil, errors.New("malformed age identity")
		}
		return id.Recipient(), nil
	}
	return nil, errors.New("no age X25519 identity in file")
}

func (l *loader) validateRunbooks(c *Config) {
	r := &c.Runbooks
	if len(r.Schedules) > 0 && r.Dir == "" && !l.isBad("runbooks") {
		l.errKey("runbooks", "missing required key \"dir\" (schedules name runbooks in it)")
	}
	for i, s := range r.Schedules {
		p := yamlnode.JoinIndex("runbooks.schedules", i)
		if l.require(p, "runbook", s.Runbook == "") && !nameRE.MatchString(s.Runbook) {
			l.errPath(p+".runbook", "%s: %s", l.show(p+".runbook", s.Runbook), nameProblem)
		}
		if l.require(p, "cron", s.Cron == "") {
			l.cron(p+".cron", s.Cron)
		}
		l.oneOf(p+".mode", s.Mode, runbookModes)
		for _, k := range slices.Sorted(maps.Keys(s.Params)) {
			if !paramRE.MatchString(k) {
				l.errKey(yamlnode.JoinKey(p+".params", k), "invalid parameter name %q", k)
			}
		}
	}
}

func (l *loader) validatePlugins(c *Config) {
	pl := &c.Plugins
	if len(pl.Pinned) > 0 && pl.Dir == "" && !l.isBad("plugins") {
		l.errKey("plugins", "missing required key \"dir\" (plugins are pinned)")
	}
	for _, name := range slices.Sorted(maps.Keys(pl.Pinned)) {
		p := yamlnode.JoinKey("plugins.pinned", name)
		if !nameRE.MatchString(name) {
			l.errKey(p, "%s", nameProblem)
		}
		if !pinRE.MatchString(pl.Pinned[name]) {
			l.errPath(p, "want sha256:<64 lower-case hex digits>, as `opsd plugin hash` prints")
		}
	}
}

func (l *loader) validateAlerts(c *Config) {
	a := &c.Alerts
	for _, name := range slices.Sorted(maps.Keys(a.Datasources)) {
		p := yamlnode.JoinKey("alerts.datasources", name)
		ds := a.Datasources[name]
		l.oneOf(p+".type", ds.Type, []string{"prometheus"})
		if l.require(p, "url", ds.URL == "") {
			l.httpURL(p+".url", ds.URL)
		}
		auth := 0
		for _, k := range []string{"bearer_token", "bearer_token_file", "basic_auth"} {
			if l.isSet(p + "." + k) {
				auth++
			}
		}
		if auth > 1 {
			l.errKey(p, "set at most one of bearer_token, bearer_token_file, basic_auth")
		}
		l.fileExists(p+".bearer_token_file", ds.BearerTokenFile)
		if ba := ds.BasicAuth; ba != nil {
			bp := p + ".basic_auth"
			l.require(bp, "username", ba.Username == "")
			if l.isSet(bp+".password") && l.isSet(bp+".password_file") {
				l.errKey(bp, "set either password or password_file, not both")
			}
			l.fileExists(bp+".password_file", ba.PasswordFile)
		}
		for _, h := range slices.Sorted(maps.Keys(ds.Headers)) {
			if !httpHeaderRE.MatchString(h) {
				l.errKey(yamlnode.JoinKey(p+".headers", h), "invalid HTTP header name %q", h)
			}
		}
		l.clientTLS(p+".tls", ds.TLS)
		l.positive(p+".timeout", float64(ds.Timeout))
	}
	for i, g := range a.RuleFiles {
		p := yamlnode.JoinIndex("alerts.rule_files", i)
		if _, err := filepath.Match(g, ""); err != nil || g == "" {
			l.errPath(p, "invalid glob %s", l.show(p, g))
		}
	}
	if a.RuleDatasource != "" && a.Datasources[a.RuleDatasource] == nil {
		l.errPath("alerts.rule_datasource", "unknown datasource %q%s", a.RuleDatasource, Suggest(a.RuleDatasource, slices.Sorted(maps.Keys(a.Datasources))))
	}
	if a.RuleDatasource == "" && len(a.Datasources) > 1 && len(a.RuleFiles) > 0 {
		l.errKey("alerts", "several datasources: say which one rule_files query with rule_datasource")
	}
	l.positive("alerts.evaluation_interval", float64(a.EvaluationInterval))
	if hb := a.Heartbeat; hb != nil {
		hp := "alerts.heartbeat"
		if l.exactlyOne(hp, "url", "url_file") && hb.URL != "" {
			l.httpURL(hp+".url", string(hb.URL))
		}
		l.fileExists(hp+".url_file", hb.URLFile)
		l.positive(hp+".interval", float64(hb.Interval))
		l.oneOf(hp+".method", hb.Method, []string{"GET", "POST"})
	}
	for _, name := range slices.Sorted(maps.Keys(a.Builtin)) {
		p := yamlnode.JoinKey("alerts.builtin", name)
		b := a.Builtin[name]
		if !slices.Contains(BuiltinAlerts, name) {
			l.errKey(p, "unknown built-in alert %q%s", name, Suggest(name, BuiltinAlerts))
			continue
		}
		if l.isSet(p+".severity") && b.Severity == "" {
			l.errPath(p+".severity", "must not be empty")
		}
		l.labelNames(p+".labels", slices.Sorted(maps.Keys(b.Labels)))
	}
	receiverExists := func(n string) bool { return a.Receivers[n] != nil }
	if a.Route == nil {
		if len(a.Receivers) > 0 && !l.isBad("alerts.route") {
			l.errKey("alerts", "missing required key \"route\" (receivers are configured)")
		}
	} else {
		if !l.isSet("alerts.route.receiver") {
			l.errKey("alerts.route", "missing required key \"receiver\" (the root route needs one)")
		}
		l.validateRoute("alerts.route", a.Route, receiverExists)
	}
	for i, r := range a.InhibitRules {
		p := yamlnode.JoinIndex("alerts.inhibit_rules", i)
		if l.require(p, "source_matchers", len(r.SourceMatchers) == 0) {
			l.matchers(p+".source_matchers", r.SourceMatchers)
		}
		if l.require(p, "target_matchers", len(r.TargetMatchers) == 0) {
			l.matchers(p+".target_matchers", r.TargetMatchers)
		}
		l.labelList(p+".equal", r.Equal)
	}
	for _, name := range slices.Sorted(maps.Keys(a.Receivers)) {
		l.validateReceiver(yamlnode.JoinKey("alerts.receivers", name), a.Receivers[name])
	}
}

func (l *loader) validateRoute(p string, r *Route, exists func(string) bool) {
	if r.Receiver != "" && !exists(r.Receiver) {
		l.errPath(p+".receiver", "unknown receiver %q", r.Receiver)
	}
	for i, g := range r.GroupBy {
		if g != "..." && !labelRE.MatchString(g) {
			l.errPath(yamlnode.JoinIndex(p+".group_by", i), "invalid label name %q", g)
		}
	}
	l.positive(p+".group_wait", float64(r.GroupWait))
	l.positive(p+".group_interval", float64(r.GroupInterval))
	l.positive(p+".repeat_interval", float64(r.RepeatInterval))
	l.matchers(p+".matchers", r.Matchers)
	for i, child := range r.Routes {
		if child != nil {
			l.validateRoute(yamlnode.JoinIndex(p+".routes", i), child, exists)
		}
	}
}

// clientTLS checks a TLS client block: files exist, cert and key come
// together.
func (l *loader) clientTLS(p string, t *ClientTLS) {
	if t == nil {
		return
	}
	l.fileExists(p+".ca_file", t.CAFile)
	l.fileExists(p+".cert_file", t.CertFile)
	l.fileExists(p+".key_file", t.KeyFile)
	if (t.CertFile == "") != (t.KeyFile == "") {
		l.errKey(p, "cert_file and key_file go together")
	}
}

var httpHeaderRE = regexp.MustCompile("^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")

func (l *loader) matchers(p string, ms []string) {
	for i, m := range ms {
		if _, err := labels.ParseMatcher(m); err != nil {
			l.errPath(yamlnode.JoinIndex(p, i), "invalid matcher %q: %v", m, err)
		}
	}
}

func (l *loader) labelList(p string, names []string) {
	for i, n := range names {
		if !labelRE.MatchString(n) {
			l.errPath(yamlnode.JoinIndex(p, i), "invalid label name %q", n)
		}
	}
}

func (l *loader) labelNames(p string, names []string) {
	for _, n := range names {
		if !labelRE.MatchString(n) {
			l.errKey(yamlnode.JoinKey(p, n), "invalid label name %q", n)
		}
	}
}

func (l *loader) validateReceiver(p string, r *Receiver) {
	if r.Slack == nil && r.Email == nil && r.Webhook == nil {
		if !l.isBad(p) {
			l.errKey(p, "configure at least one of slack, email, webhook")
		}
		return
	}
	if s := r.Slack; s != nil {
		sp := p + ".slack"
		l.exactlyOne(sp, "token", "token_file")
		l.fileExists(sp+".token_file", s.TokenFile)
		l.require(sp, "channel", s.Channel == "")
		if s.APIURL != "" {
			l.httpURL(sp+".api_url", s.APIURL)
		}
	}
	if e := r.Email; e != nil {
		ep := p + ".email"
		if l.require(ep, "to", len(e.To) == 0) {
			for i, to := range e.To {
				l.address(yamlnode.JoinIndex(ep+".to", i), to)
			}
		}
		if l.require(ep, "from", e.From == "") {
			l.address(ep+".from", e.From)
		}
		if l.require(ep, "smarthost", e.Smarthost == "") {
			l.hostPort(ep+".smarthost", e.Smarthost)
		}
		pw, pwFile := l.isSet(ep+".auth_password"), l.isSet(ep+".auth_password_file")
		if pw && pwFile {
			l.errKey(ep, "set either auth_password or auth_password_file, not both")
		}
		if (pw || pwFile) && e.AuthUsername == "" {
			l.errKey(ep, "a password needs auth_username")
		}
		l.fileExists(ep+".auth_password_file", e.AuthPasswordFile)
	}
	if w := r.Webhook; w != nil {
		wp := p + ".webhook"
		if l.exactlyOne(wp, "url", "url_file") && w.URL != "" {
			l.httpURL(wp+".url", string(w.URL))
		}
		l.fileExists(wp+".url_file", w.URLFile)
		if l.isSet(wp+".signing_secret") && l.isSet(wp+".signing_secret_file") {
			l.errKey(wp, "set either signing_secret or signing_secret_file, not both")
		}
		l.fileExists(wp+".signing_secret_file", w.SigningSecretFile)
		if w.MaxAlerts < 0 {
			l.errPath(wp+".max_alerts", "must not be negative")
		}
	}
}

// exactlyOne reports unless exactly one of two alternative keys is set.
func (l *loader) exactlyOne(p, a, b string) bool {
	hasA, hasB := l.isSet(p+"."+a), l.isSet(p+"."+b)
	switch {
	case hasA && hasB:
		l.errKey(p, "set either %s or %s, not both", a, b)
	case !hasA && !hasB:
		l.errKey(p, "missing %s or %s", a, b)
	default:
		return true
	}
	return false
}

func (l *loader) address(p, v string) {
	if _, err := mail.ParseAddress(v); err != nil {
		l.errPath(p, "invalid address %s: %s", l.show(p, v), strings.TrimPrefix(err.Error(), "mail: "))
	}
}

func (l *loader) validateCost(c *Config) {
	co := &c.Cost
	if !currencyRE.MatchString(co.Currency) {
		l.errPath("cost.currency", "%s: want an ISO 4217 code like USD", l.show("cost.currency", co.Currency))
	}
	if co.Prices != BuiltinPrices {
		if co.Prices == "" {
			l.errPath("cost.prices", "want \"builtin\" or a price file")
		}
		l.fileExists("cost.prices", co.Prices)
	}
	for _, name := range slices.Sorted(maps.Keys(co.Budgets)) {
		p := yamlnode.JoinKey("cost.budgets", name)
		b := co.Budgets[name]
		if l.require(p, "monthly", false) {
			l.positive(p+".monthly", b.Monthly)
		}
		l.refs(p+".scope.targets", "target", b.Scope.Targets.Names, func(n string) bool { return c.Targets[n] != nil })
		l.refs(p+".scope.sources", "source", b.Scope.Sources, func(n string) bool { return c.Sources[n] != nil })
		for i, t := range b.AlertOn {
			tp := yamlnode.JoinIndex(p+".alert_on", i)
			if l.exactlyOne(tp, "actual", "forecast") {
				l.positive(tp+".actual", float64(t.Actual))
				l.positive(tp+".forecast", float64(t.Forecast))
			}
		}
	}
}
