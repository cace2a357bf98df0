package source

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/opsd-dev/opsd/internal/backup/manifest"
	"github.com/opsd-dev/opsd/internal/backup/pgtool"
)

// Postgres dumps one database with pg_dump in custom format, uncompressed
// (-Fc -Z0: opsd compresses). Before pg_dump starts, a REPEATABLE READ
// transaction exports its snapshot and reads the WAL position and the
// server clock; pg_dump runs with --snapshot, so the LSN and time in the
// manifest are exactly those of the dumped data. The transaction stays open
// until pg_dump exits.
type Postgres struct {
	// DSN is a secret: its password reaches pg_dump only as PGPASSWORD and
	// appears in no error or log.
	DSN    string
	Finder pgtool.Finder
	Logger *slog.Logger
}

// Kind is "pgdump".
func (p *Postgres) Kind() string { return "pgdump" }

// Open connects, exports a snapshot and starts pg_dump.
func (p *Postgres) Open(ctx context.Context) (Stream, error) {
	conn, err := pgtool.Split(p.DSN)
	if err != nil {
		return nil, err
	}
	fail := func(format string, err error) error {
		return pgtool.Scrub(fmt.Errorf("postgres %s: "+format+": %w", conn.Redacted, err), conn.Password)
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	db, err := pgx.Connect(cctx, p.DSN)
	if err != nil {
		return nil, fail("connect", err)
	}
	closeDB := func() { _ = db.Close(context.WithoutCancel(ctx)) }

	meta := &manifest.PostgresMeta{}
	var versionNum string
	if err := db.QueryRow(cctx, "SELECT current_setting('server_version_num'), current_setting('server_version'), current_database()").
		Scan(&versionNum, &meta.ServerVersion, &meta.Database); err != nil {
		closeDB()
		return nil, fail("query server version", err)
	}
	meta.ServerVersionNum, _ = strconv.Atoi(versionNum)
	major := meta.ServerVersionNum / 10000

	tool, err := p.Finder.Find(ctx, "pg_dump", major)
	if err != nil {
		closeDB()
		return nil, fmt.Errorf("postgres %s: %w", conn.Redacted, err)
	}
	meta.PGDumpVersion = tool.Version

	tx, err := db.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		closeDB()
		return nil, fail("begin snapshot transaction", err)
	}
	var lsn *string
	if err := tx.QueryRow(ctx, `SELECT pg_export_snapshot(),
		CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()::text ELSE pg_current_wal_lsn()::text END,
		clock_timestamp()`).Scan(&meta.Snapshot, &lsn, &meta.SnapshotTime); err != nil {
		_ = tx.Rollback(ctx)
		closeDB()
		return nil, fail("export snapshot", err)
	}
	if lsn != nil {
		meta.WALLSN = *lsn
	}
	meta.SnapshotTime = meta.SnapshotTime.UTC()

	args := []string{"--format=custom", "--compress=0", "--no-password", "--snapshot=" + meta.Snapshot, "--dbname=" + conn.DSN}
	proc, err := startProc(ctx, tool.Path, args, pgtool.Env(conn.Env), conn.Password)
	if err != nil {
		_ = tx.Rollback(ctx)
		closeDB()
		return nil, fail("run pg_dump", err)
	}
	proc.name = "pg_dump " + tool.Version
	proc.meta = func(int) manifest.SourceMeta { return manifest.SourceMeta{Postgres: meta} }
	proc.after = func() error {
		// The snapshot must outlive pg_dump; a failed rollback after a
		// successful dump changes nothing in the data.
		rerr := tx.Rollback(context.WithoutCancel(ctx))
		closeDB()
		if rerr != nil && !errors.Is(rerr, pgx.ErrTxClosed) && p.Logger != nil {
			p.Logger.Warn("end snapshot transaction", "err", pgtool.Scrub(rerr, conn.Password))
		}
		return nil
	}
	return proc, nil
}
