package audit

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// A segment file is a 24-byte header (segMagic, then the index of its first
// entry as a big-endian uint64) followed by framed records, one per entry.
// Segments are named seg-<first index, 20 digits>.log; a sealed segment has
// a seg-<first>.idx beside it holding each entry's offset as a big-endian
// uint64 (derived data, rebuilt from the segment when missing).
const (
	segMagic      = "OPSD-AUDIT-SEG1\n"
	segHeaderSize = int64(len(segMagic) + 8)
	segPrefix     = "seg-"
	segSuffix     = ".log"
	idxSuffix     = ".idx"
)

func segName(first int64) string { return fmt.Sprintf("%s%020d%s", segPrefix, first, segSuffix) }

func idxName(first int64) string { return fmt.Sprintf("%s%020d%s", segPrefix, first, idxSuffix) }

func segHeader(first int64) []byte {
	h := make([]byte, segHeaderSize)
	copy(h, segMagic)
	binary.BigEndian.PutUint64(h[len(segMagic):], uint64(first))
	return h
}

// segment describes one segment file. offsets is set for the active segment
// only (in memory); count is its number of entries.
type segment struct {
	first   int64
	count   int64
	offsets []int64
}

// listSegments returns the first indexes of the segments in dir, ascending.
func listSegments(fsys FS, dir string) ([]int64, error) {
	ents, err := fsys.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("list audit segments: %w", err)
	}
	var firsts []int64
	for _, e := range ents {
		name := e.Name()
		if !strings.HasPrefix(name, segPrefix) || !strings.HasSuffix(name, segSuffix) {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimPrefix(name, segPrefix), segSuffix), 10, 64)
		if err != nil || n < 0 {
			return nil, fmt.Errorf("audit segment %s: unexpected name", name)
		}
		firsts = append(firsts, n)
	}
	slices.Sort(firsts)
	return firsts, nil
}

// checkSegHeader reads and checks a segment's header.
func checkSegHeader(r io.ReaderAt, first int64) error {
	h := make([]byte, segHeaderSize)
	if _, err := r.ReadAt(h, 0); err != nil {
		return fmt.Errorf("read header: %w", err)
	}
	if string(h[:len(segMagic)]) != segMagic {
		return errors.New("not an audit segment (bad magic)")
	}
	if got := int64(binary.BigEndian.Uint64(h[len(segMagic):])); got != first {
		return fmt.Errorf("header says first index %d, name says %d", got, first)
	}
	return nil
}

// scanResult is what a full scan of a segment found.
type scanResult struct {
	offsets []int64
	goodEnd int64         // end of the last good record
	bad     *errBadRecord // the first bad record, if any
	size    int64         // file size
}

// scanSegment reads every record of a segment, checking framing and that
// each leaf's index follows on.
func scanSegment(f File, first int64) (scanResult, error) {
	st, err := f.Stat()
	if err != nil {
		return scanResult{}, err
	}
	res := scanResult{size: st.Size(), goodEnd: segHeaderSize}
	if err := checkSegHeader(f, first); err != nil {
		return res, err
	}
	rr := newRecordReader(io.NewSectionReader(f, segHeaderSize, st.Size()-segHeaderSize), segHeaderSize, 1<<20)
	for {
		payload, off, err := rr.next()
		if err == io.EOF {
			return res, nil
		}
		var bad *errBadRecord
		if errors.As(err, &bad) {
			res.bad = bad
			return res, nil
		}
		if err != nil {
			return res, err
		}
		want := first + int64(len(res.offsets))
		if got, err := leafIndex(payload); err != nil || got != want {
			res.bad = &errBadRecord{off, fmt.Sprintf("entry index %d expected, leaf says %d (%v)", want, got, err)}
			return res, nil
		}
		res.offsets = append(res.offsets, off)
		res.goodEnd = rr.off
	}
}

// readIdx reads a sealed segment's offset index.
func readIdx(fsys FS, dir string, first int64) ([]int64, error) {
	f, err := fsys.OpenFile(filepath.Join(dir, idxName(first)), os.O_RDONLY, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	raw := make([]byte, st.Size())
	if _, err := f.ReadAt(raw, 0); err != nil && err != io.EOF {
		return nil, err
	}
	if len(raw)%8 != 0 {
		return nil, errors.New("idx size is not a multiple of 8")
	}
	offs := make([]int64, len(raw)/8)
	for i := range offs {
		offs[i] = int64(binary.BigEndian.Uint64(raw[i*8:]))
	}
	return offs, nil
}

// writeIdx writes a sealed segment's offset index durably.
func writeIdx(fsys FS, dir string, first int64, offsets []int64) error {
	raw := make([]byte, 8*len(offsets))
	for i, o := range offsets {
		binary.BigEndian.PutUint64(raw[i*8:], uint64(o))
	}
	tmp := filepath.Join(dir, idxName(first)+".tmp")
	f, err := fsys.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.WriteAt(raw, 0); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := fsys.Rename(tmp, filepath.Join(dir, idxName(first))); err != nil {
		return err
	}
	return fsys.SyncDir(dir)
}
