// Package pzstd compresses a stream on several cores by cutting it into
// chunks and compressing each chunk as an independent zstd frame, written
// in order. Concatenated frames are one valid zstd stream: `zstd -d`, the
// klauspost decoder and every other conforming decoder read it unchanged.
// This is what pzstd and `zstd -T` do; a streaming zstd encoder, which
// carries one window across the whole stream, can use only one core.
//
// Memory is bounded whatever the stream's length: at most Workers chunks
// are in flight. A chunk holds its input until it is compressed and its
// compressed output from then until it is written; with the chunk being
// filled that is at most about (2*Workers+1)*ChunkSize, and less on
// compressible data. Each worker has a history of about one chunk for
// each encoder it may use (two when the level adapts, see
// Options.FixedLevel).
//
// The level adapts per frame. At SpeedDefault (zstd levels 3 to 5) a
// frame is compressed with klauspost's fastest encoder where a probe — a
// few samples of the frame compressed both ways — comes out no larger
// with it than with the configured level: on a PostgreSQL dump or log
// text the fastest encoder compresses as well (on the dump: better) at
// nearly twice the speed, while source code, binaries and trees with
// repeated files keep level 3. At the higher levels only frames whose
// samples do not compress at all take the fastest encoder, which stores
// such blocks raw. Every frame is a standard zstd frame either way.
package pzstd

import (
	"errors"
	"io"
	"runtime"
	"sync"
	"sync/atomic"

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
	// DefaultMaxWorkers (memory grows by about four chunks per worker:
	// input, output and the encoders' history).
	Workers int
	// ChunkSize is the uncompressed size of one frame; 0 means
	// DefaultChunkSize. Smaller chunks lose a little ratio at every
	// boundary, where the window starts empty.
	ChunkSize int
	// FixedLevel compresses every frame at Level: no probing, no
	// fastest-encoder frames.
	FixedLevel bool
}

// fastWindow is the largest window at SpeedFastest and SpeedDefault.
const fastWindow = 1 << 20

// The probe: probeSamples pieces of probeSize bytes spread over a frame,
// each compressed on its own. Frames shorter than minProbed are
// compressed at the configured level. Measured on 4 MiB frames
// (bench/README.md): the probe costs about 8% of compressing the frame
// with the fastest encoder, and it leans towards the fastest encoder
// (samples have no long-distance matches, which level 3 finds better),
// so the rule keeps level 3 on any sign of a gain.
const (
	probeSamples = 4
	probeSize    = 16 << 10
	minProbed    = 4 * probeSamples * probeSize
)

// job is one chunk: its input, then its frame once done is closed.
type job struct {
	in, out []byte
	done    chan struct{}
}

// Stats count the frames compressed so far, by encoder.
type Stats struct {
	Frames int64 // frames compressed
	Fast   int64 // of which with the fastest encoder in place of Level
}

// Writer is an io.WriteCloser that compresses into w. It is not safe for
// concurrent use; Close must be called to flush the last frame.
type Writer struct {
	w    io.Writer
	enc  *zstd.Encoder // the configured level
	fast *zstd.Encoder // SpeedFastest for adaptive frames; nil if fixed
	// adapt: the fastest encoder replaces enc where the probe finds no
	// gain in enc; otherwise only where the data is incompressible.
	adapt bool
	chunk int

	frames, fastFrames atomic.Int64

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
	// encoder's history buffer. At the fast levels (zstd 1-5) even a
	// frame-sized window buys nothing: their hash tables forget a
	// position long before it is a megabyte back, so a 1 MiB window
	// compresses a PostgreSQL dump and a file tree to within 0.1% of a
	// 4 MiB one (BenchmarkCompress) and saves 3 MiB of history per
	// encoder, four encoders on two cores.
	limit := zstd.MaxWindowSize
	if o.Level <= zstd.SpeedDefault {
		limit = fastWindow
	}
	window := zstd.MinWindowSize
	for window < chunk && window < limit {
		window <<= 1
	}
	// EncodeAll of one chunk never needs more history than the window:
	// WithLowerEncoderMem sizes it so (window+128 KiB, not 2*window).
	encoder := func(l zstd.EncoderLevel) (*zstd.Encoder, error) {
		return zstd.NewWriter(nil, zstd.WithEncoderLevel(l), zstd.WithEncoderConcurrency(workers),
			zstd.WithWindowSize(window), zstd.WithLowerEncoderMem(true))
	}
	enc, err := encoder(o.Level)
	if err != nil {
		return nil, err
	}
	var fast *zstd.Encoder
	if !o.FixedLevel && o.Level > zstd.SpeedFastest {
		if fast, err = encoder(zstd.SpeedFastest); err != nil {
			_ = enc.Close()
			return nil, err
		}
	}
	z := &Writer{
		w:      w,
		enc:    enc,
		fast:   fast,
		adapt:  o.Level == zstd.SpeedDefault,
		chunk:  chunk,
		order:  make(chan *job, workers),
		slots:  make(chan struct{}, workers),
		work:   make(chan *job, workers),
		flushd: make(chan struct{}),
	}
	// Every buffer can hold a chunk's frame, so EncodeAll never grows one:
	// an incompressible chunk comes out a little larger than it went in
	// (block headers, checksum), and growing a 4 MiB buffer for that made
	// a new 5 MiB one per such frame — garbage the heap grew on.
	bufCap := max(enc.MaxEncodedSize(chunk), chunk)
	if fast != nil {
		bufCap = max(bufCap, fast.MaxEncodedSize(chunk))
	}
	z.bufs.New = func() any { b := make([]byte, 0, bufCap); return &b }
	for range workers {
		z.wg.Go(func() {
			var scratch []byte
			for j := range z.work {
				// The input goes back to the pool as soon as it is
				// compressed; the output is taken only now.
				if z.failed() == nil {
					e := enc
					if fast != nil {
						var useFast bool
						useFast, scratch = z.probe(j.in, scratch)
						if useFast {
							e = fast
							z.fastFrames.Add(1)
						}
					}
					j.out = e.EncodeAll(j.in, z.get())
					z.frames.Add(1)
				}
				z.put(j.in)
				j.in = nil
				close(j.done)
			}
		})
	}
	go z.flush()
	return z, nil
}

// probe tells whether to compress in with the fastest encoder: when
// samples of it do not compress at all, or (adapt) when the configured
// level does not make them smaller than the fastest encoder does.
// Samples are compressed into scratch, which it returns for reuse.
func (z *Writer) probe(in, scratch []byte) (useFast bool, _ []byte) {
	if len(in) < minProbed {
		return false, scratch
	}
	step := len(in) / probeSamples
	var fastSize, levelSize int
	for i := range probeSamples {
		scratch = z.fast.EncodeAll(in[i*step:i*step+probeSize], scratch[:0])
		fastSize += len(scratch)
	}
	if fastSize >= probeSamples*probeSize {
		return true, scratch // stored as raw blocks: nothing to gain
	}
	if !z.adapt {
		return false, scratch
	}
	for i := range probeSamples {
		scratch = z.enc.EncodeAll(in[i*step:i*step+probeSize], scratch[:0])
		levelSize += len(scratch)
	}
	return levelSize >= fastSize, scratch
}

// Stats reports the frames compressed so far.
func (z *Writer) Stats() Stats {
	return Stats{Frames: z.frames.Load(), Fast: z.fastFrames.Load()}
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
	z.send(&job{in: z.cur, done: make(chan struct{})})
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
		z.send(&job{done: make(chan struct{})})
	}
	z.submit()
	close(z.order)
	close(z.work)
	z.wg.Wait()
	<-z.flushd
	_ = z.enc.Close()
	if z.fast != nil {
		_ = z.fast.Close()
	}
	return z.failed()
}
