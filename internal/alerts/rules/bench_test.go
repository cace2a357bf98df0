package rules

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
	promrules "github.com/prometheus/prometheus/rules"
	"github.com/prometheus/prometheus/storage"
)

// BenchmarkEvalRound measures one evaluation round of 1,000 alerting rules
// over the local store: 100 series of opsd_bench_value with 1h of 15s
// samples, each rule a threshold over a rate, as
// prometheus_rule_group_last_duration_seconds measures a round.
func BenchmarkEvalRound(b *testing.B) {
	ctx := context.Background()
	store, _ := OpenStore("", 0)
	now := time.Now().Truncate(time.Second)
	app := store.AppenderV2(ctx)
	for s := range 100 {
		ls := labels.FromStrings("__name__", "opsd_bench_total", "source", fmt.Sprintf("s%d", s))
		for i := 240; i >= 0; i-- {
			t := now.Add(-time.Duration(i) * 15 * time.Second)
			if _, err := app.Append(0, ls, 0, t.UnixMilli(), float64((240-i)*s), nil, nil, storage.AOptions{}); err != nil {
				b.Fatal(err)
			}
		}
	}
	if err := app.Commit(); err != nil {
		b.Fatal(err)
	}
	var sb strings.Builder
	sb.WriteString("groups:\n  - name: bench\n    rules:\n")
	for i := range 1000 {
		fmt.Fprintf(&sb, "      - alert: Bench%d\n        expr: rate(opsd_bench_total{source=\"s%d\"}[5m]) > %d\n        for: 5m\n        labels: {severity: warning}\n        annotations: {summary: \"{{ $labels.source }} {{ $value }}\"}\n", i, i%100, i%7)
	}
	rf := filepath.Join(b.TempDir(), "bench.rules.yaml")
	if err := os.WriteFile(rf, []byte(sb.String()), 0o600); err != nil {
		b.Fatal(err)
	}
	engine := NewEngine(slog.New(slog.DiscardHandler), nil)
	m := promrules.NewManager(&promrules.ManagerOptions{
		QueryFunc:    promrules.EngineQueryFunc(engine, store),
		AppendableV2: store,
		Queryable:    store,
		Context:      ctx,
		NotifyFunc:   func(context.Context, string, ...*promrules.Alert) {},
		Logger:       slog.New(slog.DiscardHandler),
		Parser:       parser.NewParser(parser.Options{}),
	})
	groups, errs := m.LoadGroups(time.Minute, labels.EmptyLabels(), "", nil, false, rf)
	if errs != nil {
		b.Fatal(errs)
	}
	var g *promrules.Group
	for _, x := range groups {
		g = x
	}
	b.ResetTimer()
	for i := range b.N {
		g.Eval(ctx, now.Add(time.Duration(i)*time.Millisecond))
	}
}
