package daemon

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/opsd-dev/opsd/internal/backup/service"
	"github.com/opsd-dev/opsd/internal/buildinfo"
	"github.com/opsd-dev/opsd/internal/config"
	"github.com/opsd-dev/opsd/internal/state"
)

// Status is GET /api/v1/status. Fields are added as features land; the
// OpenAPI document in internal/httpapi describes it.
type Status struct {
	Version        buildinfo.Info `json:"version"`
	Replica        string         `json:"replica"`
	StartedAt      time.Time      `json:"started_at"`
	UptimeSeconds  float64        `json:"uptime_seconds"`
	StateStore     string         `json:"state_store"`
	ConfigHash     string         `json:"config_hash"`
	ConfigLoadedAt time.Time      `json:"config_loaded_at"`
	Audit          AuditStatus    `json:"audit"`
	Sources        []SourceStatus `json:"sources"`
	Targets        []TargetStatus `json:"targets"`
	Runs           []any          `json:"runs"`
	Alerts         []any          `json:"alerts"`
	Budgets        []any          `json:"budgets"`
}

// AlertSummary is one firing alert in the status.
type AlertSummary struct {
	Name     string    `json:"alertname"`
	Severity string    `json:"severity,omitempty"`
	Source   string    `json:"source,omitempty"`
	State    string    `json:"state"` // active or suppressed
	Since    time.Time `json:"since"`
	Summary  string    `json:"summary,omitempty"`
}

// AuditStatus summarises the audit log.
type AuditStatus struct {
	TreeSize int64  `json:"tree_size"`
	Healthy  bool   `json:"healthy"`
	Error    string `json:"error,omitempty"`
}

// SourceStatus summarises one backup source: its 3-2-1-1-0 level now
// (counting only checksum-verified copies of the newest backup), the rule
// missing, and when it was last backed up, read back and proven
// restorable.
type SourceStatus struct {
	Name     string     `json:"name"`
	Type     string     `json:"type"`
	Schedule string     `json:"schedule,omitempty"`
	NextRun  *time.Time `json:"next_run,omitempty"`
	Targets  []string   `json:"targets"`
	Policy   string     `json:"policy,omitempty"`
	// Level is "" (no rule met) to "3-2-1-1-0"; null when not graded.
	Level *string `json:"level"`
	// MeetsPolicy is false when the level is below the policy.
	MeetsPolicy bool `json:"meets_policy"`
	// Missing names the first rule not met ("" when all five are).
	Missing string `json:"missing,omitempty"`
	// Rules is each rule of 3-2-1-1-0 with its verdict.
	Rules []RuleStatus `json:"rules,omitempty"`
	// LastSuccess is the newest backup with every copy complete.
	LastSuccess *time.Time `json:"last_success,omitempty"`
	// LastChecksum is the newest passed read-back of a copy.
	LastChecksum *time.Time `json:"last_checksum_verification,omitempty"`
	// LastProvenRestore is the newest passed restore verification.
	LastProvenRestore *time.Time `json:"last_proven_restore,omitempty"`
	// RPOSeconds is the age of the newest usable backup's data now;
	// RPOObjectiveSeconds the configured objectives.rpo (0 = none).
	RPOSeconds          *float64 `json:"rpo_seconds,omitempty"`
	RPOObjectiveSeconds float64  `json:"rpo_objective_seconds,omitempty"`
	// LastBackup is the newest backup in the catalog; nil when there is
	// none.
	LastBackup *LastBackup `json:"last_backup,omitempty"`
}

// RuleStatus is one rule of 3-2-1-1-0.
type RuleStatus struct {
	Rule   string `json:"rule"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail,omitempty"`
}

// LastBackup summarises a source's newest backup.
type LastBackup struct {
	ID         string     `json:"id"`
	State      string     `json:"state"`
	FinishedAt *time.Time `json:"finished_at"`
}

// SourceList is GET /api/v1/sources.
type SourceList struct {
	Items []SourceStatus `json:"items"`
}

// TargetStatus summarises one storage target.
type TargetStatus struct {
	Name    string `json:"name"`
	Type    string `json:"type"`
	Medium  string `json:"medium"`
	Offsite bool   `json:"offsite"`
}

func (d *Daemon) status(ctx context.Context) (any, error) {
	cfg := d.cfg.Load()
	now := time.Now().UTC()
	st := Status{
		Version:        buildinfo.Get(),
		Replica:        d.replicaID,
		StartedAt:      d.startedAt,
		UptimeSeconds:  now.Sub(d.startedAt).Seconds(),
		StateStore:     d.store.Kind(),
		ConfigHash:     cfg.Hash(),
		ConfigLoadedAt: cfg.loadedAt,
		Audit:          AuditStatus{TreeSize: d.audit.Size(), Healthy: true},
		Sources:        []SourceStatus{},
		Targets:        []TargetStatus{},
		Runs:           []any{},
		Alerts:         []any{},
		Budgets:        []any{},
	}
	if err := d.audit.Healthy(); err != nil {
		st.Audit.Healthy, st.Audit.Error = false, err.Error()
	}
	// Firing alerts as routing holds them (active or silenced/inhibited).
	if as, err := d.alerts.router.Alerts(ctx); err == nil {
		for _, a := range as {
			st.Alerts = append(st.Alerts, AlertSummary{Name: a.Labels["alertname"], Severity: a.Labels["severity"],
				Source: a.Labels["source"], State: a.State, Since: a.StartsAt, Summary: a.Annotations["summary"]})
		}
	}
	for _, r := range d.drills.runningDrills(ctx) {
		st.Runs = append(st.Runs, r)
	}
	for name, s := range cfg.Sources {
		ss := sourceStatus(name, s, now)
		if withLast, err := d.withLastBackup(ctx, ss); err == nil {
			ss = withLast
		}
		st.Sources = append(st.Sources, d.withHealth(ctx, ss))
	}
	sort.Slice(st.Sources, func(i, j int) bool { return st.Sources[i].Name < st.Sources[j].Name })
	for name, t := range cfg.Targets {
		st.Targets = append(st.Targets, TargetStatus{Name: name, Type: t.Type, Medium: t.Medium(), Offsite: t.IsOffsite()})
	}
	sort.Slice(st.Targets, func(i, j int) bool { return st.Targets[i].Name < st.Targets[j].Name })
	return st, nil
}

// Cluster is GET /api/v1/cluster: the replicas sharing the state store.
type Cluster struct {
	StateStore string `json:"state_store"`
	Self       string `json:"self"`
	// ConfigDrift is true when live replicas run different configs.
	ConfigDrift bool            `json:"config_drift"`
	Replicas    []ReplicaStatus `json:"replicas"`
}

// ReplicaStatus is one replica's last heartbeat.
type ReplicaStatus struct {
	ID         string    `json:"id"`
	Hostname   string    `json:"hostname"`
	Version    string    `json:"version"`
	ConfigHash string    `json:"config_hash"`
	StartedAt  time.Time `json:"started_at"`
	SeenAt     time.Time `json:"seen_at"`
	// Alive is false when the replica missed three heartbeats.
	Alive bool `json:"alive"`
}

func (d *Daemon) cluster(ctx context.Context) (any, error) {
	rs, err := d.store.Replicas(ctx)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	c := Cluster{StateStore: d.store.Kind(), Self: d.replicaID, Replicas: []ReplicaStatus{}}
	hashes := map[string]bool{}
	for _, r := range rs {
		alive := now.Sub(r.SeenAt) < 3*heartbeatInterval
		if alive {
			hashes[r.ConfigHash] = true
		}
		c.Replicas = append(c.Replicas, ReplicaStatus{ID: r.ID, Hostname: r.Hostname, Version: r.Version, ConfigHash: r.ConfigHash,
			StartedAt: r.StartedAt.UTC(), SeenAt: r.SeenAt.UTC(), Alive: alive})
	}
	c.ConfigDrift = len(hashes) > 1
	return c, nil
}

func sourceStatus(name string, s *config.Source, now time.Time) SourceStatus {
	ss := SourceStatus{Name: name, Type: s.Type, Schedule: string(s.Schedule), Targets: s.Targets, Policy: string(s.Policy)}
	if s.Schedule != "" {
		if sched, err := s.Schedule.Schedule(); err == nil {
			next := sched.Next(now).UTC()
			ss.NextRun = &next
		}
	}
	return ss
}

// withLastBackup adds the source's newest backup from the catalog.
func (d *Daemon) withLastBackup(ctx context.Context, ss SourceStatus) (SourceStatus, error) {
	b, err := d.store.LatestBackup(ctx, ss.Name)
	switch {
	case err == nil:
		lb := &LastBackup{ID: b.ID, State: b.State}
		if !b.FinishedAt.IsZero() {
			t := b.FinishedAt.UTC()
			lb.FinishedAt = &t
		}
		ss.LastBackup = lb
	case !isNotFound(err):
		return ss, fmt.Errorf("last backup of %s: %w", ss.Name, err)
	}
	return ss, nil
}

// sources is GET /api/v1/sources.
func (d *Daemon) sources(ctx context.Context) (any, error) {
	cfg := d.cfg.Load()
	now := time.Now().UTC()
	out := SourceList{Items: []SourceStatus{}}
	for name, s := range cfg.Sources {
		ss, err := d.withLastBackup(ctx, sourceStatus(name, s, now))
		if err != nil {
			return nil, err
		}
		out.Items = append(out.Items, d.withHealth(ctx, ss))
	}
	sort.Slice(out.Items, func(i, j int) bool { return out.Items[i].Name < out.Items[j].Name })
	return out, nil
}

// source is GET /api/v1/sources/{name}.
func (d *Daemon) source(ctx context.Context, name string) (any, error) {
	s, ok := d.cfg.Load().Sources[name]
	if !ok {
		return nil, fmt.Errorf("source %q: %w", name, service.ErrUnknownSource)
	}
	ss, err := d.withLastBackup(ctx, sourceStatus(name, s, time.Now().UTC()))
	if err != nil {
		return nil, err
	}
	return d.withHealth(ctx, ss), nil
}

// withHealth adds the source's grading; a grading error leaves Level null
// and says why in Missing.
func (d *Daemon) withHealth(ctx context.Context, ss SourceStatus) SourceStatus {
	if d.backups == nil {
		return ss
	}
	h, err := d.backups.Health(ctx, ss.Name)
	if err != nil {
		ss.Missing = "not graded: " + err.Error()
		return ss
	}
	level := h.Compliance.Level
	ss.Level = &level
	ss.MeetsPolicy, ss.Missing = h.Compliance.Meets, h.Compliance.Missing
	for _, r := range h.Compliance.Rules {
		ss.Rules = append(ss.Rules, RuleStatus{Rule: r.Rule, OK: r.OK, Detail: r.Detail})
	}
	ss.LastSuccess, ss.LastChecksum, ss.LastProvenRestore = timePtr(h.LastSuccess), timePtr(h.LastChecksum), timePtr(h.LastProvenRestore)
	if h.BackupID != "" {
		rpo := h.RPO.Seconds()
		ss.RPOSeconds = &rpo
	}
	ss.RPOObjectiveSeconds = h.RPOObjective.Seconds()
	return ss
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	t = t.UTC()
	return &t
}

func isNotFound(err error) bool { return errors.Is(err, state.ErrNotFound) }
