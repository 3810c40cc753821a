package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/zcfabric/zc"
	"github.com/zcfabric/zc/host"
	"github.com/zcfabric/zc/host/status"
)

// How often the guard looks at the queues and publishes the status file:
// every guardEvery, the first looks guardFirst after the agent starts and
// then twice as long each time (ticker.Ramp: zchost stats soon shows a run
// that just began). An unchanged record is only touched (status.Touch),
// not rewritten: an idle agent wakes once a second for it and makes one
// system call.
const (
	guardFirst = 250 * time.Millisecond
	guardEvery = time.Second
)

// Recovery back-off: a VM whose region failed gets a fresh one after
// --vm-recover, then twice as long after each further failure, up to
// maxRecoverWait.
const maxRecoverWait = 10 * time.Minute

// vmRegion is a VM's own region (its trust domain) and the agent's
// producer ends in it.
type vmRegion struct {
	k      int // the region is zc.VMRegionPath(cluster, k)
	spec   vmSpec
	c      *zc.Cluster
	queues []*zc.Queue // producer ends, in spec.queues order
	export *vmExport

	// guard's, under guard.mu
	failure    string
	failedAt   time.Time
	wait       time.Duration // before the next fresh region
	recoveries int
	recovering bool
}

// guard watches an agent's queues from the side: it reports each failed
// queue once, re-creates a failed VM region after a back-off, and
// publishes the agent's own record for zchost stats (host/status). The
// balancer belongs to the engine's goroutine: guard swaps outputs only
// through the engine's Control channel.
type guard struct {
	log     hclog.Logger
	c       *zc.Cluster
	cfg     zc.Config // the VM regions' template (Path set per region)
	bal     *zc.Balancer
	control chan func()
	wake    func()         // the engine's Wake, set before running is
	recover time.Duration  // 0: never re-create
	running atomic.Bool    // the engine polls control
	wg      sync.WaitGroup // recreations in flight

	mu       sync.Mutex
	outs     []*zc.Queue // the balancer's outputs as last swapped
	vms      []*vmRegion
	reported map[*zc.Queue]bool
	changed  func()               // after a region was re-created (the agent's state file)
	lossless bool                 // the balancer waits for room (back-pressure)
	goneSaid map[*zc.Queue]uint32 // the gone reader last warned about, per queue

	pubMu sync.Mutex
	last  []byte // the status file last written, without its time

	// The finite sources, for the record of how far they got (set in
	// New), and the engine's SourceStats (under mu, once it runs).
	finite   []finiteSource
	srcStats func() []host.SourceStats
}

// finiteSource is a finite source of the agent's (host.Resumable): its
// index in the engine's sources, its name, where it started (resumed).
type finiteSource struct {
	index int
	name  string
	start uint64
}

// stats returns the counters of the queues as fed (host view).
func (g *guard) stats() []zc.QueueStats {
	g.mu.Lock()
	outs := g.outs
	g.mu.Unlock()
	if outs == nil {
		return g.c.Stats()
	}
	st := make([]zc.QueueStats, len(outs))
	for i, q := range outs {
		st[i] = q.Stats()
	}
	return st
}

// vmOf returns the VM region queue q is in, if any.
func (g *guard) vmOf(q *zc.Queue) *vmRegion {
	for _, v := range g.vms {
		for _, vq := range v.queues {
			if vq == q {
				return v
			}
		}
	}
	return nil
}

// tick reports new failures, starts due recoveries and publishes the
// status file.
func (g *guard) tick(ctx context.Context, now time.Time) {
	g.mu.Lock()
	for _, q := range g.outs {
		err := q.Err()
		if err == nil || g.reported[q] {
			continue
		}
		g.reported[q] = true
		v := g.vmOf(q)
		if v == nil {
			g.log.Error("queue failed; its packets are dropped and counted from now on, the other queues go on", "queue", q.Name(), "error", err)
			continue
		}
		if v.failure == "" {
			v.failure, v.failedAt = err.Error(), now
			if v.wait == 0 {
				v.wait = g.recover
			}
			args := []any{"vm", v.spec.path, "region", v.c.Path(), "queue", q.Name(), "error", err}
			if g.recover > 0 {
				args = append(args, "fresh_region_in", v.wait)
			}
			g.log.Error("vm region failed; its packets are dropped and counted from now on, other VMs go on", args...)
		}
	}
	g.sayGoneReaders()
	asked := g.recoveryAsked()
	var due []*vmRegion
	for _, v := range g.vms {
		if v.failure != "" && !v.recovering && g.recover > 0 && g.running.Load() && now.Sub(v.failedAt) >= v.wait {
			v.recovering = true
			due = append(due, v)
		}
	}
	g.mu.Unlock()
	if asked && g.running.Load() {
		// The engine may sleep for seconds between packets; woken, it
		// reclaims on every output and answers the request. (A full
		// Control holds a function that wakes it as well.)
		select {
		case g.control <- func() {}:
		default:
		}
		if g.wake != nil {
			g.wake()
		}
	}
	for _, v := range due {
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			g.recreate(ctx, v)
		}()
	}
	g.publish(now)
}

// sayGoneReaders warns, once per reader, about a queue whose reader is
// gone (killed) while it holds packets: nothing reads it until a new
// reader attaches, and with back-pressure every queue waits for it. (The
// reader's place is free: the next one takes it over.) Called with g.mu
// held.
func (g *guard) sayGoneReaders() {
	for _, q := range g.outs {
		st := q.Stats()
		if st.Depth <= 0 {
			continue // nothing waits for a reader (and no /proc read while idle)
		}
		if !q.PeerGone() {
			delete(g.goneSaid, q)
			continue
		}
		if g.goneSaid[q] == st.Consumer {
			continue
		}
		g.goneSaid[q] = st.Consumer
		if g.lossless {
			g.log.Warn("a queue's reader is gone and the queue is full of packets for it: lossless, every queue waits until a new reader attaches to it",
				"queue", q.Name(), "pid", st.Consumer, "depth", st.Depth)
		} else {
			g.log.Warn("a queue's reader is gone: its packets are dropped and counted until a new reader attaches to it",
				"queue", q.Name(), "pid", st.Consumer, "depth", st.Depth)
		}
	}
}

// recoveryAsked reports whether a reader that replaced a dead one waits
// on a queue for the engine to take back the dead reader's buffers (zc:
// Queue.RecoveryAsked): the engine answers with its next burst, which an
// agent between packets may not send for seconds, while the reader,
// with packets waiting, waits for zc.HandshakeWait only. Called with g.mu
// held. A guest that keeps asking wakes the engine once a tick.
func (g *guard) recoveryAsked() bool {
	for _, q := range g.outs {
		if q.RecoveryAsked() {
			g.log.Debug("a new reader waits for the buffers its dead predecessor held: waking the engine to take them back", "queue", q.Name())
			return true
		}
	}
	return false
}

// recreate gives VM v a fresh region in place of its failed one: made
// with the same name, swapped into the balancer on the engine's
// goroutine, then plugged in place of the old device.
func (g *guard) recreate(ctx context.Context, v *vmRegion) {
	err := g.swap(ctx, v)
	g.mu.Lock()
	v.recovering = false
	if err != nil {
		v.failedAt = time.Now() // try again after another wait
		g.mu.Unlock()
		g.log.Error("vm region not re-created", "vm", v.spec.path, "error", err, "next_try_in", v.wait)
		return
	}
	v.recoveries++
	v.failure = ""
	v.wait = min(2*v.wait, maxRecoverWait)
	g.mu.Unlock()
	g.log.Info("vm region re-created and plugged", "vm", v.spec.path, "region", v.c.Path(), "recoveries", v.recoveries)
	if g.changed != nil {
		g.changed()
	}
}

func (g *guard) swap(ctx context.Context, v *vmRegion) error {
	old := v.c
	old.Close() // name removed, closed for attachers; mapped until its queues close
	nc, fresh, err := g.openRegion(v.k, v.spec, zc.CreateCluster)
	if err != nil {
		return fmt.Errorf("fresh %w", err)
	}
	// The balancer is the engine's: swap there.
	err = g.onEngine(ctx, func() error {
		for i, qi := range v.spec.queues {
			if _, err := g.bal.Replace(qi, fresh[i]); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		for _, q := range fresh {
			q.Close()
		}
		nc.Close()
		return fmt.Errorf("fresh region for vm %s: %w", v.spec.path, err)
	}
	g.mu.Lock()
	olds := v.queues
	v.c, v.queues = nc, fresh
	for i, qi := range v.spec.queues {
		g.outs[qi] = fresh[i]
	}
	g.mu.Unlock()
	for _, q := range olds {
		q.Close()
	}
	rctx, cancel := context.WithTimeout(ctx, noticeDeadline+15*time.Second)
	defer cancel()
	return v.export.replace(rctx, nc)
}

// openRegion makes VM region k for the VM spec names (its queues, and
// buffers of its own for them) with open (zc.CreateCluster, or the
// agent's createOrAdopt) and attaches a producer end on each of its
// queues, in spec.queues order. On error nothing is left open.
func (g *guard) openRegion(k int, spec vmSpec, open func(zc.Config) (*zc.Cluster, error)) (*zc.Cluster, []*zc.Queue, error) {
	cfg := g.cfg
	cfg.Path = zc.VMRegionPath(g.c.ID(), k)
	cfg.Buffers = len(spec.queues)*cfg.QueueLen + 1024
	cfg.OneVM = true // plugged into this VM only: its guest may replace its own dead readers
	c, err := open(cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("region for vm %s: %w", spec.path, err)
	}
	qs := make([]*zc.Queue, 0, len(spec.queues))
	for _, qi := range spec.queues {
		q, err := c.Producer(qi)
		if err != nil {
			for _, q := range qs {
				q.Close()
			}
			c.Close()
			return nil, nil, fmt.Errorf("region for vm %s: %w", spec.path, err)
		}
		qs = append(qs, q)
	}
	return c, qs, nil
}

// publish writes the agent's record to the status file when it changed
// since the last write, else touches the file (the record is current at
// now).
func (g *guard) publish(now time.Time) {
	f := status.File{Cluster: g.c.ID(), PID: os.Getpid()}
	main := status.Region{Path: g.c.Path(), Generation: g.c.Generation(), Checksum: g.c.Checksum(), State: "ok"}
	var vms []status.Region
	g.mu.Lock()
	for _, q := range g.outs {
		if g.vmOf(q) != nil {
			continue
		}
		st := q.Stats()
		if st.State != "ok" && main.Failure == "" {
			main.State, main.Failure = "failed", st.Failure
		}
		main.Queues = append(main.Queues, st)
	}
	for _, v := range g.vms {
		r := status.Region{Path: v.c.Path(), VM: v.spec.path, Generation: v.c.Generation(), Checksum: v.c.Checksum(),
			State: "ok", Failure: v.failure, Recoveries: v.recoveries}
		switch {
		case v.recovering:
			r.State = "recovering"
		case v.failure != "":
			r.State = "failed"
		}
		for _, q := range v.queues {
			r.Queues = append(r.Queues, q.Stats())
		}
		vms = append(vms, r)
	}
	var ss []host.SourceStats
	if g.srcStats != nil {
		ss = g.srcStats()
	}
	g.mu.Unlock()
	f.Regions = append([]status.Region{main}, vms...)
	for _, s := range g.finite {
		pos := s.start // the engine has not published yet
		if s.index < len(ss) {
			pos = ss[s.index].Position
		}
		f.Sources = append(f.Sources, status.Source{Name: s.name, Position: pos})
	}
	g.pubMu.Lock()
	defer g.pubMu.Unlock()
	path := status.Path(g.c.ID())
	content, err := json.Marshal(f)
	if err == nil && bytes.Equal(content, g.last) {
		if err := status.Touch(path, now); err == nil {
			return
		}
		// Removed or unreadable: write it again.
	}
	f.Updated = now
	if err := status.Write(path, f); err != nil {
		g.log.Debug("status file", "error", err)
		return
	}
	g.last = content
}

// onEngine runs f, which changes the balancer, on the engine's goroutine
// while the engine runs (through its Control channel), else here.
func (g *guard) onEngine(ctx context.Context, f func() error) error {
	if g.bal == nil {
		return nil
	}
	if !g.running.Load() {
		return f()
	}
	var abandoned atomic.Bool
	done := make(chan error, 1)
	run := func() {
		if !abandoned.Load() {
			done <- f()
		}
	}
	// The engine may sleep on quiet sockets: wake it until it takes run
	// (a wake-up it consumed just before the send was ready is not lost
	// for long).
	for sent := false; !sent; {
		if g.wake != nil {
			g.wake()
		}
		select {
		case g.control <- run:
			sent = true
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	select {
	case err := <-done:
		return err
	case <-time.After(5 * time.Second):
		abandoned.Store(true)
		return fmt.Errorf("the engine did not take the change (stopped?)")
	}
}
