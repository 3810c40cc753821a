package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/zcfabric/zc"
	"github.com/zcfabric/zc/host"
	"github.com/zcfabric/zc/host/libvirt"
	"github.com/zcfabric/zc/host/status"
)

func init() {
	register("run", "create a cluster, capture or generate into it, balance over its queues, export them", runCmd)
}

// multiFlag collects a repeatable flag.
type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, " ") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

type runOpts struct {
	cluster       uint
	in            multiFlag
	vms           multiFlag
	queues        int
	hash          string
	queueLen      int
	buffers       int
	bufferSize    int
	queueBuffers  int
	lossless      bool
	backing       string
	hugeDir       string
	interval      time.Duration
	keep          bool
	waitConsumers time.Duration
	shared        bool
	ctl           bool
	cpuprofile    string
	drainTimeout  time.Duration
	vmRecover     time.Duration
	doorbell      bool
	group         string
	bpf           string
	log           logFlags
}

func runFlags(o *runOpts) *flag.FlagSet {
	fs := newFlags("run", "-c ID [-i SOURCE ...] [-n QUEUES] [-m HASH] [--lossless] [--vm QMP.sock|libvirt:DOMAIN ...]")
	for _, n := range []string{"c", "cluster"} {
		fs.UintVar(&o.cluster, n, 99, "cluster `id` consumers attach to as zc:ID@QUEUE")
	}
	for _, n := range []string{"i", "in"} {
		fs.Var(&o.in, n, "packet `source`, repeatable: gen:len=64,count=1000000[,rate=PPS][,flows=N][,after=5s], pcap:FILE,\n"+
			"zc:IF (best of AF_XDP/AF_PACKET), afxdp:IF[@Q][?mode=copy|zerocopy&xdp=native|generic&ring=N],\n"+
			"afpacket:IF. None: create the cluster and\n"+
			"wait (queues fed by producers that attach, e.g. zsend -o zc:ID@Q)")
	}
	for _, n := range []string{"n", "queues"} {
		fs.IntVar(&o.queues, n, 1, "number of egress `queues`")
	}
	for _, n := range []string{"m", "hash"} {
		fs.StringVar(&o.hash, n, "0", "balancing `mode`: 0 round-robin, 1 IP pair, 2 fan-out (every packet to every queue),\n3 symmetric 5-tuple, 4 GTP-U inner IP pair")
	}
	for _, n := range []string{"q", "queue-len"} {
		fs.IntVar(&o.queueLen, n, 4096, "queue capacity in `packets` (a power of two)")
	}
	for _, n := range []string{"b", "buffers"} {
		fs.IntVar(&o.buffers, n, 0, "engine pool `buffers` (default: queues*queue-len+1024, plus the fill ring of each AF_XDP socket: 4096 each unless ?ring=N)")
	}
	fs.IntVar(&o.bufferSize, "buffer-size", 2048, "buffer size in `bytes` (a power of two; 2048 or 4096 for AF_XDP)")
	fs.IntVar(&o.queueBuffers, "queue-buffers", 0, "buffers each queue owns for an outside `producer` (zsend -o, a guest)")
	fs.BoolVar(&o.lossless, "lossless", false, "back-pressure: wait for room instead of dropping when a queue is full")
	fs.StringVar(&o.backing, "backing", "auto", "region memory: auto (hugetlbfs if mounted with free pages, else /dev/shm), shm, hugetlbfs, memfd")
	fs.StringVar(&o.group, "group", "", "let this `group` (name or id) open the cluster's region file too (mode 0660; default 0600:\n"+
		"only zchost's user, and QEMU's user for a VM's region, may open it)")
	fs.StringVar(&o.hugeDir, "hugetlbfs", "", "hugetlbfs mount `dir` (default: found in /proc/mounts)")
	fs.Var(&o.vms, "vm", "hot-plug into the running `VM[=Q,Q..]` (repeatable): its QMP socket path, or libvirt:DOMAIN[@SOCKET|URI]\n"+
		"for a libvirt domain (a <shmem> device; regions in /dev/shm, no --ctl). By default each VM\n"+
		"gets a region of its own (its own trust domain) holding the listed queues (all if none), filled by one\n"+
		"counted copy; the guest opens them by the same names, zc:ID@Q. With --shared, or with no -i sources\n"+
		"(queues fed by producers in the VMs), the VM maps the cluster's own region: zero copy, trusted guests")
	fs.BoolVar(&o.ctl, "ctl", false, "offer the regions over each VM's zc.ctl control channel (virtio-serial; hot-plugged when the VM\n"+
		"has none) and plug them when the guest asks (zcguest ctl plug) instead of at start. Without it a zc.ctl\n"+
		"port the VM has is served too. Either way the guest gets an unplug-notice before an unplug")
	fs.DurationVar(&o.vmRecover, "vm-recover", 10*time.Second, "a VM whose region fails (its guest broke a ring, or the region file was truncated) keeps\n"+
		"its packets dropped and counted; after this `long` it gets a fresh region, plugged in place of the\n"+
		"broken device (offered again with --ctl). Each further failure doubles the wait, up to 10m. 0: never")
	fs.BoolVar(&o.doorbell, "doorbell", false, "plug each VM's region as an ivshmem-doorbell device that zchost serves, so guest readers sleep on an\n"+
		"interrupt instead of polling and wake in microseconds (QMP VMs only; the guest needs a q35 machine with\n"+
		"-device intel-iommu,intremap=on and the vfio-pci module: QEMU's doorbell interrupts only through MSI-X;\n"+
		"other guests poll, and say so)")
	fs.BoolVar(&o.shared, "shared", false, "put every VM on the cluster's own region (zero copy; only for guests you trust)")
	fs.DurationVar(&o.interval, "stats-interval", time.Second, "print source and queue counters this often (0: never)")
	fs.DurationVar(&o.waitConsumers, "wait-consumers", 0, "before the sources start, wait up to this `long` for every queue to have a consumer attached")
	fs.StringVar(&o.cpuprofile, "cpuprofile", "", "write a Go CPU profile of the run to `file` (go tool pprof)")
	fs.DurationVar(&o.drainTimeout, "drain-timeout", 10*time.Second, "after the sources end, give up waiting for consumers that read nothing for this `long`")
	fs.BoolVar(&o.keep, "keep", false, "keep the cluster after the sources end, until interrupted")
	fs.StringVar(&o.bpf, "bpf", "", "classic BPF `program` applied to every source (tcpdump -ddd output)")
	o.log.add(fs)
	return fs
}

func runCmd(args []string) error {
	var o runOpts
	fs := runFlags(&o)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0))
	}
	mode, ok := zc.ParseHashMode(o.hash)
	if !ok {
		return fmt.Errorf("%w: -m %q: want 0 (round-robin), 1 (IP pair), 2 (fan-out), 3 (5-tuple) or 4 (GTP)", errUsage, o.hash)
	}
	backing, err := ivshmemBacking(o.backing)
	if err != nil {
		return fmt.Errorf("%w: --backing: %v", errUsage, err)
	}
	if o.queues < 1 {
		return fmt.Errorf("%w: -n %d: need at least one queue", errUsage, o.queues)
	}
	log := o.log.logger("zchost")
	if o.cpuprofile != "" {
		f, err := os.Create(o.cpuprofile)
		if err != nil {
			return fmt.Errorf("cpu profile: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("cpu profile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}

	buffers := o.buffers
	if buffers == 0 {
		// Room for every queue to be full with the kernel's rings stocked.
		buffers = o.queues*o.queueLen + 1024
		for _, spec := range o.in {
			n, err := host.RingBuffers(spec)
			if err != nil {
				return err
			}
			buffers += n
		}
	}
	c, err := zc.CreateCluster(zc.Config{
		ID: uint32(o.cluster), Queues: o.queues, QueueLen: o.queueLen, BufferSize: o.bufferSize,
		Buffers: buffers, QueueBuffers: o.queueBuffers, Backing: backing, HugetlbDir: o.hugeDir, Group: o.group,
	})
	if err != nil {
		return err
	}
	defer c.Close()
	log.Info("cluster created", "cluster", c.ID(), "queues", c.NumQueues(), "path", c.Path(), "file", c.File(),
		"backing", c.Backing(), "size", c.Size(), "buffers", c.Pool().Cap(), "buffer_size", c.BufferSize())

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	var sources []host.Source
	for _, spec := range o.in {
		ss, err := host.ParseSource(spec, host.SourceOptions{Cluster: c, BPF: o.bpf,
			Logf: func(f string, a ...any) { log.Info(fmt.Sprintf(f, a...)) }})
		if err != nil {
			return err
		}
		for _, s := range ss {
			defer s.Close()
			log.Info("source", "name", s.Name())
		}
		sources = append(sources, ss...)
	}

	// Without sources the producer ends stay free for outside producers
	// (zsend -o zc:ID@Q on the host or in a guest, --queue-buffers).
	var outs []*zc.Queue
	for i := range o.queues {
		if len(sources) == 0 {
			break
		}
		q, err := c.Producer(i)
		if err != nil {
			return err
		}
		defer q.Close()
		outs = append(outs, q)
	}
	shared := o.shared || len(sources) == 0
	specs, err := parseVMs(o.vms, o.queues, !shared)
	if err != nil {
		return fmt.Errorf("%w: --vm: %v", errUsage, err)
	}
	g := &guard{log: log, c: c, control: make(chan func(), 1), recover: o.vmRecover, reported: map[*zc.Queue]bool{},
		cfg: zc.Config{ID: uint32(o.cluster), Queues: o.queues, QueueLen: o.queueLen, BufferSize: o.bufferSize,
			Backing: backing, HugetlbDir: o.hugeDir}}
	defer os.Remove(status.Path(c.ID()))
	exported := make([]bool, o.queues) // queues a VM reads: drained before exit
	for k, vm := range specs {
		if o.ctl && libvirt.IsSpec(vm.path) {
			return fmt.Errorf("%w: --vm %s: %v", errUsage, vm.path, errLibvirtCtl)
		}
		if o.doorbell && libvirt.IsSpec(vm.path) {
			return fmt.Errorf("%w: --vm %s: --doorbell plugs through QMP; libvirt domains get ivshmem-plain (guests poll)", errUsage, vm.path)
		}
		for _, qi := range vm.queues {
			exported[qi] = true
		}
		target := c
		var vr *vmRegion
		if !shared {
			// The VM's own region: same cluster id and queue numbers, its
			// own buffers; the balancer copies into it.
			cfg := g.cfg
			cfg.Buffers = len(vm.queues)*o.queueLen + 1024
			cfg.Path = vmRegionPath(uint32(o.cluster), k+1)
			vc, err := zc.CreateCluster(cfg)
			if err != nil {
				return fmt.Errorf("region for vm %s: %w", vm.path, err)
			}
			vr = &vmRegion{k: k + 1, spec: vm, c: vc}
			// Closed at the end through vr: a recovery replaces them.
			defer func() {
				for _, q := range vr.queues {
					q.Close()
				}
				vr.c.Close()
			}()
			for _, qi := range vm.queues {
				q, err := vc.Producer(qi)
				if err != nil {
					return err
				}
				vr.queues = append(vr.queues, q)
				outs[qi] = q
			}
			target = vc
			log.Info("vm region", "vm", vm.path, "path", vc.Path(), "queues", vm.queues, "size", vc.Size())
		}
		ex, err := newVMExport(ctx, log, vm.path, target, vm.queues, shared, o.ctl, o.doorbell)
		if err != nil {
			return err
		}
		defer ex.close()
		if vr != nil {
			vr.export = ex
			g.vms = append(g.vms, vr)
		}
	}
	policy := zc.Drop
	if o.lossless {
		policy = zc.Wait
	}
	var bal *zc.Balancer
	if len(sources) > 0 {
		bal, err = zc.NewBalancer(outs, mode, nil, policy)
		if err == nil {
			err = bal.From(c.Pool())
		}
		if err != nil {
			return err
		}
		log.Info("balancing", "mode", mode, "lossless", o.lossless)
	}

	// The counters of the queues as fed (a queue moved into a VM's own
	// region counts there), from the agent's own record.
	g.bal, g.outs = bal, outs
	stats := g.stats
	stopGuard := every(guardEvery, func(now time.Time) { g.tick(ctx, now) })
	defer func() { stopGuard(); g.wg.Wait() }()
	if o.waitConsumers > 0 && len(sources) > 0 {
		waitConsumers(ctx, log, stats, o.waitConsumers)
	}
	eng := &host.Engine{Pool: c.Pool(), Sources: sources, Balancer: bal, Control: g.control,
		OnStart: func() { log.Info("sources started") },
		OnSourceError: func(s host.Source, err error) {
			log.Error("source failed; the others go on", "source", s.Name(), "error", err)
		}}
	stopStats := startStats(log, stats, sources, eng.SourceStats, o.interval)
	var st host.EngineStats
	if len(sources) > 0 {
		g.running.Store(true)
		st, err = eng.Run(ctx)
		g.running.Store(false)
		if err != nil {
			stopStats()
			return err
		}
		log.Info("sources done", "packets", st.Packets, "bytes", st.Bytes, "seconds", st.Elapsed.Seconds(), "failed", len(st.Failed))
	}
	switch {
	case len(sources) == 0 || o.keep:
		log.Info("serving; interrupt to stop")
		<-ctx.Done()
	case len(st.Failed) == len(sources) && ctx.Err() == nil:
		// Nothing feeds the queues any more, but what they hold and their
		// counters stay for the consumers and zchost stats.
		log.Error("every source failed; serving the queues until interrupted", "errors", errors.Join(st.Failed...))
		<-ctx.Done()
	default:
		drain(ctx, log, stats, exported, bal, o.drainTimeout)
	}
	stopStats()
	var copies uint64
	if bal != nil {
		copies = bal.Copies
	}
	summary(log, stats, sources, st, copies)
	return nil
}

// drain waits until every queue that has a consumer attached, or that a
// VM reads, is empty (its consumer read everything), or ctx ends.
// A consumer that stops reading (stuck, or a hostile guest) cannot hold
// the agent: after stall with no progress on any waiting queue it gives
// up, saying how many packets were left. Progress is what the agent
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
		} else if time.Since(lastProgress) > stall {
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

func ivshmemBacking(s string) (zc.Backing, error) {
	switch s {
	case "", "auto":
		return zc.BackingAuto, nil
	case "shm":
		return zc.BackingShm, nil
	case "huge", "hugetlb", "hugetlbfs":
		return zc.BackingHugetlb, nil
	case "memfd":
		return zc.BackingMemfd, nil
	}
	return 0, errors.New("want auto, shm, hugetlbfs or memfd")
}

// startStats logs per-source and per-queue counters every interval until
// the returned function is called. srcStats gives the sources' counters
// (Engine.SourceStats; empty before the engine runs).
func startStats(log hclog.Logger, stats func() []zc.QueueStats, sources []host.Source, srcStats func() []host.SourceStats, interval time.Duration) func() {
	if interval <= 0 {
		return func() {}
	}
	prev, prevSrc, last := stats(), srcStats(), time.Now()
	return every(interval, func(now time.Time) {
		cur, curSrc := stats(), srcStats()
		secs := now.Sub(last).Seconds()
		for i, ss := range curSrc {
			var p host.SourceStats
			if i < len(prevSrc) {
				p = prevSrc[i]
			}
			log.Info("source stats", "name", sources[i].Name(), "pkts", ss.Packets, "pps", uint64(float64(ss.Packets-p.Packets)/secs),
				"kernel_drops", ss.KernelDrops, "kernel_drops_per_s", uint64(float64(ss.KernelDrops-p.KernelDrops)/secs),
				"filtered", ss.Filtered)
		}
		for i, s := range cur {
			log.Info("queue", "q", i, "sent", s.Sent, "pps", uint64(float64(s.Sent-prev[i].Sent)/secs),
				"drops", s.Drops, "received_reported", s.Received, "depth", s.Depth, "consumer", s.Consumer, "state", s.State)
		}
		prev, prevSrc, last = cur, curSrc, now
	})
}

func summary(log hclog.Logger, stats func() []zc.QueueStats, sources []host.Source, st host.EngineStats, copies uint64) {
	// sent, drops and bad returns are the agent's own counts; received is
	// what each consumer wrote in the region (a guest may write anything),
	// so it is shown as reported and summed only over queues that work.
	var sent, drops, recv uint64
	for i, s := range stats() {
		args := []any{"q", i, "sent", s.Sent, "drops", s.Drops, "received_reported", s.Received, "bad_returns", s.BadReturns}
		if s.State != "ok" {
			args = append(args, "state", s.State, "failure", s.Failure)
		} else {
			recv += s.Received
		}
		log.Info("queue total", args...)
		sent += s.Sent
		drops += s.Drops
	}
	for _, s := range sources {
		ss := s.Stats()
		log.Info("source total", "name", s.Name(), "packets", ss.Packets, "bytes", ss.Bytes, "kernel_drops", ss.KernelDrops, "waited_for_buffer", ss.NoBuffer)
	}
	pps := 0.0
	if st.Elapsed > 0 {
		pps = float64(st.Packets) / st.Elapsed.Seconds()
	}
	log.Info("summary", "copied_to_vm_regions", copies, "packets_in", st.Packets, "queued", sent, "dropped", drops, "received_reported_by_consumers", recv,
		"pps", uint64(pps))
}

type vmSpec struct {
	path   string
	queues []int
}

// parseVMs parses --vm PATH[=Q,Q...]. With exclusive (a region per VM)
// a queue goes to one VM only.
func parseVMs(specs []string, nq int, exclusive bool) ([]vmSpec, error) {
	var out []vmSpec
	owner := map[int]string{}
	for _, s := range specs {
		path, list, hasList := cutVMSpec(s)
		v := vmSpec{path: path}
		if hasList {
			for _, f := range strings.Split(list, ",") {
				q, err := strconv.Atoi(f)
				if err != nil || q < 0 || q >= nq {
					return nil, fmt.Errorf("%s: queue %q (want 0..%d)", s, f, nq-1)
				}
				v.queues = append(v.queues, q)
			}
		} else {
			for q := range nq {
				v.queues = append(v.queues, q)
			}
		}
		for _, q := range v.queues {
			if prev, ok := owner[q]; ok && exclusive {
				return nil, fmt.Errorf("queue %d given to both %s and %s (list each VM's queues, e.g. --vm %s=0 --vm %s=1, or use --shared)", q, prev, path, prev, path)
			}
			owner[q] = path
		}
		out = append(out, v)
	}
	return out, nil
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
