package zc

import (
	"context"
	"errors"
	"fmt"
)

// Policy says what a producer does when an output queue is full.
type Policy int

// Policies.
const (
	// Drop drops the packet and counts it in the queue's Drops.
	Drop Policy = iota
	// Wait blocks until the consumer makes room: lossless back-pressure.
	Wait
)

// Balancer distributes packets over the producer ends of queues: by hash,
// round-robin, or to every queue (fan-out, reference counted). Outputs in
// the packets' own cluster get them without copying. An output in another
// cluster (another trust domain: a VM's own region) gets one explicit
// copy into a buffer of its own pool, counted in Copies.
//
// Failure is local: an output whose queue breaks (its consumer corrupted
// the ring, its region was unplugged, truncated or re-created) is failed
// for good (Queue.Err), its share of the packets is dropped and counted on
// it from then on, and every other output goes on. Push returns an error
// only when ctx ends. Not safe for concurrent use.
type Balancer struct {
	out    []*Queue
	cross  []bool // output j copies: it lives in another region
	mode   HashMode
	hash   HashFunc
	policy Policy
	per    [][]Packet
	tmp    []Packet
	hs     []uint32
	rr     uint32
	src    source
	home   *region
	// pending are the packets of the send in progress not yet delivered
	// or given back: what a fault on the output's memory leaves to drop.
	pending []Packet
	// Copies counts packets copied into another region's buffers.
	Copies uint64
}

// NewBalancer returns a balancer over out. hash overrides the mode's own
// function (a caller's hash); it is ignored for round-robin and fan-out.
func NewBalancer(out []*Queue, mode HashMode, hash HashFunc, policy Policy) (*Balancer, error) {
	if len(out) == 0 {
		return nil, errors.New("zc: balancer: no output queues")
	}
	if hash == nil {
		hash = mode.Func()
	}
	if hash == nil && mode != ModeRoundRobin && mode != ModeFanout {
		return nil, fmt.Errorf("zc: balancer: mode %d has no hash function", mode)
	}
	b := &Balancer{out: out, mode: mode, hash: hash, policy: policy, src: out[0].src, home: out[0].r, tmp: make([]Packet, MaxBurst), hs: make([]uint32, MaxBurst)}
	for _, q := range out {
		cross, err := b.fits(q)
		if err != nil {
			return nil, err
		}
		b.cross = append(b.cross, cross)
		b.per = append(b.per, make([]Packet, 0, MaxBurst))
	}
	return b, nil
}

// fits checks that q can be an output (a producer end, drawing from the
// balancer's pool or in another region with a pool to copy into) and
// reports whether it takes copies.
func (b *Balancer) fits(q *Queue) (cross bool, err error) {
	if q.out == nil {
		return false, fmt.Errorf("zc: balancer: %s: %w (need producer ends)", q.Name(), ErrWrongEnd)
	}
	cross = q.r != b.home
	if cross && q.Pool() == nil {
		return false, fmt.Errorf("zc: balancer: %s is in another region and has no pool to copy into", q.Name())
	}
	if !cross && q.src != b.src {
		return false, fmt.Errorf("zc: balancer: %s and %s draw buffers from different pools", q.Name(), b.out[0].Name())
	}
	return cross, nil
}

// Outputs returns the output queues, in order (Replace changes them).
func (b *Balancer) Outputs() []*Queue { return b.out }

// Replace makes q output j in place of the one there (a VM's region
// re-created after it failed): the packets hashed to j go to q from the
// next Push. It returns the queue replaced, which the caller closes. Call
// it on the goroutine that pushes.
func (b *Balancer) Replace(j int, q *Queue) (*Queue, error) {
	if j < 0 || j >= len(b.out) {
		return nil, fmt.Errorf("zc: balancer: replace output %d of %d", j, len(b.out))
	}
	cross, err := b.fits(q)
	if err != nil {
		return nil, err
	}
	old := b.out[j]
	b.out[j], b.cross[j] = q, cross
	return old, nil
}

// From makes p the pool the pushed packets come from: outputs in p's
// region get them without copying (they must draw from p), the others by
// one copy. By default the first output's region and pool are home.
func (b *Balancer) From(p *Pool) error {
	for j, q := range b.out {
		cross := q.r != p.r
		if cross && q.Pool() == nil {
			return fmt.Errorf("zc: balancer: %s is in another region and has no pool to copy into", q.Name())
		}
		if !cross && q.src != source(p) {
			return fmt.Errorf("zc: balancer: %s does not draw from %s", q.Name(), p)
		}
		b.cross[j] = cross
	}
	b.src, b.home = p, p.r
	return nil
}

// Push distributes pkts, which the caller owns (from Alloc, or received
// and adopted by a worker). Afterwards the caller owns none of them: each
// was sent, or dropped and counted. Under Wait, Push blocks while a target
// queue is full and returns ctx's error if ctx ends first (the unsent
// packets are then dropped and counted).
func (b *Balancer) Push(ctx context.Context, pkts []Packet) error {
	for len(pkts) > 0 {
		n := min(len(pkts), MaxBurst)
		if err := b.push(ctx, pkts[:n]); err != nil {
			return err
		}
		pkts = pkts[n:]
	}
	return nil
}

func (b *Balancer) push(ctx context.Context, pkts []Packet) error {
	if b.mode == ModeFanout {
		k := uint16(len(b.out) - 1)
		if protect(func() {
			for i := range pkts {
				b.home.writeMeta(&pkts[i])
			}
		}) != nil {
			// The home region faults (truncated): its own queues fail;
			// send drops and counts what they would have carried.
			for j, q := range b.out {
				if !b.cross[j] {
					q.fail("send", ErrFault)
				}
			}
		}
		for i := range pkts {
			if k > 0 {
				b.src.retain(pkts[i].handle, k)
			}
		}
		var first error
		for j, q := range b.out {
			if err := b.send(ctx, j, q, pkts); err != nil && first == nil {
				first = err
			}
		}
		return first
	}
	for i := 0; i < len(pkts); {
		i = b.route(pkts, i)
	}
	var first error
	for j, q := range b.out {
		if len(b.per[j]) == 0 {
			continue
		}
		if err := b.send(ctx, j, q, b.per[j]); err != nil && first == nil {
			first = err
		}
		b.per[j] = b.per[j][:0]
	}
	return first
}

// route assigns pkts[from:] to outputs (b.per), writing the metadata of
// those that stay in their region, and returns len(pkts), or the index
// after the packet whose metadata write faulted (its output's region was
// truncated under it: that queue fails, and send drops and counts what
// it would have carried). One fault guard per burst, not per packet.
func (b *Balancer) route(pkts []Packet, from int) (next int) {
	j := uint32(0)
	i := from
	old := guardOn()
	defer func() {
		if faulted(old, recover()) {
			b.out[j].fail("send", ErrFault)
			b.per[j] = append(b.per[j], pkts[i])
			next = i + 1
		}
	}()
	for ; i < len(pkts); i++ {
		if b.mode == ModeRoundRobin {
			j = b.rr
			b.rr++
			if b.rr == uint32(len(b.out)) {
				b.rr = 0
			}
		} else {
			pkts[i].Hash = b.hash(&pkts[i])
			j = pkts[i].Hash % uint32(len(b.out))
		}
		if !b.cross[j] && b.out[j].err == nil {
			b.out[j].r.writeMeta(&pkts[i])
		}
		b.per[j] = append(b.per[j], pkts[i])
	}
	return len(pkts)
}

// send delivers pkts to output j: zero copy, or one copy into the
// output's own region. A failure of the output's queue fails that queue
// only: what was not delivered is dropped and counted on it, and send
// returns nil. It returns an error only when ctx ends while it waits for
// room (the packets left are dropped and counted).
func (b *Balancer) send(ctx context.Context, j int, q *Queue, pkts []Packet) (err error) {
	if q.err != nil {
		b.lose(j, q, pkts)
		return nil
	}
	// Touching the output's region can fault (its file truncated under
	// us): the fault fails q, and what is pending is dropped.
	b.pending = pkts
	old := guardOn()
	defer b.sendDone(old, j, q)
	if !b.cross[j] {
		return b.deliver(ctx, q, pkts)
	}
	return b.copyTo(ctx, j, q, pkts)
}

// sendDone ends a guarded send: a fault on the output's memory fails the
// output and drops what was pending.
func (b *Balancer) sendDone(old bool, j int, q *Queue) {
	if faulted(old, recover()) {
		q.fail("send", ErrFault)
		b.lose(j, q, b.pending)
	}
	b.pending = nil
}

// lose drops packets meant for output j, counted on it: zero-copy ones go
// back to the pool, the originals of copies are released.
func (b *Balancer) lose(j int, q *Queue, pkts []Packet) {
	if len(pkts) == 0 {
		return
	}
	if !b.cross[j] {
		q.drop(pkts)
		return
	}
	q.countDrops(len(pkts))
	b.release(pkts)
}

// copyTo delivers pkts to output j in another region, one copy each.
func (b *Balancer) copyTo(ctx context.Context, j int, q *Queue, pkts []Packet) error {
	var bo backoff
	for len(pkts) > 0 {
		n := q.room(len(pkts))
		if n > 0 {
			n = q.Pool().Alloc(b.tmp[:n])
		}
		for i := range b.tmp[:n] {
			d, p := &b.tmp[i], &pkts[i]
			d.Data = d.Data[:copy(d.Data, p.Data)]
			d.Timestamp, d.Hash, d.Port, d.Seq, d.Flags = p.Timestamp, p.Hash, p.Port, p.Seq, p.Flags
			q.r.writeMeta(d)
		}
		k, err := q.enqueue(b.tmp[:n], false)
		q.Pool().Free(b.tmp[k:n])
		b.Copies += uint64(k)
		b.release(pkts[:k])
		pkts = pkts[k:]
		b.pending = pkts
		if err != nil || len(pkts) == 0 {
			b.lose(j, q, pkts) // a failed queue: the rest is its loss
			return nil
		}
		if k > 0 {
			bo = backoff{}
			continue
		}
		if b.policy == Drop {
			b.lose(j, q, pkts)
			return nil
		}
		if err := q.waitReturns(ctx, &bo); err != nil {
			b.lose(j, q, pkts)
			if q.err != nil {
				return nil // the queue failed: its loss
			}
			return fmt.Errorf("zc: send %s: %w", q.Name(), err)
		}
	}
	return nil
}

// release drops the balancer's reference to packets it copied.
func (b *Balancer) release(pkts []Packet) {
	for i := 0; i < len(pkts); {
		n := 0
		for ; n < MaxBurst && i < len(pkts); n, i = n+1, i+1 {
			b.hs[n] = pkts[i].handle
		}
		b.src.put(b.hs[:n])
	}
}

// deliver enqueues packets whose metadata is written; what does not fit
// is dropped and counted, or waited for. A failed queue drops the rest.
func (b *Balancer) deliver(ctx context.Context, q *Queue, pkts []Packet) error {
	var bo backoff
	for {
		n, err := q.enqueue(pkts[:q.room(len(pkts))], false)
		pkts = pkts[n:]
		b.pending = pkts
		if err != nil || len(pkts) == 0 {
			q.drop(pkts)
			return nil
		}
		if n > 0 {
			bo = backoff{}
			continue
		}
		if b.policy == Drop || q.err != nil {
			q.drop(pkts)
			return nil
		}
		if err := q.waitReturns(ctx, &bo); err != nil {
			q.drop(pkts)
			if q.err != nil {
				return nil // the queue failed: its loss
			}
			return fmt.Errorf("zc: send %s: %w", q.Name(), err)
		}
	}
}

// Reclaim takes back buffers consumers returned on every output.
func (b *Balancer) Reclaim() {
	for _, q := range b.out {
		q.reclaim()
	}
}

// relay is the source of a worker's outputs: buffers borrowed from its
// input queues. When the last output returns one, it goes back to the
// input it came from.
type relay struct {
	in     []*Queue
	ref    []uint16 // per buffer of the cluster
	origin []uint16 // input index per buffer
	back   [][]uint32
}

func newRelay(in []*Queue, numBufs uint32) *relay {
	r := &relay{in: in, ref: make([]uint16, numBufs), origin: make([]uint16, numBufs)}
	for range in {
		r.back = append(r.back, make([]uint32, 0, MaxBurst))
	}
	return r
}

func (r *relay) owns(h uint32) bool        { return h < uint32(len(r.ref)) && r.ref[h] > 0 }
func (r *relay) retain(h uint32, n uint16) { r.ref[h] += n }

// adopt takes ownership of packets received on input from and returns
// those it may relay. A buffer it holds already (a producer that put the
// same handle on two inputs) is refused: counted in dup and given back to
// the input it just came from, so no output slot is ever taken by a
// buffer twice.
func (r *relay) adopt(pkts []Packet, from int, dup *uint64) []Packet {
	ok := pkts[:0]
	for i := range pkts {
		h := pkts[i].handle
		if r.ref[h] != 0 {
			*dup++
			one := [1]uint32{h}
			r.in[from].releaseHandles(one[:])
			continue
		}
		r.ref[h] = 1
		r.origin[h] = uint16(from)
		ok = append(ok, pkts[i])
	}
	return ok
}

func (r *relay) put(hs []uint32) {
	for _, h := range hs {
		if h >= uint32(len(r.ref)) || r.ref[h] == 0 {
			continue
		}
		r.ref[h]--
		if r.ref[h] == 0 {
			o := r.origin[h]
			r.back[o] = append(r.back[o], h)
			if len(r.back[o]) == cap(r.back[o]) {
				r.flush(int(o))
			}
		}
	}
	for o := range r.back {
		r.flush(o)
	}
}

func (r *relay) flush(o int) {
	if len(r.back[o]) > 0 {
		r.in[o].releaseHandles(r.back[o])
		r.back[o] = r.back[o][:0]
	}
}

// WorkerOptions configure RunBalancer, RunFanout and RunPipeline.
type WorkerOptions struct {
	// Policy for full outputs (default Drop).
	Policy Policy
	// Burst is the receive burst (default 32, at most MaxBurst).
	Burst int
	// Filter, when set, sees every packet first; false drops it (counted
	// in WorkerStats.Filtered, not as a queue drop).
	Filter func(p *Packet) bool
}

// WorkerStats count what a worker moved.
type WorkerStats struct {
	Received   uint64 // packets taken from the inputs
	Filtered   uint64 // packets the filter refused
	Duplicates uint64 // buffers that came in again while held (a broken producer): refused
	// FailedInputs counts inputs that failed (their producer broke the
	// ring, or their region went away); the worker goes on with the others.
	FailedInputs int
}

// RunBalancer moves packets from the consumer ends in to the producer
// ends out of the same cluster, by mode (a caller's hash overrides the
// mode's function), without copying, until ctx ends or an input fails.
// The outputs' buffers become the inputs' buffers: out must be fresh
// producer ends (nothing outstanding).
func RunBalancer(ctx context.Context, in, out []*Queue, mode HashMode, hash HashFunc, opt WorkerOptions) (WorkerStats, error) {
	var st WorkerStats
	if len(in) == 0 || len(out) == 0 {
		return st, errors.New("zc: worker: needs input and output queues")
	}
	// Check everything before binding anything: a refused call leaves the
	// queues as they were.
	for _, q := range in {
		if q.in == nil {
			return st, fmt.Errorf("zc: worker: input %s: %w (need consumer ends)", q.Name(), ErrWrongEnd)
		}
		if q.r.l.ClusterID != in[0].r.l.ClusterID || q.r.l.Generation != in[0].r.l.Generation {
			return st, fmt.Errorf("zc: worker: inputs %s and %s are in different clusters", q.Name(), in[0].Name())
		}
	}
	for _, q := range out {
		if q.out == nil {
			return st, fmt.Errorf("zc: worker: output %s: %w (need producer ends)", q.Name(), ErrWrongEnd)
		}
		if q.r.l.ClusterID != in[0].r.l.ClusterID || q.r.l.Generation != in[0].r.l.Generation {
			return st, fmt.Errorf("zc: worker: %s and %s are in different clusters (zero copy needs one)", in[0].Name(), q.Name())
		}
		if q.outstanding > 0 {
			return st, fmt.Errorf("zc: worker: output %s has %d buffers on loan", q.Name(), q.outstanding)
		}
		if p, ok := q.src.(*Pool); ok && len(p.queues) > 1 {
			return st, fmt.Errorf("zc: worker: output %s shares a pool with other queues (attach outputs with Cluster.Output or Open(name, AsProducer()))", q.Name())
		}
	}
	if mode != ModeRoundRobin && mode != ModeFanout && hash == nil && mode.Func() == nil {
		return st, fmt.Errorf("zc: worker: mode %d has no hash function", mode)
	}
	r := newRelay(in, in[0].r.l.NumBufs)
	srcs := make([]source, len(out))
	for i, q := range out {
		srcs[i], q.src = q.src, r
	}
	bal, err := NewBalancer(out, mode, hash, opt.Policy)
	if err != nil {
		for i, q := range out { // refused: the queues as they were
			q.src = srcs[i]
		}
		return st, err
	}
	burst := opt.Burst
	if burst <= 0 {
		burst = 32
	}
	burst = min(burst, MaxBurst)
	pkts := make([]Packet, burst)
	keep := make([]Packet, 0, burst)
	failed := make([]bool, len(in))
	done := ctx.Done()
	var bo backoff
	for iter := 0; ; iter++ {
		got := 0
		for i, q := range in {
			if failed[i] {
				continue
			}
			n, err := q.RecvBurst(pkts)
			if err != nil {
				// The input's producer broke it, or its region went
				// away: that input is lost, the others go on.
				failed[i] = true
				st.FailedInputs++
				if st.FailedInputs == len(in) {
					return st, fmt.Errorf("zc: worker: every input failed, last: %w", err)
				}
				continue
			}
			if n == 0 {
				continue
			}
			got += n
			st.Received += uint64(n)
			batch := r.adopt(pkts[:n], i, &st.Duplicates)
			if opt.Filter != nil {
				keep = keep[:0]
				for j := range batch {
					if opt.Filter(&batch[j]) {
						keep = append(keep, batch[j])
					} else {
						st.Filtered++
						r.ref[batch[j].handle] = 0
						one := [1]uint32{batch[j].handle}
						q.releaseHandles(one[:])
					}
				}
				batch = keep
			}
			if err := bal.Push(ctx, batch); err != nil {
				return st, nil // ctx ended while waiting for room: a normal stop
			}
		}
		bal.Reclaim()
		if got > 0 {
			bo = backoff{}
			// Under load too, a stop is noticed within 64 bursts.
			if iter&63 == 0 {
				select {
				case <-done:
					return st, nil
				default:
				}
			}
			continue
		}
		if err := bo.wait(ctx); err != nil {
			return st, nil // ctx ended: a normal stop
		}
	}
}

// RunFanout sends every packet of in to every queue of out, without
// copying (reference counted), until ctx ends.
func RunFanout(ctx context.Context, in, out []*Queue, opt WorkerOptions) (WorkerStats, error) {
	return RunBalancer(ctx, in, out, ModeFanout, nil, opt)
}

// RunPipeline is one stage of a pipeline: packets from in pass stage
// (false drops them) and go on to out, without copying. Chain stages
// with queues, one goroutine or process per stage.
func RunPipeline(ctx context.Context, in, out *Queue, stage func(p *Packet) bool, opt WorkerOptions) (WorkerStats, error) {
	opt.Filter = stage
	return RunBalancer(ctx, []*Queue{in}, []*Queue{out}, ModeRoundRobin, nil, opt)
}
