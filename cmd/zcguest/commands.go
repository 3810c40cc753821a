package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"os"
	"time"

	"github.com/zcfabric/zc"
	"github.com/zcfabric/zc/guest"
	"github.com/zcfabric/zc/ivshmem"
)

// deviceInfo is one line of "zcguest list".
type deviceInfo struct {
	Addr    string  `json:"addr"`
	Size    int64   `json:"size"`
	Cluster *uint32 `json:"cluster,omitempty"`
	Error   string  `json:"error,omitempty"`
	// Queues are the region's queues and counters (zc.Inspect), when the
	// region is a valid zcfabric region.
	Queues []zc.QueueStats `json:"queues,omitempty"`
}

func cmdList(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("list", "list [--sysfs DIR] [--json]", stderr)
	sysfs := fs.String("sysfs", guest.SysfsRoot(), "sysfs `root` ($ZC_SYSFS when set)")
	asJSON := fs.Bool("json", false, "print a JSON array instead of a table")
	if err := parse(fs, args); err != nil {
		return err
	}
	devs, err := guest.Find(*sysfs)
	if err != nil {
		return err
	}
	infos := make([]deviceInfo, 0, len(devs))
	for _, d := range devs {
		info := deviceInfo{Addr: d.Addr, Size: d.Size}
		if d.Size > 0 {
			id, ok, err := d.ClusterID()
			switch {
			case err != nil:
				info.Error = err.Error()
			case ok:
				info.Cluster = &id
				if ci, err := inspect(*sysfs, id); err == nil {
					info.Queues = ci.Queues
				}
			}
		}
		infos = append(infos, info)
	}
	if *asJSON {
		return json.NewEncoder(stdout).Encode(infos)
	}
	fmt.Fprintf(stdout, "%-14s %12s  %s\n", "ADDRESS", "SIZE", "CLUSTER")
	for _, i := range infos {
		cluster := "-"
		switch {
		case i.Error != "":
			cluster = "error: " + i.Error
		case i.Size == 0:
			cluster = "(BAR2 not assigned)"
		case i.Cluster != nil:
			cluster = fmt.Sprint(*i.Cluster)
		default:
			cluster = "(no zcfabric header)"
		}
		fmt.Fprintf(stdout, "%-14s %12d  %s\n", i.Addr, i.Size, cluster)
		for _, q := range i.Queues {
			fmt.Fprintf(stdout, "    queue %-3d depth %d/%d sent %d drops %d received %d returned %d bad %d producer %s consumer %s\n",
				q.Queue, q.Depth, q.Slots, q.Sent, q.Drops, q.Received, q.Returned, q.Bad, q.Owner(ivshmem.EndProducer), q.Owner(ivshmem.EndConsumer))
		}
	}
	return nil
}

// inspect reads cluster id's queue counters through the zc package, which
// resolves it in this guest's sysfs ($ZC_SYSFS, set to sysfs here: the
// devices and their counters come from the same tree).
func inspect(sysfs string, id uint32) (zc.ClusterInfo, error) {
	os.Setenv(guest.SysfsEnv, sysfs)
	return zc.Inspect(id)
}

func cmdWait(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("wait", "wait -c ID [--timeout D] [--poll D] [--gone [--notice [--on-notice CMD] [--dev DIR]]] [--sysfs DIR]", stderr)
	cluster := clusterFlag(fs)
	timeout := fs.Duration("timeout", 0, "give up after this long (0: wait forever)")
	gone := fs.Bool("gone", false, "wait until no device carries the cluster instead")
	poll := fs.Duration("poll", guest.DefaultPoll, "sysfs poll interval (0: the default)")
	sysfs := fs.String("sysfs", guest.SysfsRoot(), "sysfs `root` ($ZC_SYSFS when set)")
	notice := fs.Bool("notice", false, "with --gone: listen for unplug notices on the zc.ctl control channel meanwhile (it must answer within --timeout, 30s when that is 0)")
	onNotice := fs.String("on-notice", "", "run this shell `command` on each unplug notice (e.g. to stop readers), then answer ready; needs --notice")
	dev := fs.String("dev", "/dev", "device `dir` holding vportNpM, the control channel's port; needs --notice")
	if err := parse(fs, args); err != nil {
		return err
	}
	switch {
	case *cluster < 0 || *cluster > math.MaxUint32:
		return usagef(fs, "-c ID is required (0 to 4294967295)")
	case *timeout < 0:
		return usagef(fs, "--timeout %v: must not be negative (0: wait forever)", *timeout)
	case *poll < 0:
		return usagef(fs, "--poll %v: must not be negative (0: the default, %v)", *poll, guest.DefaultPoll)
	case *notice && !*gone:
		return usagef(fs, "--notice needs --gone")
	}
	// --on-notice and --dev only serve --notice; without it they would be
	// ignored, and the command the user expects to run would never run.
	for _, name := range []string{"on-notice", "dev"} {
		if isSet(fs, name) && !*notice {
			return usagef(fs, "--%s needs --notice", name)
		}
	}
	// --timeout bounds the whole wait, the control channel's answer
	// included (it got a --timeout of its own before).
	ctx, cancel := withTimeout(ctx, *timeout)
	defer cancel()
	start := time.Now()
	if *notice {
		cf := ctlFlags{sysfs: *sysfs, dev: *dev, timeout: 30 * time.Second}
		if *timeout > 0 {
			cf.timeout = *timeout
		}
		stop, err := listenNotices(ctx, cf, uint32(*cluster), *onNotice, stdout, stderr)
		if err != nil {
			return err
		}
		defer stop()
	}
	id := uint32(*cluster)
	if *gone {
		if err := waitGone(ctx, *sysfs, id, *poll); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "cluster %d gone after %v\n", id, time.Since(start).Round(time.Millisecond))
		return nil
	}
	d, err := guest.Wait(ctx, *sysfs, guest.MatchCluster(id), *poll)
	if err != nil {
		return fmt.Errorf("cluster %d: %w", id, err)
	}
	fmt.Fprintf(stdout, "cluster %d at %s (%d bytes) after %v\n", id, d.Addr, d.Size, time.Since(start).Round(time.Millisecond))
	return nil
}

// after is time.After; tests replace it to see the interval waitGone polls
// at without waiting.
var after = time.After

// waitGone polls until no device under sysfs carries cluster id, every poll
// (<= 0: [guest.DefaultPoll], as for [guest.Wait]).
func waitGone(ctx context.Context, sysfs string, id uint32, poll time.Duration) error {
	if poll <= 0 {
		poll = guest.DefaultPoll
	}
	match := guest.MatchCluster(id)
	for {
		devs, err := guest.Find(sysfs)
		if err != nil {
			return err
		}
		present := false
		for _, d := range devs {
			if d.Size > 0 && match(d) {
				present = true
				break
			}
		}
		if !present {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster %d still plugged: %w", id, ctx.Err())
		case <-after(poll):
		}
	}
}

// sumResult is what "zcguest sum --json" prints.
type sumResult struct {
	Cluster uint32 `json:"cluster"`
	Addr    string `json:"addr"`
	Len     int    `json:"len"`
	CRC32   uint32 `json:"crc32"`
}

func cmdSum(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("sum", "sum -c ID [--len N] [--json] [--sysfs DIR]", stderr)
	cluster := clusterFlag(fs)
	n := fs.Int("len", 0, "bytes to sum from the start of the region (0: all)")
	asJSON := fs.Bool("json", false, "print a JSON object")
	sysfs := fs.String("sysfs", guest.SysfsRoot(), "sysfs `root` ($ZC_SYSFS when set)")
	if err := parse(fs, args); err != nil {
		return err
	}
	switch {
	case *cluster < 0 || *cluster > math.MaxUint32:
		return usagef(fs, "-c ID is required (0 to 4294967295)")
	case *n < 0:
		return usagef(fs, "--len %d: must not be negative (0: all of the region)", *n)
	}
	id := uint32(*cluster)
	devs, err := guest.Find(*sysfs)
	if err != nil {
		return err
	}
	match := guest.MatchCluster(id)
	for _, d := range devs {
		if d.Size == 0 || !match(d) {
			continue
		}
		m, err := d.Map()
		if err != nil {
			return err
		}
		defer m.Close()
		b := m.Bytes()
		if *n > len(b) {
			return fmt.Errorf("cluster %d: --len %d exceeds the region (%d bytes)", id, *n, len(b))
		}
		if *n > 0 {
			b = b[:*n]
		}
		res := sumResult{Cluster: id, Addr: d.Addr, Len: len(b), CRC32: crc32.ChecksumIEEE(b)}
		if *asJSON {
			return json.NewEncoder(stdout).Encode(res)
		}
		fmt.Fprintf(stdout, "%08x  cluster %d at %s, %d bytes\n", res.CRC32, id, d.Addr, res.Len)
		return nil
	}
	return fmt.Errorf("cluster %d: no ivshmem device carries it", id)
}

// clusterFlag defines -c/--cluster; -1 means not given.
func clusterFlag(fs *flag.FlagSet) *int64 {
	c := fs.Int64("c", -1, "cluster `ID` (required)")
	fs.Int64Var(c, "cluster", -1, "same as -c")
	return c
}
