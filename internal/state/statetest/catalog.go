package statetest

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/opsd-dev/opsd/internal/state"
)

var catalogBase = time.Date(2026, 11, 23, 7, 45, 0, 0, time.UTC)

// backupID returns the i-th backup ID in time order, shaped like the IDs
// opsd generates.
func backupID(i int) string {
	return catalogBase.Add(time.Duration(i)*time.Minute).Format("20060102T150405Z") + fmt.Sprintf("-%06x", i)
}

// newBackup returns a valid queued backup i of source.
func newBackup(i int, source string) state.Backup {
	return state.Backup{
		ID:       backupID(i),
		Source:   source,
		Type:     state.TypePostgres,
		State:    state.BackupQueued,
		Actor:    "scheduler:backup:" + source,
		QueuedAt: catalogBase.Add(time.Duration(i) * time.Minute),
	}
}

// normBackup is b as a store returns it: times in UTC truncated to
// microseconds, an empty manifest as nil.
func normBackup(b state.Backup) state.Backup {
	b.QueuedAt = state.Timestamp(b.QueuedAt)
	b.StartedAt = state.Timestamp(b.StartedAt)
	b.FinishedAt = state.Timestamp(b.FinishedAt)
	if len(b.Manifest) == 0 {
		b.Manifest = nil
	}
	return b
}

func normCopy(c state.Copy) state.Copy {
	c.StartedAt, c.FinishedAt = state.Timestamp(c.StartedAt), state.Timestamp(c.FinishedAt)
	return c
}

func mustCreate(t *testing.T, s state.Store, bs ...state.Backup) {
	t.Helper()
	for _, b := range bs {
		if err := s.CreateBackup(ctxT(t), b); err != nil {
			t.Fatalf("CreateBackup(%s) = %v", b.ID, err)
		}
	}
}

func mustGetBackup(t *testing.T, s state.Store, id string) (state.Backup, []state.Copy) {
	t.Helper()
	b, cs, err := s.GetBackup(ctxT(t), id)
	if err != nil {
		t.Fatalf("GetBackup(%s) = %v", id, err)
	}
	return b, cs
}

// checkUTC fails when a non-zero time is not in UTC.
func checkUTC(t *testing.T, what string, ts ...time.Time) {
	t.Helper()
	for _, x := range ts {
		if x.Location() != time.UTC {
			t.Errorf("%s: time %v not in UTC", what, x)
		}
	}
}

func testBackupCreateGet(t *testing.T, s state.Store) {
	ctx := ctxT(t)
	zone := time.FixedZone("X", -5*3600)
	b := state.Backup{
		ID:          backupID(1),
		Source:      "orders-db",
		Type:        "plugin:mysql",
		State:       state.BackupSucceeded,
		Actor:       "token:ci",
		JobID:       1<<53 + 7,
		QueuedAt:    time.Date(2026, 11, 23, 2, 45, 0, 123456789, zone),
		StartedAt:   time.Date(2026, 11, 23, 2, 45, 1, 999999999, zone),
		FinishedAt:  time.Date(2026, 11, 23, 2, 50, 0, 1000, zone),
		RawBytes:    1 << 40,
		StoredBytes: 12345,
		Error:       "ünïcode 'quoted' \"error\"\nsecond line",
		Manifest:    []byte("{\"version\":1}\n\x00\xff binary-safe"),
	}
	mustCreate(t, s, b)
	got, copies := mustGetBackup(t, s, b.ID)
	if diff := cmp.Diff(normBackup(b), got); diff != "" {
		t.Errorf("GetBackup() mismatch (-want +got):\n%s", diff)
	}
	checkUTC(t, "GetBackup", got.QueuedAt, got.StartedAt, got.FinishedAt)
	if len(copies) != 0 {
		t.Errorf("GetBackup() copies = %v, want none", copies)
	}

	other := newBackup(1, "other")
	if err := s.CreateBackup(ctx, other); !errors.Is(err, state.ErrConflict) {
		t.Errorf("CreateBackup(existing ID) = %v, want ErrConflict", err)
	}
	if got, _ := mustGetBackup(t, s, b.ID); got.Source != b.Source {
		t.Errorf("after conflicting CreateBackup, source = %q, want %q (must not overwrite)", got.Source, b.Source)
	}
	if _, _, err := s.GetBackup(ctx, backupID(2)); !errors.Is(err, state.ErrNotFound) {
		t.Errorf("GetBackup(missing) = %v, want ErrNotFound", err)
	}
	// IDs are exact and case-sensitive.
	if _, _, err := s.GetBackup(ctx, strings.ToLower(b.ID)); !errors.Is(err, state.ErrNotFound) {
		t.Errorf("GetBackup(lower-case ID) = %v, want ErrNotFound", err)
	}
}

func testBackupZeroTimes(t *testing.T, s state.Store) {
	ctx := ctxT(t)
	b := newBackup(1, "files")
	b.Manifest = []byte{} // stored as nil
	mustCreate(t, s, b)
	got, _ := mustGetBackup(t, s, b.ID)
	if !got.StartedAt.IsZero() || !got.FinishedAt.IsZero() || got.Manifest != nil {
		t.Errorf("GetBackup(new backup) = started %v, finished %v, manifest %q; want zero, zero, nil",
			got.StartedAt, got.FinishedAt, got.Manifest)
	}
	// A time that truncates to zero is zero too.
	b.StartedAt = time.Time{}.Add(999 * time.Nanosecond)
	if err := s.UpdateBackup(ctx, b); err != nil {
		t.Fatal(err)
	}
	if got, _ := mustGetBackup(t, s, b.ID); !got.StartedAt.IsZero() {
		t.Errorf("StartedAt after storing 999ns past zero = %v, want zero", got.StartedAt)
	}

	// Set, then clear again: UpdateBackup replaces every field.
	b.StartedAt, b.FinishedAt, b.Manifest = catalogBase.Add(time.Second), catalogBase.Add(time.Hour), []byte("{}")
	if err := s.UpdateBackup(ctx, b); err != nil {
		t.Fatal(err)
	}
	if got, _ := mustGetBackup(t, s, b.ID); got.StartedAt.IsZero() || got.FinishedAt.IsZero() || got.Manifest == nil {
		t.Fatalf("GetBackup after setting times = %+v, want times and manifest set", got)
	}
	b.StartedAt, b.FinishedAt, b.Manifest = time.Time{}, time.Time{}, nil
	if err := s.UpdateBackup(ctx, b); err != nil {
		t.Fatal(err)
	}
	got, _ = mustGetBackup(t, s, b.ID)
	if diff := cmp.Diff(normBackup(b), got); diff != "" {
		t.Errorf("GetBackup after clearing mismatch (-want +got):\n%s", diff)
	}

	// Copies' times round-trip zero as well.
	c := state.Copy{BackupID: b.ID, Target: "local", State: state.CopyWriting}
	if err := s.PutCopy(ctx, c); err != nil {
		t.Fatal(err)
	}
	_, copies := mustGetBackup(t, s, b.ID)
	if diff := cmp.Diff([]state.Copy{c}, copies); diff != "" {
		t.Errorf("copies mismatch (-want +got):\n%s", diff)
	}
}

func testBackupUpdate(t *testing.T, s state.Store) {
	ctx := ctxT(t)
	b := newBackup(1, "orders-db")
	mustCreate(t, s, b, newBackup(2, "orders-db"))
	c := state.Copy{BackupID: b.ID, Target: "s3", State: state.CopyComplete, Key: "k", Bytes: 1}
	if err := s.PutCopy(ctx, c); err != nil {
		t.Fatal(err)
	}

	u := state.Backup{
		ID: b.ID, Source: "orders-db-renamed", Type: state.TypeCommand, State: state.BackupPartial,
		Actor: "token:admin", JobID: 42, QueuedAt: b.QueuedAt.Add(time.Second),
		StartedAt: b.QueuedAt.Add(2 * time.Second), FinishedAt: b.QueuedAt.Add(time.Minute),
		RawBytes: 100, StoredBytes: 50, Error: "target gcs: timeout", Manifest: []byte(`{"v":2}`),
	}
	if err := s.UpdateBackup(ctx, u); err != nil {
		t.Fatalf("UpdateBackup() = %v", err)
	}
	got, copies := mustGetBackup(t, s, b.ID)
	if diff := cmp.Diff(normBackup(u), got); diff != "" {
		t.Errorf("GetBackup after update mismatch (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]state.Copy{c}, copies); diff != "" {
		t.Errorf("UpdateBackup changed the copies (-want +got):\n%s", diff)
	}
	// The other backup is untouched.
	if got, _ := mustGetBackup(t, s, backupID(2)); got.Source != "orders-db" || got.State != state.BackupQueued {
		t.Errorf("UpdateBackup(%s) changed %s: %+v", b.ID, backupID(2), got)
	}

	missing := newBackup(3, "orders-db")
	if err := s.UpdateBackup(ctx, missing); !errors.Is(err, state.ErrNotFound) {
		t.Errorf("UpdateBackup(missing) = %v, want ErrNotFound", err)
	}
	if _, _, err := s.GetBackup(ctx, missing.ID); !errors.Is(err, state.ErrNotFound) {
		t.Errorf("UpdateBackup(missing) created it: GetBackup = %v, want ErrNotFound", err)
	}
}

func ids(bs []state.Backup) []string {
	out := []string{}
	for _, b := range bs {
		out = append(out, b.ID)
	}
	return out
}

// listAll pages through f with limit and returns every ID and the number of
// pages it took.
func listAll(t *testing.T, s state.Store, f state.BackupFilter) (all []string, pages int) {
	t.Helper()
	all = []string{}
	for {
		items, next, err := s.ListBackups(ctxT(t), f)
		if err != nil {
			t.Fatalf("ListBackups(%+v) = %v", f, err)
		}
		pages++
		all = append(all, ids(items)...)
		if next == "" {
			return all, pages
		}
		if len(items) == 0 || next != items[len(items)-1].ID {
			t.Fatalf("ListBackups(%+v) next cursor = %q after %v, want the last ID", f, next, ids(items))
		}
		if pages > 1000 {
			t.Fatalf("ListBackups(%+v) does not end", f)
		}
		f.Cursor = next
	}
}

func testListBackups(t *testing.T, s state.Store) {
	// 12 backups alternating between two sources, with states cycling.
	states := []string{state.BackupSucceeded, state.BackupFailed, state.BackupPartial}
	want := map[string][]string{}
	for i := range 12 {
		src := []string{"a", "b"}[i%2]
		b := newBackup(i, src)
		b.State = states[i%3]
		mustCreate(t, s, b)
		// Newest first.
		for _, k := range []string{"", "src=" + src, "state=" + b.State, "src=" + src + ",state=" + b.State} {
			want[k] = append([]string{b.ID}, want[k]...)
		}
	}
	full, next, err := s.ListBackups(ctxT(t), state.BackupFilter{})
	if err != nil || next != "" {
		t.Fatalf("ListBackups({}) = _, %q, %v, want no next cursor", next, err)
	}
	if diff := cmp.Diff(want[""], ids(full)); diff != "" {
		t.Errorf("ListBackups({}) IDs (-want +got):\n%s", diff)
	}
	if len(full) > 0 {
		b := newBackup(11, "b")
		b.State = states[11%3]
		if diff := cmp.Diff(normBackup(b), full[0]); diff != "" {
			t.Errorf("ListBackups({})[0] mismatch (-want +got):\n%s", diff)
		}
	}

	tests := []struct {
		name string
		f    state.BackupFilter
		want []string
	}{
		{"source", state.BackupFilter{Source: "a"}, want["src=a"]},
		{"state", state.BackupFilter{State: state.BackupFailed}, want["state=failed"]},
		{"source and state", state.BackupFilter{Source: "b", State: state.BackupPartial}, want["src=b,state=partial"]},
		{"no match", state.BackupFilter{Source: "c"}, []string{}},
		{"state without backups", state.BackupFilter{State: state.BackupRunning}, []string{}},
		{"source is exact", state.BackupFilter{Source: "A"}, []string{}},
	}
	for _, tt := range tests {
		for _, limit := range []int{0, 1, 2, 3, 5, 1000, 5000} {
			t.Run(fmt.Sprintf("%s limit %d", tt.name, limit), func(t *testing.T) {
				f := tt.f
				f.Limit = limit
				got, _ := listAll(t, s, f)
				if diff := cmp.Diff(tt.want, got); diff != "" {
					t.Errorf("ListBackups(%+v) pages (-want +got):\n%s", f, diff)
				}
			})
		}
	}
}

func testListBackupsPagination(t *testing.T, s state.Store) {
	ctx := ctxT(t)
	items, next, err := s.ListBackups(ctx, state.BackupFilter{})
	if err != nil || len(items) != 0 || next != "" {
		t.Errorf("ListBackups(empty store) = %v, %q, %v, want none", items, next, err)
	}

	const n = state.DefaultListLimit + 1
	var all []string // newest first
	for i := range n {
		mustCreate(t, s, newBackup(i, "db"))
		all = append([]string{backupID(i)}, all...)
	}

	// Limit 0 means the default, and a page exactly filled before the end
	// still reports a next cursor, whose page then is the last.
	items, next, err = s.ListBackups(ctx, state.BackupFilter{})
	if err != nil || len(items) != state.DefaultListLimit || next != all[state.DefaultListLimit-1] {
		t.Fatalf("ListBackups({}) = %d items, %q, %v, want %d, %q", len(items), next, err,
			state.DefaultListLimit, all[state.DefaultListLimit-1])
	}
	items, next, err = s.ListBackups(ctx, state.BackupFilter{Cursor: next})
	if err != nil || next != "" || !cmp.Equal(ids(items), all[state.DefaultListLimit:]) {
		t.Errorf("ListBackups(second page) = %v, %q, %v, want %v, no cursor", ids(items), next, err, all[state.DefaultListLimit:])
	}

	tests := []struct {
		name     string
		f        state.BackupFilter
		want     []string
		wantNext string
	}{
		// Limit equal to what remains: no further page.
		{"exact fit", state.BackupFilter{Cursor: all[n-3], Limit: 2}, all[n-2:], ""},
		{"one more than remains", state.BackupFilter{Cursor: all[n-3], Limit: 3}, all[n-2:], ""},
		{"one less than remains", state.BackupFilter{Cursor: all[n-4], Limit: 2}, all[n-3 : n-1], all[n-2]},
		// The cursor itself is excluded.
		{"cursor is newest", state.BackupFilter{Cursor: all[0], Limit: 1}, all[1:2], all[1]},
		{"cursor is oldest", state.BackupFilter{Cursor: all[n-1], Limit: 10}, []string{}, ""},
		// A cursor needs not be an existing ID.
		{"cursor after all", state.BackupFilter{Cursor: "~", Limit: 2}, all[:2], all[1]},
		{"cursor before all", state.BackupFilter{Cursor: "0", Limit: 2}, []string{}, ""},
		{"cursor between", state.BackupFilter{Cursor: all[5] + "~", Limit: 2}, all[5:7], all[6]},
		{"cursor prefix", state.BackupFilter{Cursor: all[5][:len("20060102T150405Z")], Limit: 1}, all[6:7], all[6]},
		{"limit capped", state.BackupFilter{Limit: state.MaxListLimit + 1}, all, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			items, next, err := s.ListBackups(ctx, tt.f)
			if err != nil {
				t.Fatalf("ListBackups(%+v) = %v", tt.f, err)
			}
			if diff := cmp.Diff(tt.want, ids(items)); diff != "" {
				t.Errorf("ListBackups(%+v) IDs (-want +got):\n%s", tt.f, diff)
			}
			if next != tt.wantNext {
				t.Errorf("ListBackups(%+v) next = %q, want %q", tt.f, next, tt.wantNext)
			}
		})
	}

	// A backup created behind the cursor while paging does not disturb the
	// pages ahead.
	items, next, err = s.ListBackups(ctx, state.BackupFilter{Limit: 3})
	if err != nil {
		t.Fatal(err)
	}
	mustCreate(t, s, newBackup(n+5, "db"))
	rest, _ := listAll(t, s, state.BackupFilter{Limit: 3, Cursor: next})
	if got := append(ids(items), rest...); !cmp.Equal(got, all) {
		t.Errorf("paging while a newer backup is created = %v, want %v", got, all)
	}
}

func testPutCopy(t *testing.T, s state.Store) {
	ctx := ctxT(t)
	b := newBackup(1, "db")
	mustCreate(t, s, b, newBackup(2, "db"))
	zone := time.FixedZone("Y", 3600)
	s3 := state.Copy{BackupID: b.ID, Target: "s3", State: state.CopyWriting, Key: "db/" + b.ID + ".data",
		StartedAt: time.Date(2026, 11, 23, 8, 45, 0, 987654321, zone)}
	gcs := state.Copy{BackupID: b.ID, Target: "gcs", State: state.CopyFailed, Key: "x", Error: "403 forbidden",
		StartedAt: catalogBase, FinishedAt: catalogBase.Add(time.Second)}
	local := state.Copy{BackupID: b.ID, Target: "Local", State: state.CopyComplete, Key: "y", Bytes: 10,
		SHA256: strings.Repeat("0123456789abcdef", 4), StartedAt: catalogBase, FinishedAt: catalogBase.Add(time.Minute)}
	for _, c := range []state.Copy{s3, gcs, local} {
		if err := s.PutCopy(ctx, c); err != nil {
			t.Fatalf("PutCopy(%s) = %v", c.Target, err)
		}
	}
	// Ordered by target, byte-wise: upper case first.
	_, got := mustGetBackup(t, s, b.ID)
	if diff := cmp.Diff([]state.Copy{normCopy(local), normCopy(gcs), normCopy(s3)}, got); diff != "" {
		t.Errorf("copies mismatch (-want +got):\n%s", diff)
	}
	for _, c := range got {
		checkUTC(t, "copy "+c.Target, c.StartedAt, c.FinishedAt)
	}

	// Upsert: the second put replaces every field of the s3 copy.
	s3.State, s3.Bytes, s3.SHA256, s3.FinishedAt = state.CopyComplete, 1<<33, strings.Repeat("ab", 32), catalogBase.Add(time.Hour)
	s3.Key = "db/" + b.ID + ".data.v2"
	if err := s.PutCopy(ctx, s3); err != nil {
		t.Fatal(err)
	}
	_, got = mustGetBackup(t, s, b.ID)
	if diff := cmp.Diff([]state.Copy{normCopy(local), normCopy(gcs), normCopy(s3)}, got); diff != "" {
		t.Errorf("copies after upsert mismatch (-want +got):\n%s", diff)
	}
	// Copies belong to their backup only.
	if _, got := mustGetBackup(t, s, backupID(2)); len(got) != 0 {
		t.Errorf("copies of %s = %v, want none", backupID(2), got)
	}

	// A copy of a missing backup is refused and leaves nothing behind.
	orphan := state.Copy{BackupID: backupID(3), Target: "s3", State: state.CopyWriting}
	if err := s.PutCopy(ctx, orphan); !errors.Is(err, state.ErrNotFound) {
		t.Errorf("PutCopy(missing backup) = %v, want ErrNotFound", err)
	}
	mustCreate(t, s, newBackup(3, "db"))
	if _, got := mustGetBackup(t, s, backupID(3)); len(got) != 0 {
		t.Errorf("PutCopy(missing backup) stored %v", got)
	}
	if err := s.PutCopy(ctx, orphan); err != nil {
		t.Errorf("PutCopy once the backup exists = %v", err)
	}
}

// testPutCopyConcurrent writes the copies of one backup from one goroutine
// per target, each moving its copy from writing to complete, while the
// backup itself is updated.
func testPutCopyConcurrent(t *testing.T, s state.Store) {
	ctx := ctxT(t)
	b := newBackup(1, "db")
	mustCreate(t, s, b)
	const targets = 8
	var wg sync.WaitGroup
	errs := make(chan error, targets+1)
	want := make([]state.Copy, targets)
	for i := range targets {
		c := state.Copy{BackupID: b.ID, Target: fmt.Sprintf("target-%02d", i), State: state.CopyWriting,
			Key: fmt.Sprintf("key-%d", i), StartedAt: catalogBase}
		want[i] = c
		want[i].State, want[i].Bytes, want[i].FinishedAt = state.CopyComplete, int64(i), catalogBase.Add(time.Minute)
		wg.Go(func() {
			for _, c := range []state.Copy{c, want[i]} {
				if err := s.PutCopy(ctx, c); err != nil {
					errs <- fmt.Errorf("PutCopy(%s, %s) = %w", c.Target, c.State, err)
					return
				}
			}
		})
	}
	wg.Go(func() {
		u := b
		u.State, u.StartedAt = state.BackupRunning, catalogBase
		if err := s.UpdateBackup(ctx, u); err != nil {
			errs <- fmt.Errorf("UpdateBackup = %w", err)
		}
	})
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	got, copies := mustGetBackup(t, s, b.ID)
	if diff := cmp.Diff(want, copies); diff != "" {
		t.Errorf("copies after concurrent puts (-want +got):\n%s", diff)
	}
	if got.State != state.BackupRunning {
		t.Errorf("backup state = %q, want %q", got.State, state.BackupRunning)
	}
}

func testLatestBackup(t *testing.T, s state.Store) {
	ctx := ctxT(t)
	if _, err := s.LatestBackup(ctx, "db"); !errors.Is(err, state.ErrNotFound) {
		t.Errorf("LatestBackup(empty store) = %v, want ErrNotFound", err)
	}
	// db: 1 succeeded, 2 failed, 3 succeeded, 4 partial, 5 running; other: 6 succeeded.
	for i, st := range []string{state.BackupSucceeded, state.BackupFailed, state.BackupSucceeded,
		state.BackupPartial, state.BackupRunning} {
		b := newBackup(i+1, "db")
		b.State = st
		mustCreate(t, s, b)
	}
	other := newBackup(6, "other")
	other.State = state.BackupSucceeded
	mustCreate(t, s, other)

	tests := []struct {
		source string
		states []string
		want   string // "" = ErrNotFound
	}{
		{"db", nil, backupID(5)},
		{"db", []string{state.BackupSucceeded}, backupID(3)},
		{"db", []string{state.BackupSucceeded, state.BackupPartial}, backupID(4)},
		{"db", []string{state.BackupFailed, state.BackupSucceeded}, backupID(3)},
		{"db", []string{state.BackupFailed}, backupID(2)},
		{"db", []string{state.BackupQueued}, ""},
		{"other", []string{state.BackupSucceeded, state.BackupSucceeded}, backupID(6)},
		{"other", []string{state.BackupFailed}, ""},
		{"missing", nil, ""},
		{"DB", nil, ""},
	}
	for _, tt := range tests {
		got, err := s.LatestBackup(ctx, tt.source, tt.states...)
		switch {
		case tt.want == "" && !errors.Is(err, state.ErrNotFound):
			t.Errorf("LatestBackup(%q, %v) = %s, %v, want ErrNotFound", tt.source, tt.states, got.ID, err)
		case tt.want != "" && (err != nil || got.ID != tt.want):
			t.Errorf("LatestBackup(%q, %v) = %s, %v, want %s", tt.source, tt.states, got.ID, err, tt.want)
		}
	}
	// The whole row comes back.
	got, err := s.LatestBackup(ctx, "other")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(normBackup(other), got); diff != "" {
		t.Errorf("LatestBackup(other) mismatch (-want +got):\n%s", diff)
	}
}

func testBackupInvalidInput(t *testing.T, s state.Store) {
	ctx := ctxT(t)
	valid := newBackup(1, "db")
	mustCreate(t, s, valid)
	badBackups := []struct {
		name   string
		modify func(b *state.Backup)
	}{
		{"empty id", func(b *state.Backup) { b.ID = "" }},
		{"long id", func(b *state.Backup) { b.ID = strings.Repeat("2", state.MaxKeyLen+1) }},
		{"id with nul", func(b *state.Backup) { b.ID += "\x00" }},
		{"empty source", func(b *state.Backup) { b.Source = "" }},
		{"source not utf8", func(b *state.Backup) { b.Source = "db\xff" }},
		{"unknown state", func(b *state.Backup) { b.State = "done" }},
		{"empty state", func(b *state.Backup) { b.State = "" }},
		{"copy state", func(b *state.Backup) { b.State = state.CopyWriting }},
		{"unknown type", func(b *state.Backup) { b.Type = "mysql" }},
		{"empty type", func(b *state.Backup) { b.Type = "" }},
		{"plugin without name", func(b *state.Backup) { b.Type = "plugin:" }},
		{"actor with nul", func(b *state.Backup) { b.Actor = "token:\x00" }},
		{"error not utf8", func(b *state.Backup) { b.Error = "\xc3" }},
		{"negative job id", func(b *state.Backup) { b.JobID = -1 }},
		{"negative raw bytes", func(b *state.Backup) { b.RawBytes = -1 }},
		{"negative stored bytes", func(b *state.Backup) { b.StoredBytes = -1 }},
		{"zero queued time", func(b *state.Backup) { b.QueuedAt = time.Time{} }},
		{"year 10000", func(b *state.Backup) { b.FinishedAt = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC) }},
	}
	for _, tt := range badBackups {
		t.Run("backup "+tt.name, func(t *testing.T) {
			b := newBackup(2, "db")
			tt.modify(&b)
			if err := s.CreateBackup(ctx, b); !errors.Is(err, state.ErrInvalid) {
				t.Errorf("CreateBackup() = %v, want ErrInvalid", err)
			}
			u := valid
			tt.modify(&u)
			if u.ID != valid.ID {
				return // an update of another ID is not a test of field validation
			}
			if err := s.UpdateBackup(ctx, u); !errors.Is(err, state.ErrInvalid) {
				t.Errorf("UpdateBackup() = %v, want ErrInvalid", err)
			}
		})
	}
	if got, _ := mustGetBackup(t, s, valid.ID); !cmp.Equal(normBackup(valid), got) {
		t.Errorf("invalid updates changed the backup: %+v", got)
	}
	if items, _, err := s.ListBackups(ctx, state.BackupFilter{}); err != nil || len(items) != 1 {
		t.Errorf("after invalid creates, ListBackups() = %v, %v, want one backup", ids(items), err)
	}

	badCopies := []struct {
		name   string
		modify func(c *state.Copy)
	}{
		{"empty backup id", func(c *state.Copy) { c.BackupID = "" }},
		{"empty target", func(c *state.Copy) { c.Target = "" }},
		{"target with nul", func(c *state.Copy) { c.Target = "s\x003" }},
		{"unknown state", func(c *state.Copy) { c.State = "done" }},
		{"backup state", func(c *state.Copy) { c.State = state.BackupSucceeded }},
		{"key not utf8", func(c *state.Copy) { c.Key = "\xff" }},
		{"negative bytes", func(c *state.Copy) { c.Bytes = -1 }},
		{"short sha256", func(c *state.Copy) { c.SHA256 = "abc" }},
		{"upper-case sha256", func(c *state.Copy) { c.SHA256 = strings.Repeat("AB", 32) }},
		{"non-hex sha256", func(c *state.Copy) { c.SHA256 = strings.Repeat("g", 64) }},
		{"error with nul", func(c *state.Copy) { c.Error = "\x00" }},
	}
	for _, tt := range badCopies {
		c := state.Copy{BackupID: valid.ID, Target: "s3", State: state.CopyWriting}
		tt.modify(&c)
		if err := s.PutCopy(ctx, c); !errors.Is(err, state.ErrInvalid) {
			t.Errorf("PutCopy(%s) = %v, want ErrInvalid", tt.name, err)
		}
	}
	if _, got := mustGetBackup(t, s, valid.ID); len(got) != 0 {
		t.Errorf("invalid PutCopy calls stored %v", got)
	}

	for _, id := range []string{"", "a\x00", "a\xff"} {
		if _, _, err := s.GetBackup(ctx, id); !errors.Is(err, state.ErrInvalid) {
			t.Errorf("GetBackup(%q) = %v, want ErrInvalid", id, err)
		}
	}
	for _, f := range []state.BackupFilter{
		{State: "done"}, {State: state.CopyComplete}, {Limit: -1}, {Source: "\xff"}, {Cursor: "a\x00"},
	} {
		if _, _, err := s.ListBackups(ctx, f); !errors.Is(err, state.ErrInvalid) {
			t.Errorf("ListBackups(%+v) = %v, want ErrInvalid", f, err)
		}
	}
	for _, tt := range []struct {
		source string
		states []string
	}{{"", nil}, {"db\x00", nil}, {"db", []string{"done"}}, {"db", []string{state.BackupFailed, ""}}} {
		if _, err := s.LatestBackup(ctx, tt.source, tt.states...); !errors.Is(err, state.ErrInvalid) {
			t.Errorf("LatestBackup(%q, %q) = %v, want ErrInvalid", tt.source, tt.states, err)
		}
	}
}

// RunUpgrade checks that the current schema applies on a database that an
// older opsd left at schema version from, keeping its data. open returns
// the store on one and the same database each time it is called, migrated
// to version (0 = every migration this binary has); the suite closes each
// store before opening the next.
func RunUpgrade(t *testing.T, from int, open func(t *testing.T, version int) state.Store) {
	t.Helper()
	ctx := ctxT(t)
	old := open(t, from)
	if v, err := old.SchemaVersion(ctx); err != nil || v != from {
		t.Fatalf("SchemaVersion(old store) = %d, %v, want %d", v, err, from)
	}
	if err := old.PutValue(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	r := state.Replica{ID: "r1", Hostname: "h", Version: "v0.1.0", StartedAt: catalogBase, SeenAt: catalogBase}
	if err := old.Heartbeat(ctx, r); err != nil {
		t.Fatal(err)
	}
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}

	s := open(t, 0)
	if v, err := s.SchemaVersion(ctx); err != nil || v <= from {
		t.Errorf("SchemaVersion(upgraded store) = %d, %v, want > %d", v, err, from)
	}
	if got := mustGet(t, s, "k"); got != "v" {
		t.Errorf("GetValue after upgrade = %q, want %q", got, "v")
	}
	if rs, err := s.Replicas(ctx); err != nil || !cmp.Equal(rs, []state.Replica{r}) {
		t.Errorf("Replicas after upgrade = %v, %v, want %v", rs, err, []state.Replica{r})
	}
	b := newBackup(1, "db")
	mustCreate(t, s, b)
	if err := s.PutCopy(ctx, state.Copy{BackupID: b.ID, Target: "s3", State: state.CopyWriting}); err != nil {
		t.Errorf("PutCopy after upgrade = %v", err)
	}
	if got, err := s.LatestBackup(ctx, "db"); err != nil || got.ID != b.ID {
		t.Errorf("LatestBackup after upgrade = %s, %v, want %s", got.ID, err, b.ID)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	// Opening the upgraded database again changes nothing.
	s = open(t, 0)
	if _, copies := mustGetBackup(t, s, b.ID); len(copies) != 1 {
		t.Errorf("copies after reopening = %v, want one", copies)
	}
}
