package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/fsouza/fake-gcs-server/fakestorage"

	"github.com/opsd-dev/opsd/internal/storage/s3/s3test"
	"github.com/opsd-dev/opsd/internal/testenv"
)

// faultConfig writes a config with the given targets and sources blocks
// (YAML, indented two spaces) and a small files tree in dir/src.
func faultConfig(t *testing.T, dir, targets, sources string) string {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(dir, "src"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "src", "a.txt"), []byte(strings.Repeat("alpha ", 2000)), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := testDaemonYAML("") + fmt.Sprintf(`audit:
  origin: opsd.test/faults
  checkpoint_interval: 1s
targets:
%ssources:
%s`, targets, sources)
	path := filepath.Join(dir, "opsd.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// versityForDaemon starts Versity Gateway with a bucket (object-locked if
// lock) and puts its credentials in the environment the daemon inherits.
// -short skips the test.
func versityForDaemon(t *testing.T, lock bool) (*s3test.Versity, string) {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: skipping a daemon test against Versity Gateway")
	}
	v := s3test.StartVersity(t)
	bucket := v.NewBucket(t, lock)
	t.Setenv("AWS_ACCESS_KEY_ID", v.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", v.SecretKey)
	t.Setenv("AWS_REGION", v.Region)
	return v, bucket
}

// runAndWait starts a backup of source and polls until it ends.
func runAndWait(t *testing.T, d *daemonProc, source string, during func(b backupView) bool) backupView {
	t.Helper()
	env := map[string]string{"OPSD_ADDR": d.addr, "OPSD_TOKEN": testToken}
	code, out, errOut := cli(t, env, "backup", "run", source, "--json")
	if code != 0 {
		t.Fatalf("backup run %s = %d %s %s", source, code, out, errOut)
	}
	var b backupView
	if err := json.Unmarshal([]byte(out), &b); err != nil {
		t.Fatal(err)
	}
	fired := during == nil
	for deadline := time.Now().Add(90 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		var got backupView
		if code := d.api(t, "GET", "/api/v1/backups/"+b.ID, testToken, &got); code != 200 {
			t.Fatalf("GET backup = %d", code)
		}
		if !fired && got.State == "running" {
			fired = during(got)
		}
		if terminal(got.State) {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("backup %s of %s not finished after 90s: %+v", b.ID, source, got)
		}
	}
}

// wantMissedCopy checks that the copy on target failed with reason (any
// reason when empty). Once another copy is verified a catch-up copy may
// already be writing; the reason the copy was missed stays on the row.
func wantMissedCopy(t *testing.T, b backupView, target, reason string) {
	t.Helper()
	c := copyOf(b, target)
	if (c.State != "failed" && c.State != "writing") || c.Error == "" || !strings.Contains(c.Error, reason) {
		t.Errorf("copy on %s = %+v, want failed (or being caught up) with the reason %q", target, c, reason)
	}
}

func copyOf(b backupView, target string) (c struct{ State, Error string }) {
	for _, x := range b.Copies {
		if x.Target == target {
			c.State, c.Error = x.State, x.Error
		}
	}
	return c
}

func multipartUploads(t *testing.T, client *awss3.Client, bucket string) map[string]bool {
	t.Helper()
	out, err := client.ListMultipartUploads(context.Background(), &awss3.ListMultipartUploadsInput{Bucket: &bucket})
	if err != nil {
		t.Fatalf("ListMultipartUploads: %v", err)
	}
	ids := map[string]bool{}
	for _, u := range out.Uploads {
		ids[*u.UploadId] = true
	}
	return ids
}

// TestS3TargetDiesMidBackup stops a real S3 server (Versity Gateway) while
// the daemon streams a backup into it: the local copy completes, the S3
// copy fails and is not listed anywhere, the next backup aborts the
// orphaned multipart upload, and the backup restores from the local copy.
func TestS3TargetDiesMidBackup(t *testing.T) {
	v, bucket := versityForDaemon(t, false)
	dir := t.TempDir()
	cfgPath := faultConfig(t, dir, fmt.Sprintf(`  a:  {type: local, path: ./target-a}
  s3: {type: s3, bucket: %s, endpoint: %q, path_style: true, region: us-east-1, part_size: 5MiB, upload_concurrency: 1}
`, bucket, v.Endpoint), `  slow:
    type: command
    command: [sh, -c, "head -c 12000000 /dev/urandom; sleep 3; head -c 12000000 /dev/urandom"]
    extension: bin
    schedule: "@daily"
    targets: [a, s3]
    encryption: {age_identity_file: ./keys/age.key, generate: true}
  quick:
    type: files
    paths: [./src]
    schedule: "@daily"
    targets: [s3]
    encryption: {age_identity_file: ./keys/age.key, generate: true}
`)
	d := startDaemon(t, cfgPath, true)
	client := v.Client(t)
	var stopped bool
	b := runAndWait(t, d, "slow", func(got backupView) bool {
		// Parts are reaching the store: take it down.
		if got.Progress == nil || got.Progress.Bytes < 11_000_000 || len(multipartUploads(t, client, bucket)) == 0 {
			return false
		}
		v.Stop()
		stopped = true
		return true
	})
	if !stopped {
		t.Fatalf("the backup ended before the S3 server could be stopped: %+v", b)
	}
	if b.State != "partial" {
		t.Fatalf("backup state = %s (%s), want partial", b.State, b.Error)
	}
	if c := copyOf(b, "a"); c.State != "complete" {
		t.Errorf("local copy = %+v, want complete", c)
	}
	wantMissedCopy(t, b, "s3", "")

	v.Start(t)
	// The uploads left by the outage, taken before the catch-up copy (now
	// retrying with backoff) can start one of its own.
	orphans := multipartUploads(t, client, bucket)
	if len(orphans) == 0 {
		t.Fatal("no incomplete multipart upload left by the outage: the cleanup below would prove nothing")
	}
	code, out, errOut := cli(t, nil, "backup", "list", "--target", "s3", "--config", cfgPath, "--json")
	if code != 0 {
		t.Fatalf("offline list of s3 = %d %s", code, errOut)
	}
	if strings.Contains(out, b.ID) {
		// Listed only if the catch-up copy already completed it: the failed
		// copy itself must never be visible.
		waitFor(t, 10*time.Second, "a listed s3 copy recorded complete", func() bool {
			var got backupView
			d.api(t, "GET", "/api/v1/backups/"+b.ID, testToken, &got)
			return copyOf(got, "s3").State == "complete"
		})
	}
	time.Sleep(6 * time.Second) // older than the cleanup's clock-skew margin
	if q := runAndWait(t, d, "quick", nil); q.State != "succeeded" {
		t.Fatalf("next backup = %s (%s), want succeeded", q.State, q.Error)
	}
	for id := range multipartUploads(t, client, bucket) {
		if orphans[id] {
			t.Errorf("the outage's multipart upload %s is still there after the next backup (its cleanup should abort it)", id)
		}
	}
	code, data, errOut := cli(t, nil, "backup", "restore", b.ID, "--config", cfgPath, "--target", "a",
		"--identity", filepath.Join(dir, "keys", "age.key"), "--stdout")
	if code != 0 || len(data) != 24_000_000 {
		t.Fatalf("restore from the local copy = %d, %d bytes (want 24000000) %s", code, len(data), errOut)
	}

	// The target is back: the copy it missed is caught up from the verified
	// local copy (retried with backoff while it was down), not re-dumped.
	deadline := time.Now().Add(150 * time.Second)
	for {
		var got backupView
		d.api(t, "GET", "/api/v1/backups/"+b.ID, testToken, &got)
		if c := copyOf(got, "s3"); c.State == "complete" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("s3 copy of %s not caught up: %+v", b.ID, copyOf(got, "s3"))
		}
		time.Sleep(time.Second)
	}
	code, data, errOut = cli(t, nil, "backup", "restore", b.ID, "--config", cfgPath, "--target", "s3",
		"--identity", filepath.Join(dir, "keys", "age.key"), "--stdout")
	if code != 0 || len(data) != 24_000_000 {
		t.Fatalf("restore from the caught-up s3 copy = %d, %d bytes (want 24000000) %s", code, len(data), errOut)
	}
}

// TestFullLocalDisk fills a small tmpfs target mid-backup: that copy fails
// with ENOSPC and leaves no file behind, the other target's copy is fine.
func TestFullLocalDisk(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: skipping the full-disk test")
	}
	dir := t.TempDir()
	small := filepath.Join(dir, "small")
	if err := os.MkdirAll(small, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", small).CombinedOutput(); err != nil {
		testenv.Missing(t, "cannot mount a small tmpfs (needs root), full-disk test did not run: %v %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", "-l", small).Run() })
	cfgPath := faultConfig(t, dir, `  a:     {type: local, path: ./target-a}
  small: {type: local, path: ./small}
`, `  big:
    type: command
    command: [head, -c, "12000000", /dev/urandom]
    extension: bin
    schedule: "@daily"
    targets: [a, small]
    encryption: {age_identity_file: ./keys/age.key, generate: true}
`)
	d := startDaemon(t, cfgPath, true)
	b := runAndWait(t, d, "big", nil)
	if b.State != "partial" {
		t.Fatalf("backup state = %s (%s), want partial", b.State, b.Error)
	}
	if c := copyOf(b, "a"); c.State != "complete" {
		t.Errorf("copy on a = %+v, want complete", c)
	}
	wantMissedCopy(t, b, "small", "no space left")
	// A catch-up copy to the full disk may be writing its temp file right
	// now (it fails the same way and retries with backoff); once attempts
	// end, nothing may be left behind.
	var files []string
	waitFor(t, 10*time.Second, "no file left on the full disk", func() bool {
		files = files[:0]
		_ = filepath.Walk(small, func(p string, fi os.FileInfo, err error) error {
			if err == nil && !fi.IsDir() {
				files = append(files, p)
			}
			return nil
		})
		return len(files) == 0
	})
	code, out, errOut := cli(t, nil, "backup", "list", "--target", "a", "--config", cfgPath, "--json")
	if code != 0 || !strings.Contains(out, b.ID) {
		t.Errorf("offline list of a = %d %s %s, want the backup", code, out, errOut)
	}
}

// TestGCSTargetDiesMidBackup stops fake-gcs-server while the daemon sends
// resumable-upload chunks to it: the GCS copy fails, the local one
// completes, and the backup is partial, not failed and not hung.
func TestGCSTargetDiesMidBackup(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: skipping the GCS outage test")
	}
	srv, err := fakestorage.NewServerWithOptions(fakestorage.Options{Scheme: "http", Host: "127.0.0.1", Port: 0})
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			srv.Stop()
		}
	})
	srv.CreateBucketWithOpts(fakestorage.CreateBucketOpts{Name: "opsd-faults"})
	dir := t.TempDir()
	cfgPath := faultConfig(t, dir, fmt.Sprintf(`  a: {type: local, path: ./target-a}
  g: {type: gcs, bucket: opsd-faults, endpoint: %q, anonymous: true, chunk_size: 1MiB}
`, srv.URL()+"/storage/v1/"), `  slow:
    type: command
    command: [sh, -c, "head -c 12000000 /dev/urandom; sleep 3; head -c 12000000 /dev/urandom"]
    extension: bin
    schedule: "@daily"
    targets: [a, g]
    encryption: {age_identity_file: ./keys/age.key, generate: true}
`)
	d := startDaemon(t, cfgPath, true)
	b := runAndWait(t, d, "slow", func(got backupView) bool {
		if got.Progress == nil || got.Progress.Bytes < 11_000_000 {
			return false
		}
		srv.Stop()
		stopped = true
		return true
	})
	if !stopped {
		t.Fatalf("the backup ended before fake-gcs-server could be stopped: %+v", b)
	}
	if b.State != "partial" {
		t.Fatalf("backup state = %s (%s), want partial", b.State, b.Error)
	}
	if c := copyOf(b, "a"); c.State != "complete" {
		t.Errorf("local copy = %+v, want complete", c)
	}
	wantMissedCopy(t, b, "g", "connection refused")
	code, out, errOut := cli(t, nil, "backup", "list", "--target", "a", "--config", cfgPath, "--json")
	if code != 0 || !strings.Contains(out, b.ID) {
		t.Errorf("offline list of a = %d %s %s, want the backup", code, out, errOut)
	}
}
