// Package agent is zchost's agent as a library: it creates (or, after a
// restart, adopts) a cluster, captures or generates packets into it,
// balances them over its queues, and exports queues to running VMs, each
// VM on a region of its own. `zchost run` builds a Config from its flags,
// `zchost daemon` from a configuration file; both run this code.
//
// The life of an Agent: New sets everything up (cluster, sources, VM
// regions, hot-plugs), Run feeds the queues until the sources end (then
// waits for the consumers to drain) or ctx ends, Close unplugs and
// removes what New made, or with Config.KeepPlugged leaves it all in
// place for a successor to adopt.
package agent

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/zcfabric/zc"
	"github.com/zcfabric/zc/host"
	"github.com/zcfabric/zc/host/status"
	"github.com/zcfabric/zc/host/vmm"
	"github.com/zcfabric/zc/internal/ticker"
)

// Export is one VM a cluster's queues are exported to.
type Export struct {
	// VM is a QMP socket path, or libvirt:DOMAIN[@SOCKET|URI] (vmm.Help).
	VM string
	// Queues are the queues the VM reads (none: all).
	Queues []int
}

// DefaultDrainTimeout is Config.DrainTimeout's default, as zchost run's.
const DefaultDrainTimeout = 10 * time.Second

// Config is what an agent runs: one cluster. Zero fields take the
// defaults of zchost run's flags.
type Config struct {
	// ID is the cluster id consumers attach to as zc:ID@Q.
	ID uint32
	// Queues, QueueLen, Buffers, BufferSize, QueueBuffers, Backing,
	// HugetlbDir and Group shape the cluster (zc.Config). Buffers 0:
	// room for every queue to be full, plus 1024, plus each AF_XDP
	// socket's fill ring.
	Queues, QueueLen, Buffers, BufferSize, QueueBuffers int
	Backing                                             zc.Backing
	HugetlbDir, Group                                   string
	// Sources are packet sources as host.ParseSource reads them
	// (gen:..., pcap:FILE, afxdp:IF, afpacket:IF, zc:IF). None: the
	// queues are fed by producers that attach (zsend -o zc:ID@Q).
	Sources []string
	// BPF is a classic BPF program (tcpdump -ddd) applied to every source.
	BPF string
	// Mode is the balancing mode; Lossless waits for room instead of
	// dropping when a queue is full.
	Mode     zc.HashMode
	Lossless bool
	// Exports are the VMs to hot-plug into. Shared puts every VM on the
	// cluster's own region (zero copy, trusted guests); otherwise each VM
	// gets a region of its own filled by one counted copy. Ctl offers
	// the regions over each VM's zc.ctl channel instead of plugging them
	// at start; Doorbell plugs ivshmem-doorbell devices (QMP or libvirt).
	Exports               []Export
	Shared, Ctl, Doorbell bool
	// VMRecover is the wait before a failed VM region is re-created (0:
	// never).
	VMRecover time.Duration
	// DrainTimeout bounds the wait for consumers that stopped reading
	// after the sources ended (0: DefaultDrainTimeout; negative: no
	// bound, until the context ends); WaitConsumers is how long to wait
	// before starting for every queue to have a consumer.
	DrainTimeout, WaitConsumers time.Duration
	// StatsInterval is how often Run logs counters (0: never).
	StatsInterval time.Duration
	// Keep serves the queues after the sources end until ctx ends.
	Keep bool
	// Adopt takes over the regions a previous agent left (killed, or
	// stopped with KeepPlugged) instead of replacing them, so that their
	// readers keep reading (see zc.AdoptCluster); StateDir is where the
	// agent records what it plugged where, for its successor.
	Adopt    bool
	StateDir string
	// KeepPlugged makes Close leave the regions and devices in place
	// (for an upgrade: the next agent adopts them).
	KeepPlugged bool
	// Log receives the agent's logs (default: hclog's default).
	Log hclog.Logger
}

// ErrConfig is a Config that cannot run.
var ErrConfig = errors.New("bad agent configuration")

// ErrSourceFailed: Run ended on its own (not interrupted) after one or
// more of its sources failed (a pcap file cut short, an interface gone);
// the others ran to their end.
var ErrSourceFailed = errors.New("sources failed")

// errLibvirtCtl refuses Ctl for libvirt domains: the zc.ctl port is found
// and hot-plugged over QMP.
var errLibvirtCtl = errors.New("--ctl is not supported for libvirt domains (the zc.ctl port is managed over QMP)")

// Agent runs one cluster: see the package documentation.
type Agent struct {
	cfg       Config
	log       hclog.Logger
	c         *zc.Cluster
	sources   []host.Source
	outs      []*zc.Queue // the cluster's own producer ends
	g         *guard
	bal       *zc.Balancer
	exports   []*vmExport
	exported  []bool // queues a VM reads: drained before the end
	eng       *host.Engine
	adopted   int // regions taken over from a predecessor
	stopG     func()
	closed    bool
	exMu      sync.Mutex // AddExport, RemoveExport
	pending   []Export   // exports waiting for their VM (Config.Adopt)
	stopWatch func()
	watchKick chan struct{} // AddExport: watchLoop has something to watch
	gap       time.Duration // adopted: since the predecessor was last alive
	marks     *status.Marks // the finite sources' positions, after every burst
	markSlot  []int         // per source: its slot in marks, or -1
}

// New sets up the agent cfg describes: the cluster (adopted when
// cfg.Adopt finds one a predecessor left), its sources, its VM regions
// and their devices. On error everything made so far is undone.
func New(ctx context.Context, cfg Config) (_ *Agent, err error) {
	if cfg.Queues == 0 {
		cfg.Queues = 1
	}
	if cfg.QueueLen == 0 {
		cfg.QueueLen = 4096
	}
	if cfg.BufferSize == 0 {
		cfg.BufferSize = 2048
	}
	if cfg.Queues < 1 {
		return nil, fmt.Errorf("%w: %d queues: need at least one", ErrConfig, cfg.Queues)
	}
	log := cfg.Log
	if log == nil {
		log = hclog.Default()
	}
	a := &Agent{cfg: cfg, log: log, exported: make([]bool, cfg.Queues)}
	defer func() {
		if err != nil {
			a.Close()
		}
	}()
	buffers := cfg.Buffers
	if buffers == 0 {
		// Room for every queue to be full with the kernel's rings stocked.
		buffers = cfg.Queues*cfg.QueueLen + 1024
		for _, spec := range cfg.Sources {
			n, err := host.RingBuffers(spec)
			if err != nil {
				return nil, err
			}
			buffers += n
		}
	}
	zcfg := zc.Config{
		ID: cfg.ID, Queues: cfg.Queues, QueueLen: cfg.QueueLen, BufferSize: cfg.BufferSize,
		Buffers: buffers, QueueBuffers: cfg.QueueBuffers, Backing: cfg.Backing, HugetlbDir: cfg.HugetlbDir, Group: cfg.Group,
	}
	if a.c, err = a.createOrAdopt(zcfg); err != nil {
		return nil, err
	}
	c := a.c
	var prevSent uint64          // what the predecessor's record says its queues were sent
	var prevSrcs []status.Source // and how far its finite sources got
	var finite []finiteSource    // this agent's, for its record
	if c.Adopted() {
		// The predecessor's status file says when it was last alive (it
		// writes or touches it every second): what the sources did not
		// capture meanwhile is their loss only, and this says for how long.
		if f, err := status.Read(status.Path(cfg.ID)); err == nil && !f.Checked.IsZero() {
			for _, r := range f.Regions {
				for _, q := range r.Queues {
					prevSent += q.Sent
				}
			}
			if prevSrcs, err = f.Positions(cfg.ID); err != nil {
				log.Warn("no marks of the predecessor's finite sources: they resume from its last record (up to a second of their frames may be sent again)", "error", err)
			}
			a.gap = max(time.Since(f.Checked), 0)
			log.Warn("predecessor gone; its sources saw nothing for this long (readers kept their queues)", "cluster", cfg.ID, "gap", a.gap.Round(time.Millisecond), "predecessor_pid", f.PID)
		}
	}
	log.Info("cluster "+map[bool]string{true: "adopted", false: "created"}[c.Adopted()], "cluster", c.ID(), "queues", c.NumQueues(), "path", c.Path(), "file", c.File(),
		"backing", c.Backing(), "size", c.Size(), "buffers", c.Pool().Cap(), "buffer_size", c.BufferSize(), "generation", c.Generation())

	for _, spec := range cfg.Sources {
		ss, err := host.ParseSource(spec, host.SourceOptions{Cluster: c, BPF: cfg.BPF,
			Logf: func(f string, a ...any) { log.Info(fmt.Sprintf(f, a...)) }})
		if err != nil {
			return nil, err
		}
		for j, s := range ss {
			log.Info("source", "name", s.Name())
			r, ok := s.(host.Resumable)
			if !ok || !r.Finite() {
				continue
			}
			finite = append(finite, finiteSource{index: len(a.sources) + j, name: s.Name()})
			if !c.Adopted() {
				continue
			}
			// The predecessor's record of a source of the same name
			// (each record used once: two alike sources resume in order).
			i := slices.IndexFunc(prevSrcs, func(p status.Source) bool { return p.Name == s.Name() })
			if i < 0 {
				log.Warn("a finite source starts from its beginning again after a restart (its predecessor's record has no position for it): what it sent before is sent again",
					"source", s.Name(), "cluster_sent_before", prevSent)
				continue
			}
			pos := prevSrcs[i].Position
			prevSrcs = slices.Delete(prevSrcs, i, i+1)
			r.Resume(pos)
			finite[len(finite)-1].start = pos
			log.Info("finite source resumed where its predecessor got (the last burst before a kill may be sent again)",
				"source", s.Name(), "position", pos)
		}
		a.sources = append(a.sources, ss...)
	}
	if len(finite) > 0 {
		start := make([]uint64, len(finite))
		a.markSlot = make([]int, len(a.sources))
		for i := range a.markSlot {
			a.markSlot[i] = -1
		}
		for k, s := range finite {
			start[k], a.markSlot[s.index] = s.start, k
		}
		if a.marks, err = status.CreateMarks(status.MarksPath(cfg.ID), os.Getpid(), start); err != nil {
			return nil, fmt.Errorf("zchost: cluster %d: %w", cfg.ID, err)
		}
	}
	// Without sources the producer ends stay free for outside producers
	// (zsend -o zc:ID@Q on the host or in a guest, --queue-buffers).
	for i := range cfg.Queues {
		if len(a.sources) == 0 {
			break
		}
		q, err := c.Producer(i)
		if err != nil {
			return nil, err
		}
		a.outs = append(a.outs, q)
	}
	outs := append([]*zc.Queue(nil), a.outs...)
	shared := cfg.Shared || len(a.sources) == 0
	if err := checkExports(cfg.Exports, cfg.Queues, !shared); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrConfig, err)
	}
	vmCfg := zcfg
	vmCfg.Buffers, vmCfg.Group = 0, ""
	a.g = &guard{log: log, c: c, control: make(chan func(), 1), recover: cfg.VMRecover, reported: map[*zc.Queue]bool{}, cfg: vmCfg,
		lossless: cfg.Lossless, goneSaid: map[*zc.Queue]uint32{}, finite: finite}
	for k, ex := range cfg.Exports {
		if cfg.Ctl && vmm.IsLibvirt(ex.VM) {
			return nil, fmt.Errorf("%w: vm %s: %v", ErrConfig, ex.VM, errLibvirtCtl)
		}
		queues := exportQueues(ex, cfg.Queues)
		for _, qi := range queues {
			a.exported[qi] = true
		}
		target := c
		var vr *vmRegion
		if !shared {
			// The VM's own region: same cluster id and queue numbers, its
			// own buffers; the balancer copies into it.
			spec := vmSpec{path: ex.VM, queues: queues}
			vc, qs, err := a.g.openRegion(k+1, spec, a.createOrAdopt)
			if err != nil {
				return nil, err
			}
			vr = &vmRegion{k: k + 1, spec: spec, c: vc, queues: qs}
			a.g.vms = append(a.g.vms, vr)
			for i, qi := range queues {
				outs[qi] = qs[i]
			}
			target = vc
			log.Info("vm region "+map[bool]string{true: "adopted", false: "created"}[vc.Adopted()], "vm", ex.VM, "path", vc.Path(), "queues", queues, "size", vc.Size())
		}
		e, err := newVMExport(ctx, log, ex.VM, target, queues, shared, cfg.Ctl, cfg.Doorbell, target.Adopted())
		if err != nil && cfg.Adopt && ctx.Err() == nil {
			// A service goes on without a VM that is not there (yet): its
			// region goes, and the export waits for the VM (watchExports).
			log.Warn("vm not reachable; its export waits for it", "vm", ex.VM, "error", err)
			if vr != nil {
				a.g.vms = a.g.vms[:len(a.g.vms)-1]
				for i, qi := range queues {
					vr.queues[i].Close()
					if qi < len(a.outs) {
						outs[qi] = a.outs[qi]
					}
				}
				vc := vr.c
				vc.Close()
			}
			for _, qi := range queues {
				a.exported[qi] = false
			}
			a.pending = append(a.pending, ex)
			continue
		}
		if err != nil {
			return nil, err
		}
		a.exports = append(a.exports, e)
		if vr != nil {
			vr.export = e
		}
	}
	a.saveState()
	policy := zc.Drop
	if cfg.Lossless {
		policy = zc.Wait
	}
	if len(a.sources) > 0 {
		if a.bal, err = zc.NewBalancer(outs, cfg.Mode, nil, policy); err == nil {
			err = a.bal.From(c.Pool())
		}
		if err != nil {
			return nil, err
		}
		log.Info("balancing", "mode", cfg.Mode, "lossless", cfg.Lossless)
	}
	// The counters of the queues as fed (a queue moved into a VM's own
	// region counts there), from the agent's own record.
	a.g.bal, a.g.outs, a.g.changed = a.bal, slices.Clone(outs), a.saveState // outs is the balancer's now
	if a.adopted > 0 {
		a.settle(ctx)
	}
	if cfg.Adopt {
		// On a copy: a.cfg.Exports shares cfg.Exports' array, which
		// DeleteFunc would shift and zero under the loop below (a
		// pending libvirt export was then never watched).
		a.cfg.Exports = slices.DeleteFunc(slices.Clone(a.cfg.Exports), func(e Export) bool {
			return slices.ContainsFunc(a.pending, func(p Export) bool { return p.VM == e.VM })
		})
		wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		a.watchKick = make(chan struct{}, 1)
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { defer wg.Done(); a.watchLoop(wctx) }()
		seen := map[string]bool{}
		for _, ex := range cfg.Exports {
			if vmm.IsLibvirt(ex.VM) && !seen[ex.VM] {
				seen[ex.VM] = true
				wg.Add(1)
				go func() { defer wg.Done(); a.watchLibvirt(wctx, ex.VM) }()
			}
		}
		a.stopWatch = func() { cancel(); wg.Wait() }
	}
	a.stopG = ticker.Ramp(guardFirst, guardEvery, func(now time.Time) { a.g.tick(ctx, now) })
	a.g.publish(time.Now())
	return a, nil
}

// createOrAdopt makes the region cfg describes, or with Config.Adopt
// takes over the one a predecessor left there.
func (a *Agent) createOrAdopt(cfg zc.Config) (*zc.Cluster, error) {
	if a.cfg.Adopt {
		c, err := zc.AdoptCluster(cfg)
		// A predecessor just killed may take a moment to exit.
		for deadline := time.Now().Add(3 * time.Second); errors.Is(err, zc.ErrExists) && time.Now().Before(deadline); {
			time.Sleep(50 * time.Millisecond)
			c, err = zc.AdoptCluster(cfg)
		}
		if err == nil {
			a.adopted++
			return c, nil
		}
		if !errors.Is(err, zc.ErrNotFound) {
			a.log.Warn("region not adopted; making a fresh one (its readers must attach again)", "error", err)
		}
	}
	return zc.CreateCluster(cfg)
}

// settle waits for the consumers of adopted regions to give back what
// they held when the predecessor went away.
func (a *Agent) settle(ctx context.Context) {
	start := time.Now()
	left := a.c.Settle(ctx, zc.AdoptWait)
	for _, v := range a.g.vms {
		if v.c.Adopted() {
			left += v.c.Settle(ctx, zc.AdoptWait)
		}
	}
	a.log.Info("regions adopted", "regions", a.adopted, "loans_not_returned", left, "took", time.Since(start))
}

// SetKeepPlugged changes what Close does (Config.KeepPlugged) while the
// agent runs: a reloaded configuration.
func (a *Agent) SetKeepPlugged(keep bool) {
	a.exMu.Lock()
	a.cfg.KeepPlugged = keep
	a.exMu.Unlock()
}

// Cluster returns the agent's cluster.
func (a *Agent) Cluster() *zc.Cluster { return a.c }

// Gap returns, for an adopted cluster, how long before New its
// predecessor was last seen alive (its status file, written every
// second): how long the sources captured nothing. 0 when not adopted.
func (a *Agent) Gap() time.Duration { return a.gap }

// Adopted returns how many regions New took over from a predecessor.
func (a *Agent) Adopted() int { return a.adopted }

// Stats returns the counters of the queues as fed: a queue exported to a
// VM's own region counts there. They are the agent's own record
// (zc.QueueStats) and safe to read while Run runs.
func (a *Agent) Stats() []zc.QueueStats { return a.g.stats() }

// SourceStats returns the sources' counters (empty before Run).
func (a *Agent) SourceStats() []host.SourceStats {
	if a.eng == nil {
		return nil
	}
	return a.eng.SourceStats()
}

// Sources returns the agent's sources.
func (a *Agent) Sources() []host.Source { return a.sources }

// Run feeds the queues until the sources end and the consumers drained
// what they hold (or Config.Keep: until ctx ends), logging counters every
// Config.StatsInterval and a summary at the end.
func (a *Agent) Run(ctx context.Context) error {
	cfg, log := a.cfg, a.log
	stats := a.g.stats
	if cfg.WaitConsumers > 0 && len(a.sources) > 0 {
		waitConsumers(ctx, log, stats, cfg.WaitConsumers)
	}
	a.eng = &host.Engine{Pool: a.c.Pool(), Sources: a.sources, Balancer: a.bal, Control: a.g.control,
		OnStart: func() { log.Info("sources started") },
		OnSourceError: func(s host.Source, err error) {
			log.Error("source failed; the others go on", "source", s.Name(), "error", err)
		}}
	if a.marks != nil {
		a.eng.OnPosition = func(i int, pos uint64) {
			if k := a.markSlot[i]; k >= 0 {
				a.marks.Set(k, pos)
			}
		}
	}
	a.g.mu.Lock()
	a.g.srcStats = a.eng.SourceStats
	a.g.mu.Unlock()
	base := stats() // what adopted regions carry over from a predecessor
	stopStats := startStats(log, stats, a.sources, a.eng.SourceStats, cfg.StatsInterval)
	var st host.EngineStats
	if len(a.sources) > 0 {
		var err error
		a.g.wake = a.eng.Wake
		a.g.running.Store(true)
		st, err = a.eng.Run(ctx)
		a.g.running.Store(false)
		if err != nil {
			stopStats()
			return err
		}
		log.Info("sources done", "packets", st.Packets, "bytes", st.Bytes, "seconds", st.Elapsed.Seconds(), "failed", len(st.Failed))
	}
	switch {
	case len(a.sources) == 0 || cfg.Keep:
		log.Info("serving; interrupt to stop")
		a.serve(ctx)
	case len(st.Failed) == len(a.sources) && ctx.Err() == nil:
		// Nothing feeds the queues any more, but what they hold and their
		// counters stay for the consumers and zchost stats.
		log.Error("every source failed; serving the queues until interrupted", "errors", errors.Join(st.Failed...))
		a.serve(ctx)
	default:
		drain(ctx, log, stats, a.exported, a.bal, cmp.Or(cfg.DrainTimeout, DefaultDrainTimeout))
	}
	stopStats()
	var copies uint64
	if a.bal != nil {
		copies = a.bal.Copies
	}
	fanout := 1
	if cfg.Mode == zc.ModeFanout {
		fanout = cfg.Queues
	}
	summary(log, stats, base, a.sources, st, copies, fanout)
	if len(st.Failed) > 0 && ctx.Err() == nil {
		// The run ended on its own, and the queues carried what the other
		// sources gave, but part of the input is lost: a replay script
		// must learn it. (Stopped by the operator, it ends cleanly: the
		// failures are in the log.)
		return fmt.Errorf("%w: %d of %d: %w", ErrSourceFailed, len(st.Failed), len(a.sources), errors.Join(st.Failed...))
	}
	return nil
}

// serve waits for ctx to end once the sources are done (or with none),
// standing in for the engine: the guard's functions run here (a VM
// region swapped), and after each every output reclaims, which answers
// a new reader's handshake (the guard wakes it so: guard.recoveryAsked).
func (a *Agent) serve(ctx context.Context) {
	if a.bal == nil {
		<-ctx.Done()
		return
	}
	a.g.running.Store(true)
	defer a.g.running.Store(false)
	for {
		select {
		case <-ctx.Done():
			return
		case f := <-a.g.control:
			f()
			a.bal.Reclaim()
		}
	}
}

// Close stops the guard, unplugs every VM (after a notice when the VM
// has a control channel) and removes the regions, or with
// Config.KeepPlugged leaves devices, regions and state in place for a
// successor to adopt.
func (a *Agent) Close() error {
	if a.closed {
		return nil
	}
	a.closed = true
	if a.stopWatch != nil {
		a.stopWatch()
	}
	if a.stopG != nil {
		a.stopG()
		a.g.wg.Wait()
	}
	a.exMu.Lock()
	keep := a.cfg.KeepPlugged
	a.exMu.Unlock()
	if keep && a.g != nil {
		// The last record, for the next agent: its counters and how far
		// the finite sources got, exactly (a killed agent's is up to a
		// second old).
		a.g.publish(time.Now())
	}
	for _, e := range a.exports {
		if keep {
			e.abandon()
		} else {
			e.close()
		}
	}
	if a.g != nil {
		for _, v := range a.g.vms {
			for _, q := range v.queues {
				q.Close()
			}
			closeCluster(v.c, keep)
		}
	}
	for _, q := range a.outs {
		q.Close()
	}
	for _, s := range a.sources {
		s.Close()
	}
	a.marks.Close()
	if a.c != nil {
		if keep {
			a.log.Info("regions and devices kept for the next agent", "cluster", a.c.ID(), "vms", len(a.exports))
		} else {
			os.Remove(status.Path(a.c.ID()))
			if a.marks != nil {
				os.Remove(status.MarksPath(a.c.ID()))
			}
			a.removeState()
		}
		closeCluster(a.c, keep)
	}
	return nil
}

func closeCluster(c *zc.Cluster, keep bool) {
	if keep {
		c.Leave()
	} else {
		c.Close()
	}
}
