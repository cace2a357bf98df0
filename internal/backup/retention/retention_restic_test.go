package retention

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/big"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/crypto/scrypt"

	"github.com/opsd-dev/opsd/internal/config"
	"github.com/opsd-dev/opsd/internal/testenv"
)

// The oracle: a real restic repository, snapshots at chosen times, and
// `restic forget --dry-run --json` for many policies. Apply must keep and
// remove exactly what restic does, for the same reasons.

const oracleZone = "Europe/Berlin"

// timeSet is one group of snapshots (one restic host).
type timeSet struct {
	host  string
	times []string // "2006-01-02 15:04:05" in oracleZone, as restic --time takes them
}

func oracleTimeSets() []timeSet {
	const layout = "2006-01-02 15:04:05"
	var sets []timeSet

	// Regular: every 3 hours for 12 days, with snapshots at 23:59:59 and
	// 00:00:00 on every third day boundary.
	var hourly []string
	start := time.Date(2025, 5, 1, 0, 30, 0, 0, time.UTC)
	for i := 0; i < 12*8; i++ {
		hourly = append(hourly, start.Add(time.Duration(i)*3*time.Hour).Format(layout))
	}
	for d := 0; d < 12; d += 3 {
		day := time.Date(2025, 5, 2+d, 0, 0, 0, 0, time.UTC)
		hourly = append(hourly, day.Add(-time.Second).Format(layout), day.Format(layout))
	}
	sets = append(sets, timeSet{"regular", hourly})

	// Irregular: random times over three years, denser recently, plus
	// clusters within one hour.
	rng := mrand.New(mrand.NewPCG(20261124, 1))
	var random []string
	end := time.Date(2025, 9, 30, 12, 0, 0, 0, time.UTC)
	for i := 0; i < 80; i++ {
		age := time.Duration(rng.Float64() * rng.Float64() * float64(3*365*24*time.Hour))
		t := end.Add(-age).Truncate(time.Second)
		random = append(random, t.Format(layout))
		if rng.IntN(8) == 0 {
			random = append(random, t.Add(time.Duration(rng.IntN(3600))*time.Second).Format(layout))
		}
	}
	sets = append(sets, timeSet{"random", random})

	// DST: every 25 minutes around both 2025 changes in Berlin
	// (30 March 02:00 -> 03:00, 26 October 03:00 -> 02:00), and snapshots
	// just after and just before midnight in between.
	var dst []string
	for _, day := range []string{"2025-03-29", "2025-10-25"} {
		d, _ := time.Parse(time.DateOnly, day)
		for m := 20 * 60; m < 32*60; m += 25 {
			dst = append(dst, d.Add(time.Duration(m)*time.Minute).Format(layout))
		}
	}
	for d := time.Date(2025, 3, 31, 0, 0, 0, 0, time.UTC); d.Before(time.Date(2025, 10, 25, 0, 0, 0, 0, time.UTC)); d = d.AddDate(0, 0, 19) {
		dst = append(dst, d.Add(10*time.Second).Format(layout), d.Add(-10*time.Second).Format(layout))
	}
	sets = append(sets, timeSet{"dst", dst})

	// Year ends with ISO week 53 (2015, 2020) and one whose last days are
	// in week 1 of the next year (2024): so weekly and yearly buckets
	// disagree on which year a day belongs to.
	var yearEnd []string
	for _, y := range []int{2015, 2020, 2024} {
		for d := time.Date(y, 12, 24, 0, 0, 0, 0, time.UTC); d.Before(time.Date(y+1, 1, 7, 0, 0, 0, 0, time.UTC)); d = d.AddDate(0, 0, 1) {
			for _, h := range []int{0, 23} {
				yearEnd = append(yearEnd, d.Add(time.Duration(h)*time.Hour+7*time.Minute).Format(layout))
			}
		}
	}
	sets = append(sets, timeSet{"yearend", yearEnd})

	// Duplicates: several snapshots in the same second.
	var dups []string
	for i, n := range []int{3, 1, 2, 1, 4, 1, 2} {
		t := time.Date(2025, 6, 1+i/2, 8+i, 15, 0, 0, time.UTC).Format(layout)
		for range n {
			dups = append(dups, t)
		}
	}
	sets = append(sets, timeSet{"dups", dups})

	// Future: two snapshots from a skewed clock; keep_within counts from
	// the newest snapshot that is not in the future.
	future := []string{"2099-01-01 00:00:00", "2098-06-01 12:00:00"}
	for i := 0; i < 20; i++ {
		future = append(future, time.Date(2025, 8, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(i)*7*time.Hour).Format(layout))
	}
	sets = append(sets, timeSet{"future", future})
	return sets
}

func oraclePolicies(unlimited bool) []config.Keep {
	h := time.Hour
	ps := []config.Keep{
		{},
		{Last: 1}, {Last: 3}, {Last: 10}, {Last: 1000},
		{Hourly: 1}, {Hourly: 5}, {Hourly: 24}, {Hourly: 72},
		{Daily: 1}, {Daily: 3}, {Daily: 7}, {Daily: 30}, {Daily: 400},
		{Weekly: 1}, {Weekly: 2}, {Weekly: 4}, {Weekly: 13}, {Weekly: 53},
		{Monthly: 1}, {Monthly: 3}, {Monthly: 12}, {Monthly: 40},
		{Yearly: 1}, {Yearly: 2}, {Yearly: 10},
		{Within: h}, {Within: 36 * h}, {Within: 7 * 24 * h}, {Within: 90 * 24 * h},
		{Last: 3, Hourly: 24, Daily: 7, Weekly: 4, Monthly: 12},
		{Last: 2, Daily: 7, Weekly: 4, Monthly: 12, Yearly: 3},
		{Hourly: 6, Weekly: 2},
		{Daily: 3, Within: 48 * h},
		{Weekly: 5, Yearly: 4},
		{Last: 1, Monthly: 2, Within: 12 * h},
		{Hourly: 48, Daily: 14, Weekly: 8, Monthly: 24, Yearly: 100},
		{Daily: 10, Monthly: 6, Within: 30 * 24 * h},
	}
	if unlimited {
		ps = append(ps,
			config.Keep{Last: Unlimited},
			config.Keep{Daily: Unlimited},
			config.Keep{Weekly: Unlimited, Last: 2},
			config.Keep{Hourly: 12, Monthly: Unlimited},
			config.Keep{Yearly: Unlimited, Within: 72 * h},
		)
	}
	return ps
}

// forgetArgs returns restic's forget flags for p. restic 0.16 takes -1 for
// unlimited, 0.17 and later only "unlimited".
func forgetArgs(p config.Keep, version int) []string {
	var args []string
	for _, r := range countRules(p) {
		if r.count != 0 {
			n := strconv.Itoa(r.count)
			if r.count == Unlimited && version >= 1700 {
				n = "unlimited"
			}
			args = append(args, "--"+strings.ReplaceAll(r.key, "_", "-"), n)
		}
	}
	if p.Within != 0 {
		args = append(args, "--keep-within", fmt.Sprintf("%dh", p.Within/time.Hour))
	}
	return args
}

// requireRestic returns the restic binary. In CI a missing restic fails the
// test; elsewhere it skips, loudly.
func requireRestic(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("restic")
	if err == nil {
		return bin
	}
	msg := "restic not found on PATH: the retention oracle test needs the restic binary (Debian: apt-get install restic)"
	testenv.Missing(t, "%s", msg)
	return ""
}

type resticRepo struct {
	bin string
	env []string
}

func (r *resticRepo) run(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, r.bin, append([]string{"--no-cache"}, args...)...)
	cmd.Env = r.env
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("restic %s: %w: %s", strings.Join(args, " "), err, stderr.Bytes())
	}
	return out, nil
}

var versionRE = regexp.MustCompile(`restic (\d+)\.(\d+)\.(\d+)`)

// resticVersion returns major*10000 + minor*100 + patch.
func (r *resticRepo) version(t *testing.T) int {
	out, err := r.run(t.Context(), "version")
	if err != nil {
		t.Fatal(err)
	}
	m := versionRE.FindSubmatch(out)
	if m == nil {
		t.Fatalf("restic version = %q, cannot parse", out)
	}
	v := 0
	for _, p := range m[1:] {
		n, _ := strconv.Atoi(string(p))
		v = v*100 + n
	}
	return v
}

func TestApplyMatchesRestic(t *testing.T) {
	bin := requireRestic(t)
	if _, err := os.Stat("/usr/share/zoneinfo/" + oracleZone); err != nil {
		t.Fatalf("the oracle needs the system time zone database (tzdata) that restic reads: %v", err)
	}
	loc, err := time.LoadLocation(oracleZone)
	if err != nil {
		t.Fatal(err)
	}
	started := time.Now()
	dir := t.TempDir()
	repo := &resticRepo{bin: bin, env: []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + dir,
		"TZ=" + oracleZone,
		"RESTIC_REPOSITORY=" + filepath.Join(dir, "repo"),
		"RESTIC_PASSWORD=oracle",
	}}
	version := repo.version(t)
	// restic 0.16 added unlimited (-1) counts; 0.17 keeps the oldest
	// snapshot when a rule has slots left. Older binaries are compared with
	// Apply minus that rule.
	unlimited, keepOldest := version >= 1600, version >= 1700
	t.Logf("restic %d.%d.%d; unlimited counts compared: %v; keep-oldest rule compared: %v",
		version/10000, version/100%100, version%100, unlimited, keepOldest)
	if _, err := repo.run(t.Context(), "init"); err != nil {
		t.Fatal(err)
	}
	cheapenKey(t, filepath.Join(dir, "repo", "keys"), "oracle")
	file := filepath.Join(dir, "f")
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}

	// Snapshots: one restic host per time set, so that one forget run
	// evaluates every set as its own group.
	sets := oracleTimeSets()
	var jobs [][]string
	for _, s := range sets {
		for _, tm := range s.times {
			jobs = append(jobs, []string{"backup", "--quiet", "--force", "--host", s.host, "--time", tm, file})
		}
	}
	if _, err := parallel(t, jobs, repo.run); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d snapshots in %d time sets made in %v", len(jobs), len(sets), time.Since(started).Round(time.Millisecond))

	out, err := repo.run(t.Context(), "snapshots", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var snaps []resticSnapshot
	if err := json.Unmarshal(out, &snaps); err != nil {
		t.Fatalf("restic snapshots --json: %v", err)
	}
	backups := map[string][]Backup{}
	for _, s := range snaps {
		backups[s.Hostname] = append(backups[s.Hostname], Backup{ID: s.ID, Time: s.Time})
	}
	for _, s := range sets {
		if got := len(backups[s.host]); got != len(s.times) {
			t.Fatalf("restic has %d snapshots for %s, want %d", got, s.host, len(s.times))
		}
	}

	policies := oraclePolicies(unlimited)
	jobs = jobs[:0]
	for _, p := range policies {
		jobs = append(jobs, append([]string{"forget", "--dry-run", "--no-lock", "--json", "--group-by", "host"}, forgetArgs(p, version)...))
	}
	outs, err := parallel(t, jobs, func(ctx context.Context, args ...string) ([]byte, error) {
		out, err := repo.run(ctx, args...)
		if err != nil && strings.Contains(err.Error(), "no policy was specified") {
			return nil, nil
		}
		return out, err
	})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for i, p := range policies {
		args := forgetArgs(p, version)
		want := parseForget(t, outs[i], args)
		for _, s := range sets {
			got, err := apply(p, backups[s.host], now, loc, keepOldest)
			if err != nil {
				t.Fatalf("Apply(%+v) for %s: %v", p, s.host, err)
			}
			compareWithRestic(t, fmt.Sprintf("policy %v, set %s", args, s.host), got, want[s.host])
		}
	}
	t.Logf("oracle: %d policies x %d time sets (%d snapshots) in %v",
		len(policies), len(sets), len(snaps), time.Since(started).Round(time.Millisecond))
}

type resticSnapshot struct {
	ID       string    `json:"id"`
	Time     time.Time `json:"time"`
	Hostname string    `json:"hostname"`
}

// resticGroup is what forget decided for one group: kept snapshot IDs with
// the rule kinds that kept them.
type resticGroup struct {
	keep   map[string][]string
	remove map[string]bool
}

func parseForget(t *testing.T, out []byte, args []string) map[string]resticGroup {
	t.Helper()
	var groups []struct {
		Host   string           `json:"host"`
		Keep   []resticSnapshot `json:"keep"`
		Remove []resticSnapshot `json:"remove"`
		// Reasons are in the order of Keep; their snapshots carry no ID.
		Reasons []struct {
			Matches []string `json:"matches"`
		} `json:"reasons"`
	}
	if len(bytes.TrimSpace(out)) > 0 {
		if err := json.Unmarshal(out, &groups); err != nil {
			t.Fatalf("restic forget %v: %v\n%s", args, err, out)
		}
	}
	res := map[string]resticGroup{}
	for _, g := range groups {
		host := g.Host
		rg := resticGroup{keep: map[string][]string{}, remove: map[string]bool{}}
		for _, s := range g.Keep {
			rg.keep[s.ID] = nil
		}
		for _, s := range g.Remove {
			rg.remove[s.ID] = true
		}
		if len(g.Reasons) != len(g.Keep) {
			t.Fatalf("restic forget %v: %d reasons for %d kept snapshots", args, len(g.Reasons), len(g.Keep))
		}
		for i, r := range g.Reasons {
			id := g.Keep[i].ID
			for _, m := range r.Matches {
				rg.keep[id] = append(rg.keep[id], resticRuleKind(m))
			}
		}
		res[host] = rg
	}
	return res
}

// resticRuleKind maps a restic reason ("daily snapshot", "oldest daily
// snapshot", "within 36h", "last snapshot") to the first word of Apply's.
func resticRuleKind(m string) string {
	m = strings.TrimPrefix(m, "oldest ")
	kind, _, _ := strings.Cut(m, " ")
	if m == "policy is empty" {
		return "empty"
	}
	return kind
}

// compareWithRestic compares Apply's decisions with restic's for one group.
// Snapshots made in the same second are interchangeable (restic orders them
// by how the repository lists them), so the comparison counts kept
// snapshots per time and compares reasons only for unique times.
func compareWithRestic(t *testing.T, what string, got []Decision, want resticGroup) {
	t.Helper()
	if len(want.keep) == 0 && len(want.remove) == 0 {
		// restic 0.17 refuses the empty policy ("no policy was
		// specified, no snapshots will be removed"): it keeps everything.
		for _, d := range got {
			if !d.Keep {
				t.Errorf("%s: restic keeps all, Apply removes %s %v", what, d.ID, d.Time)
			}
		}
		return
	}
	type tally struct{ kept, total int }
	gotT, wantT := map[int64]*tally{}, map[int64]*tally{}
	byTime := map[int64][]Decision{}
	for _, d := range got {
		k := d.Time.UnixNano()
		byTime[k] = append(byTime[k], d)
		if gotT[k] == nil {
			gotT[k], wantT[k] = &tally{}, &tally{}
		}
		gotT[k].total++
		wantT[k].total++
		_, kept := want.keep[d.ID]
		if !kept && !want.remove[d.ID] {
			t.Fatalf("%s: restic decided nothing for %s", what, d.ID)
		}
		if d.Keep {
			gotT[k].kept++
		}
		if kept {
			wantT[k].kept++
		}
	}
	for k, g := range gotT {
		w := wantT[k]
		tm := time.Unix(0, k).In(byTime[k][0].Time.Location()).Format(time.RFC3339)
		if g.kept != w.kept {
			t.Errorf("%s: at %v Apply keeps %d of %d snapshots, restic %d", what, tm, g.kept, g.total, w.kept)
			continue
		}
		if g.total != 1 {
			continue
		}
		d := byTime[k][0]
		var kinds []string
		for _, r := range d.Reasons {
			kind, _, _ := strings.Cut(r, " ")
			kinds = append(kinds, kind)
		}
		wantKinds := want.keep[d.ID]
		if diff := cmp.Diff(wantKinds, kinds); d.Keep && diff != "" {
			t.Errorf("%s: reasons for %v (%s) = %q; restic's kinds differ (-restic +Apply):\n%s", what, tm, d.ID, d.Reasons, diff)
		}
	}
}

// parallel runs every job with run, two per CPU since restic spends much
// of a run waiting for fsync, and returns the outputs in job order.
func parallel(t *testing.T, jobs [][]string, run func(context.Context, ...string) ([]byte, error)) ([][]byte, error) {
	ctx := t.Context()
	outs := make([][]byte, len(jobs))
	errs := make([]error, len(jobs))
	next := make(chan int)
	var wg sync.WaitGroup
	for range 2 * runtime.NumCPU() {
		wg.Go(func() {
			for i := range next {
				outs[i], errs[i] = run(ctx, jobs[i]...)
			}
		})
	}
	for i := range jobs {
		next <- i
	}
	close(next)
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return outs, nil
}

// cheapenKey rewrites the repository's only key file with scrypt parameters
// a thousand times cheaper than the ones restic calibrates at init, so that
// each of the hundreds of restic runs does not spend half a second deriving
// the key. The master key inside stays the same. The key format is restic's
// documented repository format (doc/design.rst): scrypt derives 32 bytes of
// AES-256-CTR key and a 32-byte Poly1305-AES MAC key (k, r) from the
// password; data is IV || ciphertext || MAC.
func cheapenKey(t *testing.T, dir, password string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil || len(entries) != 1 {
		t.Fatalf("restic keys in %s: %d, %v; want exactly one", dir, len(entries), err)
	}
	oldPath := filepath.Join(dir, entries[0].Name())
	raw, err := os.ReadFile(oldPath)
	if err != nil {
		t.Fatal(err)
	}
	var key map[string]any
	if err := json.Unmarshal(raw, &key); err != nil {
		t.Fatalf("restic key file: %v", err)
	}
	num := func(name string) int { f, _ := key[name].(float64); return int(f) }
	b64 := func(name string) []byte {
		s, _ := key[name].(string)
		b, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			t.Fatalf("restic key file %s: %v", name, err)
		}
		return b
	}
	salt, data := b64("salt"), b64("data")
	uk := userKey(t, password, salt, num("N"), num("r"), num("p"))
	if len(data) < 32 {
		t.Fatal("restic key file: data too short")
	}
	iv, ct, mac := data[:16], data[16:len(data)-16], data[len(data)-16:]
	if !bytes.Equal(poly1305AES(uk, iv, ct), mac) {
		t.Fatal("restic key file: MAC mismatch; the key format is not what cheapenKey expects")
	}
	master := make([]byte, len(ct))
	aesCTR(uk[:32], iv, master, ct)

	const n, r, p = 1024, 8, 1
	newSalt := make([]byte, 64)
	newIV := make([]byte, 16)
	rand.Read(newSalt)
	rand.Read(newIV)
	nk := userKey(t, password, newSalt, n, r, p)
	newCT := make([]byte, len(master))
	aesCTR(nk[:32], newIV, newCT, master)
	newData := slices.Concat(newIV, newCT, poly1305AES(nk, newIV, newCT))
	key["N"], key["r"], key["p"] = n, r, p
	key["salt"] = base64.StdEncoding.EncodeToString(newSalt)
	key["data"] = base64.StdEncoding.EncodeToString(newData)
	out, err := json.Marshal(key)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(out)
	if err := os.WriteFile(filepath.Join(dir, hex.EncodeToString(sum[:])), out, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(oldPath); err != nil {
		t.Fatal(err)
	}
}

func userKey(t *testing.T, password string, salt []byte, n, r, p int) []byte {
	t.Helper()
	k, err := scrypt.Key([]byte(password), salt, n, r, p, 64)
	if err != nil {
		t.Fatalf("scrypt N=%d r=%d p=%d: %v", n, r, p, err)
	}
	return k
}

func aesCTR(key, iv, dst, src []byte) {
	c, err := aes.NewCipher(key)
	if err != nil {
		panic(err) // key length is fixed above
	}
	cipher.NewCTR(c, iv).XORKeyStream(dst, src)
}

// poly1305AES is restic's MAC: Poly1305 with r from key[48:64] and s the
// AES-128 encryption of the nonce under key[32:48].
func poly1305AES(key, nonce, msg []byte) []byte {
	c, err := aes.NewCipher(key[32:48])
	if err != nil {
		panic(err)
	}
	s := make([]byte, 16)
	c.Encrypt(s, nonce)

	le := func(b []byte) *big.Int {
		b = slices.Clone(b)
		slices.Reverse(b)
		return new(big.Int).SetBytes(b)
	}
	clamp, _ := new(big.Int).SetString("0ffffffc0ffffffc0ffffffc0fffffff", 16)
	rr := le(key[48:64])
	rr.And(rr, clamp)
	prime := new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), 130), big.NewInt(5))
	acc := new(big.Int)
	for len(msg) > 0 {
		chunk := msg[:min(16, len(msg))]
		msg = msg[len(chunk):]
		acc.Add(acc, le(append(slices.Clone(chunk), 1)))
		acc.Mul(acc, rr)
		acc.Mod(acc, prime)
	}
	acc.Add(acc, le(s))
	tag := acc.FillBytes(make([]byte, 32))[16:] // low 128 bits, big-endian
	slices.Reverse(tag)
	return tag
}
