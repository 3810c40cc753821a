// Package cli holds what the example programs share: parsing their flags
// with a command's exit statuses, and opening the one queue they work on
// under a context that SIGINT or SIGTERM cancels.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/zcfabric/zc"
)

// Parse parses args with fs. ok is false when the program should exit now
// with code: 0 after -h or --help, 2 after a flag error or when need
// returns a message (printed before the usage; need may be nil).
func Parse(fs *flag.FlagSet, args []string, need func() string) (code int, ok bool) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0, false
		}
		return 2, false
	}
	if need != nil {
		if msg := need(); msg != "" {
			fmt.Fprintln(fs.Output(), msg)
			fs.Usage()
			return 2, false
		}
	}
	return 0, true
}

// Open opens the queue name (zc.OpenWait: waiting up to wait for its
// cluster to appear; with force, taking over an end another party holds)
// under a context that SIGINT and SIGTERM cancel. The caller calls stop
// when done, after closing q; on error Open has already.
func Open(name string, wait time.Duration, force bool, opts ...zc.OpenOption) (ctx context.Context, stop context.CancelFunc, q *zc.Queue, err error) {
	if force {
		opts = append(opts, zc.Force())
	}
	ctx, stop = signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	q, err = zc.OpenWait(ctx, name, wait, opts...)
	if err != nil {
		stop()
		return nil, nil, nil, err
	}
	if path := os.Getenv("ZC_CPUPROFILE"); path != "" {
		stop = profile(path, stop)
	}
	return ctx, stop, q, nil
}

// profile starts a CPU profile into path ($ZC_CPUPROFILE: for measuring
// the tools, go tool pprof reads it) and returns stop extended to end it.
func profile(path string, stop context.CancelFunc) context.CancelFunc {
	f, err := os.Create(path)
	if err == nil {
		err = pprof.StartCPUProfile(f)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "cpu profile: %v\n", err)
		return stop
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
		stop()
	}
}
