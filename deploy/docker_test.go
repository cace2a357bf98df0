package deploy_test

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// instruction is one Dockerfile instruction after line continuation.
type instruction struct {
	cmd  string // upper case: FROM, RUN, ...
	args string
	line int
}

// stage is one build stage: its FROM image, its name and its instructions.
type stage struct {
	from, name string
	instrs     []instruction
}

// find returns the instructions named cmd.
func (s stage) find(cmd string) []instruction {
	var out []instruction
	for _, in := range s.instrs {
		if in.cmd == cmd {
			out = append(out, in)
		}
	}
	return out
}

// dockerfile is a parsed Dockerfile: global ARG defaults and the stages.
type dockerfile struct {
	args   map[string]string
	stages []stage
}

func (d dockerfile) stage(name string) (stage, bool) {
	for _, s := range d.stages {
		if s.name == name {
			return s, true
		}
	}
	return stage{}, false
}

// parseDockerfile splits a Dockerfile into stages. It handles comments,
// backslash continuation (with comment lines inside it) and FROM ... AS name.
func parseDockerfile(text string) (dockerfile, error) {
	d := dockerfile{args: map[string]string{}}
	var pending strings.Builder
	start := 0
	lines := strings.Split(text, "\n")
	for i, raw := range lines {
		line := strings.TrimSpace(raw)
		if line == "" && pending.Len() == 0 || strings.HasPrefix(line, "#") {
			continue
		}
		if pending.Len() == 0 {
			start = i + 1
		}
		if cont, ok := strings.CutSuffix(line, `\`); ok {
			pending.WriteString(cont + " ")
			if i == len(lines)-1 {
				return d, fmt.Errorf("line %d: file ends inside a continued line", start)
			}
			continue
		}
		pending.WriteString(line)
		full := strings.TrimSpace(pending.String())
		pending.Reset()
		if full == "" {
			continue
		}
		cmd, args, _ := strings.Cut(full, " ")
		in := instruction{cmd: strings.ToUpper(cmd), args: strings.TrimSpace(args), line: start}
		switch {
		case in.cmd == "FROM":
			f := strings.Fields(in.args)
			f = slices.DeleteFunc(f, func(s string) bool { return strings.HasPrefix(s, "--platform=") })
			s := stage{}
			switch {
			case len(f) == 1:
				s.from = f[0]
			case len(f) == 3 && strings.EqualFold(f[1], "AS"):
				s.from, s.name = f[0], f[2]
			default:
				return d, fmt.Errorf("line %d: malformed FROM %q", start, in.args)
			}
			s.from = os.Expand(s.from, func(k string) string { return d.args[k] })
			d.stages = append(d.stages, s)
		case len(d.stages) == 0:
			if in.cmd != "ARG" {
				return d, fmt.Errorf("line %d: %s before the first FROM", start, in.cmd)
			}
			k, v, _ := strings.Cut(in.args, "=")
			d.args[k] = v
		default:
			d.stages[len(d.stages)-1].instrs = append(d.stages[len(d.stages)-1].instrs, in)
		}
	}
	if len(d.stages) == 0 {
		return d, fmt.Errorf("no FROM")
	}
	return d, nil
}

// execForm decodes a JSON-array (exec form) argument such as ENTRYPOINT's.
func execForm(args string) ([]string, error) {
	var v []string
	if err := json.Unmarshal([]byte(args), &v); err != nil {
		return nil, fmt.Errorf("not exec form (JSON array): %q: %w", args, err)
	}
	return v, nil
}

const dockerfilePath = "docker/Dockerfile"

func TestDockerfile(t *testing.T) {
	d, err := parseDockerfile(readFile(t, dockerfilePath))
	if err != nil {
		t.Fatalf("parse %s: %v", dockerfilePath, err)
	}

	build, ok := d.stage("build")
	if !ok {
		t.Fatalf("no stage named build")
	}
	if build.from != "golang:1.26-bookworm" {
		t.Errorf("build stage FROM %q, want golang:1.26-bookworm", build.from)
	}
	var goBuild string
	for _, in := range build.find("RUN") {
		if strings.Contains(in.args, "go build") {
			goBuild = in.args
		}
	}
	for _, want := range []string{
		"CGO_ENABLED=0",
		"-trimpath",
		"-s -w",
		"-X github.com/opsd-dev/opsd/internal/buildinfo.Version=${VERSION}",
		"-X github.com/opsd-dev/opsd/internal/buildinfo.Commit=${COMMIT}",
		"-o /out/opsd ./cmd/opsd",
	} {
		if !strings.Contains(goBuild, want) {
			t.Errorf("build stage: go build RUN %q lacks %q", goBuild, want)
		}
	}
	// The -X flags silently do nothing if the variables are renamed.
	bi := readFile(t, "../internal/buildinfo/buildinfo.go")
	for _, v := range []string{"Version", "Commit"} {
		if !regexp.MustCompile(`(?m)^\s*` + v + `\s+=`).MatchString(bi) {
			t.Errorf("internal/buildinfo has no package variable %s for -ldflags -X", v)
		}
	}
	for _, a := range []string{"VERSION", "COMMIT"} {
		if !slices.ContainsFunc(build.find("ARG"), func(in instruction) bool { return strings.HasPrefix(in.args, a) }) {
			t.Errorf("build stage does not declare ARG %s", a)
		}
	}

	// The default target (the last stage) is the distroless image.
	last := d.stages[len(d.stages)-1]
	if last.from != "gcr.io/distroless/static-debian12:nonroot" {
		t.Errorf("last (default) stage FROM %q, want gcr.io/distroless/static-debian12:nonroot", last.from)
	}
	if len(last.find("RUN")) > 0 || len(last.find("HEALTHCHECK")) > 0 {
		t.Errorf("distroless stage has RUN or HEALTHCHECK; it has no shell to run them")
	}
	pg, ok := d.stage("pg")
	if !ok {
		t.Fatalf("no stage named pg")
	}
	if pg.from != "debian:bookworm-slim" {
		t.Errorf("pg stage FROM %q, want debian:bookworm-slim", pg.from)
	}
	var apt string
	for _, in := range pg.find("RUN") {
		apt += in.args
	}
	for _, pkg := range []string{"postgresql-client", "ca-certificates", "--no-install-recommends", "rm -rf /var/lib/apt/lists/*"} {
		if !strings.Contains(apt, pkg) {
			t.Errorf("pg stage RUN does not contain %q", pkg)
		}
	}

	for _, s := range []stage{pg, last} {
		t.Run(s.name, func(t *testing.T) {
			users := s.find("USER")
			if len(users) == 0 {
				t.Fatalf("no USER: the image would run as root")
			}
			if u := users[len(users)-1].args; u != "65532:65532" && u != "65532" {
				t.Errorf("USER %q, want 65532:65532", u)
			}
			if !slices.ContainsFunc(s.find("COPY"), func(in instruction) bool {
				return strings.HasPrefix(in.args, "--from=build ") && strings.Contains(in.args, "/out/opsd /opsd")
			}) {
				t.Errorf("does not COPY --from=build /out/opsd /opsd")
			}
			for _, w := range []struct {
				cmd  string
				want []string
			}{
				{"ENTRYPOINT", []string{"/opsd"}},
				{"CMD", []string{"serve", "--config", "/etc/opsd/opsd.yaml"}},
			} {
				ins := s.find(w.cmd)
				if len(ins) == 0 {
					t.Errorf("no %s", w.cmd)
					continue
				}
				got, err := execForm(ins[len(ins)-1].args)
				if err != nil {
					t.Errorf("%s: %v", w.cmd, err)
					continue
				}
				if diff := cmp.Diff(w.want, got); diff != "" {
					t.Errorf("%s mismatch (-want +got):\n%s", w.cmd, diff)
				}
			}
			if e := s.find("EXPOSE"); len(e) == 0 || e[0].args != fmt.Sprint(opsdPort) {
				t.Errorf("EXPOSE = %v, want %d", e, opsdPort)
			}
		})
	}
}

// TestDockerignore checks that the Dockerfile-specific ignore file keeps what
// go build needs in the context and keeps .git and secrets out.
func TestDockerignore(t *testing.T) {
	var patterns []string
	for _, line := range strings.Split(readFile(t, "docker/Dockerfile.dockerignore"), "\n") {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
			patterns = append(patterns, line)
		}
	}
	for _, must := range []string{".git", "**/*.key"} {
		if !slices.Contains(patterns, must) {
			t.Errorf("Dockerfile.dockerignore does not exclude %s", must)
		}
	}
	for _, p := range patterns {
		for _, needed := range []string{"go.mod", "go.sum", "cmd", "internal", "plugins", "x.go"} {
			if ok, _ := matchIgnore(p, needed); ok {
				t.Errorf("Dockerfile.dockerignore pattern %q excludes %s, which the build needs", p, needed)
			}
		}
	}
}

// matchIgnore approximates .dockerignore matching for top-level names.
func matchIgnore(pattern, name string) (bool, error) {
	pattern = strings.TrimPrefix(strings.TrimSuffix(pattern, "/"), "**/")
	return regexp.MatchString("^"+strings.ReplaceAll(regexp.QuoteMeta(pattern), `\*`, `[^/]*`)+"$", name)
}
