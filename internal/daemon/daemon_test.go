package daemon

import (
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/opsd-dev/opsd/internal/config"
)

func TestRestartOnly(t *testing.T) {
	base := func() *config.Config {
		c := &config.Config{DataDir: "/var/lib/opsd"}
		c.Server.Listen = "127.0.0.1:8470"
		c.Server.ReadTimeout = 30 * time.Second
		c.Server.RateLimit.Burst = 40
		c.Audit.Origin = "o"
		return c
	}
	tests := []struct {
		name string
		mod  func(c *config.Config)
		want []string
	}{
		{"nothing", func(*config.Config) {}, nil},
		{"reloadable only", func(c *config.Config) { c.Server.RateLimit.Burst = 1; c.Server.MetricsPublic = true }, nil},
		{"listen", func(c *config.Config) { c.Server.Listen = "0.0.0.0:8470" }, []string{"server.listen"}},
		{"several", func(c *config.Config) { c.DataDir = "/x"; c.Audit.Origin = "p"; c.Server.ReadTimeout = time.Second },
			[]string{"data_dir", "server timeouts", "audit.origin"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := base()
			tt.mod(b)
			if diff := cmp.Diff(tt.want, restartOnly(base(), b)); diff != "" {
				t.Errorf("restartOnly (-want +got):\n%s", diff)
			}
		})
	}
}

func TestLockDataDir(t *testing.T) {
	dir := t.TempDir()
	l, err := lockDataDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lockDataDir(dir); !errors.Is(err, ErrDataDirLocked) {
		t.Errorf("second lock = %v, want ErrDataDirLocked", err)
	}
	if err := l.release(); err != nil {
		t.Fatal(err)
	}
	l2, err := lockDataDir(dir)
	if err != nil {
		t.Fatalf("lock after release = %v", err)
	}
	_ = l2.release()
}
