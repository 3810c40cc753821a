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
//   - a guest consumer whose region came as an ivshmem-doorbell device it
//     can take interrupts from (guest.Doorbell: vfio-pci, q35 with a
//     virtual IOMMU) sleeps on the interrupt (WakeDoorbell), and the
//     producer in the agent rings it (Cluster.OnGuestWake);
//   - anything else polls: a guest without a doorbell, and a host side
//     whose peer is a guest (a guest cannot wake a host futex).

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
		} else if f := q.r.ringGuest.Load(); f != nil {
			(*f)()
			q.wakes.Add(1)
		}
	}
}

// OnGuestWake sets what wakes a guest consumer of this cluster's region
// that sleeps on its ivshmem doorbell (the agent rings the VM through its
// doorbell server): called on the producer's goroutine, once per burst
// the sleeper asked for; it must not block. nil removes it.
func (c *Cluster) OnGuestWake(f func()) {
	if f == nil {
		c.r.ringGuest.Store(nil)
		return
	}
	c.r.ringGuest.Store(&f)
}

// OnGuestRing sets how a producer in this process waits for a guest
// consumer's ring (the agent: its doorbell server's host eventfd), at most
// the duration given: a lossless producer waiting for the guest to return
// buffers then sleeps instead of polling. nil removes it.
func (c *Cluster) OnGuestRing(wait func(time.Duration)) {
	if wait == nil {
		c.r.waitGuest.Store(nil)
		return
	}
	c.r.waitGuest.Store(&wait)
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

// sleepMode is how this end sleeps when idle: WakeFutex, WakeDoorbell, or
// WakeNone (it polls).
func (q *Queue) sleepMode() uint32 {
	if q.r.side == ivshmem.SideGuest {
		if _, ok := q.r.guestBell(); ok && q.in != nil {
			return ivshmem.WakeDoorbell
		}
		return ivshmem.WakeNone
	}
	if q.canSleep() {
		return ivshmem.WakeFutex
	}
	if q.out != nil && q.r.waitGuest.Load() != nil {
		return ivshmem.WakeDoorbell // a producer waiting for a guest's returns
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
		return "doorbell"
	}
	switch {
	case q.r.side == ivshmem.SideGuest && q.in == nil:
		return "poll: a guest producer waits for returns by polling"
	case q.r.side == ivshmem.SideGuest:
		return fmt.Sprintf("poll: no doorbell interrupts (%v)", q.r.bellErr)
	}
	return "poll: the peer is a guest, and no doorbell of this process serves it"
}

// sleepBell is sleep on a guest's doorbell: announce, look again, wait for
// the host's interrupt (at most SleepSlice, or until ctx ends).
func (q *Queue) sleepBell(ctx context.Context) (err error) {
	bell, ok := q.r.guestBell()
	if !ok {
		return nil
	}
	if err := q.announce(ivshmem.WakeDoorbell); err != nil {
		return err
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
	ready, err := q.in.Announce(mode)
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
	q.in.Clear()
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
// ring for a producer) that this end sleeps, and sleeps until woken, at
// most d. It returns at once when entries arrived meanwhile.
func (q *Queue) sleep(c *ivshmem.RingConsumer, d time.Duration) (err error) {
	old := guardOn()
	defer q.guardOff(old, "wait", &err)
	ready, err := c.Announce(ivshmem.WakeFutex)
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
func (q *Queue) sleepCtx(ctx context.Context, c *ivshmem.RingConsumer, d time.Duration) error {
	if ctx.Done() == nil {
		return q.sleep(c, d)
	}
	stop := context.AfterFunc(ctx, c.Interrupt)
	defer stop()
	return q.sleep(c, d)
}

// waitReturns waits for the consumer to return buffers (a lossless
// producer whose queue is full): polls first, then sleeps on the return
// ring when the consumer is a host process, else naps. It returns ctx's
// error when ctx ends.
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
	if mode == ivshmem.WakeFutex {
		return q.sleepCtx(ctx, q.ret, SleepSlice)
	}
	// The consumer is a guest that rings this process's doorbell server.
	return q.sleepGuestRing(10 * time.Millisecond)
}

// sleepGuestRing announces on the return ring that this producer sleeps
// until the guest consumer rings (OnGuestRing), at most d.
func (q *Queue) sleepGuestRing(d time.Duration) (err error) {
	wait := q.r.waitGuest.Load()
	if wait == nil {
		return nil
	}
	old := guardOn()
	defer q.guardOff(old, "wait", &err)
	ready, err := q.ret.Announce(ivshmem.WakeDoorbell)
	if err != nil {
		return q.fail("wait", err)
	}
	if !ready {
		(*wait)(d)
		q.ret.Clear()
	}
	return nil
}
