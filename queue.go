package zc

import (
	"context"
	"errors"
	"fmt"
	"math/bits"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/zcfabric/zc/internal/idle"
	"github.com/zcfabric/zc/ivshmem"
)

// Queue is one attached end of a queue: the consumer end (Recv, Release)
// or the producer end (Alloc, Send). Its rings are single-producer,
// single-consumer: a Queue is not safe for concurrent use, and each end is
// attached by one party at a time.
type Queue struct {
	r   *region
	id  uint32
	end ivshmem.End

	// consumer end
	in   *ivshmem.RingConsumer // data ring
	back *ivshmem.RingProducer // return ring
	held []uint64              // bitmap: buffers received and not released yet

	// producer end
	out         *ivshmem.RingProducer // data ring
	ret         *ivshmem.RingConsumer // return ring
	src         source
	outstanding uint32                  // buffers lent to the consumer
	lent        []uint64                // bitmap, one bit per buffer of the region: lent on this queue
	keep        []uint64                // scratch for recoverIfAsked
	stage       *[MaxBurst]ivshmem.Desc // a burst's descriptors, before they are copied into the ring
	slots       uint32

	hsEpoch    uint32    // consumer: the attach epoch it waits on
	hsPending  bool      // consumer: waiting for the producer's recovery
	hsDeadline time.Time // consumer: when to stop waiting
	hsSeen     uint32    // producer: the last handshake word handled
	hsNext     time.Time // producer: no recovery before then (RecoverEvery)
	hsQuiet    uint32    // producer: bursts left before the clock is read again
	unknown    uint64    // producer: an earlier producer's loans not back yet (takeRing)
	deferred   atomic.Uint64

	hs     []uint32      // scratch, one burst
	wakes  atomic.Uint64 // wake-ups sent to the peer
	idle   uint32        // empty polls since the last liveness check
	pace   idle.Pacer    // consumer: RecvBurstWait's sleeps, adapted to the traffic
	closed bool
	err    error                 // sticky failure, on the owner's goroutine
	failed atomic.Pointer[error] // err, published for Err
}

// MaxBurst is the largest burst a single call moves; longer slices are
// served in several steps.
const MaxBurst = 256

func (r *region) attach(q uint32, end ivshmem.End, force bool) (qu *Queue, err error) {
	if !r.ref() {
		return nil, fmt.Errorf("zc: attach cluster %d queue %d as %s: %w (closed here)", r.l.ClusterID, q, end, ErrClosed)
	}
	if ferr := protect(func() { qu, err = r.attachEnd(q, end, force) }); ferr != nil {
		err = fmt.Errorf("zc: attach cluster %d queue %d as %s: %w", r.l.ClusterID, q, end, ferr)
	}
	if err != nil {
		r.unref()
		return nil, err
	}
	return qu, nil
}

// noQueue is the error for a queue number q the region does not have.
func (r *region) noQueue(q int64) error {
	return fmt.Errorf("zc: attach cluster %d queue %d: %w (cluster has %d queues)", r.l.ClusterID, q, ErrNoQueue, len(r.l.Queues))
}

func (r *region) attachEnd(q uint32, end ivshmem.End, force bool) (*Queue, error) {
	if q >= uint32(len(r.l.Queues)) {
		return nil, r.noQueue(int64(q))
	}
	replaced, err := r.claim(q, end, force)
	if err != nil {
		return nil, err
	}
	ql := r.l.Queues[q]
	qu := &Queue{r: r, id: q, end: end, slots: ql.Slots, hs: make([]uint32, MaxBurst)}
	if end == ivshmem.EndConsumer {
		qu.in, err = ivshmem.NewDescConsumer(r.b, ql.DataRing, ql.Slots)
		if err == nil {
			qu.back, err = ivshmem.NewRingProducer(r.b, ql.RetRing, ql.Slots)
		}
		qu.held = make([]uint64, (r.l.NumBufs+63)/64)
		if replaced {
			// The previous consumer went away without detaching: ask a
			// live producer to take back what it held.
			qu.hsEpoch = r.l.Handshake(r.b, q)>>2 + 1
			r.l.SetHandshake(r.b, q, qu.hsEpoch<<2|ivshmem.HSWait)
			qu.hsPending, qu.hsDeadline = true, time.Now().Add(HandshakeWait)
		}
	} else {
		qu.out, err = ivshmem.NewDescProducer(r.b, ql.DataRing, ql.Slots)
		if err == nil {
			qu.ret, err = ivshmem.NewRingConsumer(r.b, ql.RetRing, ql.Slots)
		}
		qu.lent = make([]uint64, (r.l.NumBufs+63)/64)
		qu.stage = new([MaxBurst]ivshmem.Desc)
		qu.hsSeen = r.l.Handshake(r.b, q)
	}
	if err != nil {
		r.unclaim(q, end)
		return nil, fmt.Errorf("zc: attach cluster %d queue %d as %s: %w", r.l.ClusterID, q, end, err)
	}
	r.addProd(qu.producing())
	return qu, nil
}

// producing is the ring this end produces: the data ring for a producer,
// the return ring for a consumer.
func (q *Queue) producing() *ivshmem.RingProducer {
	if q.out != nil {
		return q.out
	}
	return q.back
}

// setSource makes the producer end q draw buffers from s.
func (q *Queue) setSource(s source) {
	q.src = s
	if p, ok := s.(*Pool); ok {
		p.queues = append(p.queues, q)
	}
}

// ID returns the queue's number in its cluster.
func (q *Queue) ID() int { return int(q.id) }

// Cluster returns the queue's cluster id.
func (q *Queue) Cluster() uint32 { return q.r.l.ClusterID }

// Name returns the queue's name, zc:CLUSTER@QUEUE.
func (q *Queue) Name() string { return Name{q.r.l.ClusterID, q.id}.String() }

// IsProducer reports whether this is the producer end.
func (q *Queue) IsProducer() bool { return q.end == ivshmem.EndProducer }

// Slots returns the queue's capacity in packets.
func (q *Queue) Slots() int { return int(q.slots) }

// BufferSize returns the size of the cluster's buffers.
func (q *Queue) BufferSize() int { return int(q.r.l.BufSize) }

// Pool returns the pool the producer end allocates from (nil for a
// consumer, or a producer fed by a worker).
func (q *Queue) Pool() *Pool { p, _ := q.src.(*Pool); return p }

// fail marks the queue failed for good: every later call returns err, and
// nothing of this queue's shared memory is touched again (its counters go
// on in process memory). Failure is local: the cluster's other queues,
// and other regions, carry on.
func (q *Queue) fail(op string, err error) error {
	if q.err == nil {
		// An unplugged BAR reads zeros: ring indices jump back and look
		// corrupt. Say the queue went away when the header agrees.
		if errors.Is(err, ErrCorrupt) {
			var cerr error
			if protect(func() { cerr = q.r.l.Check(q.r.b) }) == nil && cerr != nil {
				err = cerr
			}
		}
		q.err = fmt.Errorf("zc: %s %s: %w", op, q.Name(), err)
		e := q.err
		q.failed.Store(&e)
	}
	return q.err
}

// Err returns why the queue failed (wrapping ErrCorrupt, ErrGone,
// ErrClosed or ErrFault), or nil while it works. Safe from any goroutine.
func (q *Queue) Err() error {
	if p := q.failed.Load(); p != nil {
		return *p
	}
	return nil
}

// check looks at the region's header now and then while the queue is
// idle, so an unplugged or closed region is noticed.
func (q *Queue) check(op string) error {
	if q.closed {
		return fmt.Errorf("zc: %s %s: %w", op, q.Name(), ErrClosed)
	}
	if q.err != nil {
		return q.err
	}
	q.idle++
	if q.idle&63 == 0 {
		var err error
		if ferr := protect(func() { err = q.r.l.Check(q.r.b) }); ferr != nil {
			err = ferr
		}
		if err != nil {
			return q.fail(op, err)
		}
	}
	return nil
}

// RecvBurst moves up to len(pkts) packets (at most MaxBurst) out of the
// queue without waiting and returns how many. Each packet stays the
// caller's until Release. Entries with an invalid handle or length, or a
// handle this consumer holds already (a broken or hostile producer), are
// counted as bad and skipped.
func (q *Queue) RecvBurst(pkts []Packet) (n int, err error) {
	old := guardOn()
	defer q.guardOff(old, "recv", &err)
	return q.recvBurst(pkts)
}

func (q *Queue) recvBurst(pkts []Packet) (int, error) {
	if q.in == nil {
		return 0, fmt.Errorf("zc: recv %s: %w (attached as producer)", q.Name(), ErrWrongEnd)
	}
	if q.err != nil || q.closed {
		return 0, q.check("recv")
	}
	if q.hsPending && !q.handshakeDone() {
		return 0, nil
	}
	// One pass over the burst, reading each descriptor once, in place:
	// every field is the producer's value, checked in the copy.
	n, err := q.in.Ready(min(len(pkts), MaxBurst))
	if err != nil {
		return 0, q.fail("recv", err)
	}
	if n == 0 {
		return 0, q.check("recv")
	}
	q.idle = 0
	q.pace.Work(n)
	// Two loops: the first (takeGood) takes descriptors while each is
	// good and has no metadata record, making no call, so that it keeps
	// its values in registers; the second, from the first that is not,
	// does the rest (buffers with a bad descriptor go back after it,
	// records are read after it).
	descs, pos, mask := q.in.DescRing()
	descs = descs[:mask+1]
	pkts = pkts[:n]
	// The first runs over (at most) two contiguous runs of the ring's
	// slots, so that it holds no ring index.
	i := int(pos & mask)
	run := descs[i:min(i+n, int(mask)+1)]
	k, bytes := q.takeGood(run, pkts)
	if k == len(run) && k < n {
		k2, b2 := q.takeGood(descs[:n-k], pkts[k:])
		k, bytes = k+k2, bytes+b2
	}
	nbufs, held := q.r.l.NumBufs, q.held
	size, bufs := uint64(q.r.l.BufSize), q.r.bufs
	nback := 0
	var meta [MaxBurst / 64]uint64 // packets whose record to read
	back := q.hs[:MaxBurst]
	for i := k; i < n; i++ {
		d := descs[(pos+uint32(i))&mask]
		h, off, l := d.Handle, uint64(d.Off), uint64(d.Len)
		switch {
		case h >= nbufs || held[h/64]&(1<<(h%64)) != 0:
			// not a buffer of this region, or one delivered twice: drop the entry
		case off > size || l > size-off:
			back[nback&(MaxBurst-1)] = h // a real buffer with a bad descriptor: give it back (n <= MaxBurst)
			nback++
		default:
			held[h/64] |= 1 << (h % 64)
			base := uint64(h) * size
			p := &pkts[k]
			p.Data = bufs[base+off : base+off+l : base+size]
			p.off, p.handle, p.Flags = uint32(off), h, d.Flags&^ivshmem.DescMeta
			p.Timestamp, p.Hash, p.Port, p.Seq = 0, 0, 0, 0
			bytes += l
			if d.Flags&ivshmem.DescMeta != 0 {
				meta[k/64&(MaxBurst/64-1)] |= 1 << (k % 64)
			}
			k++
		}
	}
	nbad := n - k
	if nback > 0 {
		q.back.Enqueue(back[:nback])
	}
	if meta != [MaxBurst / 64]uint64{} {
		for j := range pkts[:k] {
			if meta[j/64]&(1<<(j%64)) != 0 {
				q.r.readMeta(pkts[j].handle, &pkts[j])
			}
		}
	}
	// The counters share the index's line, which the producer polls: write
	// them first, so the line is taken from the peer once a burst.
	q.in.Add(ivshmem.CountPackets, uint64(k))
	q.in.Add(ivshmem.CountBytes, bytes)
	if nbad > 0 {
		q.in.Add(ivshmem.CountDrops, uint64(nbad))
	}
	q.in.Consume(n)
	return k, nil
}

// takeGood is recvBurst's first loop: it makes pkts[k] of descs[k], in
// order, while each descriptor is good and carries no metadata record,
// and returns how many it took and their bytes. descs are ring slots,
// each read once; pkts holds at least as many.
func (q *Queue) takeGood(descs []ivshmem.Desc, pkts []Packet) (k int, bytes uint64) {
	nbufs, held := q.r.l.NumBufs, q.held
	size, bufs := uint64(q.r.l.BufSize), q.r.bufs
	pkts = pkts[:len(descs)]
	for k = range descs {
		d := descs[k]
		h, off, l := d.Handle, uint64(d.Off), uint64(d.Len)
		if h >= nbufs || held[h/64]&(1<<(h%64)) != 0 || off > size || l > size-off || d.Flags&ivshmem.DescMeta != 0 {
			return k, bytes
		}
		held[h/64] |= 1 << (h % 64)
		base := uint64(h) * size
		// Field by field: a composite literal is built on the stack and
		// copied, twice the stores, the copy's wide loads stalling on them.
		p := &pkts[k]
		p.Data = bufs[base+off : base+off+l : base+size]
		p.off, p.handle, p.Flags = uint32(off), h, d.Flags
		p.Timestamp, p.Hash, p.Port, p.Seq = 0, 0, 0, 0
		bytes += l
	}
	return len(descs), bytes
}

// Release gives packets received from this queue back to their producer.
func (q *Queue) Release(pkts ...Packet) (err error) {
	old := guardOn()
	defer q.guardOff(old, "release", &err)
	if q.back == nil {
		return fmt.Errorf("zc: release on %s: %w (attached as producer)", q.Name(), ErrWrongEnd)
	}
	for len(pkts) > 0 {
		n := min(len(pkts), MaxBurst)
		if err := q.releaseBurst(pkts[:n], nil); err != nil {
			return err
		}
		pkts = pkts[n:]
	}
	return nil
}

// releaseHandles pushes handles onto the return ring (at most MaxBurst).
// Only buffers this end holds go back (once): a double or stray release
// is an error and sends nothing for that handle.
func (q *Queue) releaseHandles(hs []uint32) error { return q.releaseBurst(nil, hs) }

// releaseBurst returns the buffers of pkts, or else of hs (at most
// MaxBurst), writing their handles straight into the return ring: one
// pass, checking each against what this end holds.
func (q *Queue) releaseBurst(pkts []Packet, hs []uint32) error {
	if q.err != nil {
		return q.err
	}
	want := len(hs)
	if pkts != nil {
		want = len(pkts)
	}
	room, err := q.back.Reserve(want)
	if err != nil {
		return q.fail("release", err)
	}
	nbufs, held := q.r.l.NumBufs, q.held
	slots, pos, mask := q.back.HandleRing()
	slots = slots[:mask+1]
	// take checks h against what this end holds and writes it into the
	// next reserved slot: inlined into each loop, no call in either.
	k, over := 0, 0 // returned; held but past the room (stray: the rest)
	take := func(h uint32) {
		if h >= nbufs || held[h/64]&(1<<(h%64)) == 0 {
			return
		}
		held[h/64] &^= 1 << (h % 64)
		if k == room {
			over++
			return
		}
		slots[(pos+uint32(k))&mask] = h
		k++
	}
	if pkts != nil {
		for i := range pkts[:want] {
			take(pkts[i].handle)
		}
	} else {
		for _, h := range hs[:want] {
			take(h)
		}
	}
	if k > 0 {
		q.back.Add(ivshmem.CountPackets, uint64(k)) // before the index: same line
		q.back.Publish(k)
		q.notify(q.back)
	}
	stray := want - k - over
	if over > 0 {
		// The producer counts what it lent and never lends more than the
		// return ring holds: only a broken producer gets here.
		return q.fail("release", fmt.Errorf("%w: return ring full", ErrCorrupt))
	}
	if stray > 0 {
		return fmt.Errorf("zc: release on %s: %w: %d packets (released twice, or not received here)", q.Name(), ErrNotHeld, stray)
	}
	return nil
}

// Recv waits for one packet, until ctx is done or the queue closes.
func (q *Queue) Recv(ctx context.Context) (Packet, error) {
	var p [1]Packet
	_, err := q.RecvBurstWait(ctx, p[:])
	return p[0], err
}

// RecvBurstWait waits until at least one packet is there, then receives a
// burst as RecvBurst does. It polls a few times, then naps for times the
// queue adapts to its traffic, from 50 µs to 1 ms (long enough to gather
// a burst, short enough that the producer does not fill the queue
// meanwhile; see internal/idle). Once a nap found nothing, it sleeps
// until the producer's next packet wakes it, when the producer can (see
// Queue.WakeMode): a host process in futex(2), a guest on its doorbell
// interrupt; otherwise it keeps napping. ctx is looked at at least every
// SleepSlice. With no room in pkts it returns 0 at once (there is
// nothing to wait for).
func (q *Queue) RecvBurstWait(ctx context.Context, pkts []Packet) (int, error) {
	if len(pkts) == 0 {
		return 0, nil
	}
	done := ctx.Done()
	for {
		n, err := q.RecvBurst(pkts)
		if n > 0 || err != nil {
			return n, err
		}
		select { // not ctx.Err(): that takes a mutex
		case <-done:
			return 0, fmt.Errorf("zc: recv %s: %w", q.Name(), ctx.Err())
		default:
		}
		if q.pace.Quiet() {
			switch mode := q.sleepMode(); {
			case mode == ivshmem.WakeFutex, mode == ivshmem.WakeDoorbell && q.r.side == ivshmem.SideHost:
				if err := q.sleepCtx(ctx, q.in, mode, SleepSlice); err != nil {
					return 0, err
				}
				q.pace.Reset()
				continue
			case mode == ivshmem.WakeDoorbell:
				if err := q.sleepBell(ctx); err != nil && !errors.Is(err, errReady) {
					return 0, err
				}
				q.pace.Reset()
				continue
			}
		}
		q.pace.Wait()
	}
}

// reclaim takes back what the consumer returned. A handle this producer
// did not lend, or more returns than loans, is counted as bad and ignored.
func (q *Queue) reclaim() {
	if q.ret == nil || q.err != nil {
		return
	}
	var err error
	old := guardOn()
	defer q.guardOff(old, "reclaim", &err)
	q.recoverIfAsked()
	q.reclaimReturns()
}

// reclaimReturns drains the return ring.
func (q *Queue) reclaimReturns() {
	// Bounded: a consumer that keeps pushing (hostile) cannot hold the
	// producer here; what is left waits for the next reclaim.
	pool, _ := q.src.(*Pool)
	nbufs, lent := q.r.l.NumBufs, q.lent
	for range q.slots/MaxBurst + 1 {
		n, err := q.ret.Ready(MaxBurst)
		if err != nil {
			q.fail("reclaim", err)
			return
		}
		if n == 0 {
			return
		}
		// One pass, each handle read once in place. Only what this queue
		// lent comes back through it, once; a pool's buffers go straight
		// back on its free list.
		var good, nbad int
		if pool != nil {
			good, nbad = q.reclaimToPool(pool, n)
		} else {
			for i := range n {
				h := q.ret.HandleAt(i)
				if h >= nbufs || lent[h/64]&(1<<(h%64)) == 0 || !q.src.owns(h) {
					nbad++
					continue
				}
				q.hs[good] = h
				lent[h/64] &^= 1 << (h % 64)
				good++
			}
		}
		q.ret.Consume(n)
		q.outstanding -= uint32(good)
		if pool == nil {
			q.src.put(q.hs[:good])
		}
		q.ret.Add(ivshmem.CountPackets, uint64(good))
		if nbad > 0 {
			q.ret.Add(ivshmem.CountDrops, uint64(nbad))
		}
		if n < MaxBurst {
			return
		}
	}
}

// reclaimToPool takes the first n handles of the return ring back into
// pool p: each must be on loan from this queue (lent) and referenced in
// p; its loan ends, and at no reference left it is free again. It
// returns how many were good and how many bad. The ring's slots are
// taken as (at most) two contiguous runs, so that the loop over each
// holds no ring index.
func (q *Queue) reclaimToPool(p *Pool, n int) (good, nbad int) {
	slots, pos, mask := q.ret.HandleRing()
	i := int(pos & mask)
	run := slots[i:min(i+n, int(mask)+1)]
	good = q.reclaimRun(p, run) + q.reclaimRun(p, slots[:n-len(run)])
	return good, n - good
}

// reclaimRun is reclaimToPool over one run of slots. Its loop makes no
// call and holds the pool's and the bitmap's fields in registers: after
// the burst's own, it is the producer's busiest. The loan word of the
// handles at hand is kept in a register (acc, word w) and stored back
// when a handle is in another word: clearing bits in memory chained
// every handle's load to the previous one's store.
func (q *Queue) reclaimRun(p *Pool, hs []uint32) (good int) {
	if len(hs) == 0 {
		return 0
	}
	// Bits past the region's buffers are never set: a handle beyond them
	// fails the loan test (or the bitmap's length).
	lent := q.lent
	ref, first := p.ref, p.first
	// A handle is on the free list only at no reference: the list never
	// holds more than the pool's count, its capacity.
	top, free := len(p.free), p.free[:cap(p.free)]
	w, acc := uint32(0), lent[0]
	for _, h := range hs {
		if h/64 != w {
			if h/64 >= uint32(len(lent)) {
				continue
			}
			lent[w] = acc
			w = h / 64
			acc = lent[w]
		}
		j := h - first
		if acc&(1<<(h%64)) == 0 || j >= uint32(len(ref)) || ref[j] == 0 {
			continue
		}
		acc &^= 1 << (h % 64)
		good++
		if ref[j]--; ref[j] == 0 {
			free[top] = h
			top++
		}
	}
	lent[w] = acc
	p.free = free[:top]
	return good
}

// Alloc fills pkts with free buffers from the producer's pool and returns
// how many (0 when all are in flight).
func (q *Queue) Alloc(pkts []Packet) (n int, err error) {
	old := guardOn()
	defer q.guardOff(old, "alloc", &err)
	p := q.Pool()
	if p == nil {
		return 0, fmt.Errorf("zc: alloc on %s: %w (no pool: a consumer, or fed by a worker)", q.Name(), ErrWrongEnd)
	}
	if q.err != nil || q.closed {
		return 0, q.check("alloc")
	}
	return p.Alloc(pkts), nil
}

// AllocWait is Alloc that waits while every buffer of the pool is in
// flight: it polls briefly, then sleeps until the consumer returns
// buffers on this queue (the return ring's wake-up: no CPU while it
// waits, woken by the consumer's Release), and returns how many it got.
// A pool that feeds several queues gets its buffers back from any of
// them: then it naps (at most 200 µs at a time) instead of sleeping on
// one. It returns early, with 0, when ctx ends or the queue fails.
func (q *Queue) AllocWait(ctx context.Context, pkts []Packet) (int, error) {
	var b backoff
	for {
		n, err := q.Alloc(pkts)
		if n > 0 || err != nil || len(pkts) == 0 {
			return n, err
		}
		if err := q.waitBuffers(ctx, &b, "alloc"); err != nil {
			return 0, err
		}
	}
}

// waitBuffers waits once for the consumer to return buffers: asleep on
// the return ring (waitReturns), or napping when the pool feeds several
// queues (any of them may return).
func (q *Queue) waitBuffers(ctx context.Context, b *backoff, op string) error {
	if err := q.checkGuarded(op); err != nil {
		return err
	}
	var err error
	if p := q.Pool(); p != nil && len(p.queues) > 1 {
		err = b.wait(ctx)
	} else {
		err = q.waitReturns(ctx, b)
	}
	if err != nil {
		return fmt.Errorf("zc: %s on %s: %w", op, q.Name(), err)
	}
	return nil
}

// Free gives back allocated packets that will not be sent.
func (q *Queue) Free(pkts []Packet) {
	if p := q.Pool(); p != nil {
		p.Free(pkts)
	}
}

// SendBurst sends packets from Alloc without copying and returns how many
// went in; the rest stay the caller's (send them later, Drop or Free them).
// A packet that is not the caller's to send (sent already, twice in the
// burst, not from this queue's Alloc, or resliced past its buffer) stops
// the burst there: the packets before it go, and the error wraps
// ErrNotHeld. Once sent, a packet is the consumer's: Free and Drop of it
// do nothing.
func (q *Queue) SendBurst(pkts []Packet) (n int, err error) {
	old := guardOn()
	defer q.guardOff(old, "send", &err)
	if q.out == nil {
		return 0, fmt.Errorf("zc: send %s: %w (attached as consumer)", q.Name(), ErrWrongEnd)
	}
	if q.err != nil || q.closed {
		return 0, q.check("send")
	}
	n = q.room(len(pkts))
	if n == 0 && len(pkts) > 0 {
		// Full: look at the region now and then, as an idle consumer
		// does, so that a cluster its creator closed is noticed.
		return 0, q.check("send")
	}
	return q.enqueue(pkts[:n], true)
}

// room returns how many of want packets fit now: the queue holds at most
// its slots' worth lent (outstanding), so the return ring never
// overflows.
func (q *Queue) room(want int) int {
	want = max(want, 0)
	if q.outstanding+uint32(want) > q.slots {
		q.reclaim()
	}
	if q.outstanding >= q.slots {
		return 0
	}
	return min(want, int(q.slots-q.outstanding), MaxBurst)
}

// enqueue puts packets into the data ring, writing each descriptor in
// place, and their metadata records too with meta (else the caller wrote
// them: a worker writes them once for several queues).
func (q *Queue) enqueue(pkts []Packet, meta bool) (int, error) {
	if q.err != nil || q.closed {
		return 0, q.check("send")
	}
	q.recoverIfAsked() // one load of a read-mostly word per burst
	if len(pkts) == 0 {
		return 0, nil
	}
	k, err := q.out.Reserve(min(len(pkts), MaxBurst)) // callers give no more (room)
	if err != nil {
		return 0, q.fail("send", err)
	}
	// Outstanding counts everything in the ring, so all of pkts fit: only
	// a consumer that moved its index backwards makes k smaller.
	var bytes uint64
	var bad error
	lent := q.lent
	// The caller's packets (SendBurst from a pool): each a buffer of the
	// pool it allocated and has not sent yet (sent twice, the consumer
	// would get it twice and the queue would lose a slot for good), its
	// bytes inside it.
	var ref []uint16
	var first uint32
	if pool, ok := q.src.(*Pool); ok && meta {
		ref, first = pool.ref, pool.first
	}
	size := q.r.l.BufSize
	// A first loop with no call, so that its values stay in registers,
	// takes packets while each is good and has no optional fields; the
	// second, from the first that is not, does the rest.
	// The descriptors are written in process memory (stage), then copied
	// into the ring in wide stores: fewer stores waiting behind the
	// ring's lines, which the consumer holds (as Commit does).
	stage := q.stage[:k]
	i := 0
	// The first loop keeps the loan word of the handles at hand in a
	// register (acc, word w), as lend does.
	w, acc := uint32(0), lent[0]
	for ; i < k; i++ {
		p := &pkts[i]
		h := p.handle
		if ref != nil {
			if j := h - first; j >= uint32(len(ref)) || ref[j] == 0 || p.off > size || uint32(len(p.Data)) > size-p.off {
				break
			}
		}
		if h/64 != w {
			lent[w] = acc
			w = h / 64
			acc = lent[w]
		}
		bit := uint64(1) << (h % 64)
		if ref != nil && acc&bit != 0 || hasMeta(p) {
			break
		}
		acc |= bit
		stage[i] = ivshmem.Desc{Handle: h, Len: uint32(len(p.Data)), Off: p.off, Flags: p.Flags &^ ivshmem.DescMeta}
		bytes += uint64(len(p.Data))
	}
	lent[w] = acc
	for ; i < k; i++ {
		p := &pkts[i]
		h := p.handle
		if ref != nil {
			if j := h - first; j >= uint32(len(ref)) || ref[j] == 0 || p.off > size || uint32(len(p.Data)) > size-p.off {
				bad, k = q.notTheCallers(i, h), i
				break
			}
		}
		w, bit := &lent[h/64], uint64(1)<<(h%64)
		if ref != nil && *w&bit != 0 {
			bad, k = q.notTheCallers(i, h), i // sent already
			break
		}
		*w |= bit
		f := p.Flags &^ ivshmem.DescMeta
		if hasMeta(p) {
			if meta {
				q.r.writeMeta(p)
			}
			f |= ivshmem.DescMeta
		}
		stage[i] = ivshmem.Desc{Handle: h, Len: uint32(len(p.Data)), Off: p.off, Flags: f}
		bytes += uint64(len(p.Data))
	}
	descs, pos, mask := q.out.DescRing()
	j := int(pos & mask)
	if c := copy(descs[j:min(j+k, int(mask)+1)], stage[:k]); c < k {
		copy(descs, stage[c:k])
	}
	q.publish(k, bytes)
	return k, bad
}

// notTheCallers is SendBurst's refusal of packet i (buffer h), out of
// line.
//
//go:noinline
func (q *Queue) notTheCallers(i int, h uint32) error {
	return fmt.Errorf("zc: send %s: packet %d (buffer %d): %w (not from Alloc of this queue, sent already, or resliced past its buffer)", q.Name(), i, h, ErrNotHeld)
}

// publish hands the k descriptors just written in place (bytes in all) to
// the consumer and counts them as lent.
func (q *Queue) publish(k int, bytes uint64) {
	if k > 0 {
		// The counters share the index's line, which the consumer polls:
		// write them first, so the line is taken from the peer once a burst.
		q.out.Add(ivshmem.CountPackets, uint64(k))
		q.out.Add(ivshmem.CountBytes, bytes)
		q.out.Publish(k)
		q.notify(q.out)
		q.prefetchNext(k)
	}
	q.outstanding += uint32(k)
}

// prefetchNext asks the CPU for the lines the producer's next burst of
// about k packets will write, while the caller does other work: the data
// ring's next free slots and, from a pool, the first line of the buffers
// on top of its free list (the next Alloc or Reserve takes those). They
// were the consumer's last; taken now, the burst's stores find them
// ready. (A hint: across two CPUs 3-4% on the fast path,
// docs/PERFORMANCE.md.)
func (q *Queue) prefetchNext(k int) {
	q.out.PrefetchNext(k)
	if p, ok := q.src.(*Pool); ok {
		ivshmem.PrefetchBuffers(q.r.bufs, q.r.l.BufSize, p.free[max(len(p.free)-k, 0):])
	}
}

// Drop releases packets that will not be sent and counts them as drops of
// this queue: what a full queue does under the drop policy.
func (q *Queue) Drop(pkts []Packet) {
	if q.out == nil || len(pkts) == 0 {
		return
	}
	var err error
	old := guardOn()
	defer q.guardOff(old, "drop", &err)
	q.drop(pkts)
}

func (q *Queue) drop(pkts []Packet) {
	n := 0
	for i := 0; i < len(pkts); i += MaxBurst {
		end := min(len(pkts), i+MaxBurst)
		k := 0
		for j := i; j < end; j++ {
			h := pkts[j].handle
			if q.onLoan(h) {
				continue // sent already: the consumer's now, not to drop
			}
			q.hs[k] = h
			k++
		}
		q.src.put(q.hs[:k])
		n += k
	}
	q.countDrops(n)
}

// onLoan reports whether this producer lent buffer h (sent it, and the
// consumer has not returned it yet).
func (q *Queue) onLoan(h uint32) bool {
	return q.lent != nil && h < q.r.l.NumBufs && q.lent[h/64]&(1<<(h%64)) != 0
}

// countDrops counts n packets dropped on the way into this producer's
// queue: in the region while it works, in process memory only once it
// failed.
func (q *Queue) countDrops(n int) {
	if q.err != nil {
		q.out.Count(ivshmem.CountDrops, uint64(n))
		return
	}
	q.out.Add(ivshmem.CountDrops, uint64(n))
}

// SendBurstWait sends every packet, waiting while the queue is full:
// lossless back-pressure. It returns early only when ctx is done or the
// queue fails, with the number sent.
func (q *Queue) SendBurstWait(ctx context.Context, pkts []Packet) (int, error) {
	sent := 0
	var b backoff
	for sent < len(pkts) {
		n, err := q.SendBurst(pkts[sent:])
		if err != nil {
			return sent, err
		}
		sent += n
		if n > 0 {
			b = backoff{}
			continue
		}
		if err := q.checkGuarded("send"); err != nil {
			return sent, err
		}
		if err := q.waitReturns(ctx, &b); err != nil {
			return sent, fmt.Errorf("zc: send %s: %w", q.Name(), err)
		}
	}
	return sent, nil
}

// Send copies data into a free buffer and sends it. When the queue is full
// it counts a drop and returns ErrQueueFull; with no free buffer,
// ErrNoBuffers.
func (q *Queue) Send(data []byte) error {
	var p [1]Packet
	n, err := q.Alloc(p[:])
	if err != nil {
		return err
	}
	if n == 0 {
		return fmt.Errorf("zc: send %s: %w", q.Name(), ErrNoBuffers)
	}
	if len(data) > len(p[0].Data) {
		q.Free(p[:])
		return fmt.Errorf("zc: send %s: %d-byte packet exceeds the %d-byte buffer", q.Name(), len(data), len(p[0].Data))
	}
	p[0].Data = p[0].Data[:copy(p[0].Data, data)]
	n, err = q.SendBurst(p[:])
	if n == 1 {
		return nil
	}
	if err != nil {
		q.Free(p[:])
		return err
	}
	q.Drop(p[:])
	return fmt.Errorf("zc: send %s: %w", q.Name(), ErrQueueFull)
}

// checkGuarded is check for callers outside a guarded method.
func (q *Queue) checkGuarded(op string) (err error) {
	old := guardOn()
	defer q.guardOff(old, op, &err)
	return q.check(op)
}

// Outstanding returns how many buffers the producer end has lent to the
// consumer (in the ring, held, or on their way back).
func (q *Queue) Outstanding() int { return int(q.outstanding) }

// Close detaches this end of the queue. A consumer gives back the packets
// it still holds (they must not be used after Close); a producer's
// buffers still out on loan stay with the consumer.
func (q *Queue) Close() error {
	if q.closed {
		return nil
	}
	q.r.dropProd(q.producing())
	if q.err != nil && !errors.Is(q.err, ErrCorrupt) {
		// Gone or faulted: its memory is not to be touched again.
		q.closed = true
		return q.r.unref()
	}
	protect(q.detach)
	q.closed = true
	return q.r.unref()
}

// detach gives back what a consumer holds and frees this end's claim.
func (q *Queue) detach() {
	if q.r.l.Check(q.r.b) == nil {
		if q.held != nil && q.err == nil {
			var hs []uint32
			for w, bitsw := range q.held {
				for bitsw != 0 {
					b := uint32(bits.TrailingZeros64(bitsw))
					bitsw &^= 1 << b
					hs = append(hs, uint32(w)*64+b)
				}
			}
			for len(hs) > 0 && q.err == nil {
				n := min(len(hs), MaxBurst)
				q.releaseHandles(hs[:n])
				hs = hs[n:]
			}
		}
		q.r.unclaim(q.id, q.end)
	}
}

// backoff waits between polls: spin with yields first (about 50-100 µs,
// the time a 4096-slot queue takes to drain at line rate), then sleep for
// growing times up to 200µs. It checks ctx without allocating.
//
// The sleeps are idle.Nap (nanosleep(2)), not time.Sleep: the Go runtime
// parks an idle thread in epoll_wait with a millisecond timeout, so
// time.Sleep(200µs) took 1.1 ms here, time enough for a producer at 1.5
// Mpps to fill a 4096-slot queue; nanosleep took 0.3 ms.
type backoff struct{ n int }

func (b *backoff) wait(ctx context.Context) error {
	b.n++
	if b.n&15 == 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
	}
	switch {
	case b.n < 512:
		runtime.Gosched()
	default:
		d := time.Duration(b.n-511) * 5 * time.Microsecond
		idle.Nap(min(d, 200*time.Microsecond))
	}
	return nil
}

// HandshakeWait is how long a new consumer waits for a live producer to
// take back the buffers an earlier consumer of the queue held, while
// packets wait for it in the queue. It covers an agent asleep between
// packets: its guard looks for waiting consumers once a second and wakes
// the engine to answer (Queue.RecoveryAsked). While the queue is empty the
// consumer waits on: there is nothing to read, and the producer's next
// burst answers before it is published (giving up would leave those
// buffers lent for good).
const HandshakeWait = 1500 * time.Millisecond

// hsVanished is how long past HandshakeWait a consumer waits on a
// producer that took its request ("recovering") and never finished.
const hsVanished = 2 * time.Second

// handshakeDone reports whether the consumer may read: the producer
// finished its recovery, or nobody answered in time while packets waited.
func (q *Queue) handshakeDone() bool {
	v := q.r.l.Handshake(q.r.b, q.id)
	mine := q.hsEpoch << 2
	switch {
	case v == mine|ivshmem.HSDone || v>>2 != q.hsEpoch:
		q.hsPending = false // done, or a newer consumer took over: not ours to wait on
	case time.Now().After(q.hsDeadline):
		if v == mine|ivshmem.HSWait {
			if n, err := q.in.Ready(1); err == nil && n == 0 {
				return false // nothing to read yet: the producer answers first
			}
			if q.r.l.CASHandshake(q.r.b, q.id, v, mine|ivshmem.HSGo) {
				q.hsPending = false // no producer answered
				break
			}
		}
		if time.Now().After(q.hsDeadline.Add(hsVanished)) {
			q.hsPending = false // a producer started and vanished
		}
	}
	return !q.hsPending
}

// RecoverEvery is the shortest time between two recoveries on one queue.
// A recovery walks the data ring and the lent bitmap (tens of
// microseconds for a large queue); the consumer can ask for one at will,
// so a peer that keeps asking gets one per RecoverEvery and no more. A
// consumer that attaches waits HandshakeWait for its answer, longer than
// this.
const RecoverEvery = 100 * time.Millisecond

// recoverIfAsked answers a new consumer's handshake: it takes back every
// buffer lent on this queue that is neither in the data ring nor on the
// return ring, i.e. what the previous consumer held when it went away.
// Rate-limited: see RecoverEvery. While a request waits, each call costs
// a load and a compare, and one call in 64 reads the clock (an idle
// engine, woken by its guard, makes 64 calls before it sleeps again).
func (q *Queue) recoverIfAsked() {
	v := q.r.l.Handshake(q.r.b, q.id)
	if v == q.hsSeen {
		return
	}
	if v&ivshmem.HSStateMask != ivshmem.HSWait {
		q.hsSeen = v
		return
	}
	if q.hsQuiet > 0 {
		q.hsQuiet--
		return
	}
	now := time.Now()
	if now.Before(q.hsNext) {
		q.hsQuiet = 63
		q.deferred.Add(1)
		return
	}
	q.hsSeen = v
	if !q.r.l.CASHandshake(q.r.b, q.id, v, v&^ivshmem.HSStateMask|ivshmem.HSRecover) {
		return
	}
	q.hsNext = now.Add(RecoverEvery)
	done := v&^ivshmem.HSStateMask | ivshmem.HSDone
	defer func() { q.r.l.SetHandshake(q.r.b, q.id, done); q.hsSeen = done }()
	q.reclaimReturns()
	// Scratch kept across recoveries: a guest that keeps asking costs the
	// host a scan, not garbage.
	if q.keep == nil {
		q.keep = make([]uint64, len(q.lent))
	}
	keep := q.keep
	clear(keep)
	if err := q.out.InRing(func(h uint32) {
		if h < q.r.l.NumBufs {
			keep[h/64] |= 1 << (h % 64)
		}
	}); err != nil {
		q.fail("recover", err)
		return
	}
	got, total := q.hs[:0], 0
	for w := range q.lent {
		stale := q.lent[w] &^ keep[w]
		for stale != 0 {
			bit := uint32(bits.TrailingZeros64(stale))
			stale &^= 1 << bit
			got = append(got, uint32(w)*64+bit)
			if len(got) == cap(got) {
				q.src.put(got)
				total += len(got)
				got = got[:0]
			}
		}
		q.lent[w] &= keep[w]
	}
	q.src.put(got)
	total += len(got)
	q.outstanding -= uint32(total)
	q.ret.Add(ivshmem.CountBytes, uint64(total))
}

// RecoveryAsked reports whether a consumer that replaced a dead one waits
// for this producer end to take back the buffers the dead one held: what
// the producer does with its next burst or Reserve, or, idle, its next
// reclaim (Balancer.Reclaim). An agent asleep between packets uses it to
// wake up and answer. It reads one word of the region (a guest can make
// it say yes at will: the answer is rate-limited, see RecoverEvery). Safe
// from any goroutine; false for a consumer end or a failed queue.
func (q *Queue) RecoveryAsked() (asked bool) {
	if q.out == nil || q.Err() != nil {
		return false // a failed queue answers nobody
	}
	protect(func() { asked = q.r.l.Handshake(q.r.b, q.id)&ivshmem.HSStateMask == ivshmem.HSWait })
	return asked
}

// RecoveriesDeferred counts recovery requests this producer end put off
// because the previous one on the queue was less than RecoverEvery ago.
// Safe from any goroutine.
func (q *Queue) RecoveriesDeferred() uint64 { return q.deferred.Load() }
