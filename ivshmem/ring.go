package ivshmem

import (
	"fmt"
	"sync/atomic"
)

// A ring is a single-producer, single-consumer array of 32-bit buffer
// handles in shared memory. Its producer and consumer indices are free
// running uint32 counters on separate 128-byte lines; slot i%size holds
// entry i. The ring holds prod-cons entries, never more than size.
//
// Publication order (producer): write the buffers and their metadata,
// write the handles into the slots, then store the producer index with
// release semantics. Consumer: load the producer index (acquire), read the
// slots and the buffers, then store the consumer index (release), which
// hands the slots back. On amd64 the release store is a plain MOV (TSO);
// elsewhere a sync/atomic store.
//
// Each side keeps its own index in process memory and never reads it back
// from the region: only the peer's index is loaded, and it is checked
// (0 <= prod-cons <= size) before use. A peer that breaks the rule gets
// ErrCorrupt and loses its queue.

// Counter names the three 64-bit counters each side of a ring owns.
type Counter int

// The counters of a ring side. Their meaning is the queue's: see
// zc.QueueStats.
const (
	CountPackets Counter = iota
	CountBytes
	CountDrops
	numCounters
)

type ringSide struct {
	mine    *uint32 // this side's index word in the region
	peer    *uint32 // the other side's index word
	slots   []uint32
	mask    uint32
	size    uint32
	pos     uint32 // this side's index, authoritative
	cached  uint32 // last validated value of the peer's index
	stat    [numCounters]*uint64
	statVal [numCounters]uint64
}

// RingProducer is the producing side of a ring. Not safe for concurrent use.
type RingProducer struct{ ringSide }

// RingConsumer is the consuming side of a ring. Not safe for concurrent use.
type RingConsumer struct{ ringSide }

func (s *ringSide) init(b []byte, off uint64, slots uint32, producer bool) error {
	if !isPow2(uint64(slots)) || slots > MaxSlots || off%LineSize != 0 || RingBytes(slots) > uint64(len(b)) || off > uint64(len(b))-RingBytes(slots) || !aligned(b) {
		return fmt.Errorf("%w: ring at %d with %d slots in %d bytes", ErrBadRegion, off, slots, len(b))
	}
	mineOff, peerOff, statOff := off+rOffCons, off+rOffProd, off+rOffConsStat
	if producer {
		mineOff, peerOff, statOff = off+rOffProd, off+rOffCons, off+rOffProdStat
	}
	s.mine, s.peer = u32ptr(b, mineOff), u32ptr(b, peerOff)
	s.slots = u32slice(b, off+rOffSlots, slots)
	s.size, s.mask = slots, slots-1
	for i := range s.stat {
		s.stat[i] = u64ptr(b, statOff+8*uint64(i))
		s.statVal[i] = atomic.LoadUint64(s.stat[i])
	}
	// Take over where the previous holder of this side stopped.
	s.pos = atomic.LoadUint32(s.mine)
	s.cached = atomic.LoadUint32(s.peer)
	if producer && s.pos-s.cached > s.size || !producer && s.cached-s.pos > s.size {
		return fmt.Errorf("%w: indices prod/cons out of range at attach", ErrCorrupt)
	}
	return nil
}

// NewRingProducer attaches the producing side of the ring at b[off:].
func NewRingProducer(b []byte, off uint64, slots uint32) (*RingProducer, error) {
	p := &RingProducer{}
	return p, p.init(b, off, slots, true)
}

// NewRingConsumer attaches the consuming side of the ring at b[off:].
func NewRingConsumer(b []byte, off uint64, slots uint32) (*RingConsumer, error) {
	c := &RingConsumer{}
	return c, c.init(b, off, slots, false)
}

// Size returns the number of slots.
func (s *ringSide) Size() uint32 { return s.size }

// Add adds v to one of this side's counters and publishes it in the
// region. The value in process memory is the authoritative one (the peer
// may overwrite the region's copy); it is stored atomically so Own can
// read it from another goroutine.
func (s *ringSide) Add(c Counter, v uint64) {
	n := s.statVal[c] + v
	storeRelease64(&s.statVal[c], n)
	storeRelease64(s.stat[c], n)
}

// Count adds v to counter c in process memory only: for a side whose
// region must not be touched any more (its queue failed, its file may be
// truncated).
func (s *ringSide) Count(c Counter, v uint64) {
	storeRelease64(&s.statVal[c], s.statVal[c]+v)
}

// Counter returns this side's own value of counter c (on the goroutine
// that uses the ring).
func (s *ringSide) Counter(c Counter) uint64 { return s.statVal[c] }

// Own returns this side's own value of counter c, kept in process memory
// (not the region's copy, which the peer can write). Safe from any
// goroutine.
func (s *ringSide) Own(c Counter) uint64 { return atomic.LoadUint64(&s.statVal[c]) }

// Free returns how many handles Enqueue can take now, reloading the
// consumer index. It returns ErrCorrupt if the consumer index is invalid.
func (p *RingProducer) Free() (uint32, error) {
	c := atomic.LoadUint32(p.peer)
	if p.pos-c > p.size {
		return 0, ErrCorrupt
	}
	p.cached = c
	return c + p.size - p.pos, nil
}

// Enqueue appends up to len(hs) handles and returns how many it took
// (fewer when the ring is full). It reloads the consumer index only when
// the cached one shows too little room.
func (p *RingProducer) Enqueue(hs []uint32) (int, error) {
	free := p.cached + p.size - p.pos
	if uint32(len(hs)) > free {
		f, err := p.Free()
		if err != nil {
			return 0, err
		}
		free = f
	}
	n := uint32(len(hs))
	if n > free {
		n = free
	}
	if n == 0 {
		return 0, nil
	}
	i := p.pos & p.mask
	k := copy(p.slots[i:], hs[:n])
	copy(p.slots, hs[k:n])
	p.pos += n
	storeRelease(p.mine, p.pos)
	return int(n), nil
}

// Len returns the number of handles ready to dequeue, reloading the
// producer index. It returns ErrCorrupt if the producer index is invalid.
func (c *RingConsumer) Len() (uint32, error) {
	p := atomic.LoadUint32(c.peer)
	if p-c.pos > c.size {
		return 0, ErrCorrupt
	}
	c.cached = p
	return p - c.pos, nil
}

// Dequeue moves up to len(hs) handles out of the ring into hs and returns
// how many. The handles are the peer's values: the caller checks them.
func (c *RingConsumer) Dequeue(hs []uint32) (int, error) {
	avail := c.cached - c.pos
	if uint32(len(hs)) > avail {
		a, err := c.Len()
		if err != nil {
			return 0, err
		}
		avail = a
	}
	n := uint32(len(hs))
	if n > avail {
		n = avail
	}
	if n == 0 {
		return 0, nil
	}
	i := c.pos & c.mask
	k := copy(hs[:n], c.slots[i:])
	copy(hs[k:n], c.slots)
	c.pos += n
	storeRelease(c.mine, c.pos)
	return int(n), nil
}

// RingCounters reads both sides' counters and indices of the ring at
// b[off:] for monitoring (any party, at any time).
func RingCounters(b []byte, off uint64) (prod, cons uint32, prodStat, consStat [3]uint64) {
	prod, cons = loadU32(b, off+rOffProd), loadU32(b, off+rOffCons)
	for i := range 3 {
		prodStat[i] = loadU64(b, off+rOffProdStat+8*uint64(i))
		consStat[i] = loadU64(b, off+rOffConsStat+8*uint64(i))
	}
	return
}

// InRing calls fn for every handle the producer put in the ring that the
// consumer has not taken yet, after checking the consumer index. The
// handles are the slots' current contents.
func (p *RingProducer) InRing(fn func(h uint32)) error {
	c := atomic.LoadUint32(p.peer)
	if p.pos-c > p.size {
		return ErrCorrupt
	}
	for i := c; i != p.pos; i++ {
		fn(p.slots[i&p.mask])
	}
	return nil
}
