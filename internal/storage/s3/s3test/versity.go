// Package s3test runs a real S3 server for tests: Versity Gateway
// (github.com/versity/versitygw), which enforces Object Lock.
package s3test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/opsd-dev/opsd/internal/testenv"
)

// VersityInstall is how to get the binary.
const VersityInstall = "go install github.com/versity/versitygw/cmd/versitygw@v1.8.0"

// Versity is a running versitygw on a loopback port.
type Versity struct {
	Endpoint  string
	AccessKey string
	SecretKey string
	Region    string

	bin, addr, data, versions, logPath string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// VersityBinary finds versitygw on PATH, then in $(go env GOPATH)/bin.
func VersityBinary() (string, error) {
	if p, err := exec.LookPath("versitygw"); err == nil {
		return p, nil
	}
	gopath := os.Getenv("GOPATH")
	if gopath == "" {
		if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
			gopath = strings.TrimSpace(string(out))
		}
	}
	for _, dir := range filepath.SplitList(gopath) {
		p := filepath.Join(dir, "bin", "versitygw")
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
			return p, nil
		}
	}
	return "", fmt.Errorf("versitygw not found on PATH or in $(go env GOPATH)/bin; install it with %q", VersityInstall)
}

// StartVersity starts versitygw with posix storage and versioning in
// temporary directories and stops it when the test ends. Without the
// binary the test fails under CI=true and is skipped otherwise.
func StartVersity(t testing.TB) *Versity {
	t.Helper()
	bin, err := VersityBinary()
	if err != nil {
		testenv.Missing(t, "Versity Gateway is missing, S3 tests against a real server did not run: %v", err)
	}
	dir := t.TempDir()
	v := &Versity{
		AccessKey: "opsdtestaccess",
		SecretKey: "opsd-test-secret-" + randHex(8),
		Region:    "us-east-1",
		bin:       bin,
		addr:      freeAddr(t),
		data:      filepath.Join(dir, "data"),
		versions:  filepath.Join(dir, "versions"),
		logPath:   filepath.Join(dir, "versitygw.log"),
	}
	v.Endpoint = "http://" + v.addr
	for _, d := range []string{v.data, v.versions} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			t.Fatal(err)
		}
	}
	v.Start(t)
	t.Cleanup(v.Stop)
	return v
}

func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Start (re)starts the gateway on the same address and directories and
// waits until it answers.
func (v *Versity) Start(t testing.TB) {
	t.Helper()
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.cmd != nil {
		t.Fatal("versitygw already running")
	}
	logf, err := os.OpenFile(v.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(v.bin, "--port", v.addr, "--access", v.AccessKey, "--secret", v.SecretKey,
		"--region", v.Region, "--quiet", "posix", "--versioning-dir", v.versions, v.data)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatalf("start versitygw: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	v.cmd, v.done = cmd, done

	deadline := time.Now().Add(20 * time.Second)
	client := &http.Client{Timeout: time.Second}
	defer client.CloseIdleConnections()
	for {
		select {
		case <-done:
			v.cmd = nil
			t.Fatalf("versitygw exited at start: %s", v.log())
		default:
		}
		resp, err := client.Get(v.Endpoint + "/")
		if err == nil {
			resp.Body.Close()
			return // any answer (403 without signature) means it serves
		}
		if time.Now().After(deadline) {
			t.Fatalf("versitygw did not answer on %s within 20s: %v\n%s", v.addr, err, v.log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Stop kills the gateway (SIGKILL: a crash, not a shutdown) and waits for
// it to exit. Stopping a stopped gateway does nothing.
func (v *Versity) Stop() {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.cmd == nil {
		return
	}
	_ = v.cmd.Process.Kill()
	<-v.done
	v.cmd = nil
}

func (v *Versity) log() string {
	b, _ := os.ReadFile(v.logPath)
	return string(bytes.TrimSpace(b))
}

// Client is an S3 client for the gateway's root user; it is closed with
// the test.
func (v *Versity) Client(t testing.TB) *awss3.Client {
	t.Helper()
	tr := http.DefaultTransport.(*http.Transport).Clone()
	t.Cleanup(tr.CloseIdleConnections)
	return awss3.New(awss3.Options{
		Region:       v.Region,
		BaseEndpoint: aws.String(v.Endpoint),
		UsePathStyle: true,
		Credentials:  aws.NewCredentialsCache(staticCreds{v.AccessKey, v.SecretKey}),
		HTTPClient:   &http.Client{Transport: tr},
	})
}

// Credentials for the root user.
func (v *Versity) Credentials() aws.CredentialsProvider {
	return staticCreds{v.AccessKey, v.SecretKey}
}

type staticCreds struct{ key, secret string }

func (s staticCreds) Retrieve(context.Context) (aws.Credentials, error) {
	return aws.Credentials{AccessKeyID: s.key, SecretAccessKey: s.secret, Source: "s3test"}, nil
}

// NewBucket creates a bucket with a fresh name; lock enables Object Lock
// (and so versioning) on it.
func (v *Versity) NewBucket(t testing.TB, lock bool) string {
	t.Helper()
	name := "opsd-" + randHex(6)
	in := &awss3.CreateBucketInput{Bucket: aws.String(name)}
	if lock {
		in.ObjectLockEnabledForBucket = aws.Bool(true)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := v.Client(t).CreateBucket(ctx, in); err != nil {
		t.Fatalf("create bucket %s: %v", name, err)
	}
	if lock {
		// Versioning comes with Object Lock; say so explicitly for stores
		// that want it spelled out.
		_, _ = v.Client(t).PutBucketVersioning(ctx, &awss3.PutBucketVersioningInput{
			Bucket:                  aws.String(name),
			VersioningConfiguration: &types.VersioningConfiguration{Status: types.BucketVersioningStatusEnabled},
		})
	}
	return name
}
