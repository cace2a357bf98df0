package source

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
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/opsd-dev/opsd/internal/backup/manifest"
)

// Files archives file trees as one tar stream (POSIX ustar/pax).
//
// Entry names are the absolute paths without the leading slash
// (/srv/uploads/a.txt → srv/uploads/a.txt), so `tar -x -C DIR` recreates
// the trees under DIR. Roots are archived in sorted order and each tree
// depth-first with every directory's entries sorted by name: the same tree
// always gives the same stream. Regular files, directories and symbolic
// links (never followed) are kept with their mode, owner and mtime (whole
// seconds); hard links are stored as separate files; sockets, devices and
// FIFOs are skipped with a warning, as are entries that vanish or cannot be
// read during the walk.
//
// Exclude patterns use path.Match syntax. A pattern without a slash matches
// an entry's base name at any depth ("*.tmp"); a pattern with a slash
// matches the path relative to its root ("cache/*"). An excluded directory
// is skipped with everything under it.
type Files struct {
	Paths         []string
	Exclude       []string
	OneFileSystem bool
}

// Kind is "tar".
func (f *Files) Kind() string { return "tar" }

// Open starts the tar producer.
func (f *Files) Open(ctx context.Context) (Stream, error) {
	if len(f.Paths) == 0 {
		return nil, errors.New("files source: no paths")
	}
	for _, pat := range f.Exclude {
		if _, err := path.Match(pat, ""); err != nil {
			return nil, fmt.Errorf("files source: exclude %q: %w", pat, err)
		}
	}
	var roots []string
	for _, p := range f.Paths {
		abs, err := filepath.Abs(p)
		if err != nil {
			return nil, fmt.Errorf("files source: %s: %w", p, err)
		}
		if abs == "/" {
			return nil, errors.New("files source: refusing to archive / as a whole")
		}
		if _, err := os.Lstat(abs); err != nil {
			return nil, fmt.Errorf("files source: %w", err)
		}
		roots = append(roots, abs)
	}
	slices.Sort(roots)
	roots = slices.Compact(roots)

	pr, pw := io.Pipe()
	s := &filesStream{pr: pr, done: make(chan struct{})}
	meta := &manifest.FilesMeta{Paths: roots, Exclude: f.Exclude}
	go func() {
		defer close(s.done)
		out := &errWriter{w: pw}
		w := &tarWriter{ctx: ctx, out: out, tw: tar.NewWriter(out), index: NewIndex(), meta: meta, exclude: f.Exclude, oneFS: f.OneFileSystem}
		err := w.writeAll(roots)
		s.res = Result{Meta: manifest.SourceMeta{Files: meta}, Warnings: w.warnings}
		s.err = err
		pw.CloseWithError(err)
	}()
	return s, nil
}

type filesStream struct {
	pr   *io.PipeReader
	done chan struct{}
	eof  bool
	res  Result
	err  error
}

func (s *filesStream) Read(b []byte) (int, error) {
	n, err := s.pr.Read(b)
	if err == io.EOF {
		s.eof = true
	}
	return n, err
}

func (s *filesStream) Finish() (Result, error) {
	if !s.eof {
		s.pr.CloseWithError(errors.New("backup aborted"))
	}
	<-s.done
	if s.err == nil && !s.eof {
		return s.res, errors.New("files source: tar stream not read to the end")
	}
	if s.err != nil {
		return s.res, fmt.Errorf("files source: %w", s.err)
	}
	return s.res, nil
}

type tarWriter struct {
	ctx      context.Context
	out      *errWriter
	tw       *tar.Writer
	index    *Index
	meta     *manifest.FilesMeta
	exclude  []string
	oneFS    bool
	warnings []string
	buf      []byte
}

func (w *tarWriter) warnf(format string, args ...any) {
	const maxWarnings = 1000
	if len(w.warnings) < maxWarnings {
		w.warnings = append(w.warnings, fmt.Sprintf(format, args...))
	} else if len(w.warnings) == maxWarnings {
		w.warnings = append(w.warnings, "more warnings omitted")
	}
}

func (w *tarWriter) writeAll(roots []string) error {
	w.buf = make([]byte, 256<<10)
	for _, root := range roots {
		if err := w.writeRoot(root); err != nil {
			return err
		}
	}
	if err := w.tw.Close(); err != nil {
		return err
	}
	w.meta.IndexDigest = w.index.Digest()
	return nil
}

func (w *tarWriter) excluded(rel, base string) bool {
	for _, pat := range w.exclude {
		subject := rel
		if !strings.Contains(pat, "/") {
			subject = base
		}
		if ok, _ := path.Match(pat, subject); ok {
			return true
		}
	}
	return false
}

func (w *tarWriter) writeRoot(root string) error {
	var rootDev uint64
	if st, err := os.Lstat(root); err == nil {
		if sys, ok := st.Sys().(*syscall.Stat_t); ok {
			rootDev = uint64(sys.Dev)
		}
	}
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if cerr := w.ctx.Err(); cerr != nil {
			return cerr
		}
		if err != nil {
			if p == root {
				return err
			}
			w.warnf("%s: %v (skipped)", p, err)
			if d != nil && d.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		rel, _ := filepath.Rel(root, p)
		rel = filepath.ToSlash(rel)
		if p != root && w.excluded(rel, d.Name()) {
			if d.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		info, err := d.Info()
		if err != nil {
			w.warnf("%s: %v (skipped)", p, err)
			return nil
		}
		name := strings.TrimPrefix(filepath.ToSlash(p), "/")
		if err := w.writeEntry(p, name, info); err != nil {
			return err
		}
		if d.IsDir() && p != root && w.oneFS {
			if sys, ok := info.Sys().(*syscall.Stat_t); ok && uint64(sys.Dev) != rootDev {
				return fs.SkipDir
			}
		}
		return nil
	})
}

func (w *tarWriter) writeEntry(p, name string, info fs.FileInfo) error {
	var link string
	mode := info.Mode()
	switch {
	case mode.IsRegular(), mode.IsDir():
	case mode&fs.ModeSymlink != 0:
		var err error
		if link, err = os.Readlink(p); err != nil {
			w.warnf("%s: %v (skipped)", p, err)
			return nil
		}
	default:
		w.warnf("%s: %s is not a regular file, directory or symlink (skipped)", p, mode.Type())
		return nil
	}
	hdr, err := tar.FileInfoHeader(info, link)
	if err != nil {
		w.warnf("%s: %v (skipped)", p, err)
		return nil
	}
	hdr.Name = name
	if mode.IsDir() {
		hdr.Name += "/"
	}
	hdr.ModTime = info.ModTime().Truncate(time.Second)
	hdr.AccessTime, hdr.ChangeTime = time.Time{}, time.Time{}

	if !mode.IsRegular() {
		if err := w.tw.WriteHeader(hdr); err != nil {
			return err
		}
		if mode.IsDir() {
			w.meta.Dirs++
		} else {
			w.meta.Symlink++
		}
		w.index.Add(hdr, "")
		return nil
	}

	f, err := os.Open(p)
	if err != nil {
		w.warnf("%s: %v (skipped)", p, err)
		return nil
	}
	defer f.Close()
	if err := w.tw.WriteHeader(hdr); err != nil {
		return err
	}
	h := sha256.New()
	n, err := io.CopyBuffer(io.MultiWriter(w.tw, h), io.LimitReader(f, hdr.Size), w.buf)
	if w.out.err != nil {
		return w.out.err
	}
	if err != nil {
		w.warnf("%s: read: %v (rest zero-filled)", p, err)
	}
	if n < hdr.Size {
		// The file shrank: the header promised hdr.Size bytes.
		if err := writeZeros(io.MultiWriter(w.tw, h), hdr.Size-n); err != nil {
			return err
		}
		w.warnf("%s: shrank from %d to %d bytes while being read (zero-filled)", p, hdr.Size, n)
	} else if after, serr := f.Stat(); serr == nil && (after.Size() != info.Size() || !after.ModTime().Equal(info.ModTime())) {
		w.warnf("%s: changed while being read (size %d→%d, mtime %s→%s); the copy may be inconsistent",
			p, info.Size(), after.Size(), info.ModTime().UTC().Format(time.RFC3339Nano), after.ModTime().UTC().Format(time.RFC3339Nano))
	}
	w.meta.Files++
	w.index.Add(hdr, hex.EncodeToString(h.Sum(nil)))
	return nil
}

// errWriter remembers the first write error, so a failed write to the
// consumer (backup aborted) is told apart from a failed read of a file.
type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) Write(p []byte) (int, error) {
	if e.err != nil {
		return 0, e.err
	}
	n, err := e.w.Write(p)
	if err != nil {
		e.err = err
	}
	return n, err
}

func writeZeros(w io.Writer, n int64) error {
	zero := make([]byte, 32<<10)
	for n > 0 {
		k := min(n, int64(len(zero)))
		if _, err := w.Write(zero[:k]); err != nil {
			return err
		}
		n -= k
	}
	return nil
}

// Index computes the file index digest recorded in the manifest
// (FilesMeta.IndexDigest). Entries are added in tar order; each adds the
// line
//
//	<quoted name> <type d|f|l> <mode, 4 octal digits> <size> <mtime, unix seconds> <content>\n
//
// where content is the file's SHA-256 in hex, a symlink's quoted target, or
// "-" for a directory; symlinks record mtime 0 (restoring tools cannot set
// it portably). The digest is "sha256:" + hex(SHA-256 of all lines).
type Index struct {
	h hash.Hash
}

// NewIndex returns an empty index.
func NewIndex() *Index { return &Index{h: sha256.New()} }

// Add adds one entry; contentSHA is the hex SHA-256 of a regular file.
func (x *Index) Add(hdr *tar.Header, contentSHA string) {
	name := strings.TrimSuffix(hdr.Name, "/")
	typ, content, mtime, size := byte('f'), contentSHA, hdr.ModTime.Unix(), hdr.Size
	switch hdr.Typeflag {
	case tar.TypeDir:
		typ, content, size = 'd', "-", 0
	case tar.TypeSymlink:
		typ, content, mtime, size = 'l', strconv.Quote(hdr.Linkname), 0, 0
	}
	fmt.Fprintf(x.h, "%s %c %04o %d %d %s\n", strconv.Quote(name), typ, hdr.Mode&0o7777, size, mtime, content)
}

// Digest returns "sha256:<hex>".
func (x *Index) Digest() string { return "sha256:" + hex.EncodeToString(x.h.Sum(nil)) }

// IndexDir computes the index digest of trees restored under dir, for the
// roots recorded in a manifest (FilesMeta.Paths), so a restore can be
// compared with the backup. Excluded entries are simply absent from a
// restored tree.
func IndexDir(dir string, roots []string) (string, error) {
	x := NewIndex()
	for _, root := range roots {
		base := filepath.Join(dir, strings.TrimPrefix(root, "/"))
		err := filepath.WalkDir(base, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			info, err := d.Info()
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(dir, p)
			var link string
			if info.Mode()&fs.ModeSymlink != 0 {
				if link, err = os.Readlink(p); err != nil {
					return err
				}
			}
			hdr, err := tar.FileInfoHeader(info, link)
			if err != nil {
				return err
			}
			hdr.Name = filepath.ToSlash(rel)
			hdr.ModTime = info.ModTime().Truncate(time.Second)
			sum := ""
			if info.Mode().IsRegular() {
				f, err := os.Open(p)
				if err != nil {
					return err
				}
				h := sha256.New()
				_, err = io.Copy(h, f)
				f.Close()
				if err != nil {
					return err
				}
				sum = hex.EncodeToString(h.Sum(nil))
			}
			x.Add(hdr, sum)
			return nil
		})
		if err != nil {
			return "", fmt.Errorf("index %s: %w", base, err)
		}
	}
	return x.Digest(), nil
}
