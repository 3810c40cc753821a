package agent

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/zcfabric/zc"
	"github.com/zcfabric/zc/host"
	"github.com/zcfabric/zc/host/vmm"
	"github.com/zcfabric/zc/internal/ticker"
)

// drain waits until every queue that has a consumer attached, or that a
// VM reads, is empty (its consumer read everything), or ctx ends.
// A consumer that stops reading (stuck, or a hostile guest) cannot hold
// the agent: after stall with no progress on any waiting queue it gives
// up, saying how many packets were left (a negative stall: it waits
// until ctx ends). Progress is what the agent
// itself saw come back (buffers returned and checked against its own
// record of loans): the counters and indices a consumer writes may say
// anything, and only decide how long to wait within that bound.
func drain(ctx context.Context, log hclog.Logger, stats func() []zc.QueueStats, exported []bool, bal *zc.Balancer, stall time.Duration) {
	t := time.NewTicker(2 * time.Millisecond)
	defer t.Stop()
	said := false
	var lastRead uint64
	lastProgress := time.Now()
	for {
		bal.Reclaim()
		var busy []int
		var read uint64
		left := 0
		for i, s := range stats() {
			if s.State == "ok" && (s.Consumer != 0 || exported[i]) && s.Depth != 0 {
				busy = append(busy, i)
				read += s.Reclaimed + s.Recovered // the host's own counts
				left += max(s.Depth, 0)
			}
		}
		if len(busy) == 0 {
			return
		}
		if read != lastRead {
			lastRead, lastProgress = read, time.Now()
		} else if stall > 0 && time.Since(lastProgress) > stall {
			log.Warn("consumers stopped reading; leaving packets undelivered", "queues", busy, "packets_left", left, "stalled_for", stall)
			return
		}
		if !said {
			log.Info("sources done; waiting for consumers to drain (interrupt to stop)", "queues", busy)
			said = true
		}
		select {
		case <-ctx.Done():
			log.Warn("interrupted while consumers were still reading")
			return
		case <-t.C:
		}
	}
}

// startStats logs per-source and per-queue counters every interval until
// the returned function is called. srcStats gives the sources' counters
// (Engine.SourceStats; empty before the engine runs).
func startStats(log hclog.Logger, stats func() []zc.QueueStats, sources []host.Source, srcStats func() []host.SourceStats, interval time.Duration) func() {
	if interval <= 0 {
		return func() {}
	}
	prev, prevSrc, last := stats(), srcStats(), time.Now()
	return ticker.Every(interval, func(now time.Time) {
		cur, curSrc := stats(), srcStats()
		secs := now.Sub(last).Seconds()
		for i, ss := range curSrc {
			var p host.SourceStats
			if i < len(prevSrc) {
				p = prevSrc[i]
			}
			log.Info("source stats", "name", sources[i].Name(), "packets", ss.Packets, "pps", uint64(float64(ss.Packets-p.Packets)/secs),
				"kernel_drops", ss.KernelDrops, "kernel_drops_per_s", uint64(float64(ss.KernelDrops-p.KernelDrops)/secs),
				"filtered", ss.Filtered, "truncated", ss.Truncated)
		}
		for i, s := range cur {
			log.Info("queue", "queue", i, "sent", s.Sent, "pps", uint64(float64(s.Sent-prev[i].Sent)/secs),
				"drops", s.Drops, "received_reported", s.Received, "depth", s.Depth, "consumer", s.Consumer, "state", s.State)
		}
		prev, prevSrc, last = cur, curSrc, now
	})
}

// summary logs what this run moved: each queue's counters less what they
// were when it started (base: a daemon that adopted its predecessor's
// regions carries their counters on), then the sources' totals and the
// sums. With fan-out (fanout > 1) every packet is queued that many times.
func summary(log hclog.Logger, stats func() []zc.QueueStats, base []zc.QueueStats, sources []host.Source, st host.EngineStats, copies uint64, fanout int) {
	// sent, drops and bad returns are the agent's own counts; received is
	// what each consumer wrote in the region (a guest may write anything),
	// so it is shown as reported and summed only over queues that work.
	var sent, drops, recv uint64
	for i, s := range stats() {
		if i < len(base) {
			b := base[i]
			s.Sent, s.Drops, s.BadReturns = s.Sent-min(b.Sent, s.Sent), s.Drops-min(b.Drops, s.Drops), s.BadReturns-min(b.BadReturns, s.BadReturns)
			s.Received -= min(b.Received, s.Received)
		}
		args := []any{"queue", i, "sent", s.Sent, "drops", s.Drops, "received_reported", s.Received, "bad_returns", s.BadReturns}
		if s.State != "ok" && s.State != "" {
			args = append(args, "state", s.State, "failure", s.Failure)
		} else {
			recv += s.Received // "": the producers that attached hold the queue
		}
		log.Info("queue total", args...)
		sent += s.Sent
		drops += s.Drops
	}
	var filtered, truncated uint64
	for _, s := range sources {
		ss := s.Stats()
		log.Info("source total", "name", s.Name(), "packets", ss.Packets, "bytes", ss.Bytes, "kernel_drops", ss.KernelDrops, "filtered", ss.Filtered, "truncated", ss.Truncated, "waited_for_buffer", ss.NoBuffer)
		filtered += ss.Filtered
		truncated += ss.Truncated
	}
	if truncated > 0 {
		log.Warn("frames longer than a buffer were cut to the buffer size (zchost run --buffer-size)", "truncated", truncated)
	}
	pps := 0.0
	if st.Elapsed > 0 {
		pps = float64(st.Packets) / st.Elapsed.Seconds()
	}
	args := []any{"copied_to_vm_regions", copies, "packets_in", st.Packets, "filtered", filtered, "truncated", truncated, "queued", sent, "dropped", drops, "received_reported_by_consumers", recv,
		"pps", uint64(pps)}
	if fanout > 1 {
		args = append(args, "fan_out_queues", fanout) // queued and dropped count each packet once per queue
	}
	log.Info("summary", args...)
}

// vmSpec is a VM and the queues it reads.
type vmSpec struct {
	path   string
	queues []int
}

// ParseExport parses zchost run's --vm VM[=Q,Q...] (vmm.CutSpec): the
// queues are checked against the cluster's nq queues.
func ParseExport(s string, nq int) (Export, error) {
	path, list, hasList := vmm.CutSpec(s)
	e := Export{VM: path}
	if hasList {
		for _, f := range strings.Split(list, ",") {
			q, err := strconv.Atoi(f)
			if err != nil || q < 0 || q >= nq {
				return Export{}, fmt.Errorf("%s: queue %q (want 0..%d)", s, f, nq-1)
			}
			e.Queues = append(e.Queues, q)
		}
	}
	return e, nil
}

// exportQueues returns the queues e exports: all nq when it lists none.
func exportQueues(e Export, nq int) []int {
	if len(e.Queues) > 0 {
		return e.Queues
	}
	qs := make([]int, nq)
	for i := range qs {
		qs[i] = i
	}
	return qs
}

// checkExports checks every queue is in range and, with exclusive (a
// region per VM), given to one VM only.
func checkExports(es []Export, nq int, exclusive bool) error {
	owner := map[int]string{}
	for _, e := range es {
		for _, q := range exportQueues(e, nq) {
			if q < 0 || q >= nq {
				return fmt.Errorf("vm %s: queue %d (want 0..%d)", e.VM, q, nq-1)
			}
			if prev, ok := owner[q]; ok && exclusive {
				return fmt.Errorf("queue %d given to both %s and %s (list each VM's queues, e.g. --vm %s=0 --vm %s=1, or use --shared)", q, prev, e.VM, prev, e.VM)
			}
			owner[q] = e.VM
		}
	}
	return nil
}

// waitConsumers waits until every queue has a consumer attached, up to d.
func waitConsumers(ctx context.Context, log hclog.Logger, stats func() []zc.QueueStats, d time.Duration) {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		missing := 0
		for _, s := range stats() {
			if s.Consumer == 0 {
				missing++
			}
		}
		if missing == 0 {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	log.Warn("starting without every consumer attached", "waited", d)
}
