// Command zcount counts the packets of a zcfabric queue, pfcount style: a
// stats line per second and a summary at the end. It uses only package
// zc, so the same binary runs on the host and inside a VM:
//
//	zcount -i zc:99@0 [-n N] [--json] [--verify] [--latency]
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"time"

	"github.com/zcfabric/zc"
	"github.com/zcfabric/zc/examples/internal/cli"
)

// Summary is what --json prints at the end.
type Summary struct {
	Queue   string  `json:"queue"`
	Packets uint64  `json:"packets"`
	Bytes   uint64  `json:"bytes"`
	Drops   uint64  `json:"drops"`
	Seconds float64 `json:"seconds"` // the whole run
	// PPS is the rate while traffic flowed: packets over the time from
	// the first burst received to the last (not the wait before it).
	PPS            float64 `json:"pps"`
	TrafficSeconds float64 `json:"traffic_seconds"`
	Bad            uint64  `json:"bad"`
	Verified       uint64  `json:"verified,omitempty"`
	Corrupt        uint64  `json:"corrupt,omitempty"`
	OutOfOrder     uint64  `json:"out_of_order,omitempty"`
	Error          string  `json:"error,omitempty"`
	// Latency: from each packet's timestamp (set by its producer: zsend,
	// a capture) to its receipt, microseconds (--latency).
	LatencyP50 float64 `json:"latency_p50_us,omitempty"`
	LatencyP99 float64 `json:"latency_p99_us,omitempty"`
	LatencyMax float64 `json:"latency_max_us,omitempty"`
}

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("zcount", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		name     string
		count    uint64
		asJSON   bool
		verify   bool
		force    bool
		interval time.Duration
		wait     time.Duration
		latency  bool
	)
	fs.StringVar(&name, "i", "", "queue to count, zc:CLUSTER@QUEUE (required; or the name alone, as the one argument)")
	fs.Uint64Var(&count, "n", 0, "exit after `N` packets (0: until interrupted or the queue closes)")
	fs.BoolVar(&asJSON, "json", false, "print the summary as one JSON object")
	fs.BoolVar(&verify, "verify", false, "check zchost/zsend synthetic frames: content and per-queue order")
	fs.BoolVar(&force, "force", false, "take over the consumer end even if another party holds it")
	fs.DurationVar(&interval, "interval", time.Second, "print a stats line this often (0: never)")
	fs.DurationVar(&wait, "wait", 0, "wait up to this long for the cluster to appear (0: fail at once)")
	fs.BoolVar(&latency, "latency", false, "measure each packet's delay from its timestamp (producer and consumer on one host)\nand print the median, 99th percentile and maximum")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: zcount [-i] zc:CLUSTER@QUEUE [-n N] [--json] [--verify]\n\nCounts packets on a zcfabric queue (host or VM guest alike).\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if code, ok := cli.ParseQueue(fs, args, &name, func() string {
		if name == "" {
			return "zcount: -i zc:CLUSTER@QUEUE is required"
		}
		return cli.NotNegative(fs, "interval", "wait")
	}); !ok {
		return code
	}
	ctx, stop, q, err := cli.Open(name, wait, force)
	if err != nil {
		fmt.Fprintf(stderr, "zcount: %v\n", err)
		return 1
	}
	defer stop()
	defer q.Close()

	s := Summary{Queue: name}
	start := time.Now()
	lastT, lastN := start, uint64(0)
	var first, last time.Time // the first and last bursts received
	pkts := make([]zc.Packet, 64)
	var delays []int64 // --latency: ns per packet
	saidMode := false
	var next uint64
	haveNext := false
	exit := 0
	for count == 0 || s.Packets < count {
		want := len(pkts)
		if count > 0 {
			want = int(min(uint64(want), count-s.Packets))
		}
		n, err := q.RecvBurst(pkts[:want])
		if n == 0 && err == nil && !saidMode {
			// Once, how this reader waits when idle: it matters in a guest
			// (an interrupt, or polling that keeps a vCPU busy).
			fmt.Fprintf(stderr, "zcount: %s: idle waits: %s\n", name, q.WakeMode())
			saidMode = true
		}
		if n == 0 && err == nil {
			// Idle: wait until a packet comes, or until the next stats line
			// is due. (Only here: a context per busy burst would allocate.)
			if interval > 0 {
				tctx, cancel := context.WithDeadline(ctx, lastT.Add(interval))
				n, err = q.RecvBurstWait(tctx, pkts[:want])
				cancel()
			} else {
				n, err = q.RecvBurstWait(ctx, pkts[:want])
			}
		}
		if latency && n > 0 {
			now := time.Now().UnixNano()
			for i := range pkts[:n] {
				if ts := pkts[i].Timestamp; ts > 0 && now >= ts {
					delays = append(delays, now-ts)
				}
			}
		}
		for i := range pkts[:n] {
			d := pkts[i].Data
			s.Bytes += uint64(len(d))
			if verify {
				seq, verr := zc.CheckSynth(d)
				switch {
				case verr != nil:
					s.Corrupt++
				case haveNext && seq < next:
					s.OutOfOrder++
				default:
					s.Verified++
				}
				next, haveNext = seq+1, true
			}
		}
		s.Packets += uint64(n)
		if n > 0 {
			q.Release(pkts[:n]...)
		}
		now := time.Now()
		if n > 0 {
			if first.IsZero() {
				first = now
			}
			last = now
		}
		if interval > 0 && now.Sub(lastT) >= interval {
			st := q.Stats()
			fmt.Fprintf(stderr, "%s  Absolute: %d pkts / %d bytes | Actual: %.0f pps | drops %d | queued %d\n",
				name, s.Packets, s.Bytes, float64(s.Packets-lastN)/now.Sub(lastT).Seconds(), st.Drops, st.Depth)
			lastT, lastN = now, s.Packets
		}
		if err != nil {
			if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
				continue
			}
			if ctx.Err() != nil {
				break // interrupted
			}
			if errors.Is(err, zc.ErrGone) {
				fmt.Fprintf(stderr, "zcount: %s: the queue went away (unplugged or re-created): %v\n", name, err)
				s.Error = err.Error()
				exit = 1
			} else if errors.Is(err, zc.ErrClosed) {
				fmt.Fprintf(stderr, "zcount: %s: cluster closed by its creator\n", name)
				if count > 0 {
					s.Error = err.Error()
					exit = 1
				}
			} else {
				fmt.Fprintf(stderr, "zcount: %v\n", err)
				s.Error = err.Error()
				exit = 1
			}
			break
		}
	}
	s.Seconds = time.Since(start).Seconds()
	s.TrafficSeconds = last.Sub(first).Seconds()
	if s.TrafficSeconds > 0 {
		s.PPS = float64(s.Packets) / s.TrafficSeconds
	}
	st := q.Stats()
	s.Drops, s.Bad = st.Drops, st.Bad
	if len(delays) > 0 {
		slices.Sort(delays)
		us := func(q float64) float64 { return float64(delays[int(q*float64(len(delays)-1))]) / 1e3 }
		s.LatencyP50, s.LatencyP99, s.LatencyMax = us(0.5), us(0.99), us(1)
	}
	if asJSON {
		json.NewEncoder(stdout).Encode(s)
	} else {
		fmt.Fprintf(stdout, "%s: %d packets, %d bytes in %.3f s (%.0f pps over the %.3f s they flowed); queue drops %d, bad entries %d\n",
			name, s.Packets, s.Bytes, s.Seconds, s.PPS, s.TrafficSeconds, s.Drops, s.Bad)
		if verify {
			fmt.Fprintf(stdout, "verified %d, corrupt %d, out of order %d\n", s.Verified, s.Corrupt, s.OutOfOrder)
		}
		if len(delays) > 0 {
			fmt.Fprintf(stdout, "latency µs: p50 %.1f, p99 %.1f, max %.1f (%d packets)\n", s.LatencyP50, s.LatencyP99, s.LatencyMax, len(delays))
		}
	}
	if verify && (s.Corrupt > 0 || s.OutOfOrder > 0) && exit == 0 {
		exit = 3
	}
	return exit
}
