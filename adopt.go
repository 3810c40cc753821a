package zc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"reflect"
	"time"

	"github.com/zcfabric/zc/ivshmem"
)

// AdoptWait bounds how long a producer attaching to a queue that an
// earlier producer used waits for the consumer to give back the buffers
// it still holds from then.
const AdoptWait = time.Second

// AdoptCluster takes over the region cfg describes (cfg.Path, by default
// RegionPath(cfg.ID)) from a creator that is gone: an agent that was
// killed, or restarted for an upgrade. Nothing in the region is reset:
// it keeps its generation, rings, counters and buffers, so the readers
// attached to it (host processes, guests with the device plugged) go on
// reading, and new packets reach them once producers attach again
// (Producer takes back the buffers left in the data rings; Settle waits
// for those the consumers held).
//
// The region must be cfg's exactly: the layout Plan computes for cfg is
// compared with the one the region holds (which a guest may have
// rewritten), and only this process's own copy is used from then on.
// Errors: ErrNotFound (no region), ErrExists (its creator lives),
// ErrClosed (closed by its creator: nobody reads it any more),
// ErrBadRegion (another geometry, or a header that does not parse).
// A memfd region cannot be adopted: it dies with its creator's names.
func AdoptCluster(cfg Config) (*Cluster, error) {
	cfg.defaults()
	fail := func(err error) (*Cluster, error) {
		return nil, fmt.Errorf("zc: adopt cluster %d (%s): %w", cfg.ID, cfg.Path, err)
	}
	m, err := ivshmem.Map(cfg.Path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fail(fmt.Errorf("%w: %v", ErrNotFound, err))
		}
		return fail(err)
	}
	var l ivshmem.Layout
	var state uint32
	if ferr := protect(func() { l, err = ivshmem.Parse(m.Bytes); state = ivshmem.State(m.Bytes) }); ferr != nil {
		err = ferr
	}
	pid := uint32(os.Getpid())
	switch {
	case err != nil:
	case l.ClusterID != cfg.ID:
		err = fmt.Errorf("%w: region is cluster %d", ErrBadRegion, l.ClusterID)
	case state != ivshmem.StateReady:
		err = fmt.Errorf("%w: state %d", ErrClosed, state)
	case l.CreatorPID != pid && processAlive(l.CreatorPID):
		err = fmt.Errorf("%w: its creator, pid %d, is alive", ErrExists, l.CreatorPID)
	}
	if err != nil {
		m.Close()
		return fail(err)
	}
	want, err := cfg.plan(l.Generation, l.Created, l.CreatorPID)
	if err == nil {
		if l.Flags&ivshmem.FlagHugepages != 0 {
			want.Flags |= ivshmem.FlagHugepages
		}
		// A VM region from an agent that predates FlagOneVM keeps its
		// flags: the flag only lets that VM's guest replace its own
		// dead processes' claims.
		want.Flags = want.Flags&^ivshmem.FlagOneVM | l.Flags&ivshmem.FlagOneVM
		if !reflect.DeepEqual(want, l) {
			err = fmt.Errorf("%w: its layout differs from the configuration (region: %d queues of %d, %d buffers of %d bytes, %d bytes; wanted %d queues of %d, %d buffers of %d bytes, %d bytes)",
				ErrBadRegion, len(l.Queues), slotsOf(l), l.NumBufs, l.BufSize, l.RegionSize,
				len(want.Queues), slotsOf(want), want.NumBufs, want.BufSize, want.RegionSize)
		}
	}
	if err == nil {
		if ferr := protect(func() { err = want.Retake(m.Bytes, pid) }); ferr != nil {
			err = ferr
		}
	}
	if err != nil {
		m.Close()
		return fail(err)
	}
	m.Kind = BackingShm
	if want.Flags&ivshmem.FlagHugepages != 0 {
		m.Kind = BackingHugetlb
	}
	r := newRegion(m, want, ivshmem.SideHost)
	r.onEnd = func() { protect(func() { ivshmem.MarkClosed(m.Bytes) }); m.Remove() }
	return &Cluster{r: r, pool: newPool(r, want.EngineFirst, want.EngineCount), sum: ivshmem.HeaderChecksum(m.Bytes), adopted: true}, nil
}

func slotsOf(l ivshmem.Layout) uint32 {
	if len(l.Queues) == 0 {
		return 0
	}
	return l.Queues[0].Slots
}

// Adopted reports whether the cluster was taken over by AdoptCluster
// rather than created.
func (c *Cluster) Adopted() bool { return c.adopted }

// Settle waits until the consumers of an adopted cluster's queues gave
// back the buffers they held when the previous creator went away (the
// region counts them: sent minus reclaimed, less what is still in the
// data ring), for every producer end attached so far, or until wait
// passes or ctx ends. Call it after attaching the producers and before
// producing: until then a buffer a consumer still reads might be
// handed out again. It returns how many loans never came back; a
// consumer that keeps them (stuck, or hostile) only delays its own
// queue's start by wait, and one that returns them later has them
// counted as bad returns.
func (c *Cluster) Settle(ctx context.Context, wait time.Duration) (left uint64) {
	deadline := time.Now().Add(wait)
	for {
		left = 0
		moved := false
		for _, q := range c.pool.queues {
			m, l := q.awaitLoans()
			moved = moved || m
			left += l
		}
		if left == 0 || !time.Now().Before(deadline) || ctx.Err() != nil {
			return left
		}
		if !moved {
			time.Sleep(time.Millisecond)
		}
	}
}

// adoptInFlight makes a producer that replaces an earlier one (zsend
// restarted) safe against reusing a buffer the consumer still reads: see
// takeRing, then it waits (at most wait) for the consumer's loans.
func (q *Queue) adoptInFlight(wait time.Duration) {
	q.takeRing()
	deadline := time.Now().Add(wait)
	for time.Now().Before(deadline) {
		moved, left := q.awaitLoans()
		if left == 0 {
			return
		}
		if !moved {
			time.Sleep(time.Millisecond)
		}
	}
}

// takeRing takes over an earlier producer's loans on this queue, which
// the region counts (sent minus reclaimed): those still in the data ring
// become this producer's loans, taken out of its pool; the rest are held
// by the consumer or on their way back, and q.unknown counts them
// (bounded by the ring's size: the counters may be anything a peer
// wrote) until they come back (awaitLoans). A handle that several
// queues' rings hold (fan-out) gets a reference per queue.
func (q *Queue) takeRing() {
	p := q.Pool()
	sent, reclaimed := q.out.Counter(ivshmem.CountPackets), q.ret.Counter(ivshmem.CountPackets)
	if p == nil || sent <= reclaimed {
		return
	}
	unknown := min(sent-reclaimed, uint64(q.slots))
	taken := map[uint32]bool{}
	// The ring is region memory: a truncated file faults, failing this
	// queue only (what it took so far stays lent to it, as a failed
	// queue's loans do).
	ferr := protect(func() {
		q.out.InRing(func(h uint32) {
			if h-p.first >= p.count || q.lent[h/64]&(1<<(h%64)) != 0 {
				return // not this pool's, or twice in the ring
			}
			if p.ref[h-p.first] == 0 {
				taken[h] = true
			}
			p.ref[h-p.first]++
			q.lent[h/64] |= 1 << (h % 64)
			q.outstanding++
			unknown -= min(unknown, 1)
		})
	})
	if ferr != nil {
		q.fail("adopt", ferr)
		unknown = 0
	}
	if len(taken) > 0 {
		free := p.free[:0]
		for _, h := range p.free {
			if !taken[h] {
				free = append(free, h)
			}
		}
		p.free = free
	}
	q.unknown = unknown
}

// awaitLoans takes one burst off the return ring while earlier loans are
// unaccounted for (q.unknown): handles this producer lent (taken from
// the ring) go back to its pool as usual, others are earlier loans
// coming back (already free here). It reports whether anything came back
// and how many loans are still unknown.
func (q *Queue) awaitLoans() (moved bool, left uint64) {
	if q.unknown == 0 || q.err != nil {
		return false, 0
	}
	var n int
	var err error
	if ferr := protect(func() { n, err = q.ret.Dequeue(q.hs) }); ferr != nil {
		err = ferr
	}
	if err != nil {
		q.fail("adopt", err)
		q.unknown = 0
		return false, 0
	}
	good := q.hs[:0]
	for _, h := range q.hs[:n] {
		if h < q.r.l.NumBufs && q.lent[h/64]&(1<<(h%64)) != 0 {
			good = append(good, h) // one of the ring's, taken over above
			continue
		}
		q.unknown -= min(q.unknown, 1) // an earlier loan: already free here
	}
	if len(good) > 0 {
		for _, h := range good {
			q.lent[h/64] &^= 1 << (h % 64)
		}
		q.outstanding -= uint32(len(good))
		q.src.put(good)
	}
	q.ret.Add(ivshmem.CountPackets, uint64(n))
	return n > 0, q.unknown
}

// DropGuestClaims frees the queue ends a guest holds in the region, for
// an agent that unplugged that guest's device: the reader it had there
// is gone with the device, and the next one (after a fresh plug) must
// attach without force. Call it only with the guest's device unplugged
// and before plugging another; the buffers the reader held are the
// producers' to recover (an adopted cluster's Settle counts them as
// never returned). It returns how many ends it freed.
func (c *Cluster) DropGuestClaims() (n int) {
	protect(func() {
		for q := range c.r.l.Queues {
			for _, e := range []ivshmem.End{ivshmem.EndConsumer, ivshmem.EndProducer} {
				if o := c.r.l.QueueOwner(c.r.b, uint32(q), e); o.Side == ivshmem.SideGuest {
					c.r.l.Unclaim(c.r.b, uint32(q), e, o)
					n++
				}
			}
		}
	})
	return n
}
