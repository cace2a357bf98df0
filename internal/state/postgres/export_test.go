package postgres

import (
	"context"
	"fmt"
	"log/slog"
)

// OpenAtVersion opens dsn like Open but applies only the first version
// migrations (all of them when version is 0), to build databases an older
// opsd would have left behind.
func OpenAtVersion(ctx context.Context, dsn string, logger *slog.Logger, version int) (*Store, error) {
	ms, err := Migrations()
	if err != nil {
		return nil, err
	}
	if version < 0 || version > len(ms) {
		return nil, fmt.Errorf("no schema version %d", version)
	}
	if version > 0 {
		ms = ms[:version]
	}
	return open(ctx, dsn, logger, ms)
}
