package main

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/opsd-dev/opsd/internal/failpoint"
	"github.com/opsd-dev/opsd/internal/storage/local"
	"github.com/opsd-dev/opsd/internal/storage/s3/s3test"
)

// killPoint is one row of the kill -9 matrix: where opsd dies (the value of
// OPSD_FAILPOINT), which operation the test drives into it and what the
// kill simulates.
type killPoint struct {
	point string
	op    string // backup, verify, prune, copy or s3
	what  string
}

// orphanBug lists the points where a known bug leaves a queued catalog
// row with no job (docs/RESILIENCE.md, "Found"). The test reports it in
// the table, and fails once it is fixed so that the entry goes.
var orphanBug = map[string]bool{}

// leftoverBug lists the points where a known bug leaves the objects of a
// killed catch-up copy on its target, including an unsigned manifest,
// until River rescues the stuck job (docs/RESILIENCE.md, "Found"). As
// with orphanBug, the test fails once they are gone.
var leftoverBug = map[string]bool{}

// killMatrix lists every failpoint the matrix kills opsd at. docs/RESILIENCE.md
// describes each one; keep the two in step.
var killMatrix = []killPoint{
	{"backup.enqueued", "backup", "job inserted, no catalog row, the API never answered"},
	{"backup.running", "backup", "row marked running, nothing written"},
	{"backup.target-ready", "backup", "first target opened and its temp objects cleaned"},
	{"backup.copies-writing", "backup", "copies recorded as writing, no data yet"},
	{"backup.data:10", "backup", "mid-data: 10th chunk of the stored stream"},
	{"local.temp-written", "backup", "local data object written to its temp file, not renamed"},
	{"backup.data-done", "backup", "data complete on every target, no manifest"},
	{"backup.meta-saved:1", "backup", "a manifest saved, its signature not"},
	{"backup.signed", "backup", "manifests and signatures saved, no copy recorded"},
	{"backup.copy-recorded:1", "backup", "one copy recorded complete, the other not"},
	{"backup.copy-recorded:2", "backup", "every copy recorded, final state not"},
	{"backup.finished", "backup", "final state recorded, verification not queued"},
	{"verify.checked", "verify", "copies re-read, no result recorded"},
	{"verify.recorded:1", "verify", "one verification recorded, the other not"},
	{"backup.verify-queued", "prune", "verification queued, prune not started"},
	{"remove.object:1", "prune", "prune removed the signature only"},
	{"remove.object:2", "prune", "prune removed signature and one more object"},
	{"prune.objects-removed", "prune", "objects of a pruned backup gone, catalog row not"},
	{"prune.deleted", "prune", "a pruned backup fully deleted, the rest of prune not run"},
	{"copy.start", "copy", "catch-up copy job started, nothing written"},
	{"copy.data:2", "copy", "catch-up copy mid-stream"},
	{"copy.data-saved", "copy", "catch-up data saved, no manifest"},
	{"copy.meta-saved:1", "copy", "catch-up manifest saved, signature not"},
	{"copy.objects-saved", "copy", "catch-up objects complete, copy not recorded"},
	{"copy.recorded", "copy", "catch-up copy recorded, its verification not queued"},
	{"s3.save-read:150", "s3", "S3 multipart upload in flight (parts uploaded)"},
	{"s3.uploaded:1", "s3", "S3 data object complete, no manifest"},
}

// demoSize is what the demo source produces; the S3 source produces more
// than two 5 MiB parts so its upload is multipart.
const (
	demoSize = 2_000_000
	bigSize  = 14_000_000
)

// TestKillMatrix kills a real opsd with SIGKILL (OPSD_FAILPOINT, see
// internal/failpoint) at every point of killMatrix during a backup,
// verification, catch-up copy or prune, restarts it without the
// failpoint and checks the invariants of docs/RESILIENCE.md: no partial
// backup counted as good, temporary files and multipart uploads cleaned
// by the next run, the next run succeeds, no backup the test did not ask
// for, no backup deleted that retention keeps.
func TestKillMatrix(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: skipping the kill -9 matrix")
	}
	v, _ := versityForDaemon(t, false)
	outcomes := make([]string, len(killMatrix))
	start := time.Now()
	for i, kp := range killMatrix {
		t.Run(kp.point, func(t *testing.T) {
			outcomes[i] = "FAILED"
			got := runKillPoint(t, kp, v)
			if !t.Failed() {
				outcomes[i] = got
			} else {
				outcomes[i] = "FAILED: " + got
			}
		})
	}
	var b strings.Builder
	fmt.Fprintf(&b, "kill -9 matrix, %d points, %s:\n", len(killMatrix), time.Since(start).Round(time.Second))
	fmt.Fprintf(&b, "| point | operation | simulates | outcome |\n|---|---|---|---|\n")
	for i, kp := range killMatrix {
		fmt.Fprintf(&b, "| `%s` | %s | %s | %s |\n", kp.point, kp.op, kp.what, outcomes[i])
	}
	t.Log(b.String())
}

// killEnv is one point's directory, config and triggered backups.
type killEnv struct {
	t       *testing.T
	dir     string
	cfg     string
	s3      *awss3.Client
	bucket  string
	trigger []string // ids of every backup the test asked for, in order
	// unanswered: the kill came before the API answered a backup request;
	// the one backup nobody saw an id for is that request (adopted once).
	unanswered, adopted bool
	// allowOrphan tolerates queued rows nobody asked for; orphans
	// counts them.
	allowOrphan bool
	orphans     map[string]bool
	// allowLeftover tolerates unsigned manifests after the next run;
	// leftovers lists them. unrecorded lists valid signed copies the
	// catalog does not count (safe: under-counting).
	allowLeftover bool
	leftovers     map[string]bool
	unrecorded    map[string]bool
}

func runKillPoint(t *testing.T, kp killPoint, v *s3test.Versity) string {
	dir := t.TempDir()
	client, bucket := v.Client(t), v.NewBucket(t, false)
	cfgPath := faultConfig(t, dir, fmt.Sprintf(`  a:  {type: local, path: ./target-a}
  b:  {type: local, path: ./target-b}
  s3: {type: s3, bucket: %s, endpoint: %q, path_style: true, region: us-east-1, part_size: 5MiB, upload_concurrency: 1}
`, bucket, v.Endpoint), fmt.Sprintf(`  demo:
    type: command
    command: [sh, -c, "head -c %d /dev/urandom"]
    extension: bin
    schedule: "@daily"
    targets: [a, b]
    retention: {keep_last: 2}
    encryption: {age_identity_file: ./keys/age.key, generate: true}
  big:
    type: command
    command: [sh, -c, "head -c %d /dev/urandom"]
    extension: bin
    schedule: "@daily"
    targets: [a, s3]
    encryption: {age_identity_file: ./keys/age.key, generate: true}
`, demoSize, bigSize))
	e := &killEnv{t: t, dir: dir, cfg: cfgPath, s3: client, bucket: bucket, allowOrphan: orphanBug[kp.point], orphans: map[string]bool{}, unanswered: kp.point == "backup.enqueued",
		allowLeftover: leftoverBug[kp.point], leftovers: map[string]bool{}, unrecorded: map[string]bool{}}

	// Before: good backups to prune or copy from, made without the failpoint.
	pre := 1
	if kp.op == "prune" {
		pre = 2 // keep_last 2: the backup under test makes prune delete one
	}
	if kp.op == "copy" {
		// Target b is unusable (a file where its directory should be): the
		// backup is partial and b's copy is caught up at the next start.
		if err := os.WriteFile(filepath.Join(dir, "target-b"), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	d := startDaemon(t, cfgPath, true)
	for range pre {
		b := e.runWait(d, "demo")
		e.waitVerified(d, b.ID, "a")
	}
	if err := d.cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	if code := d.wait(t); code != 0 {
		t.Fatalf("daemon exit = %d", code)
	}
	if kp.op == "copy" {
		if err := os.Remove(filepath.Join(dir, "target-b")); err != nil {
			t.Fatal(err)
		}
	}

	// Armed: drive the operation into the failpoint and see opsd die.
	d = startDaemonEnv(t, cfgPath, kp.op != "copy", failpoint.Env+"="+kp.point)
	killedID := ""
	switch kp.op {
	case "copy": // maintenance queues the catch-up copy at start
	case "s3":
		killedID = e.run(d, "big")
	default:
		killedID = e.run(d, "demo")
	}
	e.trigger = append(e.trigger, killedID)
	select {
	case <-d.exited:
	case <-time.After(60 * time.Second):
		t.Fatalf("opsd did not reach failpoint %s within 60s", kp.point)
	}
	if ws, ok := d.cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("opsd exit at %s = %v, want killed by SIGKILL\n%s", kp.point, d.exitErr, d.stderr.String())
	}
	temps := tempFiles(t, dir)
	uploads := 0
	if kp.op == "s3" {
		uploads = len(multipartUploads(t, client, bucket))
	}

	// After: restart without the failpoint and check.
	d = startDaemon(t, cfgPath, true)
	killed, verified, copied := "absent", 0, ""
	if killedID != "" {
		var b backupView
		if d.api(t, "GET", "/api/v1/backups/"+killedID, testToken, &b) == 200 {
			killed = b.State
			verified = len(b.Verifications)
			if b.Error != "" {
				killed += " (" + strings.SplitN(b.Error, ":", 2)[0] + ")"
			}
		}
	}
	if kp.op == "copy" {
		var b backupView
		d.api(t, "GET", "/api/v1/backups/"+e.trigger[0], testToken, &b)
		copied = copyOf(b, "b").State
	}
	// A pruned backup caught half-deleted is still condemned by retention:
	// the next prune finishes it, so it is checked after the next run.
	if e.unanswered {
		// The request that got no answer runs now: let it finish first.
		e.quiesce(d)
	}
	e.checkCatalog(d, kp.op != "prune", "after restart")

	// The next run cleans temporary files and uploads older than the
	// cleanup's 5 s clock-skew margin: let them age.
	if len(temps) > 0 || uploads > 0 {
		time.Sleep(6 * time.Second)
	}
	jobs := e.backupJobs(d)
	next := e.runWait(d, "demo")
	e.settle(d, jobs+1)
	if next.State != "succeeded" {
		t.Errorf("next backup after the kill = %s (%s), want succeeded", next.State, next.Error)
	}
	if kp.op == "s3" {
		if b := e.runWait(d, "big"); b.State != "succeeded" {
			t.Errorf("next S3 backup after the kill = %s (%s), want succeeded", b.State, b.Error)
		}
	}
	e.checkCatalog(d, true, "after the next run")
	if left := tempFiles(t, dir); len(left) > 0 {
		t.Errorf("temporary files left after the next run: %v", left)
	}
	if kp.op == "s3" {
		if kp.point == "s3.save-read:150" && uploads == 0 {
			t.Errorf("no multipart upload in flight at %s: the point proves nothing", kp.point)
		}
		if n := len(multipartUploads(t, client, bucket)); n != 0 {
			t.Errorf("%d incomplete multipart uploads after the next run, want 0", n)
		}
	}
	e.checkRetention(d)

	if orphanBug[kp.point] && len(e.orphans) == 0 {
		t.Errorf("no orphaned queued row at %s: the known bug looks fixed; drop orphanBug and its entry in docs/RESILIENCE.md", kp.point)
	}
	if leftoverBug[kp.point] && len(e.leftovers) == 0 {
		t.Errorf("no leftover of the killed catch-up copy at %s: the known bug looks fixed; drop leftoverBug and its entry in docs/RESILIENCE.md", kp.point)
	}
	out := fmt.Sprintf("killed backup %s after restart", killed)
	switch {
	case len(e.orphans) > 0:
		out = fmt.Sprintf("**BUG**: %d orphaned catalog row(s) stay queued with no job, after restart and after the next run", len(e.orphans))
	case kp.op == "copy":
		var b backupView
		d.api(t, "GET", "/api/v1/backups/"+e.trigger[0], testToken, &b)
		out = "partial backup's copy on b after restart: " + copied + "; after the next run: " + copyOf(b, "b").State
	case kp.op == "verify":
		out += fmt.Sprintf(", %d checksum verification(s) recorded", verified)
	}
	if len(e.leftovers) > 0 {
		out += "; **BUG**: the killed catch-up copy's unsigned manifest is still on b after the next run (until River rescues the stuck copy job)"
	}
	if len(e.unrecorded) > 0 {
		out += fmt.Sprintf("; note: %d signed copy(ies) on a target the catalog does not count", len(e.unrecorded))
	}
	if len(temps) > 0 {
		out += fmt.Sprintf("; %d temp file(s) removed by the next run", len(temps))
	}
	if uploads > 0 {
		out += fmt.Sprintf("; %d multipart upload(s) aborted by the next run", uploads)
	}
	return out + "; next run succeeded; invariants hold"
}

// run starts a backup of source and returns its id ("" if opsd died
// before it answered).
func (e *killEnv) run(d *daemonProc, source string) string {
	env := map[string]string{"OPSD_ADDR": d.addr, "OPSD_TOKEN": testToken}
	code, out, _ := cli(e.t, env, "backup", "run", source, "--json")
	if code != 0 {
		return "" // the failpoint may kill opsd before it answers
	}
	var b backupView
	if err := json.Unmarshal([]byte(out), &b); err != nil {
		e.t.Fatal(err)
	}
	return b.ID
}

func (e *killEnv) runWait(d *daemonProc, source string) backupView {
	b := runAndWait(e.t, d, source, nil)
	e.trigger = append(e.trigger, b.ID)
	return b
}

// waitVerified waits for the checksum verification of backup id's copy on
// target to pass: catch-up copies start only from a verified copy.
func (e *killEnv) waitVerified(d *daemonProc, id, target string) {
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		var b backupView
		d.api(e.t, "GET", "/api/v1/backups/"+id, testToken, &b)
		for _, v := range b.Verifications {
			if v.Target == target && v.OK {
				return
			}
		}
	}
	e.t.Fatalf("copy of %s on %s not verified within 30s", id, target)
}

// checkCatalog checks the catalog against the targets: a succeeded or
// partial backup has no copy still writing and each complete copy is
// listed (signature checked) offline on its target; strict also requires
// no backup the test did not ask for, nothing queued or running, and
// every backup listed offline known to the catalog as succeeded or
// partial with a complete copy there.
func (e *killEnv) checkCatalog(d *daemonProc, strict bool, when string) {
	t := e.t
	t.Helper()
	var list struct{ Items []backupView }
	if code := d.api(t, "GET", "/api/v1/backups?limit=100", testToken, &list); code != 200 {
		t.Fatalf("GET backups = %d", code)
	}
	offline := map[string]map[string]bool{}
	for _, target := range []string{"a", "b", "s3"} {
		code, out, errOut := cli(t, nil, "backup", "list", "--target", target, "--config", e.cfg, "--json")
		var ms struct{ Items []struct{ ID string } }
		if err := json.Unmarshal([]byte(out), &ms); err != nil {
			t.Fatalf("%s: offline list of %s: %v (%s)", when, target, err, errOut)
		}
		// Exit 1 with a list: some manifest there does not verify (a
		// half-written or half-deleted backup); it is never listed.
		if code != 0 && strict {
			if e.allowLeftover {
				e.leftovers[target+": "+strings.TrimSpace(errOut)] = true
			} else {
				t.Errorf("%s: unsigned manifest left on %s: %s", when, target, errOut)
			}
		}
		offline[target] = map[string]bool{}
		for _, m := range ms.Items {
			offline[target][m.ID] = true
		}
	}
	good := map[string]map[string]bool{} // target → ids with a complete copy in a good backup
	usable := map[string]bool{}          // ids of succeeded and partial backups
	for _, it := range list.Items {
		var b backupView
		d.api(t, "GET", "/api/v1/backups/"+it.ID, testToken, &b)
		if e.allowOrphan && b.State == "queued" && !slices.Contains(e.trigger, b.ID) {
			e.orphans[b.ID] = true
			continue
		}
		if e.unanswered && !e.adopted && !slices.Contains(e.trigger, b.ID) && b.Actor == "token:root" {
			e.trigger, e.adopted = append(e.trigger, b.ID), true
		}
		if strict && !slices.Contains(e.trigger, b.ID) {
			t.Errorf("%s: backup %s (%s, actor %s) was never asked for: a duplicate run", when, b.ID, b.State, b.Actor)
		}
		if strict && (b.State == "queued" || b.State == "running") {
			t.Errorf("%s: backup %s still %s", when, b.ID, b.State)
		}
		if b.State != "succeeded" && b.State != "partial" {
			continue
		}
		usable[b.ID] = true
		complete := 0
		for _, c := range b.Copies {
			switch c.State {
			case "complete":
				complete++
				if good[c.Target] == nil {
					good[c.Target] = map[string]bool{}
				}
				good[c.Target][b.ID] = true
				if !offline[c.Target][b.ID] {
					if strict {
						t.Errorf("%s: backup %s is %s with a complete copy on %s, but the target holds no signed copy", when, b.ID, b.State, c.Target)
					}
				}
			case "failed":
			default:
				t.Errorf("%s: backup %s is %s with its copy on %s %s", when, b.ID, b.State, c.Target, c.State)
			}
		}
		if complete == 0 {
			t.Errorf("%s: backup %s is %s without a complete copy", when, b.ID, b.State)
		}
	}
	for target, ids := range offline {
		for id := range ids {
			switch {
			case good[target][id]:
			case usable[id]:
				// A signed, checksum-checked copy the catalog does not
				// count: safe, and noted.
				e.unrecorded[target+"/"+id] = true
			case strict:
				t.Errorf("%s: %s lists backup %s offline, which the catalog holds as failed or not at all", when, target, id)
			}
		}
	}
}

// retention asks opsd what demo's retention keeps (a dry-run prune):
// the ids kept and the ids it would delete.
func (e *killEnv) retention(d *daemonProc) (keep, drop []string) {
	env := map[string]string{"OPSD_ADDR": d.addr, "OPSD_TOKEN": testToken}
	code, out, errOut := cli(e.t, env, "backup", "prune", "--source", "demo", "--dry-run", "--json")
	if code != 0 {
		e.t.Fatalf("prune --dry-run = %d %s %s", code, out, errOut)
	}
	var res struct {
		Items []struct {
			BackupID string `json:"backup_id"`
			Keep     bool   `json:"keep"`
		} `json:"items"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		e.t.Fatalf("prune --dry-run: %v\n%s", err, out)
	}
	for _, it := range res.Items {
		if it.Keep {
			keep = append(keep, it.BackupID)
		} else {
			drop = append(drop, it.BackupID)
		}
	}
	return keep, drop
}

// backupJobs counts the backup jobs that ended, from the audit log.
func (e *killEnv) backupJobs(d *daemonProc) int {
	n := 0
	for _, it := range auditEntries(e.t, d) {
		if it.Entry.Action == "job.backup" && it.Entry.Outcome != "accepted" {
			n++
		}
	}
	return n
}

// settle waits until want backup jobs ended: a backup's state is final
// before its job has pruned.
// quiesce waits until no backup is queued or running.
func (e *killEnv) quiesce(d *daemonProc) {
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		var list struct{ Items []backupView }
		d.api(e.t, "GET", "/api/v1/backups?limit=100", testToken, &list)
		busy := false
		for _, b := range list.Items {
			busy = busy || b.State == "queued" || b.State == "running"
		}
		if !busy && len(list.Items) > 0 {
			time.Sleep(300 * time.Millisecond) // the post-backup verification and prune
			return
		}
	}
	e.t.Errorf("backups still queued or running 20s after restart")
}

func (e *killEnv) settle(d *daemonProc, want int) {
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if e.backupJobs(d) >= want {
			return
		}
	}
	e.t.Errorf("the next backup job did not end within 15s")
}

// checkRetention checks that every backup demo's retention keeps is in
// the catalog and restores, and that it keeps the two newest succeeded or
// partial backups the test asked for (keep_last 2).
func (e *killEnv) checkRetention(d *daemonProc) {
	t := e.t
	keep, _ := e.retention(d)
	var newest []string
	for _, id := range slices.Backward(e.trigger) {
		var b backupView
		if id == "" || d.api(t, "GET", "/api/v1/backups/"+id, testToken, &b) != 200 || b.Source != "demo" || (b.State != "succeeded" && b.State != "partial") {
			continue
		}
		if newest = append(newest, id); len(newest) == 2 {
			break
		}
	}
	if len(newest) < 2 {
		t.Errorf("fewer than two good demo backups left: %v", newest)
	}
	for _, id := range newest {
		if !slices.Contains(keep, id) {
			t.Errorf("retention does not keep %s, one of the two newest backups (keep_last 2): %v", id, keep)
		}
	}
	for _, id := range keep {
		code, data, errOut := cli(t, nil, "backup", "restore", id, "--config", e.cfg, "--target", "a",
			"--identity", filepath.Join(e.dir, "keys", "age.key"), "--stdout")
		if code != 0 || len(data) != demoSize {
			t.Errorf("restore of kept backup %s = %d, %d bytes (want %d) %s", id, code, len(data), demoSize, errOut)
		}
	}
}

// tempFiles lists the local backend's temporary files under dir's targets.
func tempFiles(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	for _, target := range []string{"target-a", "target-b"} {
		root := filepath.Join(dir, target)
		err := filepath.WalkDir(root, func(p string, de fs.DirEntry, err error) error {
			if err != nil {
				return nil
			}
			if strings.HasPrefix(de.Name(), local.TempPrefix) {
				out = append(out, strings.TrimPrefix(p, dir+"/"))
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return out
}
