package pzstd_test

import (
	"archive/tar"
	"bytes"
	"crypto/md5"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
	"time"

	"filippo.io/age"
	"github.com/klauspost/compress/zstd"

	"github.com/opsd-dev/opsd/internal/backup/pzstd"
	"github.com/opsd-dev/opsd/internal/testenv"
)

// pgDump makes n bytes shaped like the COPY data of `pg_dump -Fc -Z0` of
// bench/backup-pg.sh's events table: id, two md5 hex columns, a
// timestamptz, a numeric(12,2) and a five-valued status, tab-separated.
// It compresses about 2.4:1 with zstd -3, as the real dump does.
func pgDump(n int) []byte {
	r := rand.New(rand.NewPCG(3, 4))
	status := []string{"new", "paid", "shipped", "refunded", "cancelled"}
	b := bytes.NewBuffer(make([]byte, 0, n+256))
	for g := 1; b.Len() < n; g++ {
		a := md5.Sum([]byte(strconv.Itoa(g)))
		p := md5.Sum([]byte(strconv.Itoa(g*7919) + "opsd"))
		fmt.Fprintf(b, "%d\t%s\t%s\t2024-%02d-%02d %02d:%02d:%02d+00\t%d.%02d\t%s\n", g,
			hex.EncodeToString(a[:]), hex.EncodeToString(p[:]),
			1+g/2678400%12, 1+g/86400%28, g/3600%24, g/60%60, g%60,
			r.IntN(10000), r.IntN(100), status[g%5])
	}
	return b.Bytes()[:n]
}

// logText makes n bytes of bench/gentree.py's log-like rows (~3:1).
func logText(r *rand.Rand, n int) []byte {
	st := []string{"GET /api/v1/orders 200", "POST /api/v1/pay 201", "GET /healthz 200", "PUT /api/v1/items 409", "GET /static/app.js 304"}
	b := bytes.NewBuffer(make([]byte, 0, n+256))
	for i := r.IntN(1 << 30); b.Len() < n; i++ {
		fmt.Fprintf(b, "2026-11-%02dT%02d:%02d:%02d.%06dZ host-%03d %s user=%08x bytes=%d latency_ms=%.3f\n",
			1+i%28, i%24, i%60, (i*7)%60, r.IntN(1_000_000), i%200, st[i%5], r.Uint32(), r.IntN(1_000_000), r.Float64()*900)
	}
	return b.Bytes()[:n]
}

func randomBytes(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		u := r.Uint64()
		for k := range 8 {
			b[i+k] = byte(u >> (8 * k))
		}
	}
	return b
}

// filesTree makes a tar stream of about n bytes shaped like
// bench/gentree.py's tree as the files source archives it (sorted:
// blobs/, logs/, small/): 30% random binaries in 24 MiB files, 40% log
// text in 32 MiB files, 30% files of 1-64 KiB, every third random.
func filesTree(n int) []byte {
	r := rand.New(rand.NewPCG(5, 6))
	var out bytes.Buffer
	tw := tar.NewWriter(&out)
	add := func(name string, data []byte) {
		_ = tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg})
		_, _ = tw.Write(data)
	}
	big := func(dir, ext string, total, each int, gen func(int) []byte) {
		for i := 0; total > 0; i++ {
			sz := min(each, total)
			add(fmt.Sprintf("%s/f-%03d.%s", dir, i, ext), gen(sz))
			total -= sz
		}
	}
	big("blobs", "bin", n*3/10, 24<<20, func(s int) []byte { return randomBytes(r, s) })
	big("logs", "log", n*4/10, 32<<20, func(s int) []byte { return logText(r, s) })
	for i, left := 0, n*3/10; left > 0; i++ {
		sz := min(1<<10+r.IntN(63<<10), left)
		var d []byte
		if i%3 == 0 {
			d = randomBytes(r, sz)
		} else {
			d = logText(r, sz)
		}
		add(fmt.Sprintf("small/d%02d/e%02d/f%06d.dat", i%37, i%11, i), d)
		left -= sz
	}
	_ = tw.Close()
	return out.Bytes()
}

// benchInputs are the two shapes of issue #4's benchmarks, 64 MiB each
// (OPSD_PZSTD_MIB changes the size).
func benchInputs(b *testing.B) []struct {
	name string
	data []byte
} {
	mib := 64
	if s := os.Getenv("OPSD_PZSTD_MIB"); s != "" {
		var err error
		if mib, err = strconv.Atoi(s); err != nil {
			b.Fatal(err)
		}
	}
	in := []struct {
		name string
		data []byte
	}{{"pgdump", pgDump(mib << 20)}, {"files", filesTree(mib << 20)}}
	if f := os.Getenv("OPSD_PZSTD_FILE"); f != "" {
		data, err := os.ReadFile(f)
		if err != nil {
			b.Fatal(err)
		}
		in = append(in, struct {
			name string
			data []byte
		}{"file", data})
	}
	return in
}

func needCLI(b *testing.B, names ...string) {
	b.Helper()
	testenv.Commands(b, names...)
}

// BenchmarkCompress compares pzstd with `zstd -3 -T0` (the pipe's
// compressor, as a subprocess, on the same bytes in the same run), and
// the whole produce path — pzstd into age into SHA-256 — with
// `zstd -3 -T0 | age -r KEY`. MB/s is of the uncompressed input; ratio is
// input over output. Run rounds of -count=1 and compare medians
// (bench/README.md).
func BenchmarkCompress(b *testing.B) {
	needCLI(b, "zstd", "age")
	id, err := age.GenerateX25519Identity()
	if err != nil {
		b.Fatal(err)
	}
	rcpt := id.Recipient()
	for _, in := range benchInputs(b) {
		data := in.data
		run := func(name string, f func() int64) {
			b.Run(in.name+"/"+name, func(b *testing.B) {
				b.SetBytes(int64(len(data)))
				var n int64
				ops := 0
				cpu0 := cpuTime()
				for b.Loop() {
					n = f()
					ops++
				}
				cpu := cpuTime() - cpu0
				b.ReportMetric(float64(len(data))/float64(n), "ratio")
				// The machine is shared: CPU time per byte (this process
				// and its children, GC included) is steadier than wall time.
				b.ReportMetric(float64(len(data))*float64(ops)/1e6/cpu.Seconds(), "cpu-MB/s")
			})
		}
		cli := func(pipe string) func() int64 {
			return func() int64 {
				c := &counter{}
				cmd := exec.Command("sh", "-c", pipe)
				cmd.Stdin, cmd.Stdout, cmd.Stderr = bytes.NewReader(data), c, os.Stderr
				if err := cmd.Run(); err != nil {
					b.Fatal(err)
				}
				return c.n
			}
		}
		pz := func(encrypt bool) func() int64 {
			return func() int64 {
				c := &counter{}
				h := sha256.New()
				var dst io.WriteCloser = nopCloser{io.MultiWriter(c, h)}
				if encrypt {
					if dst, err = age.Encrypt(dst, rcpt); err != nil {
						b.Fatal(err)
					}
				}
				z, err := pzstd.NewWriter(dst, pzstd.Options{Level: zstd.SpeedDefault})
				if err != nil {
					b.Fatal(err)
				}
				if _, err := z.ReadFrom(bytes.NewReader(data)); err != nil {
					b.Fatal(err)
				}
				if err := z.Close(); err != nil {
					b.Fatal(err)
				}
				if err := dst.Close(); err != nil {
					b.Fatal(err)
				}
				return c.n
			}
		}
		run("zstd-3-T0", cli("zstd -q -3 -T0 -c"))
		run("pzstd", pz(false))
		run("zstd-3-T0+age", cli("zstd -q -3 -T0 -c | age -r "+rcpt.String()))
		run("pzstd+age+sha256", pz(true))
	}
}

// cpuTime is the user and system time of this process and of its
// children that have been waited for.
func cpuTime() time.Duration {
	var self, kids syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &self)
	_ = syscall.Getrusage(syscall.RUSAGE_CHILDREN, &kids)
	return time.Duration(self.Utime.Nano() + self.Stime.Nano() + kids.Utime.Nano() + kids.Stime.Nano())
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }
