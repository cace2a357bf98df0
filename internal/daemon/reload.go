package daemon

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"time"

	"github.com/opsd-dev/opsd/internal/action"
	"github.com/opsd-dev/opsd/internal/backup/service"
	"github.com/opsd-dev/opsd/internal/config"
	"github.com/opsd-dev/opsd/internal/httpapi"
)

// ErrRestartRequired is returned when a reload changes a setting that only
// takes effect at start; the running config stays as it was.
var ErrRestartRequired = errors.New("restart required")

// reload is the SIGHUP path: it passes the choke point itself. The API path
// is audited by the HTTP layer and calls applyReload directly.
func (d *Daemon) reload(ctx context.Context) error {
	return d.dispatch.Do(ctx, action.Request{
		Actor: action.ActorFrom(ctx), Action: "config.reload", Object: "config/" + d.opts.ConfigPath,
	}, d.applyReload)
}

func (d *Daemon) reloadFromAPI(ctx context.Context) error {
	err := d.applyReload(ctx)
	var problems config.Problems
	if errors.As(err, &problems) {
		ce := &httpapi.ConfigError{}
		for _, p := range problems {
			ce.Problems = append(ce.Problems, p.String())
		}
		return ce
	}
	return err
}

// applyReload validates the config file and swaps it in whole, or changes
// nothing.
func (d *Daemon) applyReload(ctx context.Context) error {
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()
	d.notify.reloading()
	defer d.notify.ready()

	next, err := config.Load(d.opts.ConfigPath, d.opts.Getenv)
	if err != nil {
		d.log.Error("reload: config invalid; keeping the running config", "err", err)
		return err
	}
	cur := d.cfg.Load()
	if fields := restartOnly(cur.Config, next); len(fields) > 0 {
		return fmt.Errorf("%w: %s changed; the running config is unchanged", ErrRestartRequired, strings.Join(fields, ", "))
	}
	if err := service.GenerateIdentities(next, d.log); err != nil {
		return fmt.Errorf("backup encryption: %w", err)
	}
	// Alerting first: it checks rule files and routing before changing
	// either, so a bad rule file leaves everything as it was.
	if err := d.alerts.apply(next); err != nil {
		return err
	}
	if err := d.jobs.Reconfigure(ctx, next); err != nil {
		return fmt.Errorf("apply schedules: %w", err)
	}
	d.targets.update(next)
	d.api.Update(apiSettings(next))
	// Runbooks last: per file, whole or not at all; a refused file keeps
	// its previous version, so this step cannot fail the reload.
	if d.drills != nil {
		names := d.drills.reloadRunbooks(next, d.log.Warn)
		d.log.Info("runbooks reloaded", "dir", next.Runbooks.Dir, "runbooks", strings.Join(names, ","))
	}
	d.cfg.Store(&loadedConfig{Config: next, loadedAt: time.Now().UTC()})
	// Metric series of added sources and targets start now (so their alerts
	// can fire); those of removed ones go (so theirs cannot).
	d.backups.InitMetrics(ctx)
	d.log.Info("config reloaded", "config_hash", next.Hash())
	return nil
}

// restartOnly lists the settings that differ between a and b and can only
// change at start: where the daemon keeps its state and how it listens.
func restartOnly(a, b *config.Config) []string {
	var out []string
	check := func(name string, x, y any) {
		if !reflect.DeepEqual(x, y) {
			out = append(out, name)
		}
	}
	check("data_dir", a.DataDir, b.DataDir)
	check("state", a.State, b.State)
	check("server.listen", a.Server.Listen, b.Server.Listen)
	check("server.tls", a.Server.TLS, b.Server.TLS)
	check("server timeouts", [4]time.Duration{a.Server.ReadTimeout, a.Server.WriteTimeout, a.Server.IdleTimeout, a.Server.ReadHeaderTimeout},
		[4]time.Duration{b.Server.ReadTimeout, b.Server.WriteTimeout, b.Server.IdleTimeout, b.Server.ReadHeaderTimeout})
	check("server.log", a.Server.Log, b.Server.Log)
	// Links in notifications and rule results are built at start.
	check("server.external_url", a.Server.ExternalURL, b.Server.ExternalURL)
	// The drain grace is handed to the HTTP server and job engine at start.
	check("server.shutdown_grace", a.Server.ShutdownGrace, b.Server.ShutdownGrace)
	check("audit.signing_key_file", a.Audit.SigningKeyFile, b.Audit.SigningKeyFile)
	check("audit.origin", a.Audit.Origin, b.Audit.Origin)
	check("audit.segment_size", a.Audit.SegmentSize, b.Audit.SegmentSize)
	check("audit.checkpoint_interval", a.Audit.CheckpointInterval, b.Audit.CheckpointInterval)
	check("audit.witnesses", a.Audit.Witnesses, b.Audit.Witnesses)
	// The remote query path is built at start.
	check("alerts.rule_datasource", a.Alerts.RuleDatasource, b.Alerts.RuleDatasource)
	if a.Alerts.RuleDatasource != "" {
		check("alerts.datasources."+a.Alerts.RuleDatasource, a.Alerts.Datasources[a.Alerts.RuleDatasource], b.Alerts.Datasources[b.Alerts.RuleDatasource])
	}
	return out
}
