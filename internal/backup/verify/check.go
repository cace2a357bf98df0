package verify

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
)

// Check is one SQL query whose single value must satisfy Expect. It has
// the fields of config.Check, so verify.Check(c) converts one.
type Check struct {
	SQL    string `json:"sql"`
	Expect string `json:"expect"`
}

// DefaultCheckTimeout is the statement timeout of a check when none is given.
const DefaultCheckTimeout = 5 * time.Minute

// RunCheck runs c on conn in its own READ ONLY transaction with
// statement_timeout set to timeout (DefaultCheckTimeout when <= 0), then
// rolls the transaction back. The query must be a single statement (the
// extended protocol refuses several) returning exactly one row with one
// column. Every failure — invalid SQL, a timeout, NULL, a value that is
// not a number, zero or several rows or columns — is a failed check with
// its reason in Error, never a pass.
func RunCheck(ctx context.Context, conn *pgx.Conn, c Check, timeout time.Duration) CheckResult {
	start := time.Now()
	res := CheckResult{SQL: c.SQL, Expect: c.Expect}
	got, ok, err := runCheck(ctx, conn, c, timeout)
	res.Got, res.OK, res.Duration = got, ok, time.Since(start)
	if err != nil {
		res.OK = false
		res.Error = err.Error()
	} else if !ok {
		res.Error = fmt.Sprintf("got %s, want %s", got, c.Expect)
	}
	return res
}

func runCheck(ctx context.Context, conn *pgx.Conn, c Check, timeout time.Duration) (got string, ok bool, err error) {
	exp, err := ParseExpect(c.Expect)
	if err != nil {
		return "", false, err
	}
	if timeout <= 0 {
		timeout = DefaultCheckTimeout
	}
	// The server enforces the timeout; the context is a backstop for a
	// server that stops answering.
	ctx, cancel := context.WithTimeout(ctx, timeout+30*time.Second)
	defer cancel()
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{AccessMode: pgx.ReadOnly})
	if err != nil {
		return "", false, fmt.Errorf("begin read-only transaction: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	// SET takes no parameters; the value is an integer we format.
	if _, err := tx.Exec(ctx, fmt.Sprintf("SET LOCAL statement_timeout = %d", max(timeout.Milliseconds(), 1))); err != nil {
		return "", false, fmt.Errorf("set statement_timeout: %w", err)
	}
	v, got, err := queryOne(ctx, tx, c.SQL)
	if err != nil {
		return got, false, err
	}
	ok, err = exp.Match(v)
	return got, ok, err
}

// queryOne returns the single value of sql, decoded from PostgreSQL's text
// form: a bool for boolean columns, nil for NULL, the text otherwise.
func queryOne(ctx context.Context, tx pgx.Tx, sql string) (any, string, error) {
	rows, err := tx.Query(ctx, sql, pgx.QueryResultFormats{pgx.TextFormatCode})
	if err != nil {
		return nil, "", err
	}
	defer rows.Close()
	var (
		v     any
		got   string
		nrows int
		ncols int
	)
	for rows.Next() {
		nrows++
		if nrows > 1 {
			break
		}
		fields := rows.FieldDescriptions()
		raw := rows.RawValues()
		if ncols = len(fields); ncols != 1 {
			break
		}
		switch {
		case raw[0] == nil:
			v, got = nil, "NULL"
		case fields[0].DataTypeOID == pgtype.BoolOID:
			b := string(raw[0]) == "t"
			v, got = b, fmt.Sprint(b)
		default:
			got = string(raw[0])
			v = got
		}
	}
	rows.Close()
	// An error (syntax, permission, timeout, read-only) wins over the
	// shape of whatever came before it.
	if err := rows.Err(); err != nil {
		return nil, "", err
	}
	if nrows == 0 {
		ncols = len(rows.FieldDescriptions())
	}
	if ncols != 1 {
		return nil, "", fmt.Errorf("the query returned %d columns, want exactly 1", ncols)
	}
	switch {
	case nrows == 0:
		return nil, "", errors.New("the query returned no rows, want exactly 1")
	case nrows > 1:
		return nil, "", errors.New("the query returned more than 1 row, want exactly 1")
	}
	return v, got, nil
}
