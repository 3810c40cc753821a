package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/zcfabric/zc/internal/ticker"

	"github.com/hashicorp/go-hclog"
	"github.com/zcfabric/zc"
	"github.com/zcfabric/zc/host"
)

func init() {
	register("tx", "send a queue's packets out of an interface (AF_XDP or AF_PACKET TX)", txCmd)
	register("bounce", "receive on one interface, send out of another (RX and TX together)", bounceCmd)
}

// every calls fn every interval until the returned function is called
// (ticker.Every).
func every(interval time.Duration, fn func(now time.Time)) func() { return ticker.Every(interval, fn) }

// statsLoop logs what cur reports every interval until the returned
// function is called.
func statsLoop(log hclog.Logger, interval time.Duration, cur func() (pkts, bytes uint64, extra []any)) func() {
	var lp, lb uint64
	last := time.Now()
	return every(interval, func(now time.Time) {
		p, b, extra := cur()
		s := now.Sub(last).Seconds()
		args := append([]any{"packets", p, "pps", uint64(float64(p-lp) / s), "Mbps", float64(b-lb) * 8 / s / 1e6}, extra...)
		log.Info("stats", args...)
		lp, lb, last = p, b, now
	})
}

// reattachEvery is how often zchost tx tries to attach a failed queue
// again.
const reattachEvery = time.Second

const txHelp = `
A producer cannot stop tx: entries it writes wrong (a handle out of range or
delivered twice, bad metadata) are counted (bad) and skipped. When the queue
itself fails (its ring corrupt, its region gone or re-created) tx logs it once,
counts it (queue_failures) and tries to attach the queue again every second,
sending again once it works (a re-created cluster). tx ends on SIGINT or
SIGTERM, after -n packets, or when the cluster no longer exists (its creator
removed the region: zchost run ended), with a summary and exit status 0; it
fails (status 1) only for its own faults, such as its interface going away.
`

func txCmd(args []string) error {
	var (
		in, out  string
		count    uint64
		rate     float64
		interval time.Duration
		lf       logFlags
	)
	fs := newFlags("tx", "-i zc:ID@Q -o IF [-n COUNT]")
	usage := fs.Usage
	fs.Usage = func() { usage(); fmt.Fprint(fs.Output(), txHelp) }
	for _, n := range []string{"i", "in"} {
		fs.StringVar(&in, n, "", "`queue` to send from (zc:ID@Q, consumer end)")
	}
	for _, n := range []string{"o", "out"} {
		fs.StringVar(&out, n, "", "`interface` to send out of: afxdp:IF[@Q][?mode=copy|zerocopy], afpacket:IF, zc:IF or IF (AF_XDP, else AF_PACKET)")
	}
	fs.Uint64Var(&count, "n", 0, "stop after `count` packets (0: until interrupted)")
	fs.Float64Var(&rate, "rate", 0, "send at most `pps` packets per second (0: as fast as the ring takes them)")
	fs.DurationVar(&interval, "stats-interval", time.Second, "print counters this often (0: never)")
	lf.add(fs)
	if err := parseAll(fs, args); err != nil {
		return err
	}
	if in == "" || out == "" {
		return fmt.Errorf("%w: need -i zc:ID@Q and -o IF", errUsage)
	}
	if err := cmp.Or(negative("--rate", rate), negative("--stats-interval", interval)); err != nil {
		return err
	}
	name, err := zc.ParseName(in)
	if err != nil {
		return fmt.Errorf("%w: -i %s: %w", errUsage, in, err)
	}
	log := lf.logger("zchost-tx")
	q, err := zc.Open(in)
	if err != nil {
		return fmt.Errorf("tx: open %s: %w", in, err)
	}
	defer func() {
		if q != nil {
			q.Close()
		}
	}()
	sink, err := host.OpenSink(out)
	if err != nil {
		return err
	}
	defer sink.Close()
	log.Info("transmitting", "from", q.Name(), "to", sink.Name(), "mode", sink.Mode(), "rate", rate)
	if rate > 0 {
		sink = host.NewPacedSink(sink, rate)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	stopStats := statsLoop(log, interval, func() (uint64, uint64, []any) {
		s := sink.Stats()
		return s.Packets, s.Bytes, []any{"ring_full", s.Full, "too_long", s.TooLong}
	})
	var (
		st       host.TxStats
		bad      uint64          // entries refused, over every attach
		base     = q.Stats().Bad // the queue's count when attached
		failures int             // times the queue failed after moving packets
		moved    = true          // packets went since the last failure logged
		start    = time.Now()
	)
	for {
		left := uint64(0)
		if count > 0 {
			left = count - st.Packets
		}
		part, terr := host.TransmitQueue(ctx, q, sink, left)
		st.Add(part)
		if terr == nil {
			break // signalled, or -n reached
		}
		if q.Err() == nil {
			err = terr // the sink's failure, not the producer's
			break
		}
		bad += q.Stats().Bad - base
		q.Close()
		q = nil
		if _, serr := os.Stat(zc.RegionPath(name.Cluster)); errors.Is(serr, os.ErrNotExist) {
			log.Info("cluster no longer exists: tx ends", "queue", in, "error", terr)
			break
		}
		moved = moved || part.Packets > 0
		if moved {
			failures++
			log.Warn("queue failed: its packets are lost until it is attached again", "queue", in, "error", terr, "retry_every", reattachEvery)
		} else {
			log.Debug("queue failed again", "queue", in, "error", terr)
		}
		moved = false
		if q, err = reattach(ctx, log, in); q == nil {
			if err != nil {
				log.Info("cluster no longer exists: tx ends", "queue", in, "error", err)
				err = nil
			}
			break
		}
		base = q.Stats().Bad
	}
	stopStats()
	st.Elapsed = time.Since(start)
	if q != nil {
		bad += q.Stats().Bad - base
	}
	if st.NotHeld > 0 {
		log.Warn("the queue refused packets handed back to it (released twice?)", "calls", st.NotHeld)
	}
	s := sink.Stats()
	log.Info("summary", "packets", st.Packets, "bytes", st.Bytes, "seconds", st.Elapsed.Seconds(),
		"pps", uint64(float64(st.Packets)/max(st.Elapsed.Seconds(), 1e-9)), "sent", s.Packets, "too_long", s.TooLong, "ring_full", s.Full,
		"kernel_tx_invalid", s.KernelDrops, "if_tx_dropped", s.IfTxDropped, "bad", bad, "not_held", st.NotHeld, "queue_failures", failures)
	return err
}

// reattach attaches the consumer end of queue name again, trying every
// reattachEvery, until it works, ctx ends (nil, nil) or the cluster no
// longer exists (nil and the error: only its creator removes a region, so
// a producer cannot cause it).
func reattach(ctx context.Context, log hclog.Logger, name string) (*zc.Queue, error) {
	t := time.NewTicker(reattachEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil, nil
		case <-t.C:
		}
		q, err := zc.Open(name)
		switch {
		case err == nil:
			log.Debug("queue attached again", "queue", name)
			return q, nil
		case errors.Is(err, zc.ErrNotFound):
			return nil, err
		}
		log.Debug("attach again", "queue", name, "error", err)
	}
}

func bounceCmd(args []string) error {
	var (
		in, out, bpf string
		bufferSize   int
		rate         float64
		interval     time.Duration
		lf           logFlags
	)
	fs := newFlags("bounce", "-i IF1 -o IF2 [--bpf PROGRAM]")
	for _, n := range []string{"i", "in"} {
		fs.StringVar(&in, n, "", "`source` to receive from: zc:IF, afxdp:IF[@Q][?...], afpacket:IF, IF")
	}
	for _, n := range []string{"o", "out"} {
		fs.StringVar(&out, n, "", "`interface` to send out of: afxdp:IF[@Q], afpacket:IF, zc:IF, IF")
	}
	fs.IntVar(&bufferSize, "buffer-size", 2048, "buffer size in `bytes` (2048 or 4096 for AF_XDP)")
	fs.StringVar(&bpf, "bpf", "", "classic BPF `program` (tcpdump -ddd output): only matching packets are bounced")
	fs.Float64Var(&rate, "rate", 0, "send at most `pps` packets per second (0: as fast as the ring takes them; the rest wait in the RX ring)")
	fs.DurationVar(&interval, "stats-interval", time.Second, "print counters this often (0: never)")
	lf.add(fs)
	if err := parseAll(fs, args); err != nil {
		return err
	}
	if in == "" || out == "" {
		return fmt.Errorf("%w: need -i IF1 and -o IF2", errUsage)
	}
	if err := cmp.Or(negative("--rate", rate), negative("--stats-interval", interval)); err != nil {
		return err
	}
	log := lf.logger("zchost-bounce")
	// A private cluster: its buffers are the AF_XDP UMEM.
	c, err := zc.CreateCluster(zc.Config{ID: 0x7b000000 | rand.Uint32N(1<<24), QueueLen: 64, Buffers: 4096,
		BufferSize: bufferSize, Backing: zc.BackingMemfd})
	if err != nil {
		return fmt.Errorf("bounce: %w", err)
	}
	defer c.Close()
	srcs, err := host.ParseSource(in, host.SourceOptions{Cluster: c, BPF: bpf,
		Logf: func(f string, a ...any) { log.Info(fmt.Sprintf(f, a...)) }})
	if err != nil {
		return err
	}
	for _, s := range srcs {
		defer s.Close()
	}
	if len(srcs) != 1 {
		return fmt.Errorf("%w: -i %s names %d sources; bounce takes one", errUsage, in, len(srcs))
	}
	src := srcs[0]
	sink, err := host.OpenSink(out)
	if err != nil {
		return err
	}
	defer sink.Close()
	log.Info("bouncing", "from", src.Name(), "to", sink.Name(), "tx_mode", sink.Mode(), "rate", rate)
	if rate > 0 {
		sink = host.NewPacedSink(sink, rate)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	stopStats := statsLoop(log, interval, func() (uint64, uint64, []any) {
		s, r := sink.Stats(), src.Stats()
		return s.Packets, s.Bytes, []any{"rx", r.Packets, "kernel_drops", r.KernelDrops, "filtered", r.Filtered, "ring_full", s.Full}
	})
	st, err := host.Bounce(ctx, src, c.Pool(), sink)
	stopStats()
	r, s := src.Stats(), sink.Stats()
	log.Info("summary", "packets", st.Packets, "bytes", st.Bytes, "seconds", st.Elapsed.Seconds(),
		"pps", uint64(float64(st.Packets)/max(st.Elapsed.Seconds(), 1e-9)),
		"rx", r.Packets, "kernel_drops", r.KernelDrops, "filtered", r.Filtered, "sent", s.Packets, "too_long", s.TooLong,
		"kernel_tx_invalid", s.KernelDrops, "if_tx_dropped", s.IfTxDropped)
	return err
}
