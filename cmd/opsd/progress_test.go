package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/opsd-dev/opsd/internal/backup"
)

func TestProgressLine(t *testing.T) {
	var buf bytes.Buffer
	l := newProgressLine(&buf)
	p := backup.Progress{Phase: "backup", Bytes: 3 << 30, Total: 4 << 30, Rate: 100 << 20, ETA: 10 * time.Second}
	l.update(p)
	l.update(p) // within 10 s: not repeated in a log
	l.end()
	want := "backup 3.0 GiB / 4.0 GiB at 100.0 MiB/s, ETA 10s\n"
	if buf.String() != want {
		t.Errorf("progress output = %q, want %q", buf.String(), want)
	}
	if got := progressText(backup.Progress{Phase: "download", Bytes: 512}); got != "download 512 B" {
		t.Errorf("progressText without total or rate = %q", got)
	}
	if strings.Contains(buf.String(), "\r") {
		t.Error("carriage return written to a non-terminal")
	}
}
