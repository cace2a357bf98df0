// Package rules evaluates Prometheus alerting and recording rules with
// Prometheus's own rules manager and PromQL engine (SPEC §7).
//
// Two query paths exist. The local path is an embedded TSDB (Prometheus's
// tsdb package, with its WAL) in data_dir/alerts/tsdb with short retention,
// fed every few seconds by a Collector that reads opsd's own metrics
// registry; the built-in rules (BuiltinRules) always run there, so they
// need no Prometheus. The remote path sends the user's rule files to a
// Prometheus-compatible query API, as Thanos Ruler does. Both write their
// ALERTS and ALERTS_FOR_STATE series to the local TSDB, so the `for` state
// of pending and firing alerts survives a restart exactly as in Prometheus
// (OutageTolerance 1h, ForGracePeriod 10m).
package rules

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/promql/parser"
	promrules "github.com/prometheus/prometheus/rules"
	"github.com/prometheus/prometheus/tsdb"
	"go.yaml.in/yaml/v3"

	"github.com/opsd-dev/opsd/internal/config"
)

// Defaults of Options, those of Prometheus where Prometheus has one.
const (
	DefaultRetention       = 6 * time.Hour
	DefaultEvalInterval    = 15 * time.Second
	DefaultOutageTolerance = time.Hour        // --rules.alert.for-outage-tolerance
	DefaultForGracePeriod  = 10 * time.Minute // --rules.alert.for-grace-period
	DefaultResendDelay     = time.Minute      // --rules.alert.resend-delay
	DefaultLookbackDelta   = 5 * time.Minute  // --query.lookback-delta
)

// Options configure an Evaluator.
type Options struct {
	// Dir holds the local TSDB, normally data_dir/alerts/tsdb; "" uses a
	// temporary directory that Close removes (nothing kept across
	// restarts).
	Dir string
	// Retention of the local TSDB; 0 means DefaultRetention.
	Retention time.Duration
	// Gatherer is opsd's own registry, read every CollectInterval
	// (0 means DefaultCollectInterval).
	Gatherer        prometheus.Gatherer
	CollectInterval time.Duration
	// TargetLabels are attached to collected series as a scrape target's
	// would be; default {job="opsd", instance=<hostname>}.
	TargetLabels map[string]string
	// EvalInterval is the evaluation interval of groups that set none;
	// 0 means DefaultEvalInterval.
	EvalInterval time.Duration

	// Builtin tunes the built-in rules (alerts.builtin); DisableBuiltin
	// leaves them out entirely.
	Builtin        map[string]*config.Builtin
	DisableBuiltin bool
	// RuleFiles are the user's rule files (globs allowed, alerts.rule_files).
	RuleFiles []string
	// Remote, if set, is the datasource RuleFiles are evaluated against;
	// nil evaluates them on the local path.
	Remote *Remote

	ExternalLabels map[string]string
	// ExternalURL is $externalURL in templates and the alert's generator URL.
	ExternalURL string
	// Notify receives firing and resolved alerts after every evaluation,
	// resent every ResendDelay as Prometheus sends them to Alertmanager.
	Notify promrules.NotifyFunc

	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// Evaluator runs the collector and the rules managers of both paths.
type Evaluator struct {
	opts    Options
	db      *tsdb.DB
	tmpDir  string // Dir was "": removed by Close
	engine  *promql.Engine
	builtin *rulefmt.RuleGroups
	files   []string
	logger  *slog.Logger
	metrics *promrules.Metrics

	mu       sync.Mutex
	managers []*promrules.Manager
	paths    []string // "local" or "remote", one per manager
	remote   *promrules.Manager
	local    *promrules.Manager

	closeOnce sync.Once
	closeErr  error
}

// New checks the rule files, reporting every problem with its file and
// line, and opens the local TSDB (replaying its WAL). Run starts
// evaluating and closes the TSDB when it returns; Close closes it for an
// Evaluator that never runs.
func New(opts Options) (*Evaluator, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Registerer == nil {
		opts.Registerer = prometheus.NewRegistry()
	}
	if opts.Retention <= 0 {
		opts.Retention = DefaultRetention
	}
	if opts.EvalInterval <= 0 {
		opts.EvalInterval = DefaultEvalInterval
	}
	if opts.Notify == nil {
		opts.Notify = func(context.Context, string, ...*promrules.Alert) {}
	}
	if opts.TargetLabels == nil {
		host, _ := os.Hostname()
		opts.TargetLabels = map[string]string{"job": "opsd", "instance": host}
	}
	e := &Evaluator{opts: opts, logger: opts.Logger.With("component", "rules")}

	if !opts.DisableBuiltin {
		b, err := ParseBuiltin(opts.Builtin)
		if err != nil {
			return nil, err
		}
		e.builtin = b
	}
	files, err := expandRuleFiles(opts.RuleFiles)
	if err != nil {
		return nil, err
	}
	if err := CheckRuleFiles(files...); err != nil {
		return nil, err
	}
	e.files = files

	dir := opts.Dir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "opsd-rules-tsdb-"); err != nil {
			return nil, fmt.Errorf("open local rules storage: %w", err)
		}
		e.tmpDir = dir
	}
	db, err := openLocalTSDB(dir, opts.Retention, e.logger)
	if err != nil {
		if e.tmpDir != "" {
			os.RemoveAll(e.tmpDir)
		}
		return nil, fmt.Errorf("open local rules storage %s: %w", dir, err)
	}
	e.db = db
	e.engine = NewEngine(e.logger, opts.Registerer)
	e.metrics = promrules.NewGroupMetrics(opts.Registerer)
	return e, nil
}

// NewEngine returns a PromQL engine with Prometheus's default settings.
func NewEngine(logger *slog.Logger, reg prometheus.Registerer) *promql.Engine {
	return promql.NewEngine(promql.EngineOpts{
		Logger:               logger,
		Reg:                  reg,
		MaxSamples:           50_000_000, // --query.max-samples
		Timeout:              2 * time.Minute,
		LookbackDelta:        DefaultLookbackDelta,
		EnableAtModifier:     true,
		EnableNegativeOffset: true,
	})
}

// Storage is the local TSDB, for queries of the HTTP API.
func (e *Evaluator) Storage() *tsdb.DB { return e.db }

// Close closes the local TSDB (writing out its head's WAL) and removes it if
// it was temporary. Run closes it when it returns; a second Close does
// nothing.
func (e *Evaluator) Close() error {
	e.closeOnce.Do(func() {
		e.closeErr = e.db.Close()
		if e.tmpDir != "" {
			e.closeErr = errors.Join(e.closeErr, os.RemoveAll(e.tmpDir))
		}
	})
	return e.closeErr
}

// Engine is the PromQL engine of the local path.
func (e *Evaluator) Engine() *promql.Engine { return e.engine }

// Groups returns every rule group with its rules, health, last error and
// evaluation times, for /api/v1/rules and /api/v1/alerts; nil before Run.
func (e *Evaluator) Groups() []*promrules.Group {
	e.mu.Lock()
	defer e.mu.Unlock()
	var gs []*promrules.Group
	for _, m := range e.managers {
		gs = append(gs, m.RuleGroups()...)
	}
	return gs
}

// Run collects and evaluates until ctx ends, then stops the managers and
// the collector and closes the local TSDB.
func (e *Evaluator) Run(ctx context.Context) (err error) {
	defer func() {
		if cerr := e.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("close local rules storage: %w", cerr))
		}
	}()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	local := e.newManager(ctx, promrules.EngineQueryFunc(e.engine, e.db), "local")
	var remote *promrules.Manager
	if e.opts.Remote != nil && len(e.files) > 0 {
		qf, err := NewRemoteQueryFunc(*e.opts.Remote)
		if err != nil {
			return err
		}
		remote = e.newManager(context.WithValue(ctx, remoteBaseKey{}, e.opts.Remote.URL), qf, "remote")
	}

	e.mu.Lock()
	localFiles, remoteFiles := e.fileSets(remote != nil)
	interval := e.opts.EvalInterval
	e.mu.Unlock()
	if err := e.update(local, remote, interval, localFiles, remoteFiles); err != nil {
		return err
	}
	managers := []*promrules.Manager{local}
	if remote != nil {
		managers = append(managers, remote)
	}
	e.mu.Lock()
	e.managers = managers
	e.local, e.remote = local, remote
	e.paths = []string{"local"}
	if remote != nil {
		e.paths = append(e.paths, "remote")
	}
	e.mu.Unlock()

	var wg sync.WaitGroup
	for _, m := range managers {
		wg.Go(m.Run)
	}
	if e.opts.Gatherer != nil {
		c := NewCollector(e.opts.Gatherer, e.db, e.opts.TargetLabels, e.logger)
		wg.Go(func() { _ = c.Run(ctx, e.opts.CollectInterval) })
	}
	<-ctx.Done()
	for _, m := range managers {
		m.Stop()
	}
	wg.Wait()
	// The TSDB closes (deferred) after the managers' last ALERTS_FOR_STATE
	// and the collector's last samples.
	return nil
}

// fileSets splits the rule identifiers between the paths: the built-in
// rules always run locally, the user's files remotely when a datasource is
// set. e.mu is held.
func (e *Evaluator) fileSets(hasRemote bool) (local, remote []string) {
	if e.builtin != nil {
		local = append(local, BuiltinIdentifier)
	}
	if hasRemote {
		return local, e.files
	}
	return append(local, e.files...), nil
}

func (e *Evaluator) update(local, remote *promrules.Manager, interval time.Duration, localFiles, remoteFiles []string) error {
	extLabels := labels.FromMap(e.opts.ExternalLabels)
	if err := local.Update(interval, localFiles, extLabels, e.opts.ExternalURL, nil); err != nil {
		return fmt.Errorf("load local rules: %w", err)
	}
	if remote != nil {
		if err := remote.Update(interval, remoteFiles, extLabels, e.opts.ExternalURL, nil); err != nil {
			return fmt.Errorf("load rules: %w", err)
		}
	}
	return nil
}

// Reload applies new built-in tuning, rule files and evaluation interval,
// whole or not at all: every file is checked first, and on error the
// running rules stay. Alert state carries over as in Prometheus (groups
// that keep their name and file keep their alerts). A change of datasource
// (Options.Remote) needs a restart; Reload refuses it.
func (e *Evaluator) Reload(builtin map[string]*config.Builtin, disableBuiltin bool, ruleFiles []string, remote *Remote, interval time.Duration) error {
	if (remote == nil) != (e.opts.Remote == nil) || (remote != nil && remote.URL != e.opts.Remote.URL) {
		return errors.New("alerts datasource changed: restart opsd to apply it")
	}
	var b *rulefmt.RuleGroups
	if !disableBuiltin {
		var err error
		if b, err = ParseBuiltin(builtin); err != nil {
			return err
		}
	}
	files, err := expandRuleFiles(ruleFiles)
	if err != nil {
		return err
	}
	if err := CheckRuleFiles(files...); err != nil {
		return err
	}
	if interval <= 0 {
		interval = DefaultEvalInterval
	}
	e.mu.Lock()
	local, rm := e.local, e.remote
	if remote != nil && len(files) > 0 && rm == nil {
		e.mu.Unlock()
		return errors.New("rule files for the datasource were added: restart opsd to apply them")
	}
	e.builtin, e.files, e.opts.EvalInterval = b, files, interval
	localFiles, remoteFiles := e.fileSets(rm != nil)
	e.mu.Unlock()
	if local == nil { // not running yet: Run picks the new set up
		return nil
	}
	return e.update(local, rm, interval, localFiles, remoteFiles)
}

func (e *Evaluator) newManager(ctx context.Context, qf promrules.QueryFunc, path string) *promrules.Manager {
	var ext *url.URL
	if e.opts.ExternalURL != "" {
		ext, _ = url.Parse(e.opts.ExternalURL)
	}
	p := parser.NewParser(parser.Options{})
	return promrules.NewManager(&promrules.ManagerOptions{
		ExternalURL:     ext,
		QueryFunc:       qf,
		NotifyFunc:      e.opts.Notify,
		Context:         ctx,
		AppendableV2:    e.db,
		Queryable:       e.db,
		Logger:          e.logger.With("path", path),
		OutageTolerance: DefaultOutageTolerance,
		ForGracePeriod:  DefaultForGracePeriod,
		ResendDelay:     DefaultResendDelay,
		GroupLoader:     groupLoader{e: e, parser: p, logger: e.logger},
		Metrics:         e.metrics,
		Parser:          p,
	})
}

// groupLoader serves the (tuned) built-in rules under BuiltinIdentifier and
// reads every other identifier as a rule file.
type groupLoader struct {
	e      *Evaluator
	parser parser.Parser
	logger *slog.Logger
}

func (l groupLoader) Load(identifier string, ignoreUnknownFields bool, scheme model.ValidationScheme) (*rulefmt.RuleGroups, []error) {
	if identifier == BuiltinIdentifier {
		l.e.mu.Lock()
		b := l.e.builtin
		l.e.mu.Unlock()
		if b != nil {
			return b, nil
		}
	}
	return rulefmt.ParseFile(identifier, ignoreUnknownFields, scheme, l.parser, l.logger)
}

func (l groupLoader) Parse(query string) (parser.Expr, error) {
	return l.parser.ParseExpr(query)
}

// Check parses the tuned built-in rules and the rule files (globs) as New
// and Reload do, returning every problem with its file and line.
func Check(builtin map[string]*config.Builtin, disableBuiltin bool, ruleFiles []string) error {
	if !disableBuiltin {
		if _, err := ParseBuiltin(builtin); err != nil {
			return err
		}
	}
	files, err := expandRuleFiles(ruleFiles)
	if err != nil {
		return err
	}
	return CheckRuleFiles(files...)
}

// CheckRuleFiles parses rule files as Prometheus loads them and returns
// every problem, each naming its file (and line where rulefmt knows it).
func CheckRuleFiles(files ...string) error {
	var errs []error
	p := parser.NewParser(parser.Options{})
	for _, f := range files {
		_, es := rulefmt.ParseFile(f, false, model.UTF8Validation, p, slog.New(slog.DiscardHandler))
		if len(es) > 0 {
			es = positioned(f, es)
		}
		errs = append(errs, es...)
	}
	return errors.Join(errs...)
}

// positioned gives a line and column to the errors rulefmt reports without
// one (a template error, a repeated group name), found in the file's YAML.
func positioned(file string, errs []error) []error {
	b, err := os.ReadFile(file)
	if err != nil {
		return errs
	}
	var doc yaml.Node
	if yaml.Unmarshal(b, &doc) != nil || len(doc.Content) == 0 {
		return errs
	}
	groups := mapValue(doc.Content[0], "groups")
	if groups == nil || groups.Kind != yaml.SequenceNode {
		return errs
	}
	// group name → the mapping nodes of the groups of that name, in order.
	byName := map[string][]*yaml.Node{}
	for _, g := range groups.Content {
		if n := mapValue(g, "name"); n != nil {
			byName[n.Value] = append(byName[n.Value], g)
		}
	}
	out := make([]error, len(errs))
	for i, e := range errs {
		out[i] = e
		var re *rulefmt.Error
		msg := e.Error()
		rest := strings.TrimPrefix(msg, file+": ")
		if errors.As(e, &re) && strings.HasPrefix(rest, "group ") {
			if gs := byName[re.Group]; len(gs) > 0 {
				if rs := mapValue(gs[0], "rules"); rs != nil && re.Rule >= 1 && re.Rule <= len(rs.Content) {
					r := rs.Content[re.Rule-1]
					out[i] = fmt.Errorf("%s: %d:%d: %s", file, r.Line, r.Column, rest)
				}
			}
			continue
		}
		if name, ok := strings.CutPrefix(rest, "0:0: groupname: "); ok {
			name, _, _ = strings.Cut(name, " is repeated")
			if n, err := strconv.Unquote(name); err == nil && len(byName[n]) > 1 {
				g := mapValue(byName[n][1], "name")
				out[i] = fmt.Errorf("%s: %d:%d: group name %q is repeated in the same file (first at line %d)", file, g.Line, g.Column, n, byName[n][0].Line)
			}
		}
	}
	return out
}

// mapValue returns the value of key in a YAML mapping node.
func mapValue(m *yaml.Node, key string) *yaml.Node {
	if m == nil || m.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i+1]
		}
	}
	return nil
}

func expandRuleFiles(globs []string) ([]string, error) {
	var files []string
	seen := map[string]bool{}
	for _, g := range globs {
		m, err := filepath.Glob(g)
		if err != nil {
			return nil, fmt.Errorf("rule_files %q: %w", g, err)
		}
		sort.Strings(m)
		for _, f := range m {
			if !seen[f] {
				seen[f] = true
				files = append(files, f)
			}
		}
	}
	return files, nil
}

// redactURL drops credentials from a URL for errors and logs.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "<unparsable URL>"
	}
	return u.Redacted()
}
