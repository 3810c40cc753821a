package zc

import (
	"context"
	"time"

	"github.com/zcfabric/zc/internal/idle"
	"github.com/zcfabric/zc/ivshmem"
)

// Sleeping and waking (format v2): a side that runs out of work polls a
// little, naps a little (idle.Pacer), and once a nap gathered nothing it
// announces in the ring's wake word that it sleeps and sleeps in futex(2)
// on the producer index, until the producer's next enqueue wakes it (see
// ivshmem's ring.go for the protocol). Only host processes sleep so: a
// futex in a guest's mapping of its BAR is not the host's, so a guest
// side, or a host side whose peer is a guest, keeps polling (the ivshmem
// doorbell is the guest's way to be woken).

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
	if p.Waiting() == ivshmem.WakeFutex && q.r.side == ivshmem.SideHost {
		p.Wake()
		q.wakes.Add(1)
	}
}

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
	if b.n < 512 || !q.canSleep() {
		return b.wait(ctx)
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	default:
	}
	b.n++
	return q.sleep(q.ret, 10*time.Millisecond)
}
