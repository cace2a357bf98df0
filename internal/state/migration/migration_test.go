package migration_test

import (
	"errors"
	"testing"
	"testing/fstest"

	"github.com/opsd-dev/opsd/internal/state"
	"github.com/opsd-dev/opsd/internal/state/migration"
)

func TestLoad(t *testing.T) {
	file := func(s string) *fstest.MapFile { return &fstest.MapFile{Data: []byte(s)} }
	tests := []struct {
		name    string
		fs      fstest.MapFS
		want    int // latest version; 0 means an error is expected
		wantErr bool
	}{
		{"ordered", fstest.MapFS{"m/0002_b.sql": file("B"), "m/0001_a.sql": file("A"), "m/README": file("")}, 2, false},
		{"gap", fstest.MapFS{"m/0001_a.sql": file("A"), "m/0003_c.sql": file("C")}, 0, true},
		{"duplicate", fstest.MapFS{"m/0001_a.sql": file("A"), "m/01_b.sql": file("B")}, 0, true},
		{"bad name", fstest.MapFS{"m/init.sql": file("A")}, 0, true},
		{"empty", fstest.MapFS{"m/README": file("")}, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ms, err := migration.Load(tt.fs, "m")
			if (err != nil) != tt.wantErr {
				t.Fatalf("Load() error = %v, wantErr %v", err, tt.wantErr)
			}
			if got := migration.Latest(ms); got != tt.want {
				t.Errorf("Latest(Load()) = %d, want %d", got, tt.want)
			}
		})
	}
}

func TestCheckNotNewer(t *testing.T) {
	if err := migration.CheckNotNewer(3, 3); err != nil {
		t.Errorf("CheckNotNewer(3, 3) = %v, want nil", err)
	}
	err := migration.CheckNotNewer(7, 3)
	if !errors.Is(err, state.ErrSchemaTooNew) {
		t.Fatalf("CheckNotNewer(7, 3) = %v, want ErrSchemaTooNew", err)
	}
	const want = "database schema v7 is newer than this opsd (v3): upgrade opsd"
	if err.Error() != want {
		t.Errorf("CheckNotNewer(7, 3) = %q, want %q", err, want)
	}
}
