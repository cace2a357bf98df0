package retention

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/opsd-dev/opsd/internal/config"
)

var (
	berlin = mustLoad("Europe/Berlin")
	// now is after every backup of daily().
	now = time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
)

func mustLoad(name string) *time.Location {
	loc, err := time.LoadLocation(name)
	if err != nil {
		panic(err)
	}
	return loc
}

// daily returns one backup a day at 03:00 UTC from 2026-11-13 to
// 2026-11-24, IDs "b13".."b24", oldest first, with edit applied to each.
func daily(edit func(day int, b *Backup)) []Backup {
	var bs []Backup
	for day := 13; day <= 24; day++ {
		b := Backup{ID: "b" + strconv.Itoa(day), Time: time.Date(2026, 11, day, 3, 0, 0, 0, time.UTC)}
		if edit != nil {
			edit(day, &b)
		}
		bs = append(bs, b)
	}
	return bs
}

// summary is a decision reduced to what the tables compare.
type summary struct {
	ID          string
	Keep        bool
	Reasons     []string
	DeletableAt time.Time
	Early       bool
}

func summarize(ds []Decision) []summary {
	var out []summary
	for _, d := range ds {
		out = append(out, summary{d.ID, d.Keep, d.Reasons, d.DeletableAt, d.EarlyDeletion})
	}
	return out
}

// kept returns the IDs of kept decisions, newest first.
func kept(ds []Decision) []string {
	var ids []string
	for _, d := range ds {
		if d.Keep {
			ids = append(ids, d.ID)
		}
	}
	return ids
}

func TestApplyOverrides(t *testing.T) {
	lockUntil := time.Date(2026, 12, 30, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name    string
		policy  config.Keep
		backups []Backup
		want    map[string]summary // only the backups named here are checked
	}{
		{
			name:   "newest proven good is kept",
			policy: config.Keep{Last: 1},
			backups: daily(func(day int, b *Backup) {
				b.ProvenGood = day == 15 || day == 18
			}),
			want: map[string]summary{
				"b24": {ID: "b24", Keep: true, Reasons: []string{"last 1/1"}},
				"b18": {ID: "b18", Keep: true, Reasons: []string{"newest verified"}},
				"b15": {ID: "b15"},
			},
		},
		{
			name:   "proven good already kept by the policy gets the reason too",
			policy: config.Keep{Last: 1},
			backups: daily(func(day int, b *Backup) {
				b.ProvenGood = day >= 20
			}),
			want: map[string]summary{
				"b24": {ID: "b24", Keep: true, Reasons: []string{"last 1/1", "newest verified"}},
				"b23": {ID: "b23"},
			},
		},
		{
			name:   "object lock keeps until its date",
			policy: config.Keep{Last: 1},
			backups: daily(func(day int, b *Backup) {
				switch day {
				case 14:
					b.RetainUntil = lockUntil
				case 15:
					b.RetainUntil = now // ends now: deletable
				case 16:
					b.RetainUntil = now.Add(-time.Hour)
				case 24:
					b.RetainUntil = lockUntil
				}
			}),
			want: map[string]summary{
				"b24": {ID: "b24", Keep: true, Reasons: []string{"last 1/1", "object lock until 2026-12-30T00:00:00Z"}, DeletableAt: lockUntil},
				"b16": {ID: "b16"},
				"b15": {ID: "b15"},
				"b14": {ID: "b14", Keep: true, Reasons: []string{"object lock until 2026-12-30T00:00:00Z"}, DeletableAt: lockUntil},
			},
		},
		{
			name:   "object lock date in another zone is named in UTC",
			policy: config.Keep{Last: 1},
			backups: daily(func(day int, b *Backup) {
				if day == 13 {
					b.RetainUntil = time.Date(2027, 1, 1, 1, 0, 0, 0, berlin)
				}
			}),
			want: map[string]summary{
				"b13": {ID: "b13", Keep: true, Reasons: []string{"object lock until 2027-01-01T00:00:00Z"},
					DeletableAt: time.Date(2027, 1, 1, 1, 0, 0, 0, berlin)},
			},
		},
		{
			name:   "early deletion is allowed and flagged",
			policy: config.Keep{Last: 1},
			backups: daily(func(day int, b *Backup) {
				b.MinStorageUntil = b.Time.AddDate(0, 0, 7)
			}),
			want: map[string]summary{
				"b24": {ID: "b24", Keep: true, Reasons: []string{"last 1/1"}}, // kept: never flagged
				"b18": {ID: "b18", Early: true},                               // until 25 Nov
				"b17": {ID: "b17"},                                            // until 24 Nov 03:00, before now
				"b16": {ID: "b16"},
				"b13": {ID: "b13"},
			},
		},
		{
			name:   "locked backup is not an early deletion",
			policy: config.Keep{Last: 1},
			backups: daily(func(day int, b *Backup) {
				if day == 20 {
					b.RetainUntil = lockUntil
					b.MinStorageUntil = lockUntil.AddDate(1, 0, 0)
				}
			}),
			want: map[string]summary{
				"b20": {ID: "b20", Keep: true, Reasons: []string{"object lock until 2026-12-30T00:00:00Z"}, DeletableAt: lockUntil},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ds, err := Apply(tt.policy, tt.backups, now, berlin)
			if err != nil {
				t.Fatalf("Apply() = %v", err)
			}
			got := map[string]summary{}
			for _, s := range summarize(ds) {
				if _, ok := tt.want[s.ID]; ok {
					got[s.ID] = s
				}
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Apply() mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestApplyInvalid(t *testing.T) {
	b := daily(nil)
	tests := []struct {
		name    string
		policy  config.Keep
		backups []Backup
		loc     *time.Location
		wantErr error // nil: any error
	}{
		{"negative count", config.Keep{Daily: -2}, b, berlin, ErrInvalidPolicy},
		{"negative last", config.Keep{Last: -5, Daily: 3}, b, berlin, ErrInvalidPolicy},
		{"negative within", config.Keep{Within: -time.Hour}, b, berlin, ErrInvalidPolicy},
		{"invalid even without backups", config.Keep{Yearly: -3}, nil, berlin, ErrInvalidPolicy},
		{"nil location", config.Keep{Last: 1}, b, nil, nil},
		{"duplicate ID", config.Keep{Last: 1}, append(daily(nil), Backup{ID: "b13", Time: now}), berlin, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ds, err := Apply(tt.policy, tt.backups, now, tt.loc)
			if err == nil || (tt.wantErr != nil && !errors.Is(err, tt.wantErr)) {
				t.Fatalf("Apply() = %v, %v; want error %v", len(ds), err, tt.wantErr)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name   string
		policy config.Keep
		want   string // "" = valid
	}{
		{"zero", config.Keep{}, ""},
		{"unlimited everywhere", config.Keep{Last: -1, Hourly: -1, Daily: -1, Weekly: -1, Monthly: -1, Yearly: -1}, ""},
		{"spec example", config.Keep{Last: 3, Hourly: 24, Daily: 7, Weekly: 4, Monthly: 12}, ""},
		{"every problem at once", config.Keep{Hourly: -2, Monthly: -7, Within: -time.Minute},
			"invalid retention policy: keep_hourly is -2; want 0 or more, or -1 for unlimited\n" +
				"invalid retention policy: keep_monthly is -7; want 0 or more, or -1 for unlimited\n" +
				"invalid retention policy: keep_within is -1m0s; want 0 or more"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Validate(tt.policy)
			got := ""
			if err != nil {
				got = err.Error()
			}
			if got != tt.want {
				t.Errorf("Validate(%+v) = %q, want %q", tt.policy, got, tt.want)
			}
		})
	}
}

func TestApplyEmpty(t *testing.T) {
	for _, p := range []config.Keep{{}, {Last: 3}, {Within: time.Hour}} {
		for _, in := range [][]Backup{nil, {}} {
			ds, err := Apply(p, in, now, berlin)
			if err != nil || len(ds) != 0 {
				t.Errorf("Apply(%+v, %v) = %v, %v; want no decisions", p, in, ds, err)
			}
		}
	}
}

func TestApplyRules(t *testing.T) {
	tests := []struct {
		name    string
		policy  config.Keep
		backups []Backup
		want    []summary // every decision, newest first
	}{
		{
			name:    "empty policy keeps all",
			policy:  config.Keep{},
			backups: daily(nil)[:2],
			want: []summary{
				{ID: "b14", Keep: true, Reasons: []string{"empty policy keeps all"}},
				{ID: "b13", Keep: true, Reasons: []string{"empty policy keeps all"}},
			},
		},
		{
			// 23:30 UTC on the 23rd is the 24th in Berlin; 00:30 UTC on
			// the 23rd is the 23rd there.
			name:   "days are taken in the location",
			policy: config.Keep{Daily: 5},
			backups: []Backup{
				{ID: "late", Time: time.Date(2026, 11, 23, 23, 30, 0, 0, time.UTC)},
				{ID: "early", Time: time.Date(2026, 11, 23, 0, 30, 0, 0, time.UTC)},
				{ID: "prev", Time: time.Date(2026, 11, 22, 22, 30, 0, 0, time.UTC)},
			},
			want: []summary{
				{ID: "late", Keep: true, Reasons: []string{"daily 2026-11-24"}},
				{ID: "early", Keep: true, Reasons: []string{"daily 2026-11-23"}},
				{ID: "prev", Keep: true, Reasons: []string{"daily 2026-11-22"}},
			},
		},
		{
			// 2026-12-31 and 2027-01-01 are both in ISO week 2026-W53.
			name:   "ISO week 53 spans the new year",
			policy: config.Keep{Weekly: 2, Yearly: 2},
			backups: []Backup{
				{ID: "jan1", Time: time.Date(2027, 1, 1, 12, 0, 0, 0, berlin)},
				{ID: "dec31", Time: time.Date(2026, 12, 31, 12, 0, 0, 0, berlin)},
				{ID: "dec27", Time: time.Date(2026, 12, 27, 12, 0, 0, 0, berlin)},
				{ID: "dec20", Time: time.Date(2026, 12, 20, 12, 0, 0, 0, berlin)},
			},
			want: []summary{
				{ID: "jan1", Keep: true, Reasons: []string{"weekly 2026-W53", "yearly 2027"}},
				{ID: "dec31", Keep: true, Reasons: []string{"yearly 2026"}},
				{ID: "dec27", Keep: true, Reasons: []string{"weekly 2026-W52"}},
				{ID: "dec20"},
			},
		},
		{
			// With slots left at the oldest backup, restic 0.17 keeps it
			// although its day already has a kept backup.
			name:   "oldest backup kept while slots are left",
			policy: config.Keep{Daily: 5},
			backups: []Backup{
				{ID: "a", Time: time.Date(2026, 11, 24, 18, 0, 0, 0, time.UTC)},
				{ID: "b", Time: time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)},
				{ID: "c", Time: time.Date(2026, 11, 23, 18, 0, 0, 0, time.UTC)},
				{ID: "d", Time: time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)},
			},
			want: []summary{
				{ID: "a", Keep: true, Reasons: []string{"daily 2026-11-24"}},
				{ID: "b"},
				{ID: "c", Keep: true, Reasons: []string{"daily 2026-11-23"}},
				{ID: "d", Keep: true, Reasons: []string{"daily 2026-11-23 oldest"}},
			},
		},
		{
			name:   "keep_within counts from the newest backup not in the future",
			policy: config.Keep{Within: 36 * time.Hour},
			backups: []Backup{
				{ID: "future", Time: now.Add(24 * time.Hour)},
				{ID: "newest", Time: now.Add(-10 * 24 * time.Hour)},
				{ID: "in", Time: now.Add(-11 * 24 * time.Hour)},
				{ID: "edge", Time: now.Add(-10*24*time.Hour - 36*time.Hour)}, // exactly 36h older: out
			},
			want: []summary{
				{ID: "future", Keep: true, Reasons: []string{"within 36h"}},
				{ID: "newest", Keep: true, Reasons: []string{"within 36h"}},
				{ID: "in", Keep: true, Reasons: []string{"within 36h"}},
				{ID: "edge"},
			},
		},
		{
			name:   "unlimited",
			policy: config.Keep{Last: 1, Daily: Unlimited},
			backups: []Backup{
				{ID: "a", Time: time.Date(2026, 11, 24, 18, 0, 0, 0, time.UTC)},
				{ID: "b", Time: time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)},
				{ID: "c", Time: time.Date(2020, 11, 23, 18, 0, 0, 0, time.UTC)},
			},
			want: []summary{
				{ID: "a", Keep: true, Reasons: []string{"last 1/1", "daily 2026-11-24"}},
				{ID: "b"},
				{ID: "c", Keep: true, Reasons: []string{"daily 2020-11-23"}},
			},
		},
		{
			name:   "unlimited last",
			policy: config.Keep{Last: Unlimited},
			backups: []Backup{
				{ID: "a", Time: time.Date(2026, 11, 24, 18, 0, 0, 0, time.UTC)},
				{ID: "b", Time: time.Date(2026, 11, 24, 18, 0, 0, 0, time.UTC)},
			},
			want: []summary{
				{ID: "a", Keep: true, Reasons: []string{"last 1/unlimited"}},
				{ID: "b", Keep: true, Reasons: []string{"last 2/unlimited"}},
			},
		},
		{
			// The hour 02:00-03:00 happens twice on 25 Oct 2026 in Berlin;
			// like restic, both are one hourly bucket.
			name:   "repeated DST hour is one bucket",
			policy: config.Keep{Hourly: 3},
			backups: []Backup{
				{ID: "cet-0230", Time: time.Date(2026, 10, 25, 1, 30, 0, 0, time.UTC)},
				{ID: "cest-0230", Time: time.Date(2026, 10, 25, 0, 30, 0, 0, time.UTC)},
				{ID: "cest-0130", Time: time.Date(2026, 10, 24, 23, 30, 0, 0, time.UTC)},
				{ID: "cest-0030", Time: time.Date(2026, 10, 24, 22, 30, 0, 0, time.UTC)},
			},
			want: []summary{
				{ID: "cet-0230", Keep: true, Reasons: []string{"hourly 2026-10-25 02h"}},
				{ID: "cest-0230"},
				{ID: "cest-0130", Keep: true, Reasons: []string{"hourly 2026-10-25 01h"}},
				{ID: "cest-0030", Keep: true, Reasons: []string{"hourly 2026-10-25 00h"}},
			},
		},
		{
			name:    "monthly, yearly and within reasons",
			policy:  config.Keep{Monthly: 1, Yearly: 1, Within: 90 * time.Minute},
			backups: daily(nil)[10:],
			want: []summary{
				{ID: "b24", Keep: true, Reasons: []string{"within 1h30m", "monthly 2026-11", "yearly 2026"}},
				{ID: "b23"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ds, err := Apply(tt.policy, tt.backups, now, berlin)
			if err != nil {
				t.Fatalf("Apply() = %v", err)
			}
			if diff := cmp.Diff(tt.want, summarize(ds)); diff != "" {
				t.Errorf("Apply(%+v) mismatch (-want +got):\n%s", tt.policy, diff)
			}
		})
	}
}

// TestApplyOrderIndependent shuffles the input and checks that the
// decisions do not change, including for backups made in the same second.
func TestApplyOrderIndependent(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var in []Backup
	for i := range 300 {
		tm := now.Add(-time.Duration(rng.Int64N(int64(400 * 24 * time.Hour)))).Truncate(time.Hour)
		in = append(in, Backup{ID: fmt.Sprintf("id%03d", i), Time: tm, ProvenGood: rng.IntN(20) == 0})
	}
	policy := config.Keep{Last: 3, Hourly: 10, Daily: 7, Weekly: 5, Monthly: 6, Yearly: Unlimited, Within: 48 * time.Hour}
	want, err := Apply(policy, in, now, berlin)
	if err != nil {
		t.Fatal(err)
	}
	for range 20 {
		rng.Shuffle(len(in), func(i, j int) { in[i], in[j] = in[j], in[i] })
		got, err := Apply(policy, in, now, berlin)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Fatalf("Apply(shuffled) mismatch (-first +shuffled):\n%s", diff)
		}
	}
	for i := 1; i < len(want); i++ {
		if want[i].Time.After(want[i-1].Time) {
			t.Fatalf("decision %d (%v) is newer than decision %d (%v); want newest first", i, want[i].Time, i-1, want[i-1].Time)
		}
	}
}

// TestUnlimitedIsEveryBucket checks that Unlimited behaves like a count
// larger than the number of buckets.
func TestUnlimitedIsEveryBucket(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	var in []Backup
	for i := range 200 {
		in = append(in, Backup{ID: fmt.Sprintf("x%03d", i), Time: now.Add(-time.Duration(rng.Int64N(int64(800 * 24 * time.Hour))))})
	}
	for _, set := range []func(*config.Keep, int){
		func(k *config.Keep, n int) { k.Last = n },
		func(k *config.Keep, n int) { k.Hourly = n },
		func(k *config.Keep, n int) { k.Daily = n },
		func(k *config.Keep, n int) { k.Weekly = n },
		func(k *config.Keep, n int) { k.Monthly = n },
		func(k *config.Keep, n int) { k.Yearly = n },
	} {
		var unl, big config.Keep
		set(&unl, Unlimited)
		set(&big, 10000)
		a, errA := Apply(unl, in, now, berlin)
		b, errB := Apply(big, in, now, berlin)
		if errA != nil || errB != nil {
			t.Fatal(errA, errB)
		}
		if diff := cmp.Diff(kept(b), kept(a)); diff != "" {
			t.Errorf("Apply(%+v) keeps other backups than Apply(%+v) (-10000 +unlimited):\n%s", unl, big, diff)
		}
	}
}
