package verify

import (
	"encoding/json"
	"errors"
	"math"
	"math/big"
	"strings"
	"testing"
)

func TestParseExpect(t *testing.T) {
	tests := []struct {
		give string
		want string // canonical form; "" means an error
	}{
		{"> 0", "> 0"},
		{">0", "> 0"},
		{"  >=   1000 ", ">= 1000"},
		{"= 42", "= 42"},
		{"== 42", "= 42"},
		{"!= 0", "!= 0"},
		{"< 5", "< 5"},
		{"<= 5", "<= 5"},
		{"> -1", "> -1"},
		{">= 0.5", ">= 0.5"},
		{"= -12.250", "= -12.250"},
		{"", ""},
		{"42", ""},
		{">", ""},
		{"> ", ""},
		{"=> 5", ""},
		{"=< 5", ""},
		{"<> 5", ""},
		{"=== 5", ""},
		{"! 5", ""},
		{"> abc", ""},
		{"> 1e3", ""},
		{"> 0x10", ""},
		{"> 1/2", ""},
		{"> .5", ""},
		{"> 5.", ""},
		{"> +5", ""},
		{"> 1 2", ""},
		{"> 0 or 1=1", ""},
		{"gt 0", ""},
	}
	for _, tt := range tests {
		got, err := ParseExpect(tt.give)
		if tt.want == "" {
			if err == nil {
				t.Errorf("ParseExpect(%q) = %q, want an error", tt.give, got)
			} else if !strings.Contains(err.Error(), "want an operator") {
				t.Errorf("ParseExpect(%q) error = %q, want it to explain the syntax", tt.give, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseExpect(%q): %v", tt.give, err)
			continue
		}
		if got.String() != tt.want {
			t.Errorf("ParseExpect(%q) = %q, want %q", tt.give, got, tt.want)
		}
	}
}

func TestExpectMatch(t *testing.T) {
	tests := []struct {
		expect  string
		give    any
		want    bool
		wantErr string
	}{
		{"> 0", int64(3), true, ""},
		{"> 0", int64(0), false, ""},
		{"> 0", int32(-1), false, ""},
		{">= 1000", 1000, true, ""},
		{">= 1000", 999, false, ""},
		{">= 1000", "999.999", false, ""},
		{">= 1000", "1000.000", true, ""},
		{"= 42", "42", true, ""},
		{"== 42", "42.0", true, ""},
		{"= 42", uint8(42), true, ""},
		{"= 42", "3", false, ""},
		{"!= 0", "0", false, ""},
		{"!= 0", "-0.0", false, ""},
		{"!= 0", int16(7), true, ""},
		{"< 5", 4.999, true, ""},
		{"< 5", float32(5), false, ""},
		{"<= 5", uint64(5), true, ""},
		{"<= 5", uint64(math.MaxUint64), false, ""},
		// Exact: no float rounding between 0.1+0.2 and 0.3 in text form.
		{"= 0.3", "0.3", true, ""},
		{"> 0.29999999999999999", "0.3", true, ""},
		{"> 10.3", "10.333333333333334", true, ""},
		{"= 1000", "1e3", true, ""},
		{"= 1000", "1E+03", true, ""},
		{"> 0", " 12 ", true, ""},
		{"> 1000000", "Infinity", true, ""},
		{"< -1000000", "-Infinity", true, ""},
		{"> 0", math.Inf(1), true, ""},
		{"> 0", math.Inf(-1), false, ""},
		{"= 1", true, true, ""},
		{"= 0", false, true, ""},
		{"> 0", false, false, ""},
		{"= 42", json.Number("42"), true, ""},
		{"= 42", big.NewInt(42), true, ""},
		{"= 0.5", big.NewRat(1, 2), true, ""},
		{"= 42", []byte("42"), true, ""},
		{"> 0", nil, false, "NULL"},
		{"> 0", (*big.Int)(nil), false, "NULL"},
		{"> 0", "NaN", false, "NaN"},
		{"> 0", math.NaN(), false, "NaN"},
		{"> 0", "abc", false, "not a number"},
		{"> 0", "", false, "not a number"},
		{"> 0", "1/2", false, "not a number"},
		{"> 0", "0x10", false, "not a number"},
		{"> 0", "$1.00", false, "not a number"},
		{"> 0", "t", false, "not a number"},
		{"> 0", "1e999999999", false, "out of range"},
		{"> 0", struct{}{}, false, "not a number"},
		{"> 0", []int{1}, false, "not a number"},
	}
	for _, tt := range tests {
		e, err := ParseExpect(tt.expect)
		if err != nil {
			t.Fatal(err)
		}
		got, err := e.Match(tt.give)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseExpect(%q).Match(%#v) = %v, %v; want error containing %q", tt.expect, tt.give, got, err, tt.wantErr)
			}
			if got {
				t.Errorf("ParseExpect(%q).Match(%#v) matched alongside an error", tt.expect, tt.give)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseExpect(%q).Match(%#v) = %v, %v; want %v", tt.expect, tt.give, got, err, tt.want)
		}
	}
	if _, err := (Expect{}).Match(1); err == nil {
		t.Error("Expect{}.Match(1) = nil error, want one")
	}
	if _, err := (Expect{}).Match(nil); errors.Is(err, ErrNull) {
		t.Error("Expect{}.Match(nil): the empty expectation must be reported first")
	}
}
