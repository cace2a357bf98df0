package backup

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path"
	"strings"
	"time"

	"filippo.io/age"
	"github.com/jackc/pgx/v5"
	"github.com/klauspost/compress/zstd"
	"golang.org/x/mod/sumdb/note"

	"github.com/opsd-dev/opsd/internal/backup/manifest"
	"github.com/opsd-dev/opsd/internal/backup/pgtool"
	"github.com/opsd-dev/opsd/internal/storage"
)

// ErrNotEmpty: the restore destination already holds data and Force is off.
var ErrNotEmpty = errors.New("restore destination is not empty")

// ErrNoCopy: no target had a valid, matching copy.
var ErrNoCopy = errors.New("no usable copy")

// RestoreOptions say what to restore and where. Exactly one of ToDir,
// ToPostgres and ToWriter is set.
type RestoreOptions struct {
	// Targets are tried in order.
	Targets []storage.Backend
	// Source is the backup's source name; "" finds it by listing.
	Source string
	// ID is the backup id.
	ID string
	// Verifier checks manifest.json.sig.
	Verifier note.Verifier
	// Identities decrypt the data (age identity file contents).
	Identities []age.Identity

	// ToDir extracts a tar backup into a directory.
	ToDir string
	// ToPostgres runs pg_restore into this database (a secret DSN).
	ToPostgres string
	// ToWriter receives the decrypted, decompressed data.
	ToWriter io.Writer
	// Force restores over a non-empty directory or database (pg_restore
	// --clean --if-exists).
	Force bool
	// PGRestore locates pg_restore; its Configured path wins.
	PGRestore pgtool.Finder

	// SpoolDir holds the downloaded copy until it is verified; "" uses
	// os.TempDir(). Needs free space for the stored size.
	SpoolDir string
	// NoSpool verifies by reading the copy twice instead of spooling.
	NoSpool bool
	// Progress, if set, is called about twice a second.
	Progress func(Progress)
	// Logger receives the copies tried; nil discards.
	Logger *slog.Logger
}

// RestoreResult describes a restore.
type RestoreResult struct {
	Manifest *manifest.Manifest
	// Target whose copy was restored.
	Target string
	// Rejected lists the copies tried and refused, in order.
	Rejected []error
	// Bytes restored (the raw size).
	Bytes int64
}

// Restore restores backup opts.ID. See the package doc for how copies are
// verified before anything is written.
func Restore(ctx context.Context, opts RestoreOptions) (*RestoreResult, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := manifest.CheckID(opts.ID); err != nil {
		return nil, err
	}
	dests := 0
	for _, set := range []bool{opts.ToDir != "", opts.ToPostgres != "", opts.ToWriter != nil} {
		if set {
			dests++
		}
	}
	if dests != 1 {
		return nil, errors.New("restore: give exactly one destination (directory, PostgreSQL or writer)")
	}
	if len(opts.Targets) == 0 {
		return nil, errors.New("restore: no targets")
	}

	res := &RestoreResult{}
	m, err := findManifest(ctx, opts, res)
	if err != nil {
		return res, err
	}
	res.Manifest = m
	log = log.With("source", m.Source, "backup", m.ID)
	obj, err := m.DataObject()
	if err != nil {
		return res, err
	}
	if err := checkDestination(ctx, opts, m); err != nil {
		return res, err
	}
	if m.Encryption.Algorithm == "age" && len(opts.Identities) == 0 {
		return res, fmt.Errorf("restore %s: the backup is encrypted and no age identity was given", m.Dir())
	}

	for _, t := range opts.Targets {
		data, err := fetchVerified(ctx, t, m, obj, opts)
		if err != nil {
			log.Warn("copy refused", "target", t.Name(), "err", err)
			res.Rejected = append(res.Rejected, err)
			if ctx.Err() != nil {
				return res, ctx.Err()
			}
			continue
		}
		res.Target = t.Name()
		log.Info("restoring copy", "target", t.Name())
		n, err := apply(ctx, data, m, opts)
		if hc, ok := data.(*hashCheckReader); ok && err != nil && ctx.Err() == nil {
			// Decoding failed on a copy read a second time: say so if
			// the copy is not what was verified.
			if cerr := hc.drain(); cerr != nil {
				err = fmt.Errorf("%w (%v)", cerr, err)
			}
		}
		data.Close()
		res.Bytes = n
		if err != nil {
			return res, fmt.Errorf("restore %s from %s: %w", m.Dir(), t.Name(), err)
		}
		return res, nil
	}
	return res, fmt.Errorf("restore %s: %w: %w", m.Dir(), ErrNoCopy, errors.Join(res.Rejected...))
}

// findManifest returns the first manifest that verifies.
func findManifest(ctx context.Context, opts RestoreOptions, res *RestoreResult) (*manifest.Manifest, error) {
	var errs []error
	for _, t := range opts.Targets {
		src := opts.Source
		if src == "" {
			var err error
			if src, err = findSource(ctx, t, opts.ID); err != nil {
				errs = append(errs, err)
				continue
			}
		}
		m, err := ReadManifest(ctx, t, src, opts.ID, opts.Verifier)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		return m, nil
	}
	res.Rejected = append(res.Rejected, errs...)
	for _, e := range errs {
		// A refusal to read the format is the clearest thing to say.
		if errors.Is(e, manifest.ErrUnsupportedVersion) {
			return nil, fmt.Errorf("restore %s: %w", opts.ID, e)
		}
	}
	return nil, fmt.Errorf("restore %s: no valid manifest on any target: %w", opts.ID, errors.Join(errs...))
}

var errFound = errors.New("found")

func findSource(ctx context.Context, t storage.Backend, id string) (string, error) {
	var src string
	err := t.List(ctx, "", func(oi storage.ObjectInfo) error {
		parts := strings.Split(oi.Key, "/")
		if len(parts) == 3 && parts[1] == id && parts[2] == manifest.ManifestName {
			src = parts[0]
			return errFound
		}
		return nil
	})
	if err != nil && !errors.Is(err, errFound) {
		return "", fmt.Errorf("find backup %s on %s: %w", id, t.Name(), err)
	}
	if src == "" {
		return "", fmt.Errorf("find backup %s on %s: %w", id, t.Name(), storage.ErrNotFound)
	}
	return src, nil
}

// checkDestination refuses a non-empty destination before any download.
func checkDestination(ctx context.Context, opts RestoreOptions, m *manifest.Manifest) error {
	switch {
	case opts.ToDir != "":
		if m.Kind != "tar" {
			return fmt.Errorf("restore %s: a %s backup cannot be extracted into a directory (use a writer/--stdout)", m.Dir(), m.Kind)
		}
		entries, err := os.ReadDir(opts.ToDir)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("restore into %s: %w", opts.ToDir, err)
		}
		if len(entries) > 0 && !opts.Force {
			return fmt.Errorf("restore into %s: %w (%d entries; use force to restore over them)", opts.ToDir, ErrNotEmpty, len(entries))
		}
	case opts.ToPostgres != "":
		if m.Kind != "pgdump" {
			return fmt.Errorf("restore %s: a %s backup cannot be restored into PostgreSQL", m.Dir(), m.Kind)
		}
		conn, err := pgtool.Split(opts.ToPostgres)
		if err != nil {
			return err
		}
		n, err := userTables(ctx, opts.ToPostgres)
		if err != nil {
			return pgtool.Scrub(fmt.Errorf("restore into %s: %w", conn.Redacted, err), conn.Password)
		}
		if n > 0 && !opts.Force {
			return fmt.Errorf("restore into %s: %w (%d user tables; use force to restore over them)", conn.Redacted, ErrNotEmpty, n)
		}
	}
	return nil
}

func userTables(ctx context.Context, dsn string) (int, error) {
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	db, err := pgx.Connect(cctx, dsn)
	if err != nil {
		return 0, fmt.Errorf("connect: %w", err)
	}
	defer db.Close(context.WithoutCancel(ctx))
	var n int
	err = db.QueryRow(cctx, `SELECT count(*) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'`).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("count user tables: %w", err)
	}
	return n, nil
}

// fetchVerified returns a reader of the copy's stored bytes that are known
// to match the manifest: a spool file, or a second read that is hashed
// again and fails at EOF if the copy changed in between — with NoSpool,
// and for a copy the backend opens seekable (a local file), which is
// rewound and read again through the same open file: cheaper than writing
// it to the spool and reading that back, and a copy replaced on disk in
// between (the local backend renames into place) cannot be mixed in.
func fetchVerified(ctx context.Context, t storage.Backend, m *manifest.Manifest, obj manifest.Object, opts RestoreOptions) (_ io.ReadCloser, err error) {
	key := m.Key(obj.Name)
	rc, err := t.Open(ctx, key, 0, -1)
	if err != nil {
		return nil, fmt.Errorf("read %s on %s: %w", key, t.Name(), err)
	}
	seeker, rewind := rc.(io.Seeker)
	defer func() {
		if !rewind || err != nil {
			rc.Close()
		}
	}()
	var spool *os.File
	var dst io.Writer = io.Discard
	if !opts.NoSpool && !rewind {
		if spool, err = os.CreateTemp(opts.SpoolDir, "opsd-restore-*"); err != nil {
			return nil, fmt.Errorf("spool: %w", err)
		}
		_ = os.Remove(spool.Name()) // unlinked: nothing left behind
		dst = spool
	}
	fail := func(err error) (io.ReadCloser, error) {
		if spool != nil {
			spool.Close()
		}
		return nil, err
	}
	h := sha256.New()
	pr := &progressReader{r: rc, phase: "download", total: obj.Size, fn: opts.Progress, start: time.Now()}
	n, err := io.Copy(io.MultiWriter(dst, h), &ctxReader{ctx: ctx, r: pr})
	if err != nil {
		return fail(fmt.Errorf("read %s on %s: %w", key, t.Name(), err))
	}
	if err := checkDigest(t.Name(), key, obj, n, hex.EncodeToString(h.Sum(nil))); err != nil {
		return fail(err)
	}
	if spool != nil {
		if _, err := spool.Seek(0, io.SeekStart); err != nil {
			return fail(fmt.Errorf("spool: %w", err))
		}
		return spool, nil
	}
	if rewind {
		if _, err := seeker.Seek(0, io.SeekStart); err != nil {
			return nil, fmt.Errorf("read %s on %s: rewind: %w", key, t.Name(), err)
		}
		return &hashCheckReader{rc: rc, h: sha256.New(), obj: obj, key: key, target: t.Name()}, nil
	}
	rc2, err := t.Open(ctx, key, 0, -1)
	if err != nil {
		return nil, fmt.Errorf("read %s on %s: %w", key, t.Name(), err)
	}
	return &hashCheckReader{rc: rc2, h: sha256.New(), obj: obj, key: key, target: t.Name()}, nil
}

// apply decrypts, decompresses and delivers verified stored bytes.
func apply(ctx context.Context, stored io.Reader, m *manifest.Manifest, opts RestoreOptions) (int64, error) {
	plain := stored
	if m.Encryption.Algorithm == "age" {
		r, err := age.Decrypt(stored, opts.Identities...)
		if err != nil {
			return 0, fmt.Errorf("decrypt (is the identity one of the backup's recipients %s?): %w", strings.Join(m.Encryption.Recipients, ", "), err)
		}
		plain = r
	}
	zr, err := zstd.NewReader(plain)
	if err != nil {
		return 0, fmt.Errorf("zstd: %w", err)
	}
	defer zr.Close()
	raw := &progressReader{r: &ctxReader{ctx: ctx, r: zr}, phase: "restore", total: m.Size.Raw, fn: opts.Progress, start: time.Now()}
	switch {
	case opts.ToWriter != nil:
		n, err := io.Copy(opts.ToWriter, raw)
		return n, err
	case opts.ToDir != "":
		err := ExtractTar(raw, opts.ToDir)
		return raw.n, err
	default:
		err := pgRestore(ctx, raw, opts)
		return raw.n, err
	}
}

func pgRestore(ctx context.Context, r io.Reader, opts RestoreOptions) error {
	conn, err := pgtool.Split(opts.ToPostgres)
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	db, err := pgx.Connect(cctx, opts.ToPostgres)
	if err != nil {
		cancel()
		return pgtool.Scrub(fmt.Errorf("connect %s: %w", conn.Redacted, err), conn.Password)
	}
	var num int
	err = db.QueryRow(cctx, "SELECT current_setting('server_version_num')::int").Scan(&num)
	_ = db.Close(ctx)
	cancel()
	if err != nil {
		return pgtool.Scrub(fmt.Errorf("query server version of %s: %w", conn.Redacted, err), conn.Password)
	}
	major := num / 10000
	tool, err := opts.PGRestore.Find(ctx, "pg_restore", major)
	if err != nil {
		return err
	}
	args := []string{"--no-password", "--exit-on-error", "--single-transaction", "--dbname=" + conn.DSN}
	if opts.Force {
		args = append(args, "--clean", "--if-exists")
	}
	cmd := exec.CommandContext(ctx, tool.Path, args...)
	cmd.Env = pgtool.Env(conn.Env)
	cmd.Stdin = r
	tail := &pgtool.TailBuffer{Max: 64 << 10}
	cmd.Stderr = tail
	cmd.Stdout = tail
	if err := cmd.Run(); err != nil {
		msg := fmt.Sprintf("pg_restore %s into %s: %v", tool.Version, conn.Redacted, err)
		if s := tail.String(); s != "" {
			msg += ": " + s
		}
		return pgtool.Scrub(errors.New(msg), conn.Password)
	}
	return nil
}

// ExtractTar extracts a tar stream into dir (created if missing). Every
// path is resolved inside dir through os.Root, so no entry — "..", an
// absolute name, or a path through a symlink — can write outside it.
// Modes, mtimes and (as root) owners are restored; directories' modes and
// mtimes are set last so extracting their contents does not change them.
func ExtractTar(r io.Reader, dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("extract: %w", err)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return fmt.Errorf("extract: %w", err)
	}
	defer root.Close()
	asRoot := os.Geteuid() == 0
	type dirAttr struct {
		name     string
		mode     fs.FileMode
		mtime    time.Time
		uid, gid int
	}
	var dirs []dirAttr
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("extract: %w", err)
		}
		name := path.Clean(strings.TrimSuffix(hdr.Name, "/"))
		if !fs.ValidPath(name) || name == "." {
			return fmt.Errorf("extract: unsafe entry name %q refused", hdr.Name)
		}
		if parent := path.Dir(name); parent != "." {
			if err := root.MkdirAll(parent, 0o755); err != nil {
				return fmt.Errorf("extract %s: %w", name, err)
			}
		}
		mode := fs.FileMode(hdr.Mode & 0o777)
		if hdr.Mode&0o4000 != 0 {
			mode |= fs.ModeSetuid
		}
		if hdr.Mode&0o2000 != 0 {
			mode |= fs.ModeSetgid
		}
		if hdr.Mode&0o1000 != 0 {
			mode |= fs.ModeSticky
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := root.Mkdir(name, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("extract %s: %w", name, err)
			}
			dirs = append(dirs, dirAttr{name, mode, hdr.ModTime, hdr.Uid, hdr.Gid})
		case tar.TypeReg:
			_ = root.Remove(name) // replace a symlink rather than write through it
			f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			if err != nil {
				return fmt.Errorf("extract %s: %w", name, err)
			}
			_, err = io.Copy(f, tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("extract %s: %w", name, err)
			}
			if asRoot {
				_ = root.Lchown(name, hdr.Uid, hdr.Gid)
			}
			if err := root.Chmod(name, mode); err != nil {
				return fmt.Errorf("extract %s: %w", name, err)
			}
			if err := root.Chtimes(name, hdr.ModTime, hdr.ModTime); err != nil {
				return fmt.Errorf("extract %s: %w", name, err)
			}
		case tar.TypeSymlink:
			_ = root.Remove(name)
			if err := root.Symlink(hdr.Linkname, name); err != nil {
				return fmt.Errorf("extract %s: %w", name, err)
			}
			if asRoot {
				_ = root.Lchown(name, hdr.Uid, hdr.Gid)
			}
		default:
			return fmt.Errorf("extract %s: unsupported entry type %q", name, hdr.Typeflag)
		}
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		d := dirs[i]
		if asRoot {
			_ = root.Lchown(d.name, d.uid, d.gid)
		}
		if err := root.Chmod(d.name, d.mode); err != nil {
			return fmt.Errorf("extract %s: %w", d.name, err)
		}
		if err := root.Chtimes(d.name, d.mtime, d.mtime); err != nil {
			return fmt.Errorf("extract %s: %w", d.name, err)
		}
	}
	return nil
}

type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

type progressReader struct {
	r     io.Reader
	n     int64
	phase string
	total int64
	fn    func(Progress)
	start time.Time
	last  time.Time
}

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	p.n += int64(n)
	if p.fn != nil {
		if now := time.Now(); now.Sub(p.last) >= 500*time.Millisecond || err == io.EOF {
			p.last = now
			p.fn(progressAt(p.phase, p.n, p.total, p.start, now))
		}
	}
	return n, err
}

// errCopyChanged: a copy read twice (verified, then applied) differed the
// second time.
var errCopyChanged = errors.New("the copy changed between verification and restore")

// hashCheckReader fails at EOF if what it read does not match obj.
type hashCheckReader struct {
	rc     io.ReadCloser
	h      hash.Hash
	n      int64
	obj    manifest.Object
	key    string
	target string
}

func (r *hashCheckReader) Read(p []byte) (int, error) {
	n, err := r.rc.Read(p)
	r.h.Write(p[:n])
	r.n += int64(n)
	if err == io.EOF {
		if cerr := checkDigest(r.target, r.key, r.obj, r.n, hex.EncodeToString(r.h.Sum(nil))); cerr != nil {
			return n, fmt.Errorf("%w: %w", errCopyChanged, cerr)
		}
	}
	return n, err
}

func (r *hashCheckReader) Close() error { return r.rc.Close() }

// drain reads the rest of the copy and returns the hash check's error, if
// the copy does not match (the decoder may have stopped before EOF).
func (r *hashCheckReader) drain() error {
	if _, err := io.Copy(io.Discard, r); errors.Is(err, errCopyChanged) {
		return err
	}
	return nil
}
