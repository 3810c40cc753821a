// Package cli holds what the example programs share: parsing their flags
// with a command's exit statuses, and opening the one queue they work on
// under a context that SIGINT or SIGTERM cancels.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"os/signal"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/zcfabric/zc"
)

// Parse parses args with fs. ok is false when the program should exit now
// with code: 0 after -h or --help, 2 after a flag error, an argument left
// over, or when need returns a message (printed before the usage; need
// may be nil). The tools take flags only, and the flag package stops at
// the first argument that is not one: the flags after it would be ignored
// unread, so that argument is an error, named in the message.
func Parse(fs *flag.FlagSet, args []string, need func() string) (code int, ok bool) {
	return parse(fs, args, nil, need)
}

// ParseQueue is Parse for a tool that reads one queue, named by its -i
// flag (queue): the name may also come as the one argument, before or
// after the flags, "zcount zc:99@0 -n 10" as "zcount -i zc:99@0 -n 10".
func ParseQueue(fs *flag.FlagSet, args []string, queue *string, need func() string) (code int, ok bool) {
	return parse(fs, args, queue, need)
}

func parse(fs *flag.FlagSet, args []string, queue *string, need func() string) (code int, ok bool) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0, false
		}
		return 2, false
	}
	if queue != nil && *queue == "" && fs.NArg() > 0 && strings.HasPrefix(fs.Arg(0), "zc:") {
		*queue = fs.Arg(0)
		args = fs.Args()[1:]
		if err := fs.Parse(args); err != nil {
			return 2, false
		}
	}
	if fs.NArg() > 0 {
		return Usage(fs, leftover(fs, args)), false
	}
	if need != nil {
		if msg := need(); msg != "" {
			return Usage(fs, msg), false
		}
	}
	return 0, true
}

// Usage prints msg and then fs's usage to fs's output, and returns 2, the
// exit status of a usage error.
func Usage(fs *flag.FlagSet, msg string) int {
	fmt.Fprintln(fs.Output(), msg)
	fs.Usage()
	return 2
}

// leftover is the message for the first argument fs.Parse left in args,
// with a hint when the flag before it is a boolean one ("--json false":
// a boolean flag's value goes after "=").
func leftover(fs *flag.FlagSet, args []string) string {
	i := len(args) - fs.NArg()
	msg := fmt.Sprintf("%s: unexpected argument %q: every option is a flag (-x VALUE, --name=VALUE); the flags after it were not read", fs.Name(), args[i])
	if i > 0 && isBoolFlag(fs, args[i-1]) {
		msg += fmt.Sprintf("; a boolean flag takes its value after \"=\": %s=%s", args[i-1], args[i])
	}
	return msg
}

// isBoolFlag reports whether arg is a boolean flag of fs without a value
// ("-json", "--json").
func isBoolFlag(fs *flag.FlagSet, arg string) bool {
	name, ok := strings.CutPrefix(arg, "-")
	name = strings.TrimPrefix(name, "-")
	if !ok || name == "" || strings.Contains(name, "=") {
		return false
	}
	f := fs.Lookup(name)
	if f == nil {
		return false
	}
	b, ok := f.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

// FlagName is how the tools write flag name in messages: -x for a one
// letter name, --name for a longer one.
func FlagName(name string) string {
	if len(name) == 1 {
		return "-" + name
	}
	return "--" + name
}

// NotNegative returns a usage message for the first of the named flags of
// fs (an int, a float or a duration) whose value is negative, or for a
// float, not a finite number; "" when none is. A count, a rate, a wait or
// an interval below 0 means nothing, and 0 keeps the meaning each flag's
// help gives it.
func NotNegative(fs *flag.FlagSet, names ...string) string {
	for _, name := range names {
		f := fs.Lookup(name)
		if f == nil {
			panic("cli.NotNegative: no flag " + name) // a mistake in the tool
		}
		bad, want := false, "0 or more"
		switch v := f.Value.(flag.Getter).Get().(type) {
		case int:
			bad = v < 0
		case int64:
			bad = v < 0
		case time.Duration:
			bad = v < 0
		case float64:
			bad, want = v < 0 || math.IsNaN(v) || math.IsInf(v, 0), "a finite number, 0 or more"
		default:
			panic(fmt.Sprintf("cli.NotNegative: flag %s is a %T", name, v))
		}
		if bad {
			return fmt.Sprintf("%s: %s %s: want %s", fs.Name(), FlagName(name), f.Value, want)
		}
	}
	return ""
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
