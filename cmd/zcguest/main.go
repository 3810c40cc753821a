// Command zcguest inspects zcfabric regions from inside a KVM/QEMU guest:
// the ivshmem-plain devices the host hot-plugged, found through sysfs with
// no kernel module.
//
// Usage:
//
//	zcguest list [--sysfs DIR] [--json]
//	zcguest wait -c ID [--timeout D] [--gone] [--sysfs DIR]
//	zcguest sum -c ID [--len N] [--json] [--sysfs DIR]
//	zcguest ctl list [--json] [--timeout D]
//	zcguest ctl plug -c ID [--queues Q,Q] [--no-wait] [--timeout D]
//
// Run "zcguest help" or "zcguest COMMAND -h" for details.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
)

const usage = `zcguest inspects zcfabric regions plugged into this VM.

The host hot-plugs each region as an ivshmem-plain PCI device (1af4:1110);
zcguest finds them under /sys/bus/pci/devices, maps BAR2 (resource2) and reads
the region header. No kernel module is needed. Run as root.

Usage:
  zcguest list [--sysfs DIR] [--json]
        List ivshmem devices: PCI address, BAR2 size and, when the region
        starts with the zcfabric magic, its cluster id.
  zcguest wait -c ID [--timeout D] [--gone] [--sysfs DIR]
        Block until a device carrying cluster ID is plugged and its BAR is
        assigned (or, with --gone, until none is left). Exits 1 on timeout.
  zcguest sum -c ID [--len N] [--json] [--sysfs DIR]
        Print the CRC-32 (IEEE) of the first N bytes of cluster ID's region
        (default: all of it). Tests use it to prove the guest sees the bytes
        the host wrote.

  zcguest ctl list [--json] [--timeout D]
        Ask the host, over the zc.ctl virtio-serial control channel, which
        clusters it offers to this VM.
  zcguest ctl plug -c ID [--queues Q,Q] [--no-wait] [--timeout D]
        Ask the host to plug cluster ID's region; wait until it is visible.
  zcguest wait -c ID --gone --notice [--on-notice CMD] [--dev DIR]
        While waiting, listen on the control channel: print each unplug
        notice for ID, run CMD (sh -c, e.g. to stop readers), answer ready.
        --on-notice and --dev need --notice (and --notice needs --gone).

The control channel needs the virtio_console module and a port named zc.ctl
(/sys/class/virtio-ports/vportNpM/name); zchost run --ctl provides one.

Run "zcguest COMMAND -h" for a command's flags.
`

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}

// run executes one zcguest command and returns the exit status: 0 on
// success, 1 on failure, 2 on a usage error.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "list":
		err = cmdList(args[1:], stdout, stderr)
	case "wait":
		err = cmdWait(ctx, args[1:], stdout, stderr)
	case "sum":
		err = cmdSum(args[1:], stdout, stderr)
	case "ctl":
		err = cmdCtl(ctx, args[1:], stdout, stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "zcguest: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2
	}
	name := args[0]
	if name == "ctl" && len(args) > 1 {
		name += " " + args[1] // ctl list, ctl plug: say which failed
	}
	fmt.Fprintf(stderr, "zcguest %s: %v\n", name, err)
	return 1
}

// errUsage marks bad command lines; the flag package has printed why.
var errUsage = errors.New("usage")

// newFlags returns a flag set for one subcommand that writes its help to
// stderr and returns errors instead of exiting.
func newFlags(name, synopsis string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("zcguest "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: zcguest %s\n\n", synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// usagef reports a bad command line: it prints fs's command name and the
// message, then fs's help, and returns errUsage.
func usagef(fs *flag.FlagSet, format string, args ...any) error {
	fmt.Fprintf(fs.Output(), "%s: %s\n", fs.Name(), fmt.Sprintf(format, args...))
	fs.Usage()
	return errUsage
}

// isSet reports whether the flag called name was given on fs's command line.
func isSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) {
		if f.Name == name {
			set = true
		}
	})
	return set
}

// parse parses args and turns the flag package's errors into errUsage.
func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "unexpected arguments: %q\n", fs.Args())
		fs.Usage()
		return errUsage
	}
	return nil
}
