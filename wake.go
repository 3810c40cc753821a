package zc

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/zcfabric/zc/internal/idle"
	"github.com/zcfabric/zc/ivshmem"
)

// Sleeping and waking (format v2): a side that runs out of work polls a
// little, naps a little (idle.Pacer), and once a nap gathered nothing it
// announces in the ring's wake word that it sleeps, and sleeps until the
// producer's next enqueue wakes it (see ivshmem's ring.go for the
// protocol):
//
//   - a host process whose peer is a host process sleeps in futex(2) on
//     the producer index (WakeFutex);
//   - a guest whose region came as an ivshmem-doorbell device it can take
//     interrupts from (guest.Doorbell: vfio-pci, q35 with a virtual
//     IOMMU) sleeps on the interrupt (WakeDoorbell). The process serving
//     that doorbell (the agent) rings it when it is the peer
//     (Cluster.OnGuestWake); when the peer is another host process, the
//     guest rings the agent as it goes to sleep, the agent watches the
//     ring for it (Cluster.AwaitGuestSleep, asleep on the ring's index
//     word, which the peer's notify FUTEX_WAKEs) and rings the guest;
//   - a host process whose peer is a guest with a doorbell device sleeps
//     in futex(2) too, announcing WakeDoorbell: the guest rings the
//     doorbell server (the agent), whose relay FUTEX_WAKEs it
//     (Cluster.WakeDoorbellSleepers);
//   - anything else polls: a guest without a doorbell interrupt, a host
//     process whose guest peer has no doorbell.
//
// Whether a peer rings is the rings word of the ring it produces
// (ivshmem RingProducer.SetRings): a guest end writes it at attach, a host
// end whenever this process starts or stops serving a doorbell for the
// region.

// SleepSlice is the longest single sleep: the sleeper then looks at the
// region (closed, re-created) and sleeps again. It bounds what a withheld
// wake-up costs; a context that ends wakes the sleeper at once, and so
// does the creator closing the region. (Each slice costs the Go runtime a
// dozen wake-ups of its own: a second keeps an idle consumer near 0.1% of
// a CPU.)
const SleepSlice = time.Second

// notify wakes the consumer of ring p if it asked to be woken, after
// entries were enqueued on p. A peer that keeps asking costs one wake-up
// per burst sent to it.
func (q *Queue) notify(p *ivshmem.RingProducer) {
	switch p.Waiting() {
	case ivshmem.WakeFutex:
		if q.r.side == ivshmem.SideHost {
			p.Wake()
			q.wakes.Add(1)
		}
	case ivshmem.WakeDoorbell:
		if q.r.side == ivshmem.SideGuest {
			// The host side sleeps on its doorbell eventfd: ring peer 0.
			if b, _ := q.r.guestBell(); b != nil {
				b.Ring(0, 0)
				q.wakes.Add(1)
			}
		} else if fs := q.r.ringGuest.Load(); fs != nil {
			for _, f := range *fs {
				f()
			}
			q.wakes.Add(1)
		} else {
			// Not the process serving the guest's doorbell: that one
			// watches this ring for the guest (Cluster.AwaitGuestSleep),
			// asleep on the index word; wake it.
			p.Wake()
			q.wakes.Add(1)
		}
	}
}

// OnGuestWake adds f to what wakes the guests of this cluster's region
// that sleep on their ivshmem doorbells (the agent rings the VMs through
// its doorbell servers, one f per export): called on a producer's
// goroutine (or a consumer's, after returning buffers), once per burst a
// sleeper asked for, whichever guest it is; it must not block. From then
// on this process's queue ends tell their guest peers that they ring
// (the rings word), so those sleep rather than poll. The function
// returned removes f.
func (c *Cluster) OnGuestWake(f func()) (remove func()) {
	r := c.r
	fp := &f
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ringers = append(r.ringers, fp)
	r.publishRingers()
	return func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		for i, g := range r.ringers {
			if g == fp {
				r.ringers = append(r.ringers[:i:i], r.ringers[i+1:]...)
				break
			}
		}
		r.publishRingers()
	}
}

// publishRingers stores the ring functions for the hot path and writes
// the rings word of every ring this process's host ends produce (under
// r.mu).
func (r *region) publishRingers() {
	if len(r.ringers) == 0 {
		r.ringGuest.Store(nil)
	} else {
		fs := make([]func(), len(r.ringers))
		for i, f := range r.ringers {
			fs[i] = *f
		}
		r.ringGuest.Store(&fs)
	}
	on := len(r.ringers) > 0
	protect(func() {
		for p := range r.prods {
			p.SetRings(on)
		}
	})
}

// addProd registers p, a ring a host end of this process produces, and
// writes its rings word; a guest end writes whether it has a doorbell to
// ring. Called at attach, under the fault guard.
func (r *region) addProd(p *ivshmem.RingProducer) {
	if r.side == ivshmem.SideGuest {
		b, _ := r.guestBell()
		p.SetRings(b != nil)
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.prods == nil {
		r.prods = make(map[*ivshmem.RingProducer]struct{})
	}
	r.prods[p] = struct{}{}
	p.SetRings(len(r.ringers) > 0)
}

// dropProd forgets p (its end detaches).
func (r *region) dropProd(p *ivshmem.RingProducer) {
	if p == nil || r.side == ivshmem.SideGuest {
		return
	}
	r.mu.Lock()
	delete(r.prods, p)
	r.mu.Unlock()
}

// WakeDoorbellSleepers answers a guest's ring: the agent calls it each
// time a guest rings one of its doorbell servers for this region. It
// wakes the host processes asleep on a ring whose producer is a guest
// (they announced WakeDoorbell and wait in futex(2)), and returns how
// many; it calls guest (when not nil) for each guest asleep on a ring
// whose host producer cannot ring it, for the caller to watch
// (AwaitGuestSleep). It answers each sleep once, so a guest that rings
// without pause costs each sleeper at most one answer per sleep. Safe
// from any goroutine.
func (c *Cluster) WakeDoorbellSleepers(guest func(ivshmem.GuestSleep)) (n int) {
	r := c.r
	r.wakerMu.Lock()
	defer r.wakerMu.Unlock()
	if r.waker == nil {
		r.waker = r.l.NewDoorbellWaker(r.b)
	}
	protect(func() { n = r.waker.Wake(guest) }) // a truncated file faults: nobody to wake
	return n
}

// AwaitGuestSleep waits, at most d, while the guest of g (reported by
// WakeDoorbellSleepers) sleeps on its empty ring, whose producer is a host
// process that cannot ring it: ring says the ring has entries now (ring
// the guest), asleep false that its sleep is over. Call it again while it
// returns false, true. The host producer's next enqueue ends the wait
// (its notify wakes the ring's index word). A fault on the region counts
// as the sleep being over.
func (c *Cluster) AwaitGuestSleep(g ivshmem.GuestSleep, d time.Duration) (ring, asleep bool) {
	protect(func() { ring, asleep = c.r.l.AwaitGuestSleep(c.r.b, g, d) })
	return ring, asleep
}

// InterruptGuestSleep ends an AwaitGuestSleep on g's ring at once.
func (c *Cluster) InterruptGuestSleep(g ivshmem.GuestSleep) {
	protect(func() { c.r.l.InterruptGuestSleep(c.r.b, g) })
}

// openBell opens the doorbell of the guest device whose BAR2 is path
// (set where guests are supported: resolve_linux.go); noIntr says why it
// cannot wait for interrupts.
var openBell func(path string) (b bellDevice, noIntr error)

// guestBell returns the region's doorbell, opening it on first use (nil
// when the device has none), and whether it can wait for interrupts.
func (r *region) guestBell() (bellDevice, bool) {
	r.bellOnce.Do(func() {
		if openBell == nil {
			r.bellErr = errors.New("no doorbell support on this system")
			return
		}
		r.bell, r.bellErr = openBell(r.m.Path)
	})
	return r.bell, r.bell != nil && r.bellErr == nil
}

// waitRing is the ring this end sleeps on: the data ring for a consumer,
// the return ring for a producer.
func (q *Queue) waitRing() *ivshmem.RingConsumer {
	if q.in != nil {
		return q.in
	}
	return q.ret
}

// peerRings reports whether the peer said it rings the doorbell for a
// sleeper on this end's ring (guarded).
func (q *Queue) peerRings() bool {
	var on bool
	return protect(func() { on = q.waitRing().PeerRings() }) == nil && on
}

// sleepMode is how this end sleeps when idle: WakeFutex (a host process
// whose peer is one too), WakeDoorbell (a guest on its interrupt, or a
// host process in futex(2) woken by the agent's relay, when the peer
// rings; a guest's peer that does not ring is watched by the agent), or
// WakeNone (it polls).
func (q *Queue) sleepMode() uint32 {
	if q.r.side == ivshmem.SideGuest {
		if _, ok := q.r.guestBell(); ok {
			return ivshmem.WakeDoorbell
		}
		return ivshmem.WakeNone
	}
	if q.canSleep() {
		return ivshmem.WakeFutex
	}
	if q.peerRings() {
		return ivshmem.WakeDoorbell
	}
	return ivshmem.WakeNone
}

// WakeMode says how this end waits when its queue is idle: "futex" (a host
// process, woken by its host peer), "doorbell" (a guest, woken by the
// host's interrupt), or "poll: REASON".
func (q *Queue) WakeMode() string {
	switch q.sleepMode() {
	case ivshmem.WakeFutex:
		return "futex"
	case ivshmem.WakeDoorbell:
		if q.r.side == ivshmem.SideHost {
			return "futex, woken through the guest's doorbell"
		}
		if !q.peerRings() {
			return "doorbell (the host peer does not ring: the agent watches the queue for this guest)"
		}
		return "doorbell"
	}
	if q.r.side == ivshmem.SideGuest {
		return fmt.Sprintf("poll: no doorbell interrupts (%v)", q.r.bellErr)
	}
	return "poll: the peer is a guest without a doorbell device"
}

// sleepBell is sleep on a guest's doorbell: announce on this end's ring,
// look again, wait for the host's interrupt (at most SleepSlice, or until
// ctx ends).
func (q *Queue) sleepBell(ctx context.Context) (err error) {
	bell, ok := q.r.guestBell()
	if !ok {
		return nil
	}
	if err := q.announce(ivshmem.WakeDoorbell); err != nil {
		return err
	}
	if !q.peerRings() {
		// The host peer cannot ring this guest: ask the agent, which
		// serves the doorbell, to watch the ring (it rings once entries
		// come).
		bell.Ring(0, 0)
	}
	tctx, cancel := context.WithTimeout(ctx, SleepSlice)
	_, werr := bell.Wait(tctx)
	cancel()
	q.clearWake()
	q.idle |= 63 // look at the region on the next empty poll
	if werr != nil && ctx.Err() == nil && !errors.Is(werr, context.DeadlineExceeded) {
		idle.Nap(200 * time.Microsecond) // unplugged or closed: RecvBurst says so next
	}
	return nil
}

// announce stores mode in the data ring's wake word (guarded); it
// returns errReady when packets arrived meanwhile.
func (q *Queue) announce(mode uint32) (err error) {
	old := guardOn()
	defer q.guardOff(old, "wait", &err)
	ready, err := q.waitRing().Announce(mode)
	if err != nil {
		return q.fail("wait", err)
	}
	if ready {
		return errReady
	}
	return nil
}

// clearWake withdraws the data ring's wake request (guarded).
func (q *Queue) clearWake() {
	var err error
	old := guardOn()
	defer q.guardOff(old, "wait", &err)
	q.waitRing().Clear()
}

// errReady: packets arrived while a consumer announced its sleep.
var errReady = errors.New("ready")

// Wakes returns how many wake-ups this end sent to its peer (each one
// futex(2) call). Safe from any goroutine.
func (q *Queue) Wakes() uint64 { return q.wakes.Load() }

// canSleep reports whether this end may sleep in futex(2) waiting for its
// peer: both are host processes.
func (q *Queue) canSleep() bool {
	if q.r.side != ivshmem.SideHost {
		return false
	}
	peer := ivshmem.EndProducer
	if q.out != nil {
		peer = ivshmem.EndConsumer
	}
	var o ivshmem.Owner
	if protect(func() { o = q.r.l.QueueOwner(q.r.b, q.id, peer) }) != nil {
		return false
	}
	return o.Side != ivshmem.SideGuest
}

// sleep announces on ring c (the data ring for a consumer, the return
// ring for a producer) that this end sleeps, with mode (WakeFutex, or
// WakeDoorbell when the peer is a guest that rings the agent, whose relay
// wakes the futex), and sleeps in futex(2) until woken, at most d. It
// returns at once when entries arrived meanwhile.
func (q *Queue) sleep(c *ivshmem.RingConsumer, mode uint32, d time.Duration) (err error) {
	old := guardOn()
	defer q.guardOff(old, "wait", &err)
	ready, err := c.Announce(mode)
	if err != nil {
		return q.fail("wait", err)
	}
	if ready {
		return nil
	}
	if c.FutexWait(d) != nil {
		idle.Nap(200 * time.Microsecond) // no futex: nap instead
	}
	c.Clear()
	q.idle |= 63 // look at the region on the next empty poll
	return nil
}

// sleepCtx is sleep that ctx's end cuts short (a wake-up on the word the
// sleeper waits on).
func (q *Queue) sleepCtx(ctx context.Context, c *ivshmem.RingConsumer, mode uint32, d time.Duration) error {
	if ctx.Done() == nil {
		return q.sleep(c, mode, d)
	}
	stop := context.AfterFunc(ctx, c.Interrupt)
	defer stop()
	return q.sleep(c, mode, d)
}

// waitReturns waits for the consumer to return buffers (a lossless
// producer whose queue is full): polls first, then sleeps on the return
// ring when the consumer can wake it (sleepMode), else naps. It returns
// ctx's error when ctx ends.
func (q *Queue) waitReturns(ctx context.Context, b *backoff) error {
	if b.n < 512 {
		return b.wait(ctx)
	}
	mode := q.sleepMode()
	if mode == ivshmem.WakeNone {
		return b.wait(ctx)
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	default:
	}
	b.n++
	switch {
	case mode == ivshmem.WakeFutex:
		return q.sleepCtx(ctx, q.ret, mode, SleepSlice)
	case q.r.side == ivshmem.SideGuest:
		// On the interrupt: the host consumer rings once it returned
		// buffers and saw the request.
		if err := q.sleepBell(ctx); err != nil && !errors.Is(err, errReady) {
			return err
		}
		return nil
	}
	// The consumer is a guest that rings the agent, whose relay wakes
	// this futex. Bounded short: a guest that says it rings and does not
	// may slow its own queue, not hold the agent's producer for long.
	return q.sleepCtx(ctx, q.ret, mode, 10*time.Millisecond)
}
