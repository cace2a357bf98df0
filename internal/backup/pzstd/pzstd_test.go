package pzstd_test

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"testing/iotest"

	"github.com/klauspost/compress/zstd"

	"github.com/opsd-dev/opsd/internal/backup/pzstd"
	"github.com/opsd-dev/opsd/internal/testenv"
)

// rows makes n bytes of compressible, non-repeating text.
func rows(n int) []byte {
	r := rand.New(rand.NewPCG(1, 2))
	var b bytes.Buffer
	for i := 0; b.Len() < n; i++ {
		b.WriteString(strconv.Itoa(i))
		b.WriteByte('\t')
		b.WriteString(strconv.FormatUint(r.Uint64(), 16))
		b.WriteString("\tpaid\t2026-11-25\n")
	}
	return b.Bytes()[:n]
}

func compress(t testing.TB, data []byte, o pzstd.Options, useReadFrom bool) []byte {
	t.Helper()
	var out bytes.Buffer
	z, err := pzstd.NewWriter(&out, o)
	if err != nil {
		t.Fatal(err)
	}
	if useReadFrom {
		if _, err := z.ReadFrom(iotest.HalfReader(bytes.NewReader(data))); err != nil {
			t.Fatal(err)
		}
	} else {
		// Odd-sized writes straddle chunk boundaries.
		for p := data; len(p) > 0; {
			n := min(len(p), 777_777)
			if _, err := z.Write(p[:n]); err != nil {
				t.Fatal(err)
			}
			p = p[n:]
		}
	}
	if err := z.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

func TestRoundTrip(t *testing.T) {
	data := rows(5<<20 + 12345)
	for _, tc := range []struct {
		name string
		o    pzstd.Options
	}{
		{"one-worker", pzstd.Options{Level: zstd.SpeedDefault, Workers: 1, ChunkSize: 1 << 20}},
		{"four-workers", pzstd.Options{Level: zstd.SpeedFastest, Workers: 4, ChunkSize: 256 << 10}},
		{"one-chunk", pzstd.Options{Level: zstd.SpeedBetterCompression}},
	} {
		for _, rf := range []bool{false, true} {
			t.Run(tc.name+"/readfrom="+strconv.FormatBool(rf), func(t *testing.T) {
				frames := compress(t, data, tc.o, rf)
				if len(frames) >= len(data)/2 {
					t.Errorf("compressed %d to %d bytes: not compressing", len(data), len(frames))
				}
				d, err := zstd.NewReader(bytes.NewReader(frames))
				if err != nil {
					t.Fatal(err)
				}
				defer d.Close()
				got, err := io.ReadAll(d)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, data) {
					t.Fatalf("round trip: got %d bytes, want %d (equal prefix %d)", len(got), len(data), commonPrefix(got, data))
				}
			})
		}
	}
}

func commonPrefix(a, b []byte) int {
	i := 0
	for i < len(a) && i < len(b) && a[i] == b[i] {
		i++
	}
	return i
}

// TestZstdCLIDecodes: the concatenated frames are what `zstd -d` reads.
func TestZstdCLIDecodes(t *testing.T) {
	needZstdCLI(t)
	data := rows(3<<20 + 7)
	frames := compress(t, data, pzstd.Options{Level: zstd.SpeedDefault, Workers: 3, ChunkSize: 512 << 10}, true)
	cmd := exec.Command("zstd", "-d", "-c", "-q")
	cmd.Stdin = bytes.NewReader(frames)
	got, err := cmd.Output()
	if err != nil {
		t.Fatalf("zstd -d: %v", err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("zstd -d gave %d bytes, want %d", len(got), len(data))
	}
}

func TestEmptyStreamIsAFrame(t *testing.T) {
	frames := compress(t, nil, pzstd.Options{Level: zstd.SpeedDefault}, false)
	if len(frames) == 0 {
		t.Fatal("empty input wrote nothing; want one empty frame")
	}
	d, _ := zstd.NewReader(bytes.NewReader(frames))
	defer d.Close()
	got, err := io.ReadAll(d)
	if err != nil || len(got) != 0 {
		t.Fatalf("decode empty: %q, %v", got, err)
	}
}

type failAfter struct {
	n   int
	err error
}

func (f *failAfter) Write(p []byte) (int, error) {
	if f.n <= 0 {
		return 0, f.err
	}
	f.n--
	return len(p), nil
}

func TestDownstreamErrorStopsWriter(t *testing.T) {
	boom := errors.New("every target failed")
	z, err := pzstd.NewWriter(&failAfter{n: 1, err: boom}, pzstd.Options{Level: zstd.SpeedFastest, Workers: 2, ChunkSize: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	_, rerr := z.ReadFrom(bytes.NewReader(rows(8 << 20)))
	cerr := z.Close()
	if !errors.Is(rerr, boom) || !errors.Is(cerr, boom) {
		t.Fatalf("ReadFrom = %v, Close = %v; want both %v", rerr, cerr, boom)
	}
}

func TestReadErrorIsReturned(t *testing.T) {
	boom := errors.New("pg_dump died")
	z, err := pzstd.NewWriter(io.Discard, pzstd.Options{Level: zstd.SpeedFastest})
	if err != nil {
		t.Fatal(err)
	}
	_, rerr := z.ReadFrom(io.MultiReader(bytes.NewReader(rows(1<<20)), iotest.ErrReader(boom)))
	if !errors.Is(rerr, boom) {
		t.Fatalf("ReadFrom = %v, want %v", rerr, boom)
	}
	if err := z.Close(); err != nil {
		t.Fatalf("Close after a read error: %v", err)
	}
	if _, err := z.Write([]byte("x")); err == nil {
		t.Fatal("Write after Close succeeded")
	}
}

// BenchmarkWriter compares the frame writer with klauspost's streaming
// encoder on the same bytes (OPSD_PZSTD_FILE, or generated rows).
func BenchmarkWriter(b *testing.B) {
	data := rows(64 << 20)
	if f := os.Getenv("OPSD_PZSTD_FILE"); f != "" {
		var err error
		if data, err = os.ReadFile(f); err != nil {
			b.Fatal(err)
		}
	}
	for _, lvl := range []zstd.EncoderLevel{zstd.SpeedFastest, zstd.SpeedDefault} {
		b.Run("stream/"+lvl.String(), func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			var n int64
			for b.Loop() {
				c := &counter{}
				zw, _ := zstd.NewWriter(c, zstd.WithEncoderLevel(lvl), zstd.WithEncoderConcurrency(0))
				_, _ = zw.ReadFrom(bytes.NewReader(data))
				_ = zw.Close()
				n = c.n
			}
			b.ReportMetric(float64(len(data))/float64(n), "ratio")
		})
		for _, chunk := range []int{4 << 20, 8 << 20, 16 << 20} {
			b.Run("frames/"+lvl.String()+"/"+strconv.Itoa(chunk>>20)+"MiB", func(b *testing.B) {
				b.SetBytes(int64(len(data)))
				var n int64
				for b.Loop() {
					c := &counter{}
					z, _ := pzstd.NewWriter(c, pzstd.Options{Level: lvl, ChunkSize: chunk})
					_, _ = z.ReadFrom(bytes.NewReader(data))
					_ = z.Close()
					n = c.n
				}
				b.ReportMetric(float64(len(data))/float64(n), "ratio")
			})
		}
	}
}

type counter struct{ n int64 }

func (c *counter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

// source makes n bytes of Go-like source text from a small vocabulary:
// text on which level 3 beats the fastest encoder.
func source(n int) []byte {
	r := rand.New(rand.NewPCG(7, 8))
	vocab := make([]string, 3000)
	for i := range vocab {
		w := make([]byte, 2+r.IntN(9))
		for k := range w {
			w[k] = byte('a' + r.IntN(26))
		}
		vocab[i] = string(w)
	}
	word := func() string { return vocab[int(r.ExpFloat64()*200)%len(vocab)] }
	var b bytes.Buffer
	for b.Len() < n {
		w1, w2, w3 := word(), word(), vocab[r.IntN(len(vocab))]
		switch r.IntN(4) {
		case 0:
			b.WriteString("\tif err := " + w1 + "." + w2 + "(ctx, " + w3 + "); err != nil {\n\t\treturn err\n\t}\n")
		case 1:
			b.WriteString("\t" + w1 + " := " + w2 + "[" + w3 + "]\n")
		case 2:
			b.WriteString("func (s *" + w1 + ") " + w2 + "(" + w3 + " int) error {\n")
		default:
			b.WriteString("\t// " + w1 + " " + w2 + " " + w3 + " the " + w1 + "\n")
		}
	}
	return b.Bytes()[:n]
}

func noise(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.NewChaCha8([32]byte{1}).Read(b)
	return b
}

func decodeAll(t *testing.T, frames []byte) []byte {
	t.Helper()
	d, err := zstd.NewReader(bytes.NewReader(frames))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	got, err := io.ReadAll(d)
	if err != nil {
		t.Fatalf("klauspost decoder: %v", err)
	}
	return got
}

func needZstdCLI(t *testing.T) {
	t.Helper()
	testenv.LookPath(t, "zstd", "zstd")
}

func zstdCLIDecode(t *testing.T, frames []byte) []byte {
	t.Helper()
	cmd := exec.Command("zstd", "-d", "-c", "-q")
	cmd.Stdin = bytes.NewReader(frames)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	got, err := cmd.Output()
	if err != nil {
		t.Fatalf("zstd -d: %v: %s", err, stderr.Bytes())
	}
	return got
}

// TestAdaptiveFrames: frames compressed with the fastest encoder (a dump,
// random bytes) and at level 3 (source text), alone and mixed in one
// stream, are what `zstd -d` and the klauspost decoder read back.
func TestAdaptiveFrames(t *testing.T) {
	needZstdCLI(t)
	const chunk = 1 << 20
	dump, rnd, src := rows(3*chunk), noise(3*chunk), source(3*chunk)
	var mixed []byte
	for i := range 3 {
		// Each part straddles a frame boundary.
		p := chunk / 2
		mixed = append(mixed, dump[i*chunk:i*chunk+p]...)
		mixed = append(mixed, rnd[i*chunk:i*chunk+p+1234]...)
		mixed = append(mixed, src[i*chunk:i*chunk+p+777]...)
	}
	mixed = append(mixed, rnd[:chunk]...)
	mixed = append(mixed, src[:chunk]...)
	for _, tc := range []struct {
		name  string
		data  []byte
		level zstd.EncoderLevel
		// fast: how many frames take the fastest encoder; -1: some, not all.
		fast int64
	}{
		{"compressible-dump", dump, zstd.SpeedDefault, 3},
		{"incompressible", rnd, zstd.SpeedDefault, 3},
		{"level-3-text", src, zstd.SpeedDefault, 0},
		{"mixed", mixed, zstd.SpeedDefault, -1},
		// Above level 3 only the incompressible frames change encoder.
		{"better/incompressible", rnd, zstd.SpeedBetterCompression, 3},
		{"better/dump", dump, zstd.SpeedBetterCompression, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			z, err := pzstd.NewWriter(&out, pzstd.Options{Level: tc.level, Workers: 2, ChunkSize: chunk})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := z.ReadFrom(bytes.NewReader(tc.data)); err != nil {
				t.Fatal(err)
			}
			if err := z.Close(); err != nil {
				t.Fatal(err)
			}
			st := z.Stats()
			if want := int64((len(tc.data) + chunk - 1) / chunk); st.Frames != want {
				t.Fatalf("%d frames, want %d", st.Frames, want)
			}
			switch {
			case tc.fast >= 0 && st.Fast != tc.fast:
				t.Errorf("%d of %d frames with the fastest encoder, want %d", st.Fast, st.Frames, tc.fast)
			case tc.fast < 0 && (st.Fast == 0 || st.Fast == st.Frames):
				t.Errorf("%d of %d frames with the fastest encoder, want some but not all", st.Fast, st.Frames)
			}
			if got := decodeAll(t, out.Bytes()); !bytes.Equal(got, tc.data) {
				t.Fatalf("klauspost decoder: %d bytes, want %d (equal prefix %d)", len(got), len(tc.data), commonPrefix(got, tc.data))
			}
			if got := zstdCLIDecode(t, out.Bytes()); !bytes.Equal(got, tc.data) {
				t.Fatalf("zstd -d: %d bytes, want %d (equal prefix %d)", len(got), len(tc.data), commonPrefix(got, tc.data))
			}
		})
	}
}

// TestAdaptiveKeepsRatio: the probe never picks the fastest encoder where
// it stores noticeably more than level 3 would.
func TestAdaptiveKeepsRatio(t *testing.T) {
	for _, tc := range []struct {
		name string
		data []byte
	}{{"dump", rows(4 << 20)}, {"source", source(4 << 20)}, {"random", noise(2 << 20)}} {
		t.Run(tc.name, func(t *testing.T) {
			o := pzstd.Options{Level: zstd.SpeedDefault, ChunkSize: 1 << 20}
			adaptive := len(compress(t, tc.data, o, true))
			o.FixedLevel = true
			fixed := len(compress(t, tc.data, o, true))
			if float64(adaptive) > 1.01*float64(fixed) {
				t.Errorf("adaptive stored %d bytes, level 3 alone %d: more than 1%% larger", adaptive, fixed)
			}
		})
	}
}

func TestFixedLevelNeverProbes(t *testing.T) {
	var out bytes.Buffer
	z, err := pzstd.NewWriter(&out, pzstd.Options{Level: zstd.SpeedDefault, ChunkSize: 1 << 20, FixedLevel: true})
	if err != nil {
		t.Fatal(err)
	}
	data := append(rows(2<<20), noise(2<<20)...)
	if _, err := z.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := z.Close(); err != nil {
		t.Fatal(err)
	}
	if st := z.Stats(); st.Frames != 4 || st.Fast != 0 {
		t.Fatalf("stats %+v, want 4 frames, none fast", st)
	}
	if got := decodeAll(t, out.Bytes()); !bytes.Equal(got, data) {
		t.Fatal("round trip differs")
	}
}
