package audit

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkAppend measures acknowledged appends. group-commit is the log as
// shipped (fsync before acknowledging, shared by concurrent appends);
// naive-fsync forces one fsync per entry; no-fsync never syncs (the ceiling,
// not durable).
func BenchmarkAppend(b *testing.B) {
	key := testKey(b, "opsd.bench/append")
	for _, bc := range []struct {
		name    string
		mode    commitMode
		writers int
	}{
		{"group-commit/writers=64", modeGroup, 64},
		{"naive-fsync/writers=64", modeNaive, 64},
		{"no-fsync/writers=64", modeNoSync, 64},
		{"group-commit/writers=1", modeGroup, 1},
		{"no-fsync/writers=1", modeNoSync, 1},
	} {
		b.Run(bc.name, func(b *testing.B) {
			l := openLog(b, b.TempDir(), key, func(o *Options) { o.mode = bc.mode })
			defer l.Close()
			rec := testRecord(1)
			lat := make([]time.Duration, b.N)
			var next atomic.Int64
			var wg sync.WaitGroup
			b.ResetTimer()
			start := time.Now()
			for range bc.writers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						i := next.Add(1) - 1
						if i >= int64(b.N) {
							return
						}
						t0 := time.Now()
						if _, err := l.Record(context.Background(), rec); err != nil {
							b.Error(err)
							return
						}
						lat[i] = time.Since(t0)
					}
				}()
			}
			wg.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			slices.Sort(lat)
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "entries/s")
			b.ReportMetric(float64(lat[len(lat)/2])/1e6, "p50-ms")
			b.ReportMetric(float64(lat[len(lat)*99/100])/1e6, "p99-ms")
		})
	}
}

// buildLargeLog writes n entries fast (no fsync; durability is not what is
// measured here) with a checkpoint every 100k entries.
func buildLargeLog(b *testing.B, dir string, n int) *Log {
	key := testKey(b, "opsd.bench/large")
	l := openLog(b, dir, key, func(o *Options) { o.mode = modeNoSync })
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1)
				if i > int64(n-1) {
					return
				}
				if _, err := l.Record(context.Background(), testRecord(int(i))); err != nil {
					b.Error(err)
					return
				}
				if i%100000 == 0 {
					l.makeCheckpoint()
				}
			}
		}()
	}
	wg.Wait()
	return l
}

// BenchmarkLargeLog builds logs of 10k and 1M entries (AUDIT_BENCH_ENTRIES
// overrides the larger) and measures Verify's throughput and peak heap, and
// the live heap of an open Log: neither grows with the log.
func BenchmarkLargeLog(b *testing.B) {
	big := 1_000_000
	if s := os.Getenv("AUDIT_BENCH_ENTRIES"); s != "" {
		big, _ = strconv.Atoi(s)
	}
	for _, n := range []int{10_000, big} {
		b.Run(fmt.Sprintf("entries=%d", n), func(b *testing.B) {
			dir := b.TempDir()
			l := buildLargeLog(b, dir, n)
			key := l.key
			if err := l.Close(); err != nil {
				b.Fatal(err)
			}
			b.Run("verify", func(b *testing.B) {
				for b.Loop() {
					stop := sampleHeap()
					rep, err := Verify(context.Background(), dir, key.Verifier, nil)
					peak := stop()
					if err != nil || rep.Status() != StatusIntact || rep.EntriesChecked != int64(n) {
						b.Fatalf("Verify = %s %+v, %v", rep.Status(), rep.Failure, err)
					}
					b.ReportMetric(float64(n)/rep.ElapsedSeconds, "entries/s")
					b.ReportMetric(float64(peak)/(1<<20), "peak-heap-MB")
				}
			})
			b.Run("open+append", func(b *testing.B) {
				for b.Loop() {
					base := liveHeap()
					l := openLog(b, dir, key, func(o *Options) { o.mode = modeNoSync })
					for i := range 1000 {
						l.Record(context.Background(), testRecord(i))
					}
					b.ReportMetric(float64(liveHeap()-base)/(1<<20), "log-heap-MB")
					b.ReportMetric(float64(rssKB())/1024, "rss-MB")
					l.Close()
				}
			})
		})
	}
}

func liveHeap() int64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapAlloc)
}

// sampleHeap samples HeapInuse until the returned func is called, which
// returns the peak.
func sampleHeap() func() uint64 {
	runtime.GC()
	done := make(chan struct{})
	res := make(chan uint64)
	go func() {
		var peak uint64
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		for {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			peak = max(peak, ms.HeapInuse)
			select {
			case <-done:
				res <- peak
				return
			case <-t.C:
			}
		}
	}()
	return func() uint64 { close(done); return <-res }
}

func rssKB() int64 {
	raw, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	var kb int64
	for _, line := range slices.Collect(func(yield func(string) bool) {
		start := 0
		for i, c := range raw {
			if c == '\n' {
				if !yield(string(raw[start:i])) {
					return
				}
				start = i + 1
			}
		}
	}) {
		if _, err := fmt.Sscanf(line, "VmRSS: %d kB", &kb); err == nil {
			return kb
		}
	}
	return 0
}
