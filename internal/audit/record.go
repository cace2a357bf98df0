package audit

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// Every record in a segment or in the checkpoint file is framed as
//
//	uint32 big-endian payload length
//	uint32 big-endian CRC-32C over the length bytes and the payload
//	payload
//
// so a torn or flipped record is found without trusting anything after it.
const (
	recordHeaderSize = 8
	maxRecordSize    = 16 << 20
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// appendRecord appends the framed payload to buf.
func appendRecord(buf, payload []byte) []byte {
	var h [recordHeaderSize]byte
	putRecordHeader(h[:], payload)
	buf = append(buf, h[:]...)
	return append(buf, payload...)
}

// putRecordHeader writes payload's frame header into h[:recordHeaderSize].
func putRecordHeader(h, payload []byte) {
	binary.BigEndian.PutUint32(h[0:4], uint32(len(payload)))
	crc := crc32.Update(0, castagnoli, h[0:4])
	crc = crc32.Update(crc, castagnoli, payload)
	binary.BigEndian.PutUint32(h[4:8], crc)
}

// errBadRecord reports a record that is torn, truncated or corrupt.
type errBadRecord struct {
	Offset int64
	Reason string
}

func (e *errBadRecord) Error() string {
	return fmt.Sprintf("bad record at offset %d: %s", e.Offset, e.Reason)
}

// recordReader reads framed records sequentially. The payload it returns is
// valid until the next call.
type recordReader struct {
	r   *bufio.Reader
	off int64
	buf []byte
}

func newRecordReader(r io.Reader, off int64, bufSize int) *recordReader {
	return &recordReader{r: bufio.NewReaderSize(r, bufSize), off: off}
}

// next returns the next payload and its offset, io.EOF at a clean end, or an
// *errBadRecord.
func (rr *recordReader) next() (payload []byte, off int64, err error) {
	off = rr.off
	var h [recordHeaderSize]byte
	n, err := io.ReadFull(rr.r, h[:])
	if err == io.EOF {
		return nil, off, io.EOF
	}
	if err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, off, &errBadRecord{off, fmt.Sprintf("truncated header (%d of %d bytes)", n, recordHeaderSize)}
		}
		return nil, off, err
	}
	size := binary.BigEndian.Uint32(h[0:4])
	if size > maxRecordSize {
		return nil, off, &errBadRecord{off, fmt.Sprintf("implausible length %d", size)}
	}
	if cap(rr.buf) < int(size) {
		rr.buf = make([]byte, size, max(int(size), 4096))
	}
	rr.buf = rr.buf[:size]
	if n, err := io.ReadFull(rr.r, rr.buf); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) || err == io.EOF {
			return nil, off, &errBadRecord{off, fmt.Sprintf("truncated payload (%d of %d bytes)", n, size)}
		}
		return nil, off, err
	}
	crc := crc32.Update(0, castagnoli, h[0:4])
	crc = crc32.Update(crc, castagnoli, rr.buf)
	if crc != binary.BigEndian.Uint32(h[4:8]) {
		return nil, off, &errBadRecord{off, "checksum mismatch"}
	}
	rr.off += recordHeaderSize + int64(size)
	return rr.buf, off, nil
}
