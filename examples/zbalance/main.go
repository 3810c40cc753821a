// Command zbalance shows the in-process worker API: it creates a cluster,
// generates synthetic traffic into an ingress queue, balances it with
// zc.RunBalancer (zero copy) over N egress queues, and counts each egress
// queue on its own goroutine.
//
//	zbalance [-c 1234] [-n 4] [-m 1] [-count 1000000] [-l 64]
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/zcfabric/zc"
	"github.com/zcfabric/zc/examples/internal/cli"
)

// bufSize is the size of the cluster's buffers, the longest frame.
const bufSize = 2048

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("zbalance", flag.ContinueOnError)
	fs.SetOutput(stderr)
	id := fs.Uint64("c", 1234, fmt.Sprintf("cluster `id` to create, 0 to %d", uint64(math.MaxUint32)))
	n := fs.Int("n", 4, "number of worker queues, 1 or more")
	mode := fs.String("m", "1", "hash `mode`, a number or a name:\n"+zc.HashModeUsage())
	count := fs.Uint64("count", 1000000, "packets to generate, 1 or more")
	length := fs.Int("l", 64, fmt.Sprintf("frame `length` in bytes, %d to %d (the buffer size)", zc.MinSynthLen, bufSize))
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: zbalance [-c ID] [-n QUEUES] [-m MODE] [-count N] [-l LEN]\n\nFlags:\n")
		fs.PrintDefaults()
	}
	var m zc.HashMode
	if code, ok := cli.Parse(fs, args, func() string {
		var ok bool
		if m, ok = zc.ParseHashMode(*mode); !ok {
			return fmt.Sprintf("zbalance: -m %q: want %s", *mode, zc.HashModeNames())
		}
		switch {
		case *id > math.MaxUint32:
			return fmt.Sprintf("zbalance: -c %d: want a cluster id from 0 to %d", *id, uint64(math.MaxUint32))
		case *n < 1:
			return fmt.Sprintf("zbalance: -n %d: want at least one output queue", *n)
		case *count < 1:
			return fmt.Sprintf("zbalance: --count %d: want at least one packet", *count)
		case *length < zc.MinSynthLen || *length > bufSize:
			return fmt.Sprintf("zbalance: -l %d: want %d to %d bytes", *length, zc.MinSynthLen, bufSize)
		}
		return ""
	}); !ok {
		return code
	}
	c, err := zc.CreateCluster(zc.Config{ID: uint32(*id), Queues: 1 + *n, QueueLen: 1024, BufferSize: bufSize, Backing: zc.BackingShm})
	if err != nil {
		fmt.Fprintln(stderr, "zbalance:", err)
		return 1
	}
	defer c.Close()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	ingress, err := c.Producer(0)
	if err != nil {
		fmt.Fprintln(stderr, "zbalance:", err)
		return 1
	}
	in, _ := c.Consumer(0)
	var outs []*zc.Queue
	counts := make([]atomic.Uint64, *n)
	var wg sync.WaitGroup
	for i := 1; i <= *n; i++ {
		o, err := c.Output(i)
		if err != nil {
			fmt.Fprintln(stderr, "zbalance:", err)
			return 1
		}
		outs = append(outs, o)
		w, _ := c.Consumer(i)
		wg.Add(1)
		go func(i int, q *zc.Queue) {
			defer wg.Done()
			pkts := make([]zc.Packet, 32)
			for {
				k, err := q.RecvBurstWait(ctx, pkts)
				if err != nil {
					return
				}
				counts[i].Add(uint64(k))
				q.Release(pkts[:k]...)
			}
		}(i-1, w)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		zc.RunBalancer(ctx, []*zc.Queue{in}, outs, m, nil, zc.WorkerOptions{Policy: zc.Wait})
	}()
	start := time.Now()
	pkts := make([]zc.Packet, 32)
	synth := zc.NewSynth(*length, 256)
	for seq := uint64(0); seq < *count && ctx.Err() == nil; {
		k, _ := ingress.Alloc(pkts[:min(32, *count-seq)])
		for i := range pkts[:k] {
			pkts[i].Data = pkts[i].Data[:synth.Frame(pkts[i].Data, seq+uint64(i))]
		}
		s, _ := ingress.SendBurstWait(ctx, pkts[:k])
		seq += uint64(s)
	}
	want := *count
	if m == zc.ModeFanout {
		want *= uint64(*n)
	}
	for ctx.Err() == nil {
		var sum uint64
		for i := range counts {
			sum += counts[i].Load()
		}
		if sum >= want {
			break
		}
		time.Sleep(time.Millisecond)
	}
	secs := time.Since(start).Seconds()
	cancel()
	wg.Wait()
	var sum uint64
	for i := range counts {
		fmt.Fprintf(stdout, "worker %d: %d packets\n", i, counts[i].Load())
		sum += counts[i].Load()
	}
	fmt.Fprintf(stdout, "total %d packets in %.3f s (%.0f pps), mode %s\n", sum, secs, float64(sum)/secs, m)
	return 0
}
