// Command zchost is the zcfabric host agent: it creates a cluster of
// shared-memory queues, fills it from capture sources (a generator, pcap
// files, AF_XDP, AF_PACKET), balances packets over the queues, and exports
// them to other processes (zc:ID@Q) and to running VMs (hot-plugged over
// QMP).
//
// Subcommands register themselves in init() with register(); run
// "zchost help" for the list.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
)

type command struct {
	summary string
	run     func(args []string) error
}

var commands = map[string]command{}

func register(name, summary string, run func(args []string) error) {
	commands[name] = command{summary: summary, run: run}
}

// errUsage marks a command-line mistake: exit status 2, usage printed.
var errUsage = errors.New("usage")

func usage(w io.Writer) {
	fmt.Fprintf(w, `zchost — the zcfabric host agent

Usage: zchost <command> [flags]

Commands:
`)
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-8s %s\n", n, commands[n].summary)
	}
	fmt.Fprintf(w, `
Run "zchost <command> --help" for a command's flags.

Quick start:
  zchost run -c 99 -i gen:len=64,count=1000000 -n 2 --lossless
  zcount -i zc:99@0        # in another terminal (or inside a VM)
  zchost stats -c 99
`)
}

func main() {
	if len(os.Args) < 2 || os.Args[1] == "help" || os.Args[1] == "-h" || os.Args[1] == "--help" {
		usage(os.Stdout)
		if len(os.Args) < 2 {
			os.Exit(2)
		}
		return
	}
	c, ok := commands[os.Args[1]]
	if !ok {
		fmt.Fprintf(os.Stderr, "zchost: unknown command %q\n\n", os.Args[1])
		usage(os.Stderr)
		os.Exit(2)
	}
	if err := c.run(os.Args[2:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		if errors.Is(err, errUsage) {
			fmt.Fprintf(os.Stderr, "zchost %s: %v\n", os.Args[1], err)
			os.Exit(2)
		}
		fmt.Fprintf(os.Stderr, "zchost %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

// logFlags adds the logging flags every long-running command has.
type logFlags struct {
	level string
	json  bool
}

func (l *logFlags) add(fs *flag.FlagSet) {
	l.level = "info"
	fs.Func("log-level", "log `level`: trace, debug, info, warn, error or off (default info)", func(v string) error {
		if hclog.LevelFromString(v) == hclog.NoLevel {
			return fmt.Errorf("%q: want trace, debug, info, warn, error or off", v)
		}
		l.level = v
		return nil
	})
	fs.BoolVar(&l.json, "log-json", false, "log as JSON lines")
}

func (l *logFlags) logger(name string) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{
		Name: name, Level: hclog.LevelFromString(l.level), JSONFormat: l.json, Output: os.Stderr,
	})
}

// clusterID is a cluster id flag: 0..4294967295 (a larger number is an
// error, not wrapped around).
type clusterID uint32

func (c *clusterID) String() string { return strconv.FormatUint(uint64(*c), 10) }
func (c *clusterID) Set(v string) error {
	n, err := strconv.ParseUint(v, 0, 32)
	if err != nil {
		return fmt.Errorf("%q: cluster ids are 0..%d", v, uint32(math.MaxUint32))
	}
	*c = clusterID(n)
	return nil
}

// negative is the usage error of flag name given a negative value v (nil
// when v >= 0). cmp.Or of several returns the first.
func negative[T int | float64 | time.Duration](name string, v T) error {
	if v < 0 {
		return fmt.Errorf("%w: %s %v: must not be negative", errUsage, name, v)
	}
	return nil
}

// parseAll parses a command's args with fs: a flag error (which fs has
// printed, with the usage) is a usage error, and so is an argument left
// after the flags (the flag package stops at the first one, so the flags
// after it would be ignored).
func parseAll(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected argument %q (every option is a flag; see zchost %s --help)", errUsage, fs.Arg(0), strings.TrimPrefix(fs.Name(), "zchost "))
	}
	return nil
}

// newFlags returns a flag set whose --help prints the command's usage.
func newFlags(name, synopsis string) *flag.FlagSet {
	fs := flag.NewFlagSet("zchost "+name, flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: zchost %s %s\n\nFlags:\n", name, synopsis)
		printFlags(fs)
	}
	return fs
}

// printFlags prints a flag set's flags, each alias group (-c and
// --cluster: same usage, same default) once: "-c, --cluster id".
func printFlags(fs *flag.FlagSet) {
	type group struct {
		names []string
		f     *flag.Flag
	}
	var groups []*group
	byUsage := map[string]*group{}
	fs.VisitAll(func(f *flag.Flag) {
		key := f.Usage + "\x00" + f.DefValue
		if g, ok := byUsage[key]; ok {
			g.names = append(g.names, f.Name)
			return
		}
		g := &group{names: []string{f.Name}, f: f}
		byUsage[key] = g
		groups = append(groups, g)
	})
	w := fs.Output()
	for _, g := range groups {
		sort.Slice(g.names, func(i, j int) bool { return len(g.names[i]) < len(g.names[j]) })
		var names []string
		for _, n := range g.names {
			if len(n) == 1 {
				names = append(names, "-"+n)
			} else {
				names = append(names, "--"+n)
			}
		}
		arg, usage := flag.UnquoteUsage(g.f)
		line := "  " + strings.Join(names, ", ")
		if arg != "" {
			line += " " + arg
		}
		fmt.Fprintln(w, line)
		usage = strings.ReplaceAll(usage, "\n", "\n    \t")
		if d := g.f.DefValue; d != "" && d != "false" && d != "0" && d != "0s" && d != "[]" {
			usage += fmt.Sprintf(" (default %s)", d)
		}
		fmt.Fprintf(w, "    \t%s\n", usage)
	}
}
