package ivshmem

import (
	"fmt"
	"sync/atomic"
	"time"
)

// A ring is a single-producer, single-consumer array in shared memory:
// 16-byte packet descriptors (a queue's data ring) or 32-bit buffer
// handles (its return ring). Its producer and consumer indices are free
// running uint32 counters on separate 128-byte lines; slot i%size holds
// entry i. The ring holds prod-cons entries, never more than size.
//
// Publication order (producer): write the buffers and their metadata,
// write the entries into the slots, then store the producer index.
// Consumer: load the producer index (acquire), read the slots and the
// buffers, then store the consumer index, which hands the slots back.
//
// Wake-up (the need_wakeup pattern): a third line holds the consumer's
// wake word. A consumer that found the ring empty and wants to sleep
// stores a Wake* code there, then looks at the ring again (a wake-up sent
// in between is not lost), then sleeps. The producer, after storing its
// index, loads the wake word and wakes the consumer only when it is set,
// so a busy ring costs no system call. Both sides order their store
// before the other's word with a full barrier: the producer's index store
// is sequentially consistent (a locked XCHG on amd64, on a line it owns),
// and so is the consumer's wake store. The word is the consumer's sleep
// number << 2 | its Wake* code, a new number each sleep; the producer
// never writes it, and wakes once per number it sees (it remembers the
// last): a peer that keeps writing new numbers costs one wake-up per
// burst sent to it, and can neither block the producer nor make it spin.
//
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
	mine    *uint32  // this side's index word in the region
	peer    *uint32  // the other side's index word
	wake    *uint32  // the consumer's wake word
	rings   *uint32  // the producer's "I ring the doorbell" word
	slots   []uint32 // a return ring's handles
	descs   []Desc   // a data ring's descriptors
	mask    uint32
	size    uint32
	pos     uint32 // this side's index, authoritative
	cached  uint32 // last validated value of the peer's index
	sleeps  uint32 // consumer: its sleep number (the wake word's upper bits)
	woken   uint32 // producer: the last wake word it answered
	stat    [numCounters]*uint64
	statVal [numCounters]uint64
	_       [40]byte // to 192 bytes, whole cache lines: see TestRingSideSize
}

// DescRing returns a data ring's descriptor slots (nil for a return
// ring), this side's index and the index mask: entry k after the index
// (DescAt) is descs[(pos+k)&mask], for a loop over a burst (what Ready or
// Reserve returned) that keeps the ring's fields in registers across its
// stores. A consumer reads the peer's values: copy each once, check the
// copy.
func (s *ringSide) DescRing() (descs []Desc, pos, mask uint32) { return s.descs, s.pos, s.mask }

// HandleRing is DescRing for a return ring's handle slots (HandleAt,
// SetHandle).
func (s *ringSide) HandleRing() (slots []uint32, pos, mask uint32) { return s.slots, s.pos, s.mask }

// RingProducer is the producing side of a ring. Not safe for concurrent use.
type RingProducer struct{ ringSide }

// RingConsumer is the consuming side of a ring. Not safe for concurrent use.
type RingConsumer struct{ ringSide }

func (s *ringSide) init(b []byte, off uint64, slots uint32, producer, desc bool) error {
	size := RingBytes(slots)
	if desc {
		size = DescRingBytes(slots)
	}
	if !isPow2(uint64(slots)) || slots > MaxSlots || off%LineSize != 0 || size > uint64(len(b)) || off > uint64(len(b))-size || !aligned(b) {
		return fmt.Errorf("%w: ring at %d with %d slots in %d bytes", ErrBadRegion, off, slots, len(b))
	}
	mineOff, peerOff, statOff := off+rOffCons, off+rOffProd, off+rOffConsStat
	if producer {
		mineOff, peerOff, statOff = off+rOffProd, off+rOffCons, off+rOffProdStat
	}
	s.mine, s.peer, s.wake = u32ptr(b, mineOff), u32ptr(b, peerOff), u32ptr(b, off+rOffWake)
	s.rings = u32ptr(b, off+rOffRings)
	if desc {
		s.descs = descSlice(b, off+rOffSlots, slots)
	} else {
		s.slots = u32slice(b, off+rOffSlots, slots)
	}
	s.size, s.mask = slots, slots-1
	for i := range s.stat {
		s.stat[i] = u64ptr(b, statOff+8*uint64(i))
		s.statVal[i] = atomic.LoadUint64(s.stat[i])
	}
	// Take over where the previous holder of this side stopped; a new
	// consumer numbers its sleeps after the last one's. A new producer
	// has answered no sleep yet: a consumer asleep as it attaches gets
	// its wake-up (woken stays 0, never a sleeping word).
	s.sleeps = atomic.LoadUint32(s.wake) >> 2
	s.pos = atomic.LoadUint32(s.mine)
	s.cached = atomic.LoadUint32(s.peer)
	if producer && s.pos-s.cached > s.size || !producer && s.cached-s.pos > s.size {
		return fmt.Errorf("%w: indices prod/cons out of range at attach", ErrCorrupt)
	}
	return nil
}

// NewRingProducer attaches the producing side of the handle ring (a
// return ring) at b[off:].
func NewRingProducer(b []byte, off uint64, slots uint32) (*RingProducer, error) {
	p := &RingProducer{}
	return p, p.init(b, off, slots, true, false)
}

// NewRingConsumer attaches the consuming side of the handle ring at
// b[off:].
func NewRingConsumer(b []byte, off uint64, slots uint32) (*RingConsumer, error) {
	c := &RingConsumer{}
	return c, c.init(b, off, slots, false, false)
}

// NewDescProducer attaches the producing side of the descriptor ring (a
// data ring) at b[off:].
func NewDescProducer(b []byte, off uint64, slots uint32) (*RingProducer, error) {
	p := &RingProducer{}
	return p, p.init(b, off, slots, true, true)
}

// NewDescConsumer attaches the consuming side of the descriptor ring at
// b[off:].
func NewDescConsumer(b []byte, off uint64, slots uint32) (*RingConsumer, error) {
	c := &RingConsumer{}
	return c, c.init(b, off, slots, false, true)
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

// room returns how many of want entries fit now, reloading the consumer
// index only when the cached one shows too little room.
func (p *RingProducer) room(want int) (uint32, error) {
	free := p.cached + p.size - p.pos
	if uint32(want) > free {
		f, err := p.Free()
		if err != nil {
			return 0, err
		}
		free = f
	}
	return min(uint32(want), free), nil
}

// publish stores the producer index after n new entries. The store is
// sequentially consistent: the wake word is loaded after it (see Waiting).
func (p *RingProducer) publish(n uint32) {
	p.pos += n
	atomic.StoreUint32(p.mine, p.pos)
}

// Enqueue appends up to len(hs) handles to a handle ring and returns how
// many it took (fewer when the ring is full).
func (p *RingProducer) Enqueue(hs []uint32) (int, error) {
	n, err := p.room(len(hs))
	if err != nil || n == 0 {
		return 0, err
	}
	i := p.pos & p.mask
	k := copy(p.slots[i:], hs[:n])
	copy(p.slots, hs[k:n])
	p.publish(n)
	return int(n), nil
}

// EnqueueDescs appends up to len(ds) descriptors to a descriptor ring
// and returns how many it took (fewer when the ring is full).
func (p *RingProducer) EnqueueDescs(ds []Desc) (int, error) {
	n, err := p.room(len(ds))
	if err != nil || n == 0 {
		return 0, err
	}
	i := p.pos & p.mask
	k := copy(p.descs[i:], ds[:n])
	copy(p.descs, ds[k:n])
	p.publish(n)
	return int(n), nil
}

// Reserve returns how many of want entries fit now, for a caller that
// writes them in place (DescAt, SetHandle) and then calls Publish: the
// zero-copy form of Enqueue, one pass over a burst.
func (p *RingProducer) Reserve(want int) (int, error) {
	n, err := p.room(want)
	return int(n), err
}

// DescAt returns the k-th descriptor slot after the producer index (k <
// what Reserve returned), to be written before Publish.
func (p *RingProducer) DescAt(k int) *Desc { return &p.descs[(p.pos+uint32(k))&p.mask] }

// SetHandle writes h into the k-th handle slot after the producer index
// (k < what Reserve returned), before Publish.
func (p *RingProducer) SetHandle(k int, h uint32) { p.slots[(p.pos+uint32(k))&p.mask] = h }

// Publish hands the first n reserved entries, written in place, to the
// consumer (n <= what Reserve returned).
func (p *RingProducer) Publish(n int) { p.publish(uint32(n)) }

// Waiting returns the consumer's wake request after the last enqueue: a
// Wake* code (the low two bits of the word), once per sleep; WakeNone when
// nobody sleeps or this sleep was answered already. The caller wakes the
// consumer (Wake for WakeFutex). It costs one load of a line the consumer
// rarely writes, and writes nothing.
func (p *RingProducer) Waiting() uint32 {
	v := atomic.LoadUint32(p.wake)
	if v&wakeCode == WakeNone || v == p.woken {
		return WakeNone
	}
	p.woken = v
	return v & wakeCode
}

// Wake wakes a consumer sleeping in futex(2) on this ring (WakeFutex).
func (p *RingProducer) Wake() { futexWake(p.mine) }

// SetRings records in this producer's line whether it answers a consumer
// that sleeps with WakeDoorbell by ringing the ivshmem doorbell: a guest
// with a doorbell device, or the host process that serves the guests'
// doorbells. A consumer looks at it before it sleeps (PeerRings).
func (p *RingProducer) SetRings(on bool) {
	v := uint32(0)
	if on {
		v = 1
	}
	atomic.StoreUint32(p.rings, v)
}

// PeerRings reports whether the ring's producer said it answers
// WakeDoorbell by ringing the doorbell (SetRings). It is the peer's word:
// a producer that says so and never rings costs this consumer its sleep
// timeout, nothing more.
func (c *RingConsumer) PeerRings() bool { return atomic.LoadUint32(c.rings) == 1 }

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

// avail returns how many of want entries are ready, reloading the
// producer index only when the cached one shows too few.
func (c *RingConsumer) avail(want int) (uint32, error) {
	avail := c.cached - c.pos
	if uint32(want) > avail {
		a, err := c.Len()
		if err != nil {
			return 0, err
		}
		avail = a
	}
	return min(uint32(want), avail), nil
}

// Dequeue moves up to len(hs) handles out of a handle ring into hs and
// returns how many. The handles are the peer's values: the caller checks
// them.
func (c *RingConsumer) Dequeue(hs []uint32) (int, error) {
	n, err := c.avail(len(hs))
	if err != nil || n == 0 {
		return 0, err
	}
	i := c.pos & c.mask
	k := copy(hs[:n], c.slots[i:])
	copy(hs[k:n], c.slots)
	c.pos += n
	storeRelease(c.mine, c.pos)
	return int(n), nil
}

// DequeueDescs moves up to len(ds) descriptors out of a descriptor ring
// and returns how many. Every field is the peer's value: the caller
// checks them.
func (c *RingConsumer) DequeueDescs(ds []Desc) (int, error) {
	n, err := c.avail(len(ds))
	if err != nil || n == 0 {
		return 0, err
	}
	i := c.pos & c.mask
	k := copy(ds[:n], c.descs[i:])
	copy(ds[k:n], c.descs)
	c.pos += n
	storeRelease(c.mine, c.pos)
	return int(n), nil
}

// Ready returns how many of want entries can be read in place now (DescAt,
// HandleAt), before Consume hands their slots back: the zero-copy form
// of Dequeue, one pass over a burst.
func (c *RingConsumer) Ready(want int) (int, error) {
	n, err := c.avail(want)
	return int(n), err
}

// DescAt returns a copy of the k-th descriptor after the consumer index
// (k < what Ready returned). It is the peer's value, read once: check its
// fields in the copy.
func (c *RingConsumer) DescAt(k int) Desc { return c.descs[(c.pos+uint32(k))&c.mask] }

// HandleAt returns the k-th handle after the consumer index (k < what
// Ready returned): the peer's value, to be checked.
func (c *RingConsumer) HandleAt(k int) uint32 { return c.slots[(c.pos+uint32(k))&c.mask] }

// Consume hands the slots of n entries read in place back to the
// producer (n <= what Ready returned).
func (c *RingConsumer) Consume(n int) {
	c.pos += uint32(n)
	storeRelease(c.mine, c.pos)
}

// Announce tells the producer this consumer is about to sleep (mode, a
// Wake* code), then looks at the ring again: it returns true, with the
// word cleared, when entries arrived meanwhile (do not sleep). After a
// false, sleep (FutexWait for WakeFutex) and call Clear when awake.
func (c *RingConsumer) Announce(mode uint32) (bool, error) {
	c.sleeps++
	atomic.StoreUint32(c.wake, c.sleeps<<2|mode&wakeCode)
	n, err := c.Len()
	if err != nil || n > 0 {
		c.Clear()
		return true, err
	}
	return false, nil
}

// Interrupt wakes this consumer from FutexWait (from another goroutine:
// its context ended).
func (c *RingConsumer) Interrupt() { futexWake(c.peer) }

// Clear withdraws a wake-up request (the consumer is awake).
func (c *RingConsumer) Clear() { atomic.StoreUint32(c.wake, c.sleeps<<2) }

// FutexWait sleeps until the producer index moves from the value last
// seen, a wake-up, or timeout: after Announce(WakeFutex) returned false.
func (c *RingConsumer) FutexWait(timeout time.Duration) error {
	return futexWait(c.peer, c.cached, timeout)
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
		if p.descs != nil {
			fn(p.descs[i&p.mask].Handle)
		} else {
			fn(p.slots[i&p.mask])
		}
	}
	return nil
}

// DoorbellWaker answers a guest's doorbell rings for the region in b, in
// the process that serves the guest's doorbell (the agent):
//
//   - a host process asleep on a ring whose producer is the guest (it
//     announced WakeDoorbell and waits in futex(2) on the producer index
//     word) is woken with FUTEX_WAKE;
//   - a guest asleep on its interrupt on a ring whose producer is a host
//     process that cannot ring it (rings word 0) rang to be watched for:
//     Wake reports it (GuestSleep), and the caller waits in
//     AwaitGuestSleep until entries come, then rings the guest.
//
// Wake answers each sleep once (the wake word's sleep number), so a guest
// that rings without pause costs each sleeper at most one answer per
// sleep. Not safe for concurrent use.
type DoorbellWaker struct {
	l        *Layout
	b        []byte
	answered []uint32 // per ring (queue*2, +1 for the return ring): the last wake word answered
}

// GuestSleep is a guest asleep on its doorbell waiting for entries on a
// ring whose producer does not ring it (DoorbellWaker.Wake).
type GuestSleep struct {
	// Queue and Return name the ring: queue Queue's data ring, or its
	// return ring.
	Queue  uint32
	Return bool
	off    uint64 // the ring, from the validated layout
	word   uint32 // the wake word of this sleep
}

// NewDoorbellWaker returns the waker of the region in b.
func (l *Layout) NewDoorbellWaker(b []byte) *DoorbellWaker {
	return &DoorbellWaker{l: l, b: b, answered: make([]uint32, 2*len(l.Queues))}
}

// Wake wakes, with FUTEX_WAKE, every host process asleep with WakeDoorbell
// on a ring of the region that it has not answered for that sleep yet,
// and returns how many it woke; it calls guest (when not nil) for each
// guest asleep with WakeDoorbell on a ring whose producer does not ring
// it. The sleeper of a data ring is its queue's consumer end, of a return
// ring the producer end. It reads only words it compares: nothing read
// steers an access.
func (w *DoorbellWaker) Wake(guest func(GuestSleep)) int {
	n := 0
	for i, q := range w.l.Queues {
		for j, r := range [2]struct {
			off uint64
			end End
		}{{q.DataRing, EndConsumer}, {q.RetRing, EndProducer}} {
			v := loadU32(w.b, r.off+rOffWake)
			if v&wakeCode != WakeDoorbell || v == w.answered[2*i+j] {
				continue
			}
			switch w.l.QueueOwner(w.b, uint32(i), r.end).Side {
			case SideHost:
				w.answered[2*i+j] = v
				futexWake(u32ptr(w.b, r.off+rOffProd))
				n++
			case SideGuest:
				if guest != nil && loadU32(w.b, r.off+rOffRings) != 1 {
					w.answered[2*i+j] = v
					guest(GuestSleep{Queue: uint32(i), Return: j == 1, off: r.off, word: v})
				}
			}
		}
	}
	return n
}

// AwaitGuestSleep waits, at most d, while the guest of g sleeps on an
// empty ring: it returns ring true when the ring has entries for it (ring
// the guest now), asleep false when that sleep is over (the wake word
// changed: nothing to do). After a timeout it returns false, true: call
// again. A FUTEX_WAKE on the ring's producer index word (the host
// producer's notify, InterruptGuestSleep) ends the wait early.
func (l *Layout) AwaitGuestSleep(b []byte, g GuestSleep, d time.Duration) (ring, asleep bool) {
	prod, wake := u32ptr(b, g.off+rOffProd), u32ptr(b, g.off+rOffWake)
	v := atomic.LoadUint32(prod)
	if atomic.LoadUint32(wake) != g.word {
		return false, false
	}
	if v != loadU32(b, g.off+rOffCons) {
		return true, true
	}
	futexWait(prod, v, d)
	if atomic.LoadUint32(wake) != g.word {
		return false, false
	}
	return atomic.LoadUint32(prod) != v, true
}

// InterruptGuestSleep ends an AwaitGuestSleep on g's ring at once (its
// caller is stopping).
func (l *Layout) InterruptGuestSleep(b []byte, g GuestSleep) { futexWake(u32ptr(b, g.off+rOffProd)) }

// WakeAll wakes every process sleeping on any ring of the region in b
// (futex on the producer indices): the creator closes the region, and
// the sleepers must look at it now rather than at their next timeout.
func (l *Layout) WakeAll(b []byte) {
	for _, q := range l.Queues {
		futexWake(u32ptr(b, q.DataRing+rOffProd))
		futexWake(u32ptr(b, q.RetRing+rOffProd))
	}
}

// PrefetchNext asks the CPU for the lines of the next n slots after this
// producer's index, to write them: a hint for a producer about to write
// them, so that their lines come from the peer's cache meanwhile. Only
// slots known to be free are asked for (a slot the consumer still reads
// is left alone). It never faults and changes nothing the peer sees.
func (p *RingProducer) PrefetchNext(n int) {
	n = min(n, int(p.cached+p.size-p.pos))
	if n <= 0 {
		return
	}
	i := int(p.pos & p.mask)
	run := min(n, int(p.size)-i)
	if p.descs != nil {
		prefetchW(&p.descs[i].Handle, run*16)
		if run < n {
			prefetchW(&p.descs[0].Handle, (n-run)*16)
		}
		return
	}
	prefetchW(&p.slots[i], run*4)
	if run < n {
		prefetchW(&p.slots[0], (n-run)*4)
	}
}
