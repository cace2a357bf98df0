// Package buildinfo reports the version of the running opsd binary.
package buildinfo

import (
	"runtime"
	"runtime/debug"
)

// Version and Commit are set at link time with
// -ldflags "-X github.com/opsd-dev/opsd/internal/buildinfo.Version=..."; when
// unset they fall back to the module and VCS data Go embeds in the binary.
var (
	Version = ""
	Commit  = ""
)

// Info describes the binary.
type Info struct {
	Version   string `json:"version"`
	Commit    string `json:"commit"`
	GoVersion string `json:"go_version"`
}

// Get returns the build information of the running binary.
func Get() Info {
	info := Info{Version: Version, Commit: Commit, GoVersion: runtime.Version()}
	if bi, ok := debug.ReadBuildInfo(); ok {
		if info.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			info.Version = bi.Main.Version
		}
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && info.Commit == "" {
				info.Commit = s.Value
			}
		}
	}
	if info.Version == "" {
		info.Version = "dev"
	}
	if info.Commit == "" {
		info.Commit = "unknown"
	}
	return info
}
