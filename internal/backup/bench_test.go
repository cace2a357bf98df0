package backup_test

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/opsd-dev/opsd/internal/backup"
	"github.com/opsd-dev/opsd/internal/testenv"
)

// benchBytes is the input size: OPSD_BENCH_BYTES, default 256 MiB.
func benchBytes(b *testing.B) int64 {
	if v := os.Getenv("OPSD_BENCH_BYTES"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			b.Fatalf("OPSD_BENCH_BYTES: %v", err)
		}
		return n
	}
	return 256 << 20
}

// heapPeak samples the live heap until stop is called and returns the peak.
func heapPeak() (stop func() uint64) {
	runtime.GC()
	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	done := make(chan struct{})
	var peak uint64
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			metrics.Read(sample)
			peak = max(peak, sample[0].Value.Uint64())
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	})
	return func() uint64 { close(done); wg.Wait(); return peak }
}

// BenchmarkPipeline backs up generated, moderately compressible rows to
// three local directory targets, beside the baseline pipe
// `zstd -3 -T0 | age -r KEY > file` on the same bytes.
func BenchmarkPipeline(b *testing.B) {
	size := benchBytes(b)
	k := newKeys(b)
	// 32 MiB of generated rows, repeated: beyond both zstd windows, so the
	// repetition does not help compression, and cheap to produce.
	block := make([]byte, 32<<20)
	if _, err := io.ReadFull(newGenerator(), block); err != nil {
		b.Fatal(err)
	}

	b.Run("opsd-3-targets", func(b *testing.B) {
		b.SetBytes(size)
		var peak uint64
		var stored int64
		for b.Loop() {
			b.StopTimer()
			st := newStores(b, "a", "b", "c")
			opts := options(k, "bench", "command", backends(st...))
			opts.SpoolDir = b.TempDir()
			stop := heapPeak()
			b.StartTimer()
			res, err := backup.Run(b.Context(), &genSource{size: size, block: block}, opts)
			b.StopTimer()
			peak = max(peak, stop())
			if err != nil || res.State != backup.StateSucceeded {
				b.Fatalf("Run: %v %v", res, err)
			}
			stored = res.Manifest.Size.Stored
			b.StartTimer()
		}
		b.ReportMetric(float64(peak)/(1<<20), "peak-heap-MiB")
		b.ReportMetric(float64(size)/float64(stored), "ratio")
	})

	b.Run("baseline-zstd-age-pipe", func(b *testing.B) {
		testenv.Commands(b, "zstd", "age")
		b.SetBytes(size)
		for b.Loop() {
			b.StopTimer()
			out, err := os.Create(filepath.Join(b.TempDir(), "data.zst.age"))
			if err != nil {
				b.Fatal(err)
			}
			zstd := exec.Command("zstd", "-3", "-T0", "-q", "-c")
			ag := exec.Command("age", "-r", k.identity.Recipient().String())
			zin, _ := zstd.StdinPipe()
			ag.Stdin, _ = zstd.StdoutPipe()
			ag.Stdout = out
			b.StartTimer()
			if err := zstd.Start(); err != nil {
				b.Fatal(err)
			}
			if err := ag.Start(); err != nil {
				b.Fatal(err)
			}
			_, werr := io.Copy(zin, io.LimitReader(&cycle{block: block}, size))
			zin.Close()
			zerr := zstd.Wait()
			aerr := ag.Wait()
			b.StopTimer()
			out.Close()
			if werr != nil || zerr != nil || aerr != nil {
				b.Fatalf("pipe: %v %v %v", werr, zerr, aerr)
			}
			b.StartTimer()
		}
	})

}
