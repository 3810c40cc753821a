package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/zcfabric/zc/guest"
	"github.com/zcfabric/zc/virtio"
)

// ctlFlags are the flags every command using the control channel has.
type ctlFlags struct {
	sysfs, dev string
	timeout    time.Duration
}

func (c *ctlFlags) add(fs *flag.FlagSet) {
	fs.StringVar(&c.sysfs, "sysfs", guest.SysfsRoot(), "sysfs `root` ($ZC_SYSFS when set)")
	fs.StringVar(&c.dev, "dev", "/dev", "device `dir` holding vportNpM")
	fs.DurationVar(&c.timeout, "timeout", 30*time.Second, "give up after this long (0: wait forever; the port may be hot-plugged after boot)")
}

// check refuses a negative --timeout; call it after parsing fs.
func (c *ctlFlags) check(fs *flag.FlagSet) error {
	if c.timeout < 0 {
		return usagef(fs, "--timeout %v: must not be negative (0: wait forever)", c.timeout)
	}
	return nil
}

// withTimeout returns ctx bounded by d, where 0 means no bound: --timeout 0
// waits forever in every zcguest command.
func withTimeout(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if d == 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, d)
}

func (c *ctlFlags) dial(ctx context.Context) (*virtio.Client, error) {
	return virtio.Dial(ctx, c.sysfs, c.dev)
}

// ctlUsage is what "zcguest ctl" without a command prints.
const ctlUsage = `usage: zcguest ctl list [--json] [--timeout D]
       zcguest ctl plug -c ID [--queues Q,Q] [--no-wait] [--timeout D]

Run "zcguest ctl COMMAND -h" for a command's flags.
`

func cmdCtl(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, ctlUsage)
		return errUsage
	}
	switch args[0] {
	case "list":
		return cmdCtlList(ctx, args[1:], stdout, stderr)
	case "plug":
		return cmdCtlPlug(ctx, args[1:], stdout, stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, ctlUsage)
		return nil
	}
	fmt.Fprintf(stderr, "zcguest ctl: unknown command %q (want list or plug)\n\n%s", args[0], ctlUsage)
	return errUsage
}

func cmdCtlList(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("ctl list", "ctl list [--json] [--timeout D]", stderr)
	var cf ctlFlags
	cf.add(fs)
	asJSON := fs.Bool("json", false, "print the offers as a JSON array")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := cf.check(fs); err != nil {
		return err
	}
	ctx, cancel := withTimeout(ctx, cf.timeout)
	defer cancel()
	c, err := cf.dial(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	offers, err := c.List(ctx)
	if err != nil {
		return err
	}
	if *asJSON {
		if offers == nil {
			offers = []virtio.Offer{}
		}
		return json.NewEncoder(stdout).Encode(offers)
	}
	fmt.Fprintf(stdout, "%-10s %-12s %12s  %-8s %s\n", "CLUSTER", "QUEUES", "SIZE", "REGION", "PLUGGED")
	for _, o := range offers {
		qs := make([]string, len(o.Queues))
		for i, q := range o.Queues {
			qs[i] = strconv.Itoa(q)
		}
		region := "own"
		if o.Shared {
			region = "shared"
		}
		fmt.Fprintf(stdout, "%-10d %-12s %12d  %-8s %v\n", o.ID, strings.Join(qs, ","), o.Size, region, o.Plugged)
	}
	return nil
}

func cmdCtlPlug(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("ctl plug", "ctl plug -c ID [--queues Q,Q] [--no-wait] [--timeout D]", stderr)
	var cf ctlFlags
	cf.add(fs)
	cluster := clusterFlag(fs)
	queues := fs.String("queues", "", "comma-separated queue numbers (default: all offered)")
	noWait := fs.Bool("no-wait", false, "return once the host plugged the device, without waiting to see it")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *cluster < 0 || *cluster > math.MaxUint32 {
		return usagef(fs, "-c ID is required (0 to 4294967295)")
	}
	if err := cf.check(fs); err != nil {
		return err
	}
	var qs []int
	if *queues != "" {
		for _, f := range strings.Split(*queues, ",") {
			q, err := strconv.Atoi(f)
			if err != nil || q < 0 {
				return usagef(fs, "--queues %q: bad queue %q (want numbers >= 0, comma-separated)", *queues, f)
			}
			qs = append(qs, q)
		}
	}
	ctx, cancel := withTimeout(ctx, cf.timeout)
	defer cancel()
	c, err := cf.dial(ctx)
	if err != nil {
		return err
	}
	id := uint32(*cluster)
	start := time.Now()
	err = c.Plug(ctx, id, qs)
	c.Close()
	if err != nil {
		return err
	}
	if *noWait {
		fmt.Fprintf(stdout, "cluster %d plugged after %v\n", id, time.Since(start).Round(time.Millisecond))
		return nil
	}
	d, err := guest.Wait(ctx, cf.sysfs, guest.MatchCluster(id), 0)
	if err != nil {
		return fmt.Errorf("cluster %d plugged by the host but not seen: %w", id, err)
	}
	fmt.Fprintf(stdout, "cluster %d plugged at %s (%d bytes) after %v\n", id, d.Addr, d.Size, time.Since(start).Round(time.Millisecond))
	return nil
}

// listenNotices opens the control channel and, for each unplug-notice of
// cluster id, prints it, runs onNotice (sh -c) and answers ready. It
// returns once the client says hello; stop closes the channel.
func listenNotices(ctx context.Context, cf ctlFlags, id uint32, onNotice string, stdout, stderr io.Writer) (stop func(), err error) {
	hctx, cancel := withTimeout(ctx, cf.timeout)
	c, err := cf.dial(hctx)
	cancel()
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(stdout, "listening for unplug notices of cluster %d\n", id)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for n := range c.Notices() {
			if n.Cluster != id {
				continue
			}
			fmt.Fprintf(stdout, "cluster %d unplug notice (deadline %v)\n", id, n.Deadline)
			if onNotice != "" {
				cmd := exec.Command("/bin/sh", "-c", onNotice)
				cmd.Stdout, cmd.Stderr = stdout, stderr
				if err := cmd.Run(); err != nil {
					fmt.Fprintf(stderr, "--on-notice %q: %v\n", onNotice, err)
				}
			}
			if err := c.Ready(id); err != nil {
				fmt.Fprintf(stderr, "%v\n", err)
			}
		}
	}()
	return func() { c.Close(); <-done }, nil
}
