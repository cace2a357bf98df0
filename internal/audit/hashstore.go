package audit

import (
	"fmt"
	"io"

	"golang.org/x/mod/sumdb/tlog"
)

// The hash store is one file of fixed-size records: after a 32-byte header,
// stored hash number i (tlog.StoredHashIndex order) is at 32+32*i. Any
// hash is one pread away; nothing of the tree is held in memory.
const (
	hashFileName   = "hashes.dat"
	hashHeader     = "OPSD-AUDIT-HASHES-V1\n\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
	hashHeaderSize = int64(len(hashHeader))
)

type hashStore struct {
	f File
}

var _ tlog.HashReader = (*hashStore)(nil)

func hashOffset(i int64) int64 { return hashHeaderSize + i*tlog.HashSize }

// ReadHashes implements tlog.HashReader.
func (h *hashStore) ReadHashes(indexes []int64) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(indexes))
	for i, idx := range indexes {
		if _, err := h.f.ReadAt(out[i][:], hashOffset(idx)); err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, fmt.Errorf("read stored hash %d: %w", idx, err)
		}
	}
	return out, nil
}

// write stores hashes starting at stored index at.
func (h *hashStore) write(at int64, hashes []tlog.Hash, buf []byte) ([]byte, error) {
	buf = buf[:0]
	for i := range hashes {
		buf = append(buf, hashes[i][:]...)
	}
	if _, err := h.f.WriteAt(buf, hashOffset(at)); err != nil {
		return buf, fmt.Errorf("write stored hashes at %d: %w", at, err)
	}
	return buf, nil
}

// batchReader serves hashes written earlier from the store and hashes of
// the batch being built from memory.
type batchReader struct {
	store   *hashStore
	base    int64 // stored index of pending[0]
	pending []tlog.Hash
}

func (b *batchReader) ReadHashes(indexes []int64) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(indexes))
	for i, idx := range indexes {
		if idx >= b.base {
			if idx-b.base >= int64(len(b.pending)) {
				return nil, fmt.Errorf("stored hash %d not yet computed", idx)
			}
			out[i] = b.pending[idx-b.base]
			continue
		}
		hs, err := b.store.ReadHashes([]int64{idx})
		if err != nil {
			return nil, err
		}
		out[i] = hs[0]
	}
	return out, nil
}

// frontier holds the roots of the complete subtrees on the right edge of a
// tree being built leaf by leaf: at most one per level, which is all that
// tlog.StoredHashes and tlog.TreeHash read. Verification streams any number
// of leaves in constant memory with it.
type frontier struct {
	idx   [64]int64
	hash  [64]tlog.Hash
	valid [64]bool
}

// add records the stored hashes tlog.StoredHashes returned for leaf n.
func (f *frontier) add(n int64, hashes []tlog.Hash) {
	m := len(hashes) - 1
	for k := 0; k < m; k++ {
		f.valid[k] = false
	}
	f.idx[m] = tlog.StoredHashIndex(m, n>>uint(m))
	f.hash[m] = hashes[m]
	f.valid[m] = true
}

// ReadHashes implements tlog.HashReader.
func (f *frontier) ReadHashes(indexes []int64) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(indexes))
	for i, idx := range indexes {
		level, _ := tlog.SplitStoredHashIndex(idx)
		if level >= 64 || !f.valid[level] || f.idx[level] != idx {
			return nil, fmt.Errorf("stored hash %d is not on the frontier", idx)
		}
		out[i] = f.hash[level]
	}
	return out, nil
}
