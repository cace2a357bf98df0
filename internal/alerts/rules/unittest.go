package rules

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/promql/parser"
	promrules "github.com/prometheus/prometheus/rules"
	"github.com/prometheus/prometheus/storage"
	"go.yaml.in/yaml/v3"
)

// ErrBadTestInput marks a unit-test file that cannot be run at all: it
// does not parse, names rule files that do not load, or has bad series.
var ErrBadTestInput = errors.New("bad test input")

// UnitTestFile is promtool's rule unit-test format (`promtool test rules`).
type UnitTestFile struct {
	RuleFiles          []string        `yaml:"rule_files"`
	EvaluationInterval model.Duration  `yaml:"evaluation_interval,omitempty"`
	GroupEvalOrder     []string        `yaml:"group_eval_order"`
	Tests              []UnitTestGroup `yaml:"tests"`
	FuzzyCompare       bool            `yaml:"fuzzy_compare,omitempty"`
}

// UnitTestGroup is one entry of `tests`: input series and expectations.
type UnitTestGroup struct {
	Name            string            `yaml:"name,omitempty"`
	Interval        model.Duration    `yaml:"interval"`
	InputSeries     []UnitTestSeries  `yaml:"input_series"`
	AlertRuleTests  []AlertTestCase   `yaml:"alert_rule_test,omitempty"`
	PromqlExprTests []PromQLTestCase  `yaml:"promql_expr_test,omitempty"`
	ExternalLabels  map[string]string `yaml:"external_labels,omitempty"`
	ExternalURL     string            `yaml:"external_url,omitempty"`
}

// UnitTestSeries is an input series in the expanding notation
// (`1+2x10`, `_`, `stale`).
type UnitTestSeries struct {
	Series string `yaml:"series"`
	Values string `yaml:"values"`
}

// AlertTestCase expects the firing alerts of one alert name at eval_time.
type AlertTestCase struct {
	EvalTime  model.Duration  `yaml:"eval_time"`
	Alertname string          `yaml:"alertname"`
	ExpAlerts []ExpectedAlert `yaml:"exp_alerts"`
}

// ExpectedAlert is one expected firing alert.
type ExpectedAlert struct {
	ExpLabels      map[string]string `yaml:"exp_labels"`
	ExpAnnotations map[string]string `yaml:"exp_annotations"`
}

// PromQLTestCase expects the result of an expression at eval_time.
type PromQLTestCase struct {
	Expr       string           `yaml:"expr"`
	EvalTime   model.Duration   `yaml:"eval_time"`
	ExpSamples []ExpectedSample `yaml:"exp_samples"`
}

// ExpectedSample is one expected sample of a promql_expr_test.
type ExpectedSample struct {
	Labels    string  `yaml:"labels"`
	Value     float64 `yaml:"value"`
	Histogram string  `yaml:"histogram"`
}

// FileResult is the verdict on one unit-test file.
type FileResult struct {
	File string
	// Err is set when the file could not be run (wraps ErrBadTestInput).
	Err    error
	Groups []GroupResult
}

// Passed reports whether the file ran and every group passed.
func (r FileResult) Passed() bool {
	if r.Err != nil {
		return false
	}
	for _, g := range r.Groups {
		if len(g.Failures) > 0 {
			return false
		}
	}
	return true
}

// GroupResult is the verdict on one test group; Name is its `name:` or
// "unnamed#<index>" as promtool calls it.
type GroupResult struct {
	Name     string
	Failures []string
}

// RunUnitTests runs promtool-format unit-test files and prints a report in
// promtool's layout. It returns 0 when all pass, 1 when an expectation
// failed and 2 when a file could not be run.
func RunUnitTests(ctx context.Context, stdout io.Writer, files ...string) int {
	code := 0
	for _, f := range files {
		fmt.Fprintf(stdout, "Unit Testing:  %s\n", f)
		r := TestRuleFile(ctx, f)
		switch {
		case r.Err != nil:
			fmt.Fprintf(stdout, "  FAILED:\n%v\n\n", r.Err)
			code = 2
		case !r.Passed():
			fmt.Fprintln(stdout, "  FAILED:")
			for _, g := range r.Groups {
				for _, msg := range g.Failures {
					fmt.Fprintf(stdout, "%s\n\n", msg)
				}
			}
			code = max(code, 1)
		default:
			fmt.Fprintln(stdout, "  SUCCESS")
		}
		fmt.Fprintln(stdout)
	}
	return code
}

// TestRuleFile runs one unit-test file as `promtool test rules` does: every
// group gets a fresh TSDB (Prometheus's, in a temporary directory, as
// promtool's test storage), the input series are appended up to
// each evaluation time, the rule groups of rule_files (relative to the
// test file) are evaluated every evaluation_interval from time 0 with
// Prometheus's rules manager, and at each eval_time the firing alerts and
// the expression results are compared with the expectations.
func TestRuleFile(ctx context.Context, path string) FileResult {
	res := FileResult{File: path}
	b, err := os.ReadFile(path)
	if err != nil {
		res.Err = fmt.Errorf("%w: %w", ErrBadTestInput, err)
		return res
	}
	var tf UnitTestFile
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&tf); err != nil && !errors.Is(err, io.EOF) {
		res.Err = fmt.Errorf("%w: %s: %w", ErrBadTestInput, path, err)
		return res
	}
	var files []string
	for _, rf := range tf.RuleFiles {
		if rf != "" && !filepath.IsAbs(rf) {
			rf = filepath.Join(filepath.Dir(path), rf)
		}
		m, err := filepath.Glob(rf)
		if err != nil {
			res.Err = fmt.Errorf("%w: rule_files %q: %w", ErrBadTestInput, rf, err)
			return res
		}
		if len(m) == 0 {
			res.Err = fmt.Errorf("%w: rule_files %q matches no file", ErrBadTestInput, rf)
			return res
		}
		files = append(files, m...)
	}
	if tf.EvaluationInterval == 0 {
		tf.EvaluationInterval = model.Duration(time.Minute)
	}
	order := map[string]int{}
	for i, gn := range tf.GroupEvalOrder {
		if _, ok := order[gn]; ok {
			res.Err = fmt.Errorf("%w: group name repeated in evaluation order: %s", ErrBadTestInput, gn)
			return res
		}
		order[gn] = i
	}
	for i, tg := range tf.Tests {
		name := tg.Name
		if name == "" {
			name = "unnamed#" + strconv.Itoa(i)
		}
		if tg.Interval == 0 {
			tg.Interval = tf.EvaluationInterval
		}
		fails, err := tg.run(ctx, time.Duration(tf.EvaluationInterval), order, tf.FuzzyCompare, files)
		if err != nil {
			res.Err = fmt.Errorf("%w: %s: test %s: %w", ErrBadTestInput, path, name, err)
			return res
		}
		res.Groups = append(res.Groups, GroupResult{Name: name, Failures: fails})
	}
	return res
}

type loadSample struct {
	t int64
	v float64
}

type loadSeries struct {
	lset    labels.Labels
	samples []loadSample
}

// run evaluates one test group. An error is bad input; failed expectations
// come back as messages.
func (tg *UnitTestGroup) run(ctx context.Context, evalInterval time.Duration, order map[string]int, fuzzy bool, files []string) ([]string, error) {
	p := parser.NewParser(parser.Options{})
	mint := time.Unix(0, 0).UTC()

	// Input series, in the notation of promql's test language.
	var input []*loadSeries
	for _, s := range tg.InputSeries {
		ls, vals, err := p.ParseSeriesDesc(s.Series + " " + s.Values)
		if err != nil {
			return nil, fmt.Errorf("input series %s: %w", s.Series, err)
		}
		in := &loadSeries{lset: ls}
		for i, v := range vals {
			if v.Omitted {
				continue
			}
			if v.Histogram != nil {
				return nil, fmt.Errorf("input series %s: native histograms are not supported", s.Series)
			}
			in.samples = append(in.samples, loadSample{t: mint.Add(time.Duration(i) * time.Duration(tg.Interval)).UnixMilli(), v: v.Value})
		}
		input = append(input, in)
	}

	store, dir, err := openTestTSDB()
	if err != nil {
		return nil, err
	}
	defer func() {
		store.Close()
		os.RemoveAll(dir)
	}()
	engine := promql.NewEngine(promql.EngineOpts{
		MaxSamples:               10000,
		Timeout:                  100 * time.Second,
		NoStepSubqueryIntervalFn: func(int64) int64 { return evalInterval.Milliseconds() },
		EnableAtModifier:         true,
		EnableNegativeOffset:     true,
	})
	m := promrules.NewManager(&promrules.ManagerOptions{
		QueryFunc:    promrules.EngineQueryFunc(engine, store),
		AppendableV2: store,
		Queryable:    store,
		Context:      ctx,
		NotifyFunc:   func(context.Context, string, ...*promrules.Alert) {},
		Logger:       slog.New(slog.DiscardHandler),
		Parser:       p,
	})
	groupsMap, errs := m.LoadGroups(time.Duration(tg.Interval), labels.FromMap(tg.ExternalLabels), tg.ExternalURL, nil, false, files...)
	if errs != nil {
		// The same problems, each with its line (see positioned).
		if err := CheckRuleFiles(files...); err != nil {
			return nil, err
		}
		return nil, errors.Join(errs...)
	}
	groups := make([]*promrules.Group, 0, len(groupsMap))
	for _, g := range groupsMap {
		groups = append(groups, g)
	}
	sort.Slice(groups, func(i, j int) bool { return order[groups[i].Name()] < order[groups[j].Name()] })
	for _, g := range groups {
		for _, r := range g.Rules() {
			if ar, ok := r.(*promrules.AlertingRule); ok {
				// No for-state to restore in a test; write ALERTS at once.
				ar.SetRestored(true)
			}
		}
	}

	var maxEval model.Duration
	alertTests := map[model.Duration][]AlertTestCase{}
	for _, a := range tg.AlertRuleTests {
		if a.Alertname == "" {
			return nil, fmt.Errorf("an item under alert_rule_test misses required attribute alertname at eval_time %v", a.EvalTime)
		}
		alertTests[a.EvalTime] = append(alertTests[a.EvalTime], a)
		maxEval = max(maxEval, a.EvalTime)
	}
	for _, pt := range tg.PromqlExprTests {
		maxEval = max(maxEval, pt.EvalTime)
	}
	evalTimes := make([]model.Duration, 0, len(alertTests))
	for t := range alertTests {
		evalTimes = append(evalTimes, t)
	}
	slices.Sort(evalTimes)

	eq := func(a, b float64) bool { return a == b }
	if fuzzy {
		eq = func(a, b float64) bool { return a == b || nextafterEq(a, b) }
	}

	var fails []string
	curr := 0
	maxt := mint.Add(time.Duration(maxEval))
	for ts := mint; !ts.After(maxt); ts = ts.Add(evalInterval) {
		if err := appendTill(ctx, store, input, ts.UnixMilli()); err != nil {
			return nil, err
		}
		var evalErrs []string
		for _, g := range groups {
			g.Eval(ctx, ts)
			for _, r := range g.Rules() {
				if r.LastError() != nil {
					evalErrs = append(evalErrs, fmt.Sprintf("    rule: %s, time: %s, err: %v", r.Name(), ts.Sub(mint), r.LastError()))
				}
			}
		}
		if len(evalErrs) > 0 {
			return append(fails, evalErrs...), nil
		}
		for curr < len(evalTimes) && ts.Sub(mint) <= time.Duration(evalTimes[curr]) &&
			time.Duration(evalTimes[curr]) < ts.Add(evalInterval).Sub(mint) {
			t := evalTimes[curr]
			got := map[string][]labelsAndAnnotations{}
			for _, g := range groups {
				for _, ar := range g.AlertingRules() {
					for _, a := range ar.ActiveAlerts() {
						if a.State == promrules.StateFiring {
							got[ar.Name()] = append(got[ar.Name()], labelsAndAnnotations{a.Labels.Copy(), a.Annotations.Copy()})
						}
					}
				}
			}
			for _, tc := range alertTests[t] {
				var exp []labelsAndAnnotations
				for _, a := range tc.ExpAlerts {
					l := map[string]string{}
					for k, v := range a.ExpLabels {
						l[k] = v
					}
					l[labels.AlertName] = tc.Alertname
					exp = append(exp, labelsAndAnnotations{labels.FromMap(l), labels.FromMap(a.ExpAnnotations)})
				}
				g := got[tc.Alertname]
				sortLA(g)
				sortLA(exp)
				if !equalLA(exp, g) {
					prefix := ""
					if tg.Name != "" {
						prefix = "    name: " + tg.Name + ",\n"
					}
					fails = append(fails, fmt.Sprintf("%s    alertname: %s, time: %s, \n        exp:%v, \n        got:%v",
						prefix, tc.Alertname, tc.EvalTime, indent(laString(exp), "            "), indent(laString(g), "            ")))
				}
			}
			curr++
		}
	}

	for _, tc := range tg.PromqlExprTests {
		got, err := instant(ctx, engine, store, tc.Expr, mint.Add(time.Duration(tc.EvalTime)))
		if err != nil {
			fails = append(fails, fmt.Sprintf("    expr: %q, time: %s, err: %s", tc.Expr, tc.EvalTime, err))
			continue
		}
		var exp []promql.Sample
		bad := false
		for _, s := range tc.ExpSamples {
			lb, err := p.ParseMetric(s.Labels)
			if err == nil && s.Histogram != "" {
				err = errors.New("native histograms are not supported")
			}
			if err != nil {
				fails = append(fails, fmt.Sprintf("    expr: %q, time: %s, err: labels %q: %s", tc.Expr, tc.EvalTime, s.Labels, err))
				bad = true
				break
			}
			exp = append(exp, promql.Sample{Metric: lb, F: s.Value})
		}
		if bad {
			continue
		}
		sortSamples(exp)
		sortSamples(got)
		if !equalSamples(exp, got, eq) {
			fails = append(fails, fmt.Sprintf("    expr: %q, time: %s,\n        exp: %s\n        got: %s", tc.Expr, tc.EvalTime, samplesString(exp), samplesString(got)))
		}
	}
	return fails, nil
}

// appendTill appends the input samples up to t (inclusive) and drops them
// from input, so rule results written at earlier times stay in order.
func appendTill(ctx context.Context, s storage.AppendableV2, input []*loadSeries, t int64) error {
	app := s.AppenderV2(ctx)
	for _, in := range input {
		n := 0
		for _, smp := range in.samples {
			if smp.t > t {
				break
			}
			if _, err := app.Append(0, in.lset, 0, smp.t, smp.v, nil, nil, storage.AOptions{}); err != nil {
				_ = app.Rollback()
				return fmt.Errorf("input series %s: %w", in.lset, err)
			}
			n++
		}
		in.samples = in.samples[n:]
	}
	return app.Commit()
}

func instant(ctx context.Context, e *promql.Engine, s storage.Queryable, qs string, t time.Time) ([]promql.Sample, error) {
	v, err := promrules.EngineQueryFunc(e, s)(ctx, qs, t)
	if err != nil {
		return nil, err
	}
	out := make([]promql.Sample, len(v))
	copy(out, v)
	return out, nil
}

type labelsAndAnnotations struct {
	Labels, Annotations labels.Labels
}

func sortLA(la []labelsAndAnnotations) {
	sort.Slice(la, func(i, j int) bool {
		if d := labels.Compare(la[i].Labels, la[j].Labels); d != 0 {
			return d < 0
		}
		return labels.Compare(la[i].Annotations, la[j].Annotations) < 0
	})
}

func equalLA(a, b []labelsAndAnnotations) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !labels.Equal(a[i].Labels, b[i].Labels) || !labels.Equal(a[i].Annotations, b[i].Annotations) {
			return false
		}
	}
	return true
}

func laString(la []labelsAndAnnotations) string {
	if len(la) == 0 {
		return "[]"
	}
	var sb strings.Builder
	sb.WriteString("[")
	for i, l := range la {
		if i > 0 {
			sb.WriteString(",")
		}
		fmt.Fprintf(&sb, "\n%d:%s", i, indent("\nLabels:"+l.Labels.String()+"\nAnnotations:"+l.Annotations.String(), "  "))
	}
	sb.WriteString("\n]")
	return sb.String()
}

func sortSamples(s []promql.Sample) {
	sort.Slice(s, func(i, j int) bool { return labels.Compare(s[i].Metric, s[j].Metric) <= 0 })
}

func equalSamples(a, b []promql.Sample, eq func(a, b float64) bool) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !labels.Equal(a[i].Metric, b[i].Metric) || !eq(a[i].F, b[i].F) {
			return false
		}
	}
	return true
}

func samplesString(s []promql.Sample) string {
	if len(s) == 0 {
		return "nil"
	}
	parts := make([]string, len(s))
	for i, x := range s {
		parts[i] = x.Metric.String() + " " + strconv.FormatFloat(x.F, 'E', -1, 64)
	}
	return strings.Join(parts, ", ")
}

func indent(s, prefix string) string {
	return strings.ReplaceAll(s, "\n", "\n"+prefix)
}

// nextafterEq is fuzzy_compare: equal to within one ulp.
func nextafterEq(a, b float64) bool {
	return math.Nextafter(a, math.Inf(-1)) == b || math.Nextafter(a, math.Inf(1)) == b
}
