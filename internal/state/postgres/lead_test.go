package postgres_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opsd-dev/opsd/internal/state/pgtest"
	"github.com/opsd-dev/opsd/internal/state/postgres"
)

// Two replicas on one database: exactly one holds the alerting lead; when it
// stops (or its session dies) the other takes over within the interval.
func TestLead(t *testing.T) {
	dsn := pgtest.DSN(t)
	a, b := open(t, dsn), open(t, dsn)
	const key = postgres.LockAlertingLead
	var heldA, heldB atomic.Bool
	ctxA, stopA := context.WithCancel(t.Context())
	doneA := make(chan error, 1)
	go func() { doneA <- a.Lead(ctxA, key, 100*time.Millisecond, heldA.Store) }()
	waitHeld(t, "replica a to lead", heldA.Load)

	ctxB, stopB := context.WithCancel(t.Context())
	defer stopB()
	doneB := make(chan error, 1)
	go func() { doneB <- b.Lead(ctxB, key, 100*time.Millisecond, heldB.Store) }()
	time.Sleep(500 * time.Millisecond)
	if heldB.Load() {
		t.Fatal("both replicas lead")
	}

	// The leader's session is killed from outside (a network cut, a DBA).
	if _, err := b.Pool().Exec(t.Context(),
		"SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND objid = $1::bigint & 4294967295 AND granted", key); err != nil {
		t.Fatal(err)
	}
	waitHeld(t, "replica b to take the lead", heldB.Load)
	waitHeld(t, "replica a to notice it lost it", func() bool { return !heldA.Load() })
	stopA()
	if err := <-doneA; err != nil {
		t.Fatal(err)
	}
	stopB()
	if err := <-doneB; err != nil {
		t.Fatal(err)
	}
	if heldB.Load() {
		t.Error("lead still held after Lead returned")
	}
}

func waitHeld(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
