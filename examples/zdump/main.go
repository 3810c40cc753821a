// Command zdump writes the packets of a zcfabric queue to a pcapng file
// that tcpdump, tshark and Wireshark read, with each packet's nanosecond
// timestamp from its buffer metadata. It uses only package zc (and
// gopacket's pure-Go pcapng writer), so the same binary runs on the host
// and inside a VM:
//
//	zdump -i zc:99@0 -w out.pcapng [-n N]
//
// "-w -" writes to standard output (zdump -i zc:99@0 -w - | tcpdump -r -).
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
	"github.com/zcfabric/zc"
	"github.com/zcfabric/zc/examples/internal/cli"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("zdump", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		name, out string
		count     uint64
		force     bool
		wait      time.Duration
	)
	fs.StringVar(&name, "i", "", "queue to dump, zc:CLUSTER@QUEUE (required; or the name alone, as the one argument)")
	fs.StringVar(&out, "w", "", "pcapng `file` to write (required; - for standard output)")
	fs.Uint64Var(&count, "n", 0, "exit after `N` packets (0: until interrupted or the queue closes)")
	fs.BoolVar(&force, "force", false, "take over the consumer end even if another party holds it")
	fs.DurationVar(&wait, "wait", 0, "wait up to this long for the cluster to appear (0: fail at once)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: zdump [-i] zc:CLUSTER@QUEUE -w FILE.pcapng [-n N]\n\nWrites a zcfabric queue to pcapng (host or VM guest alike).\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if code, ok := cli.ParseQueue(fs, args, &name, func() string {
		if name == "" || out == "" {
			return "zdump: -i zc:CLUSTER@QUEUE and -w FILE are required"
		}
		return cli.NotNegative(fs, "wait")
	}); !ok {
		return code
	}
	ctx, stop, q, err := cli.Open(name, wait, force)
	if err != nil {
		fmt.Fprintf(stderr, "zdump: %v\n", err)
		return 1
	}
	defer stop()
	defer q.Close()

	w := stdout
	var f *os.File
	if out != "-" {
		if f, err = os.Create(out); err != nil {
			fmt.Fprintf(stderr, "zdump: %v\n", err)
			return 1
		}
		w = f
	}
	n, err := dump(ctx, q, w, count)
	if f != nil {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	fmt.Fprintf(stderr, "zdump: %d packets from %s written to %s\n", n, name, out)
	if err != nil {
		fmt.Fprintf(stderr, "zdump: %v\n", err)
		return 1
	}
	return 0
}

// dump writes packets of q to w as pcapng until count packets (0: no
// limit), ctx ends, or the queue fails, and returns how many it wrote.
func dump(ctx context.Context, q *zc.Queue, w io.Writer, count uint64) (uint64, error) {
	bw := bufio.NewWriterSize(w, 1<<20)
	ng, err := pcapgo.NewNgWriter(bw, layers.LinkTypeEthernet)
	if err != nil {
		return 0, fmt.Errorf("pcapng: %w", err)
	}
	pkts := make([]zc.Packet, 64)
	var n uint64
	idle := 0
	lastFlush := time.Now()
	for count == 0 || n < count {
		want := len(pkts)
		if count > 0 {
			want = int(min(uint64(want), count-n))
		}
		k, err := q.RecvBurst(pkts[:want])
		if err != nil {
			return n, fmt.Errorf("recv %s: %w", q.Name(), err)
		}
		if k == 0 {
			if ctx.Err() != nil {
				break
			}
			if idle++; idle > 64 {
				time.Sleep(min(time.Duration(idle-64)*10*time.Microsecond, time.Millisecond))
			}
		} else {
			idle = 0
		}
		for i := range pkts[:k] {
			p := &pkts[i]
			ts := time.Unix(0, p.Timestamp)
			if p.Timestamp == 0 {
				ts = time.Now()
			}
			ci := gopacket.CaptureInfo{Timestamp: ts, CaptureLength: len(p.Data), Length: len(p.Data)}
			if werr := ng.WritePacket(ci, p.Data); werr != nil {
				q.Release(pkts[:k]...)
				return n, fmt.Errorf("pcapng: write: %w", werr)
			}
			n++
		}
		if k > 0 {
			if rerr := q.Release(pkts[:k]...); rerr != nil {
				return n, rerr
			}
		}
		if time.Since(lastFlush) > time.Second {
			ng.Flush()
			bw.Flush()
			lastFlush = time.Now()
		}
	}
	if err := ng.Flush(); err != nil {
		return n, fmt.Errorf("pcapng: flush: %w", err)
	}
	return n, bw.Flush()
}
