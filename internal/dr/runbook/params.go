package runbook

import (
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"

	"github.com/opsd-dev/opsd/internal/config"
)

// ResolveParams checks the parameters a run was started with and returns
// the typed values expressions see (Env.Params): string for string, secret
// and enum parameters, int and bool for the others, defaults filled in.
// A given value may be a string (from --param k=v or a schedule) or, from
// JSON, a bool or a whole number. Unknown and missing required parameters
// are errors; every problem is reported at once, never quoting a value.
func (rb *Runbook) ResolveParams(given map[string]any) (map[string]any, error) {
	out := make(map[string]any, len(rb.Params))
	var errs []error
	for _, name := range slices.Sorted(maps.Keys(given)) {
		if rb.Param(name) == nil {
			errs = append(errs, fmt.Errorf("unknown parameter %q%s", name, config.Suggest(name, rb.paramNames())))
		}
	}
	for _, prm := range rb.Params {
		raw, ok := given[prm.Name]
		if !ok || raw == nil {
			switch {
			case prm.Default != nil:
				out[prm.Name] = prm.Default
			case prm.Required:
				errs = append(errs, fmt.Errorf("parameter %q is required", prm.Name))
			case prm.Type == TypeInt:
				out[prm.Name] = 0
			case prm.Type == TypeBool:
				out[prm.Name] = false
			default:
				out[prm.Name] = ""
			}
			continue
		}
		v, err := prm.Convert(raw)
		if err != nil {
			errs = append(errs, fmt.Errorf("parameter %q: %w", prm.Name, err))
			continue
		}
		out[prm.Name] = v
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}

func (rb *Runbook) paramNames() []string {
	names := make([]string, 0, len(rb.Params))
	for _, p := range rb.Params {
		names = append(names, p.Name)
	}
	return names
}

// Convert turns a given value into the parameter's type. Errors never
// quote the value, which may be a secret.
func (p *Param) Convert(raw any) (any, error) {
	switch p.Type {
	case TypeInt:
		switch x := raw.(type) {
		case int:
			return x, nil
		case int64:
			if x >= math.MinInt && x <= math.MaxInt {
				return int(x), nil
			}
		case float64:
			if x == math.Trunc(x) && math.Abs(x) < 1<<53 {
				return int(x), nil
			}
		case string:
			if i, err := strconv.Atoi(strings.TrimSpace(x)); err == nil {
				return i, nil
			}
		}
		return nil, errors.New("want an integer")
	case TypeBool:
		switch x := raw.(type) {
		case bool:
			return x, nil
		case string:
			if b, err := strconv.ParseBool(strings.TrimSpace(x)); err == nil {
				return b, nil
			}
		}
		return nil, errors.New("want true or false")
	}
	s, ok := raw.(string)
	if !ok {
		return nil, errors.New("want a string")
	}
	if p.Type == TypeEnum && !slices.Contains(p.Values, s) {
		return nil, fmt.Errorf("want one of %s", strings.Join(p.Values, ", "))
	}
	return s, nil
}

// Secrets returns the values of the secret parameters in params (as
// ResolveParams returns them), for the engine to redact wherever output
// of a run is recorded.
func (rb *Runbook) Secrets(params map[string]any) []string {
	var out []string
	for _, p := range rb.Params {
		if s, ok := params[p.Name].(string); ok && p.Type == TypeSecret && s != "" {
			out = append(out, s)
		}
	}
	return out
}

// ExecEnv returns the OPSD_PARAM_<NAME>=value environment of exec steps,
// sorted by name: the only way parameters reach a command.
func (rb *Runbook) ExecEnv(params map[string]any) []string {
	var out []string
	for _, p := range rb.Params {
		if v, ok := params[p.Name]; ok {
			out = append(out, ParamEnvName(p.Name)+"="+render(v))
		}
	}
	slices.Sort(out)
	return out
}
