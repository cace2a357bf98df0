// Command appendstress opens an audit log and appends from many concurrent
// writers until killed, printing "<index> <writer> <seq>" for every append
// only after it was acknowledged. The kill -9 test in package audit runs it.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/opsd-dev/opsd/internal/action"
	"github.com/opsd-dev/opsd/internal/audit"
	"github.com/opsd-dev/opsd/internal/signing"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "appendstress:", err)
		os.Exit(1)
	}
}

func run() error {
	dir := flag.String("dir", "", "audit log directory")
	keyFile := flag.String("key", "", "signing key file")
	writers := flag.Int("writers", 64, "concurrent writers")
	segSize := flag.Int64("segment-size", 256<<10, "segment size")
	flag.Parse()
	key, err := signing.Load(*keyFile)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	l, err := audit.Open(ctx, *dir, audit.Options{Key: key, SegmentSize: *segSize, CheckpointInterval: 20 * time.Millisecond})
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		l.Run(ctx)
	}()
	errs := make(chan error, *writers)
	for w := range *writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for seq := 0; ctx.Err() == nil; seq++ {
				idx, err := l.Record(ctx, action.Record{
					Request: action.Request{Actor: action.Actor{Kind: action.ActorCLI, Name: "stress"},
						Action: "stress.append", Object: fmt.Sprintf("writer/%d", w), Params: map[string]any{"seq": seq}},
					Time: time.Now(), Outcome: action.Accepted, AcceptedIndex: -1,
				})
				if err != nil {
					errs <- err
					return
				}
				// One write per line: atomic on a pipe, and only after the ack.
				if _, err := fmt.Fprintf(os.Stdout, "%d %d %d\n", idx, w, seq); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	cerr := l.Close()
	if err := <-errs; err != nil && ctx.Err() == nil {
		return err
	}
	return cerr
}
