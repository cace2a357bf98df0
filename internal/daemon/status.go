package daemon

import (
	"context"
	"sort"
	"time"

	"github.com/opsd-dev/opsd/internal/buildinfo"
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

// AuditStatus summarises the audit log.
type AuditStatus struct {
	TreeSize int64  `json:"tree_size"`
	Healthy  bool   `json:"healthy"`
	Error    string `json:"error,omitempty"`
}

// SourceStatus summarises one backup source. Level is null until the
// compliance grading lands.
type SourceStatus struct {
	Name     string     `json:"name"`
	Type     string     `json:"type"`
	Schedule string     `json:"schedule,omitempty"`
	NextRun  *time.Time `json:"next_run,omitempty"`
	Targets  []string   `json:"targets"`
	Policy   string     `json:"policy,omitempty"`
	Level    *string    `json:"level"`
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
	for name, s := range cfg.Sources {
		ss := SourceStatus{Name: name, Type: s.Type, Schedule: string(s.Schedule), Targets: s.Targets, Policy: string(s.Policy)}
		if s.Schedule != "" {
			if sched, err := s.Schedule.Schedule(); err == nil {
				next := sched.Next(now).UTC()
				ss.NextRun = &next
			}
		}
		st.Sources = append(st.Sources, ss)
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
