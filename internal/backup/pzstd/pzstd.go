// Package pzstd compresses a stream on several cores by cutting it into
// chunks and compressing each chunk as an independent zstd frame, written
// in order. Concatenated frames are one valid zstd stream: `zstd -d`, the
// klauspost decoder and every other conforming decoder read it unchanged.
// This is what pzstd and `zstd -T` do; a streaming zstd encoder, which
// carries one window across the whole stream, can use only one core.
//
// Memory is bounded: at most Workers chunks are in flight, each with its
// input and its compressed output, plus the chunk being filled, whatever
// the stream's length: about (2*Workers+1)*ChunkSize, and each worker's
// encoder keeps a history of about two chunks.
package pzstd

import (
	"errors"
	"io"
	"runtime"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// Defaults for Options.
const (
	DefaultChunkSize  = 4 << 20
	DefaultMaxWorkers = 4
)

// Options configure a Writer.
type Options struct {
	// Level is the klauspost encoder level.
	Level zstd.EncoderLevel
	// Workers compress chunks at once; 0 means GOMAXPROCS, at most
	// DefaultMaxWorkers (memory grows by two chunks per worker).
	Workers int
	// ChunkSize is the uncompressed size of one frame; 0 means
	// DefaultChunkSize. Smaller chunks lose a little ratio at every
	// boundary, where the window starts empty.
	ChunkSize int
}

// job is one chunk: its input, then its frame once done is closed.
type job struct {
	in, out []byte
	done    chan struct{}
}

// Writer is an io.WriteCloser that compresses into w. It is not safe for
// concurrent use; Close must be called to flush the last frame.
type Writer struct {
	w     io.Writer
	enc   *zstd.Encoder
	chunk int

	cur    []byte        // chunk being filled
	order  chan *job     // jobs in stream order, for the writer goroutine
	slots  chan struct{} // one per job in flight: bounds memory
	work   chan *job     // jobs for the workers
	bufs   sync.Pool
	wg     sync.WaitGroup // workers
	flushd chan struct{}  // closed when the writer goroutine ends

	mu     sync.Mutex
	err    error // first error writing to w
	jobs   int   // chunks submitted
	closed bool
}

// NewWriter starts the workers; Close stops them.
func NewWriter(w io.Writer, o Options) (*Writer, error) {
	workers := o.Workers
	if workers <= 0 {
		workers = min(runtime.GOMAXPROCS(0), DefaultMaxWorkers)
	}
	chunk := o.ChunkSize
	if chunk <= 0 {
		chunk = DefaultChunkSize
	}
	// A window larger than a frame buys nothing and doubles each
	// encoder's history buffer.
	window := zstd.MinWindowSize
	for window < chunk && window < zstd.MaxWindowSize {
		window <<= 1
	}
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(o.Level), zstd.WithEncoderConcurrency(workers),
		zstd.WithWindowSize(window))
	if err != nil {
		return nil, err
	}
	z := &Writer{
		w:      w,
		enc:    enc,
		chunk:  chunk,
		order:  make(chan *job, workers),
		slots:  make(chan struct{}, workers),
		work:   make(chan *job, workers),
		flushd: make(chan struct{}),
	}
	z.bufs.New = func() any { b := make([]byte, 0, chunk); return &b }
	for range workers {
		z.wg.Go(func() {
			for j := range z.work {
				if z.failed() == nil {
					j.out = enc.EncodeAll(j.in, j.out[:0])
				}
				close(j.done)
			}
		})
	}
	go z.flush()
	return z, nil
}

// flush writes finished frames in order.
func (z *Writer) flush() {
	defer close(z.flushd)
	for j := range z.order {
		<-j.done
		if z.failed() == nil {
			n, err := z.w.Write(j.out)
			z.mu.Lock()
			if err == nil && n < len(j.out) {
				err = io.ErrShortWrite
			}
			if err != nil && z.err == nil {
				z.err = err
			}
			z.mu.Unlock()
		}
		z.put(j.in)
		z.put(j.out)
		<-z.slots
	}
}

func (z *Writer) failed() error {
	z.mu.Lock()
	defer z.mu.Unlock()
	return z.err
}

func (z *Writer) get() []byte {
	return (*z.bufs.Get().(*[]byte))[:0]
}

func (z *Writer) put(b []byte) {
	if cap(b) >= z.chunk {
		b = b[:0]
		z.bufs.Put(&b)
	}
}

// submit hands the current chunk to the workers. It blocks while
// Workers chunks are in flight, which bounds memory.
func (z *Writer) submit() {
	if len(z.cur) == 0 {
		return
	}
	z.send(&job{in: z.cur, out: z.get(), done: make(chan struct{})})
	z.cur = nil
}

func (z *Writer) send(j *job) {
	z.slots <- struct{}{}
	z.jobs++
	z.order <- j
	z.work <- j
}

// Write implements io.Writer.
func (z *Writer) Write(p []byte) (int, error) {
	if z.closed {
		return 0, errors.New("pzstd: write after close")
	}
	n := 0
	for len(p) > 0 {
		if err := z.failed(); err != nil {
			return n, err
		}
		if z.cur == nil {
			z.cur = z.get()
		}
		c := copy(z.cur[len(z.cur):z.chunk], p)
		z.cur = z.cur[:len(z.cur)+c]
		p = p[c:]
		n += c
		if len(z.cur) == z.chunk {
			z.submit()
		}
	}
	return n, z.failed()
}

// ReadFrom reads r to its end straight into chunk buffers.
func (z *Writer) ReadFrom(r io.Reader) (int64, error) {
	if z.closed {
		return 0, errors.New("pzstd: write after close")
	}
	var total int64
	for {
		if err := z.failed(); err != nil {
			return total, err
		}
		if z.cur == nil {
			z.cur = z.get()
		}
		n, err := io.ReadFull(r, z.cur[len(z.cur):z.chunk])
		z.cur = z.cur[:len(z.cur)+n]
		total += int64(n)
		if len(z.cur) == z.chunk {
			z.submit()
		}
		switch {
		case err == io.EOF || err == io.ErrUnexpectedEOF:
			return total, z.failed()
		case err != nil:
			return total, err
		}
	}
}

// Close compresses and writes what is buffered, stops the workers and
// returns the first error writing to w. An empty stream writes one empty
// frame, so the output is never zero bytes.
func (z *Writer) Close() error {
	if z.closed {
		return z.failed()
	}
	z.closed = true
	if z.jobs == 0 && len(z.cur) == 0 {
		z.send(&job{out: z.get(), done: make(chan struct{})})
	}
	z.submit()
	close(z.order)
	close(z.work)
	z.wg.Wait()
	<-z.flushd
	_ = z.enc.Close()
	return z.failed()
}
