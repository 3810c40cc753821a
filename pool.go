package zc

import "fmt"

// source is where a producer's buffers come from and go back to: a Pool
// (free list) or a worker's relay (buffers borrowed from input queues).
// Its bookkeeping lives in process memory, never in the region, so a
// consumer that returns handles it was never given cannot corrupt it.
type source interface {
	// owns reports whether h is out on loan and may come back.
	owns(h uint32) bool
	// retain adds n references to h (fan-out to n more queues).
	retain(h uint32, n uint16)
	// put drops one reference to each handle; at zero it is free again.
	put(hs []uint32)
}

// Pool is a producer's supply of buffers: a contiguous range of a
// cluster's buffers, with a free list and a reference count per buffer in
// process memory. A Pool is not safe for concurrent use: one producer
// thread owns it, with every queue it feeds.
type Pool struct {
	r      *region
	first  uint32
	count  uint32
	free   []uint32 // stack of free handles
	ref    []uint16 // references per buffer (index h-first)
	queues []*Queue // producer queues fed from this pool
	empty  uint64   // Alloc calls that found no buffer at all
}

func newPool(r *region, first, count uint32) *Pool {
	p := &Pool{r: r, first: first, count: count, free: make([]uint32, 0, count), ref: make([]uint16, count)}
	for h := first + count; h > first; h-- {
		p.free = append(p.free, h-1)
	}
	return p
}

// Len returns the number of free buffers.
func (p *Pool) Len() int { return len(p.free) }

// Cap returns the number of buffers in the pool.
func (p *Pool) Cap() int { return int(p.count) }

// BufferSize returns the size of each buffer.
func (p *Pool) BufferSize() int { return int(p.r.l.BufSize) }

func (p *Pool) owns(h uint32) bool {
	return h-p.first < p.count && p.ref[h-p.first] > 0
}

func (p *Pool) retain(h uint32, n uint16) { p.ref[h-p.first] += n }

func (p *Pool) put(hs []uint32) {
	for _, h := range hs {
		i := h - p.first
		if i >= p.count || p.ref[i] == 0 {
			continue // not ours: owns() filters these before
		}
		p.ref[i]--
		if p.ref[i] == 0 {
			p.free = append(p.free, h)
		}
	}
}

// Reclaim takes back the buffers consumers returned on every queue this
// pool feeds. Alloc calls it when the free list runs short. It also
// answers a consumer that replaced a dead one (Queue.RecoveryAsked): a
// producer that sends less often than HandshakeWait calls it when it
// finds one waiting, so that the dead consumer's buffers come back.
func (p *Pool) Reclaim() {
	for _, q := range p.queues {
		q.reclaim()
	}
}

// Alloc fills pkts with free buffers, Data spanning each whole buffer, and
// returns how many it got (0 when every buffer is in flight).
func (p *Pool) Alloc(pkts []Packet) int {
	if len(p.free) < len(pkts) {
		p.Reclaim()
	}
	n := min(len(pkts), len(p.free))
	top := len(p.free)
	free, ref, first := p.free, p.ref, p.first // in registers across the stores
	size, bufs := uint64(p.r.l.BufSize), p.r.bufs
	for i, h := range free[top-n : top] {
		ref[h-first] = 1
		off := uint64(h) * size
		pkts[n-1-i] = Packet{Data: bufs[off : off+size : off+size], handle: h}
	}
	p.free = free[:top-n]
	if n == 0 && len(pkts) > 0 {
		p.empty++
	}
	return n
}

// onLoan reports whether buffer h is lent on one of the pool's queues
// (sent, not yet returned).
func (p *Pool) onLoan(h uint32) bool {
	for _, q := range p.queues {
		if q.onLoan(h) {
			return true
		}
	}
	return false
}

// Free gives back packets that were allocated and not sent. A packet
// sent already is the consumer's until it comes back: freeing it does
// nothing (it would be allocated again while the consumer reads it).
func (p *Pool) Free(pkts []Packet) {
	for i := range pkts {
		h := pkts[i].handle
		if h-p.first < p.count && p.ref[h-p.first] > 0 && !p.onLoan(h) {
			p.ref[h-p.first] = 0
			p.free = append(p.free, h)
		}
	}
}

// Empty returns how many Alloc calls found no free buffer.
func (p *Pool) Empty() uint64 { return p.empty }

// String describes the pool for errors and logs.
func (p *Pool) String() string {
	return fmt.Sprintf("pool [%d,+%d) of cluster %d, %d free", p.first, p.count, p.r.l.ClusterID, len(p.free))
}

// Packet returns a view of buffer h, allocated from this pool and filled
// by someone else (a NIC through AF_XDP): n bytes at offset off. It
// checks that h is one of the pool's buffers on loan and that the bytes
// fit in the buffer.
func (p *Pool) Packet(h uint32, off, n uint32) (Packet, error) {
	if !p.owns(h) {
		return Packet{}, fmt.Errorf("zc: buffer %d is not allocated from %s", h, p)
	}
	size := p.r.l.BufSize
	if off > size || n > size-off {
		return Packet{}, fmt.Errorf("zc: buffer %d: %d bytes at %d exceed the %d-byte buffer", h, n, off, size)
	}
	return Packet{Data: p.r.buffer(h)[off : off+n : size], handle: h, off: off}, nil
}

// Handles fills hs with free buffers (for a NIC's fill ring) and returns
// how many; each stays allocated until made into a Packet and sent, or
// given back with FreeHandles.
func (p *Pool) Handles(hs []uint32) int {
	if len(p.free) < len(hs) {
		p.Reclaim()
	}
	n := min(len(hs), len(p.free))
	top := len(p.free)
	free, ref, first := p.free, p.ref, p.first // in registers across the stores
	for i, h := range free[top-n : top] {
		ref[h-first] = 1
		hs[n-1-i] = h
	}
	p.free = free[:top-n]
	return n
}

// FreeHandles gives back allocated buffers by handle (not those lent:
// see Free).
func (p *Pool) FreeHandles(hs []uint32) {
	for _, h := range hs {
		if h-p.first < p.count && p.ref[h-p.first] > 0 && !p.onLoan(h) {
			p.ref[h-p.first] = 0
			p.free = append(p.free, h)
		}
	}
}
