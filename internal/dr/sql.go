package dr

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/opsd-dev/opsd/internal/backup/verify"
)

// maxSQLRows bounds the rows sql.query returns as outputs.
const maxSQLRows = 1000

func sqlArgs(sc *StepContext) []any {
	args, _ := sc.With["args"].([]any)
	return args
}

// sqlConnect opens dsn. pgx errors can quote the DSN; the engine redacts
// secret parameters (where DSNs come from) from every recorded error, and the
// message here never adds it.
func sqlConnect(ctx context.Context, sc *StepContext) (*pgx.Conn, error) {
	dsn := sc.String("dsn")
	if dsn == "" {
		return nil, errors.New("dsn is empty")
	}
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, errors.New("dsn: invalid PostgreSQL DSN")
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to %s/%s: %w", cfg.Host, cfg.Database, err)
	}
	return conn, nil
}

func sqlQuery(ctx context.Context, sc *StepContext) (map[string]any, error) {
	conn, err := sqlConnect(ctx, sc)
	if err != nil {
		return nil, fmt.Errorf("sql.query: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	rows, err := conn.Query(ctx, sc.String("query"), sqlArgs(sc)...)
	if err != nil {
		return nil, fmt.Errorf("sql.query: %w", err)
	}
	defer rows.Close()
	var out []any
	count := 0
	for rows.Next() {
		count++
		if len(out) >= maxSQLRows {
			continue
		}
		m, err := pgx.RowToMap(rows)
		if err != nil {
			return nil, fmt.Errorf("sql.query: %w", err)
		}
		out = append(out, jsonable(m))
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sql.query: %w", err)
	}
	return map[string]any{"rows": out, "row_count": count, "rows_affected": rows.CommandTag().RowsAffected()}, nil
}

func sqlCheck(ctx context.Context, sc *StepContext) (map[string]any, error) {
	exp, err := verify.ParseExpect(sc.String("expect"))
	if err != nil {
		return nil, fmt.Errorf("sql.check: %w", err)
	}
	conn, err := sqlConnect(ctx, sc)
	if err != nil {
		return nil, fmt.Errorf("sql.check: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, fmt.Errorf("sql.check: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	var v any
	if err := tx.QueryRow(ctx, sc.String("query"), sqlArgs(sc)...).Scan(&v); err != nil {
		return nil, fmt.Errorf("sql.check: %w", err)
	}
	out := map[string]any{"value": jsonable(v)}
	ok, err := exp.Match(v)
	if err != nil {
		return out, fmt.Errorf("sql.check: %w", err)
	}
	if !ok {
		return out, fmt.Errorf("sql.check: value %v, want %s", jsonable(v), exp)
	}
	return out, nil
}

// jsonable turns database values into what JSON and expressions handle.
func jsonable(v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			x[k] = jsonable(e)
		}
		return x
	case []byte:
		return string(x)
	case int32:
		return int(x)
	case int64:
		return int(x)
	case int16:
		return int(x)
	case float32:
		return float64(x)
	case nil, string, bool, int, float64:
		return x
	case fmt.Stringer:
		return x.String()
	default:
		if vv, ok := x.(interface{ Value() (any, error) }); ok {
			if r, err := vv.Value(); err == nil {
				return jsonable(r)
			}
		}
		return fmt.Sprint(x)
	}
}
