package config

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/robfig/cron/v3"
)

// Secret is a config value that must never be printed: fmt, slog and JSON
// all see a placeholder. Convert with string(s) where the value is used.
type Secret string

const redacted = "[REDACTED]"

// String redacts, so a Secret in a logged or printed struct stays hidden.
func (s Secret) String() string {
	if s == "" {
		return ""
	}
	return redacted
}

// GoString redacts for %#v too.
func (s Secret) GoString() string { return strconv.Quote(s.String()) }

// LogValue redacts for log/slog.
func (s Secret) LogValue() slog.Value { return slog.StringValue(s.String()) }

// MarshalText redacts for encoding/json and friends, so a config summary
// served over the API cannot carry the value.
func (s Secret) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// Size is a number of bytes.
type Size int64

var sizeUnits = map[string]float64{
	"":    1,
	"B":   1,
	"KB":  1e3,
	"MB":  1e6,
	"GB":  1e9,
	"TB":  1e12,
	"KiB": 1 << 10,
	"MiB": 1 << 20,
	"GiB": 1 << 30,
	"TiB": 1 << 40,
}

// ParseSize parses "512MiB", "1GB", "1.5GiB" or a plain byte count.
func ParseSize(s string) (Size, error) {
	s = strings.TrimSpace(s)
	i := strings.IndexFunc(s, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	if i < 0 {
		i = len(s)
	}
	num, unit := s[:i], strings.TrimSpace(s[i:])
	mult, ok := sizeUnits[unit]
	if !ok || num == "" {
		return 0, errors.New("want a size like 512MiB, 1GB or a byte count")
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil {
		return 0, errors.New("want a size like 512MiB, 1GB or a byte count")
	}
	v := f * mult
	if v >= math.MaxInt64 {
		return 0, errors.New("size too large")
	}
	return Size(v), nil
}

// Percent is a percentage: 80% is Percent(80).
type Percent float64

// ParsePercent parses "80%" or "12.5%".
func ParsePercent(s string) (Percent, error) {
	num, ok := strings.CutSuffix(strings.TrimSpace(s), "%")
	if !ok {
		return 0, errors.New(`want a percentage like "80%"`)
	}
	f, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		return 0, errors.New(`want a percentage like "80%"`)
	}
	return Percent(f), nil
}

// ParseDuration parses a Go duration with an optional leading day count:
// "90s", "36h", "7d", "1d12h". Negative durations are refused: nothing in
// the config counts backwards.
func ParseDuration(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	bad := fmt.Errorf("want a duration like 90s, 36h or 7d")
	if strings.HasPrefix(s, "-") {
		return 0, errors.New("want a duration that is not negative")
	}
	var d time.Duration
	if days, rest, ok := strings.Cut(s, "d"); ok {
		n, err := strconv.ParseFloat(days, 64)
		if err != nil || days == "" || strings.ContainsAny(days, "+-eE") {
			return 0, bad
		}
		if n*24 > float64(math.MaxInt64/int64(time.Hour)) {
			return 0, errors.New("duration too large")
		}
		d = time.Duration(n * 24 * float64(time.Hour))
		s = rest
		if s == "" {
			return d, nil
		}
		if strings.HasPrefix(s, "+") || strings.HasPrefix(s, "-") {
			return 0, bad
		}
	}
	r, err := time.ParseDuration(s)
	if err != nil {
		return 0, bad
	}
	if d+r < d {
		return 0, errors.New("duration too large")
	}
	return d + r, nil
}

// Cron is a schedule in robfig/cron's standard syntax: 5 fields, the
// @hourly-style descriptors, "@every 15m" and a "CRON_TZ=Zone " prefix.
// Load has checked that it parses and fires; use Schedule to evaluate it.
type Cron string

var cronParser = cron.NewParser(cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// Schedule parses c. It cannot fail for a Cron from a loaded Config.
func (c Cron) Schedule() (cron.Schedule, error) { return parseCron(string(c)) }

// parseCron parses spec and refuses one that can never fire, such as
// "0 0 30 2 *" (robfig/cron then returns the zero time from Next).
func parseCron(spec string) (cron.Schedule, error) {
	// robfig/cron v3.0.1 panics on a time zone prefix with nothing after it.
	if (strings.HasPrefix(spec, "TZ=") || strings.HasPrefix(spec, "CRON_TZ=")) && !strings.Contains(spec, " ") {
		return nil, errors.New("a time zone prefix needs a schedule after it")
	}
	sched, err := cronParser.Parse(spec)
	if err != nil {
		return nil, err
	}
	if sched.Next(time.Now()).IsZero() {
		return nil, errors.New("never fires")
	}
	return sched, nil
}

// Policy is the 3-2-1-1-0 level a source must reach: "", "3", "3-2",
// "3-2-1", "3-2-1-1" or "3-2-1-1-0".
type Policy string

var policies = []Policy{"3", "3-2", "3-2-1", "3-2-1-1", "3-2-1-1-0"}

// Rules returns how many of the five rules the policy requires (0..5).
func (p Policy) Rules() int {
	for i, q := range policies {
		if p == q {
			return i + 1
		}
	}
	return 0
}
