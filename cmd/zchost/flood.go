package main

import (
	"cmp"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/zcfabric/zc"
	"github.com/zcfabric/zc/host/xdpgen"
)

func init() {
	register("flood", "send frames out of an interface from inside the kernel (XDP live frames), for load tests", floodCmd)
}

func floodCmd(args []string) error {
	var (
		out, dst, etherType string
		length, batch       int
		count               uint64
		rate                float64
		dur, interval       time.Duration
		lf                  logFlags
	)
	fs := newFlags("flood", "-o IF [-n COUNT] [-d DURATION] [--rate PPS] [--dst MAC]")
	for _, n := range []string{"o", "out"} {
		fs.StringVar(&out, n, "", "`interface` to send out of (its driver must take XDP frames: veth, whose peer has an XDP program or GRO on, or a NIC with ndo_xdp_xmit)")
	}
	fs.IntVar(&length, "len", 60, "frame length in `bytes` (60 to 3500, without the FCS)")
	fs.Uint64Var(&count, "n", 0, "stop after `count` frames (0: no limit)")
	fs.DurationVar(&dur, "d", 0, "stop after this `duration` (0: no limit; Ctrl-C stops too)")
	fs.Float64Var(&rate, "rate", 0, "send at most `pps` frames per second on average (0: as fast as the kernel builds them). Each kernel call costs 15-20 ms to set up, so the rate comes in bursts of up to a tenth of a second's worth at full speed: size the receiver's rings for that")
	fs.StringVar(&dst, "dst", "", "destination `MAC` (default 02:00:00:00:00:02)")
	fs.StringVar(&etherType, "ethertype", "", "`EtherType`, e.g. 0x88b5 (local experimental: the receiver's IP stack ignores it), in place of IPv4 (0x0800: frames zcount --verify accepts)")
	fs.IntVar(&batch, "batch", xdpgen.MaxBatch, "`frames` the kernel builds and flushes at a time (1-256)")
	fs.DurationVar(&interval, "stats-interval", time.Second, "print counters this often (0: never)")
	lf.add(fs)
	if err := parseAll(fs, args); err != nil {
		return err
	}
	if out == "" {
		return fmt.Errorf("%w: need -o IF", errUsage)
	}
	if err := cmp.Or(negative("--rate", rate), negative("-d", dur), negative("--stats-interval", interval)); err != nil {
		return err
	}
	if batch < 1 || batch > xdpgen.MaxBatch {
		return fmt.Errorf("%w: --batch %d: want 1 to %d", errUsage, batch, xdpgen.MaxBatch)
	}
	frame, err := floodFrame(out, length, dst, etherType)
	if err != nil {
		return err
	}
	f, err := xdpgen.Open(xdpgen.Config{Ifname: out, Frame: frame, Batch: batch})
	if err != nil {
		return fmt.Errorf("flood: %w", err)
	}
	defer f.Close()
	log := lf.logger("zchost-flood")
	log.Info("flooding", "out", out, "len", len(frame), "count", count, "duration", dur, "rate", rate, "batch", batch)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// What the interface counts as transmitted: the driver may refuse
	// redirected frames (a full ring; for veth, a peer without NAPI) and
	// not every driver counts those refusals, so compare.
	tx0, txOK := txPackets(out)
	taken := func() uint64 {
		if tx, ok := txPackets(out); ok && txOK {
			return tx - tx0
		}
		return 0
	}
	sent := func() uint64 { n, _ := f.Sent(); return n }
	stopStats := statsLoop(log, interval, func() (uint64, uint64, []any) {
		n := sent()
		return n, n * uint64(len(frame)), []any{"if_tx_packets", taken()}
	})
	start := time.Now()
	n, err := f.Run(ctx, count, rate, dur)
	el := time.Since(start)
	stopStats()
	took := settled(taken)
	log.Info("summary", "sent", n, "seconds", el.Seconds(), "pps", uint64(float64(n)/max(el.Seconds(), 1e-9)),
		"if_tx_packets", took, "not_taken", n-min(n, took))
	if txOK && n > 0 && took == 0 {
		log.Warn(out+" counted none of the frames as sent: its driver refused them, or does not count XDP transmits. "+
			"A veth takes XDP frames only when its peer has NAPI: an XDP program attached, or `ethtool -K PEER gro on`", "sent", n)
	} else if txOK && took < n {
		log.Info("frames "+out+" did not take (its ring was full) are counted by its driver: ethtool -S "+out, "not_taken", n-took)
	}
	return err
}

// settled returns count once it stopped changing (two reads 20 ms apart
// agree; at most a second). A veth counts a redirected frame as sent only
// when its peer's NAPI takes it off the ring, after the flood returned:
// read at once, the frames still on the ring (a few hundred) looked
// refused.
func settled(count func() uint64) uint64 {
	v := count()
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
		w := count()
		if w == v {
			break
		}
		v = w
	}
	return v
}

// txPackets reads ifname's transmitted-packets counter from sysfs (of the
// network namespace sysfs was mounted in; ip netns exec mounts its own).
func txPackets(ifname string) (uint64, bool) {
	b, err := os.ReadFile("/sys/class/net/" + ifname + "/statistics/tx_packets")
	if err != nil {
		return 0, false
	}
	v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	return v, err == nil
}

// floodFrame builds the template: synthetic UDP frame 0 of length bytes
// (zc.SynthFrame), from out's MAC to dst, with etherType if given.
func floodFrame(out string, length int, dst, etherType string) ([]byte, error) {
	if length < zc.MinSynthLen || length > 3500 {
		return nil, fmt.Errorf("%w: --len %d: want %d to 3500", errUsage, length, zc.MinSynthLen)
	}
	b := make([]byte, length)
	zc.SynthFrame(b, 0, length, 1)
	if dst != "" {
		mac, err := net.ParseMAC(dst)
		if err != nil || len(mac) != 6 {
			return nil, fmt.Errorf("%w: --dst %q: want a MAC like 02:00:00:00:00:02", errUsage, dst)
		}
		copy(b[0:6], mac)
	}
	if ifi, err := net.InterfaceByName(out); err == nil && len(ifi.HardwareAddr) == 6 {
		copy(b[6:12], ifi.HardwareAddr)
	}
	if etherType != "" {
		v, err := strconv.ParseUint(etherType, 0, 16)
		if err != nil {
			return nil, fmt.Errorf("%w: --ethertype %q: want a 16-bit number such as 0x88b5", errUsage, etherType)
		}
		binary.BigEndian.PutUint16(b[12:], uint16(v))
	}
	return b, nil
}
