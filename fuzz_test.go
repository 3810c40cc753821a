package zc

import (
	"encoding/binary"
	"errors"
	"fmt"
	"reflect"
	"testing"

	"github.com/zcfabric/zc/ivshmem"
)

// The hostile-peer model of FuzzConsumer. A guest attached to a queue
// can write every shared word of the region: ring indices and slots (both
// rings of every queue it can see), buffer metadata records, owner words
// and the header's state. The fuzzer's input is a list of such writes,
// 6 bytes each:
//
//	+0  2  offset, little-endian: bit 15 set targets the header's first
//	       256 bytes (state word at 128), else the area from the queue
//	       table to the buffers (queue table, rings, metadata), modulo its
//	       size; rounded down to a multiple of 4
//	+2  4  value, little-endian, written as one 32-bit word
//
// The writes are split into six groups, applied in turn before the host
// side's consumer round (RecvBurst, checks, Release, on both queues) and
// before its producer round (Reclaim, Alloc, SendBurst, Drop), three
// times over. Nothing may panic or
// hang; every packet handed out must lie in the buffer area, inside its
// own buffer; every error must be one of the package's sentinels for a
// broken peer or region.
//
// Queue 1's consumer is honest unless a write lands in queue 1's
// descriptor or rings: then the buffers it holds must never be handed out
// again by Alloc, whatever was written to queue 0.
const fuzzRecord = 6

const fuzzClusterID = 61

// fuzzWrite encodes one hostile write for seeds.
func fuzzWrite(off uint16, v uint32) []byte {
	var r [fuzzRecord]byte
	binary.LittleEndian.PutUint16(r[0:], off)
	binary.LittleEndian.PutUint32(r[2:], v)
	return r[:]
}

// fuzzSeeds are writes at meaningful places of the fuzz cluster's layout
// (see fuzzLayout): each one passes today and steers the fuzzer to the
// interesting words.
func fuzzSeeds(l ivshmem.Layout) [][]byte {
	rel := func(abs uint64) uint16 { return uint16(abs - l.QueueTable) }
	q0, q1 := l.Queues[0], l.Queues[1]
	cat := func(ws ...[]byte) []byte {
		var out []byte
		for _, w := range ws {
			out = append(out, w...)
		}
		return out
	}
	const prodIdx, consIdx, slot0 = 0, 128, ivshmem.RingHeaderSize
	const desc = ivshmem.DescSize // a data ring slot: handle, length, offset, flags
	return [][]byte{
		nil,
		// Producer index far ahead of the consumer: ErrCorrupt.
		fuzzWrite(rel(q0.DataRing+prodIdx), 1000),
		// Producer index just ahead, slots pointing outside the buffers.
		cat(fuzzWrite(rel(q0.DataRing+prodIdx), 8), fuzzWrite(rel(q0.DataRing+slot0+desc*6), 0xffffffff), fuzzWrite(rel(q0.DataRing+slot0+desc*7), l.NumBufs)),
		// A descriptor with a huge length, and one with an offset past
		// the buffer end.
		cat(fuzzWrite(rel(q0.DataRing+slot0+desc*0+4), 1<<20), fuzzWrite(rel(q0.DataRing+slot0+desc*4+8), 300)),
		// Length + offset wrapping around 2^32.
		cat(fuzzWrite(rel(q0.DataRing+slot0+desc*5+4), 0xfffffff0), fuzzWrite(rel(q0.DataRing+slot0+desc*5+8), 0x20)),
		// A descriptor that says its metadata record is valid, over a
		// record of garbage.
		cat(fuzzWrite(rel(q0.DataRing+slot0+desc*2+12), 1<<31|7), fuzzWrite(rel(l.MetaOff+2*ivshmem.MetaSize), 0xffffffff)),
		// Wake words: a request to be woken, and garbage.
		cat(fuzzWrite(rel(q0.DataRing+256), ivshmem.WakeFutex), fuzzWrite(rel(q0.RetRing+256), 0xdeadbeef)),
		// The consumer index of the data ring moved backwards (the
		// producer sees a consumer that lies).
		fuzzWrite(rel(q0.DataRing+consIdx), 0xfffffff0),
		// The return ring: a handle of the wrong pool, a duplicate, an
		// index past the ring.
		cat(fuzzWrite(rel(q0.RetRing+slot0+4), 63), fuzzWrite(rel(q0.RetRing+prodIdx), 3)),
		fuzzWrite(rel(q0.RetRing+prodIdx), 100),
		// Owner words cleared and forged.
		cat(fuzzWrite(rel(l.QueueTable+40), 0), fuzzWrite(rel(l.QueueTable+48), 12345)),
		// The region closed under the consumer, then re-opened.
		cat(fuzzWrite(0x8000|128, ivshmem.StateClosed), fuzzWrite(0x8000|128, ivshmem.StateReady)),
		// The magic wiped (an unplugged BAR reads as zeros).
		fuzzWrite(0x8000, 0),
		// Writes to queue 1, whose consumer is then no longer honest.
		cat(fuzzWrite(rel(q1.RetRing+slot0), 1), fuzzWrite(rel(q1.RetRing+prodIdx), 1)),
	}
}

// fuzzConfig is small, so the whole shared area is a few KiB.
var fuzzConfig = Config{ID: fuzzClusterID, Queues: 2, QueueLen: 16, BufferSize: 256, Buffers: 64, Backing: BackingShm}

func FuzzConsumer(f *testing.F) {
	fx := newFuzzFixture(f, fuzzConfig)
	for _, s := range fuzzSeeds(fx.c.r.l) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, writes []byte) {
		defer fuzzWatchdog(t)()
		fuzzConsumerOnce(t, fx.fresh(), writes)
	})
}

// allowedErr reports whether err is what a broken peer or region may
// cause.
func allowedErr(err error) bool {
	return err == nil || errors.Is(err, ErrCorrupt) || errors.Is(err, ErrClosed) ||
		errors.Is(err, ErrBadRegion) || errors.Is(err, ErrBusy) ||
		errors.Is(err, ErrNotHeld) // a hostile producer delivered one handle twice
}

// fuzzState is one run of FuzzConsumer.
type fuzzState struct {
	t          *testing.T
	c          *Cluster
	prod       [2]*Queue
	cons       [2]*Queue
	held1      map[uint32]bool // handles queue 1's consumer received (never released)
	q1Hostile  bool            // a write touched queue 1
	bufSize    uint64
	pkts, recv []Packet
}

// fuzzConsumerOnce runs one input on c, a fresh cluster of fuzzConfig.
func fuzzConsumerOnce(t *testing.T, c *Cluster, writes []byte) {
	var err error
	s := &fuzzState{t: t, c: c, held1: map[uint32]bool{}, pkts: make([]Packet, 16), recv: make([]Packet, 16)}
	s.bufSize = uint64(c.BufferSize())
	for q := range 2 {
		if s.prod[q], err = c.Producer(q); err != nil {
			t.Fatal(err)
		}
		defer s.prod[q].Close()
	}
	// Both consumers attach inside the creator: a mapping of its own per
	// execution (Open by name) would cost more than the rest of the run
	// (munmap), and two-process attaching is tested in twoproc_test.go.
	for q := range 2 {
		if s.cons[q], err = c.Consumer(q); err != nil {
			t.Fatal(err)
		}
		defer s.cons[q].Close()
	}

	// Some traffic before the attack: packets in both data rings, some
	// held by the consumers, one returned and not yet reclaimed.
	s.send(0, 6)
	s.send(1, 4)
	if n, err := s.cons[0].RecvBurst(s.recv[:3]); n != 3 || err != nil {
		t.Fatalf("setup: received %d, %v", n, err)
	}
	if err := s.cons[0].Release(s.recv[0]); err != nil {
		t.Fatal(err)
	}
	s.receive(1, 2, false) // held, never released: queue 1 is honest

	l := &c.r.l
	q1 := l.Queues[1]
	q1Lo, q1Hi := q1.DataRing, q1.RetRing+ivshmem.RingBytes(q1.Slots)
	desc1 := l.QueueTable + ivshmem.QueueDescSize
	span := l.BufOff - l.QueueTable
	b := c.Bytes()
	nrec := len(writes) / fuzzRecord
	apply := func(group int) {
		for i := group * nrec / 6; i < (group+1)*nrec/6; i++ {
			r := writes[i*fuzzRecord:]
			off := uint64(binary.LittleEndian.Uint16(r))
			v := binary.LittleEndian.Uint32(r[2:])
			if off&0x8000 != 0 {
				off = off & 0xff
			} else {
				off = l.QueueTable + off%span
			}
			off &^= 3
			if off >= q1Lo && off < q1Hi || off >= desc1 && off < desc1+ivshmem.QueueDescSize {
				s.q1Hostile = true
			}
			binary.LittleEndian.PutUint32(b[off:], v)
		}
	}
	for phase := range 3 {
		apply(2 * phase) // what the consumer end reads next
		for q := range 2 {
			s.receive(q, 16, q == 0)
		}
		apply(2*phase + 1) // what the producer end reads next
		s.c.Pool().Reclaim()
		s.send(0, 8)
		s.send(1, 1)
	}
}

// checkPacket checks that p's bytes lie inside its own buffer in q's
// mapping of the region.
func (s *fuzzState) checkPacket(what string, q *Queue, p *Packet) {
	h := uint64(p.Handle())
	if h >= uint64(s.c.r.l.NumBufs) {
		s.t.Fatalf("%s: handle %d of %d buffers", what, h, s.c.r.l.NumBufs)
	}
	if cap(p.Data) == 0 {
		return // nothing reachable
	}
	base := reflect.ValueOf(q.r.l.BufferArea(q.r.b)).Pointer()
	start := uint64(reflect.ValueOf(p.Data).Pointer() - base)
	if start < h*s.bufSize || start+uint64(cap(p.Data)) > (h+1)*s.bufSize {
		s.t.Fatalf("%s: handle %d: data at [%d,+%d) of the buffer area, outside its buffer [%d,%d)",
			what, h, start, cap(p.Data), h*s.bufSize, (h+1)*s.bufSize)
	}
}

func (s *fuzzState) fail(what string, err error) {
	if !allowedErr(err) {
		s.t.Fatalf("%s: unexpected error %v", what, err)
	}
}

// receive runs one consumer round on queue q: up to max packets, checked,
// released if release.
func (s *fuzzState) receive(q, max int, release bool) {
	s.t.Helper()
	for range 3 {
		n, err := s.cons[q].RecvBurst(s.recv[:max])
		s.fail(fmt.Sprintf("recv on queue %d", q), err)
		if n < 0 || n > max {
			s.t.Fatalf("recv on queue %d: %d packets for a burst of %d", q, n, max)
		}
		for i := range s.recv[:n] {
			s.checkPacket(fmt.Sprintf("recv on queue %d", q), s.cons[q], &s.recv[i])
			if q == 1 {
				s.held1[s.recv[i].Handle()] = true
			}
		}
		if release {
			s.fail("release", s.cons[q].Release(s.recv[:n]...))
		}
		if n == 0 {
			return
		}
	}
}

// send runs one producer round on queue q: allocate up to n packets,
// check they are the producer's to write, send, drop what does not fit.
func (s *fuzzState) send(q, n int) {
	s.t.Helper()
	got, err := s.prod[q].Alloc(s.pkts[:n])
	s.fail("alloc", err)
	pool := s.c.Pool()
	if pool.Len() > pool.Cap() {
		s.t.Fatalf("pool has %d free of %d", pool.Len(), pool.Cap())
	}
	seen := map[uint32]bool{}
	queued1 := s.queued(1)
	for i := range s.pkts[:got] {
		p := &s.pkts[i]
		s.checkPacket("alloc", s.prod[q], p)
		h := p.Handle()
		if seen[h] {
			s.t.Fatalf("alloc handed out buffer %d twice in one burst", h)
		}
		seen[h] = true
		if !s.q1Hostile && (s.held1[h] || queued1[h]) {
			s.t.Fatalf("alloc handed out buffer %d, which queue 1's honest consumer holds (held %v, in its ring %v): a write elsewhere freed it", h, s.held1[h], queued1[h])
		}
		if len(p.Data) != int(s.bufSize) {
			s.t.Fatalf("alloc: %d-byte buffer, want %d", len(p.Data), s.bufSize)
		}
		p.Data = p.Data[:16+i]
		p.Data[0] = byte(i)
	}
	sent, err := s.prod[q].SendBurst(s.pkts[:got])
	s.fail("send", err)
	if sent < 0 || sent > got {
		s.t.Fatalf("sent %d of %d", sent, got)
	}
	s.prod[q].Drop(s.pkts[sent:got])
}

// queued returns the handles in queue q's data ring, sent and not yet
// received. Only meaningful while nobody wrote to queue q's rings.
func (s *fuzzState) queued(q int) map[uint32]bool {
	ql := s.c.r.l.Queues[q]
	b := s.c.Bytes()
	prod, cons, _, _ := ivshmem.RingCounters(b, ql.DataRing)
	out := map[uint32]bool{}
	for i := cons; i != prod && i-cons <= ql.Slots; i++ {
		off := ql.DataRing + ivshmem.RingHeaderSize + ivshmem.DescSize*uint64(i%ql.Slots)
		out[binary.LittleEndian.Uint32(b[off:])] = true
	}
	return out
}

// TestHostileReturnOfAnotherQueuesBuffer is the input FuzzConsumer found
// (minimised): one write by queue 0's consumer puts handle 8, a buffer
// the engine pool lent to queue 1 and that queue 1's consumer still
// holds, into a pending slot of queue 0's return ring. When the
// producer's record of loans was per pool (a reference count), reclaim on
// queue 0 accepted it, freed it, and Alloc handed it out again while
// queue 1's consumer read it: a guest on one queue corrupted another
// queue's packets. Each queue now keeps a bitmap of what it lent.
func TestHostileReturnOfAnotherQueuesBuffer(t *testing.T) {
	shmDir(t)
	l, err := ivshmem.Plan(ivshmem.Config{ClusterID: fuzzClusterID, Queues: 2, Slots: 16, BufSize: 256, Buffers: 64})
	if err != nil {
		t.Fatal(err)
	}
	slot12 := l.Queues[0].RetRing + ivshmem.RingHeaderSize + 4*12
	c, err := CreateCluster(fuzzConfig)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fuzzConsumerOnce(t, c, fuzzWrite(uint16(slot12-l.QueueTable), 8))
}
