package verify

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/big"
	"regexp"
	"strconv"
	"strings"
)

// ErrNull: a check query returned NULL, which satisfies no expectation.
var ErrNull = errors.New("the query returned NULL, not a number")

// Expect is a parsed expectation such as "> 0" or "= 42". The zero Expect
// matches nothing.
type Expect struct {
	op  string // >, >=, <, <=, =, != ("==" is stored as "=")
	raw string // the number as written
	num *big.Rat
}

// The same grammar config validation accepts (internal/config expectRE).
var expectRE = regexp.MustCompile(`^(>=|<=|==|!=|>|<|=)\s*(-?[0-9]+(?:\.[0-9]+)?)$`)

// ParseExpect parses an operator (>, >=, <, <=, =, ==, !=) followed by an
// integer or decimal number, optionally negative: "> 0", ">= 1000",
// "== 42", "!= -1.5". Spaces around the operator are optional.
func ParseExpect(s string) (Expect, error) {
	m := expectRE.FindStringSubmatch(strings.TrimSpace(s))
	if m == nil {
		return Expect{}, fmt.Errorf("expect %q: want an operator (>, >=, <, <=, =, ==, !=) and an integer or decimal number, like \"> 0\"", s)
	}
	num, ok := new(big.Rat).SetString(m[2])
	if !ok {
		return Expect{}, fmt.Errorf("expect %q: %q is not a number", s, m[2])
	}
	op := m[1]
	if op == "==" {
		op = "="
	}
	return Expect{op: op, raw: m[2], num: num}, nil
}

// String returns the expectation in canonical form, like "= 42".
func (e Expect) String() string {
	if e.num == nil {
		return ""
	}
	return e.op + " " + e.raw
}

// Match reports whether v, the single value a check query returned,
// satisfies e. v may be any Go integer or float type, *big.Int, *big.Rat,
// json.Number, a bool (true is 1, false is 0), or a string or []byte
// holding a number as PostgreSQL prints it (including "Infinity" and
// "-Infinity"). NULL (nil) is ErrNull; NaN and anything that is not a
// number are errors too, never a match.
func (e Expect) Match(v any) (bool, error) {
	if e.num == nil {
		return false, errors.New("empty expectation")
	}
	got, err := toNumber(v)
	if err != nil {
		return false, err
	}
	c := got.cmp(e.num)
	switch e.op {
	case ">":
		return c > 0, nil
	case ">=":
		return c >= 0, nil
	case "<":
		return c < 0, nil
	case "<=":
		return c <= 0, nil
	case "=":
		return c == 0, nil
	case "!=":
		return c != 0, nil
	}
	return false, fmt.Errorf("unknown operator %q", e.op)
}

// number is a rational or an infinity (inf = ±1).
type number struct {
	inf int
	r   *big.Rat
}

func (n number) cmp(x *big.Rat) int {
	if n.inf != 0 {
		return n.inf
	}
	return n.r.Cmp(x)
}

// PostgreSQL's text forms of int, numeric and float values.
var numberRE = regexp.MustCompile(`^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE]([+-]?[0-9]+))?$`)

// maxExponent bounds a textual exponent: float8 needs 308 (324 for
// subnormals); a text column saying 1e999999999 must not make big.Rat
// allocate gigabytes.
const maxExponent = 1000

func toNumber(v any) (number, error) {
	r := new(big.Rat)
	switch x := v.(type) {
	case nil:
		return number{}, ErrNull
	case bool:
		if x {
			return number{r: r.SetInt64(1)}, nil
		}
		return number{r: r}, nil
	case int:
		return number{r: r.SetInt64(int64(x))}, nil
	case int8:
		return number{r: r.SetInt64(int64(x))}, nil
	case int16:
		return number{r: r.SetInt64(int64(x))}, nil
	case int32:
		return number{r: r.SetInt64(int64(x))}, nil
	case int64:
		return number{r: r.SetInt64(x)}, nil
	case uint:
		return number{r: r.SetUint64(uint64(x))}, nil
	case uint8:
		return number{r: r.SetUint64(uint64(x))}, nil
	case uint16:
		return number{r: r.SetUint64(uint64(x))}, nil
	case uint32:
		return number{r: r.SetUint64(uint64(x))}, nil
	case uint64:
		return number{r: r.SetUint64(x)}, nil
	case float32:
		return fromFloat(float64(x))
	case float64:
		return fromFloat(x)
	case *big.Int:
		if x == nil {
			return number{}, ErrNull
		}
		return number{r: r.SetInt(x)}, nil
	case *big.Rat:
		if x == nil {
			return number{}, ErrNull
		}
		return number{r: r.Set(x)}, nil
	case json.Number:
		return parseNumber(string(x))
	case string:
		return parseNumber(x)
	case []byte:
		return parseNumber(string(x))
	}
	return number{}, fmt.Errorf("a value of type %T is not a number", v)
}

func fromFloat(f float64) (number, error) {
	switch {
	case math.IsNaN(f):
		return number{}, errors.New("the value is NaN, not a number")
	case math.IsInf(f, 1):
		return number{inf: 1}, nil
	case math.IsInf(f, -1):
		return number{inf: -1}, nil
	}
	return number{r: new(big.Rat).SetFloat64(f)}, nil
}

func parseNumber(s string) (number, error) {
	t := strings.TrimSpace(s)
	switch strings.ToLower(t) {
	case "infinity", "+infinity", "inf", "+inf":
		return number{inf: 1}, nil
	case "-infinity", "-inf":
		return number{inf: -1}, nil
	case "nan":
		return number{}, errors.New("the value is NaN, not a number")
	}
	if m := numberRE.FindStringSubmatch(t); m != nil {
		if exp, err := strconv.Atoi(m[1]); m[1] != "" && (err != nil || exp > maxExponent || exp < -maxExponent) {
			return number{}, fmt.Errorf("the value %q is out of range", t)
		}
		if r, ok := new(big.Rat).SetString(t); ok {
			return number{r: r}, nil
		}
	}
	const maxShown = 64
	if len(t) > maxShown {
		t = t[:maxShown] + "…"
	}
	return number{}, fmt.Errorf("the value %q is not a number", t)
}
