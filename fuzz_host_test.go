package zc

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"reflect"
	"testing"
	"time"

	"github.com/zcfabric/zc/ivshmem"
)

// Host-side fuzz targets: the host end of a queue whose peer is hostile.
// FuzzConsumer (fuzz_test.go) has the host consume from a hostile
// producer; FuzzProducer has the host produce (the engine pool's Alloc,
// SendBurst, Drop, Send, the reclaim of the return ring, the handshake
// recovery) to a hostile consumer; FuzzBalancerInput has a worker
// (RunBalancer, RunPipeline) read from a hostile producer and feed honest
// consumers. The peer is a script of 8-byte steps that read and write the
// region between (and, for the worker, during) the host's calls:
//
//	+0  op  the step (each target's table), modulo 8
//	+1  a   queue and flag bits
//	+2  b   a count, or the low byte of a write's offset
//	+3  c   a length, or the high byte of a write's offset
//	+4  v   a 32-bit value, little-endian
//
// A raw write (op 0 in both targets) stores v at an offset of the region
// chosen as FuzzConsumer's writes are: bit 15 of b|c<<8 set targets the
// header's first 256 bytes (state word at 128), else the area from the
// queue table to the buffers (queue descriptors with their owner and
// handshake words, rings with their indices, counters, wake words and
// slots, metadata), modulo
// its size, rounded down to a multiple of 4. Scripts are cut at
// fuzzMaxSteps.
//
// Every execution runs under a watchdog (fuzzHang): a host call that does
// not return crashes the run, and the fuzzer keeps the input.

const (
	fuzzStepSize = 8
	fuzzMaxSteps = 256
	// fuzzHang is how long one execution may take before it counts as a
	// hang. Not a performance bound: an execution takes tens of
	// microseconds; only a call that never returns gets near it.
	fuzzHang = 30 * time.Second
)

type fuzzStep struct {
	op, a, b, c byte
	v           uint32
}

func (s fuzzStep) off() uint16 { return uint16(s.b) | uint16(s.c)<<8 }

func (s fuzzStep) bytes() []byte {
	r := []byte{s.op, s.a, s.b, s.c, 0, 0, 0, 0}
	binary.LittleEndian.PutUint32(r[4:], s.v)
	return r
}

// fuzzSteps decodes a script.
func fuzzSteps(in []byte) []fuzzStep {
	n := min(len(in)/fuzzStepSize, fuzzMaxSteps)
	steps := make([]fuzzStep, n)
	for i := range steps {
		r := in[i*fuzzStepSize:]
		steps[i] = fuzzStep{op: r[0] % 8, a: r[1], b: r[2], c: r[3], v: binary.LittleEndian.Uint32(r[4:])}
	}
	return steps
}

// fzScript encodes steps for seeds.
func fzScript(steps ...fuzzStep) []byte {
	var out []byte
	for _, s := range steps {
		out = append(out, s.bytes()...)
	}
	return out
}

// fzRaw is the step that stores v at the absolute region offset abs
// (which must be reachable: in the header's first 256 bytes or between
// the queue table and the buffers).
func fzRaw(l *ivshmem.Layout, abs uint64, v uint32) fuzzStep {
	off := uint16(0x8000 | abs)
	if abs >= 256 {
		off = uint16(abs - l.QueueTable)
	}
	return fuzzStep{op: 0, b: byte(off), c: byte(off >> 8), v: v}
}

// fzOff maps a raw write's offset into the region.
func fzOff(l *ivshmem.Layout, off uint16) uint64 {
	if off&0x8000 != 0 {
		return uint64(off&0xff) &^ 3
	}
	return (l.QueueTable + uint64(off)%(l.BufOff-l.QueueTable)) &^ 3
}

// Ring words, relative to a ring (see ivshmem/doc.go).
const (
	fzProd  = 0
	fzCons  = 128
	fzWake  = 256 // the ring consumer's wake word
	fzSlots = ivshmem.RingHeaderSize
)

func fzGet(b []byte, off uint64) uint32    { return binary.LittleEndian.Uint32(b[off:]) }
func fzPut(b []byte, off uint64, v uint32) { binary.LittleEndian.PutUint32(b[off:], v) }

func fzHSOff(l *ivshmem.Layout, q int) uint64 {
	return l.QueueTable + uint64(q)*ivshmem.QueueDescSize + 56
}

// fuzzWatchdog crashes the process if the execution does not end within
// fuzzHang: how a fuzz target reports a hang.
func fuzzWatchdog(t *testing.T) func() {
	name := t.Name()
	tm := time.AfterFunc(fuzzHang, func() {
		panic(fmt.Sprintf("%s: an execution ran for %v: a host call does not return", name, fuzzHang))
	})
	return func() { tm.Stop() }
}

// fuzzFixture is a cluster created once per fuzzing process (in
// /dev/shm, like any other) and restored before every execution: creating
// and unmapping a region costs more than an execution (munmap alone is
// ~80 µs on a two-CPU VM), and the campaign wants 10^7 of them.
type fuzzFixture struct {
	c        *Cluster
	pristine []byte
}

func newFuzzFixture(f *testing.F, cfg Config) *fuzzFixture {
	shmDir(f)
	c, err := CreateCluster(cfg)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { c.Close() })
	return &fuzzFixture{c: c, pristine: append([]byte(nil), c.Bytes()...)}
}

// fresh returns the cluster as created: its bytes restored (rings,
// metadata, owner and handshake words, header) and a new engine pool.
// The queue ends of the last execution must be closed. Whatever process
// memory a cluster keeps besides its pool must be reset here too.
func (fx *fuzzFixture) fresh() *Cluster {
	copy(fx.c.Bytes(), fx.pristine)
	l := &fx.c.r.l
	fx.c.pool = newPool(fx.c.r, l.EngineFirst, l.EngineCount)
	return fx.c
}

// fzPeerErr reports whether err is what a hostile peer may cause on the
// host end of its queue: the queue failed as corrupt, or its region
// gone or closed (the peer wrote the header's magic or state word).
func fzPeerErr(err error) bool {
	return err == nil || errors.Is(err, ErrCorrupt) || errors.Is(err, ErrGone) || errors.Is(err, ErrClosed)
}

// fzInBuffer checks that p's bytes lie inside buffer p.Handle() of the
// region mapped at b.
func fzInBuffer(t *testing.T, what string, l *ivshmem.Layout, b []byte, p *Packet) {
	h := uint64(p.Handle())
	if h >= uint64(l.NumBufs) {
		t.Fatalf("%s: handle %d of %d buffers", what, h, l.NumBufs)
	}
	if cap(p.Data) == 0 {
		return
	}
	size := uint64(l.BufSize)
	start := uint64(reflect.ValueOf(p.Data).Pointer() - reflect.ValueOf(l.BufferArea(b)).Pointer())
	if start < h*size || start+uint64(cap(p.Data)) > (h+1)*size {
		t.Fatalf("%s: handle %d: data at [%d,+%d) of the buffer area, outside its buffer [%d,%d)",
			what, h, start, cap(p.Data), h*size, (h+1)*size)
	}
}

// FuzzProducer: the host produces on two queues of a cluster from the
// engine pool, and the script plays their consumer (the peer: a guest, or
// another host process), honest or not. Steps (op):
//
//	0 raw write (see above)
//	1 consume: queue a&1's peer takes up to b%17 entries from its data
//	  ring, as an honest consumer does (when the indices are valid), and
//	  holds them
//	2 return: the peer pushes up to b%17 of the buffers it holds onto the
//	  return ring, honestly
//	3 host: Alloc b%33 buffers on queue a&1, fill c bytes, SendBurst,
//	  Drop the rest (Free them when a&2)
//	4 host: the pool's Reclaim
//	5 handshake: the peer asks for a recovery as a new consumer does
//	  (epoch+1, wait); with a&2 it stores v in the handshake word
//	6 forged return: the peer puts v (v modulo the buffer count with a&2)
//	  in the next return slot and bumps the return ring's index
//	7 host: Send (a copy) of c bytes on queue a&1; 300 bytes with a&2
//
// After every host call: no panic; errors only wrap ErrCorrupt, ErrGone
// or ErrClosed (and ErrQueueFull, ErrNoBuffers, an oversized packet for
// Send); the host wrote none of the consumer's words (its data ring index,
// counters and wake word, the return ring's index, counters and slots, the
// consumer's owner word, the header), only its own and the handshake;
// every queue's Outstanding is at most its slots and at most what the
// test knows it lent there. Every buffer Alloc gives (and Send sends) is
// one of the engine pool's, inside its own buffer, not handed out already,
// and not lent on a queue unless the consumer could have given it back:
// it appeared in a slot of that queue's return ring since it was lent, or
// that queue's handshake word was written (a recovery may take back every
// loan that is not in the data ring, and the consumer's index says what
// that is).
func FuzzProducer(f *testing.F) {
	fx := newFuzzFixture(f, fuzzProducerConfig)
	for _, s := range fuzzProducerSeeds(&fx.c.r.l) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		defer fuzzWatchdog(t)()
		fuzzProducerOnce(t, fx.fresh(), in)
	})
}

const fuzzProducerID = 62

var fuzzProducerConfig = Config{ID: fuzzProducerID, Queues: 2, QueueLen: 16, BufferSize: 256, Buffers: 40, Backing: BackingShm}

func fuzzProducerSeeds(l *ivshmem.Layout) [][]byte {
	q0, q1 := l.Queues[0], l.Queues[1]
	send := func(q, n, c byte) fuzzStep { return fuzzStep{op: 3, a: q, b: n, c: c} }
	consume := func(q, n byte) fuzzStep { return fuzzStep{op: 1, a: q, b: n} }
	ret := func(q, n byte) fuzzStep { return fuzzStep{op: 2, a: q, b: n} }
	reclaim := fuzzStep{op: 4}
	traffic := []fuzzStep{send(0, 8, 60), send(1, 4, 60), consume(0, 6), ret(0, 3), consume(1, 4), ret(1, 2), reclaim, send(0, 12, 100)}
	with := func(steps ...fuzzStep) []byte { return fzScript(append(append([]fuzzStep{}, traffic...), steps...)...) }
	return [][]byte{
		nil,
		// An honest consumer: every loan comes back and is reused.
		with(consume(0, 16), ret(0, 16), consume(1, 16), ret(1, 16), reclaim, send(0, 32, 200), send(1, 32, 10), fuzzStep{op: 7, a: 1, c: 64}),
		// The return ring's index far ahead: ErrCorrupt on queue 0 only.
		with(fzRaw(l, q0.RetRing+fzProd, 1000), reclaim, send(0, 4, 10), send(1, 4, 10)),
		// The data ring's consumer index behind, then ahead of the producer.
		with(fzRaw(l, q0.DataRing+fzCons, 0xfffffff0), send(0, 16, 10), fzRaw(l, q1.DataRing+fzCons, 40), send(1, 16, 10)),
		// Forged returns: a buffer never lent, one lent on queue 1, a
		// duplicate, a handle out of range.
		with(fuzzStep{op: 6, v: 39}, fuzzStep{op: 6, a: 2, v: 1}, fuzzStep{op: 6, v: 0}, fuzzStep{op: 6, v: 0}, fuzzStep{op: 6, v: 0xffffffff}, reclaim, send(0, 32, 10)),
		// Wake words: the consumer asleep in futex(2), on a doorbell (there
		// is none), garbage. The host wakes it or not; it never writes it.
		with(fzRaw(l, q0.DataRing+fzWake, 1<<2|ivshmem.WakeFutex), send(0, 4, 10), fzRaw(l, q0.DataRing+fzWake, 2<<2|ivshmem.WakeDoorbell),
			send(0, 4, 10), fzRaw(l, q1.DataRing+fzWake, 0xdeadbeef), send(1, 4, 10), reclaim, fuzzStep{op: 7, c: 20}),
		// The handshake hammer: a recovery asked for after every burst.
		with(fuzzStep{op: 5}, send(0, 4, 10), fuzzStep{op: 5}, send(0, 4, 10), fuzzStep{op: 5, a: 2, v: 0xffffffff}, reclaim, fuzzStep{op: 5, a: 1}, send(1, 8, 10)),
		// Counters and owner words forged, the header's state and magic.
		with(fzRaw(l, q0.DataRing+fzCons+12, 0xffffffff), fzRaw(l, q0.RetRing+8, 77), fzRaw(l, l.QueueTable+48, 0),
			fzRaw(l, 128, ivshmem.StateClosed), send(0, 4, 10), fzRaw(l, 128, ivshmem.StateReady), fzRaw(l, 0, 0), reclaim, send(1, 4, 10)),
		// Send with a packet too large, and on a full queue.
		with(fuzzStep{op: 7, a: 2}, send(1, 32, 10), fuzzStep{op: 7, a: 1, c: 10}),
	}
}

// prodFuzz is one run of FuzzProducer.
type prodFuzz struct {
	t     *testing.T
	c     *Cluster
	l     *ivshmem.Layout
	b     []byte
	prod  [2]*Queue
	held  [2][]uint32 // what the peer consumer of each queue holds
	pkts  []Packet
	burst Burst

	// The test's record of the buffers, in the host's terms.
	lentOn     []int8 // 1+queue a buffer was sent on and not handed out since; 0 none
	returnable []bool // lent, and the consumer could have given it back
	allocated  []bool // handed out by Alloc, not sent, dropped or freed
	hsTouched  [2]bool

	before, after []byte // scratch for peerWords
}

func fuzzProducerOnce(t *testing.T, c *Cluster, in []byte) {
	var err error
	n := c.r.l.NumBufs
	s := &prodFuzz{t: t, c: c, l: &c.r.l, b: c.Bytes(), pkts: make([]Packet, 32),
		lentOn: make([]int8, n), returnable: make([]bool, n), allocated: make([]bool, n)}
	for q := range 2 {
		if s.prod[q], err = c.Producer(q); err != nil {
			t.Fatal(err)
		}
		defer s.prod[q].Close()
	}
	for _, st := range fuzzSteps(in) {
		q := int(st.a & 1)
		switch st.op {
		case 0:
			off := fzOff(s.l, st.off())
			for q := range 2 {
				if off == fzHSOff(s.l, q) {
					s.hsTouched[q] = true
				}
			}
			fzPut(s.b, off, st.v)
		case 1:
			s.peerConsume(q, int(st.b%17))
		case 2:
			s.peerReturn(q, int(st.b%17))
		case 3:
			s.hostSend(q, int(st.b%33), int(st.c), st.a&2 != 0)
		case 4:
			if st.a&2 != 0 {
				// The agent's relay, as if a guest rang: it reads the
				// wake, owner, rings and index words the consumer wrote
				// (and watches a guest's sleep), writes none.
				s.host("relay", func() {
					s.c.WakeDoorbellSleepers(func(g ivshmem.GuestSleep) {
						s.c.AwaitGuestSleep(g, time.Microsecond) // what the agent's watcher does
					})
				})
			} else {
				s.host("reclaim", func() { s.c.Pool().Reclaim() })
			}
		case 5:
			off := fzHSOff(s.l, q)
			if st.a&2 != 0 {
				fzPut(s.b, off, st.v)
			} else {
				fzPut(s.b, off, (fzGet(s.b, off)>>2+1)<<2|ivshmem.HSWait)
			}
			s.hsTouched[q] = true
		case 6:
			v := st.v
			if st.a&2 != 0 {
				v %= n
			}
			r := s.l.Queues[q].RetRing
			p := fzGet(s.b, r+fzProd)
			fzPut(s.b, r+fzSlots+4*uint64(p%16), v)
			fzPut(s.b, r+fzProd, p+1)
		case 7:
			size := int(st.c)
			if st.a&2 != 0 {
				size = 300
			}
			if st.a&4 != 0 {
				s.hostSendBurst(q, int(st.b%33), size, int(st.v%34))
			} else {
				s.hostSendCopy(q, size)
			}
		}
	}
}

// peerConsume takes up to n entries from queue q's data ring, as an
// honest consumer would, if the indices in the region are valid.
func (s *prodFuzz) peerConsume(q, n int) {
	r := s.l.Queues[q].DataRing
	p, c := fzGet(s.b, r+fzProd), fzGet(s.b, r+fzCons)
	if p-c > 16 {
		return
	}
	k := min(uint32(n), p-c)
	for i := range k {
		s.held[q] = append(s.held[q], fzGet(s.b, r+fzSlots+ivshmem.DescSize*uint64((c+i)%16)))
	}
	fzPut(s.b, r+fzCons, c+k)
}

// peerReturn gives back up to n held buffers on queue q's return ring.
func (s *prodFuzz) peerReturn(q, n int) {
	r := s.l.Queues[q].RetRing
	p, c := fzGet(s.b, r+fzProd), fzGet(s.b, r+fzCons)
	if p-c > 16 {
		return
	}
	k := min(uint32(n), uint32(len(s.held[q])), 16-(p-c))
	for i := range k {
		fzPut(s.b, r+fzSlots+4*uint64((p+i)%16), s.held[q][i])
	}
	s.held[q] = s.held[q][k:]
	fzPut(s.b, r+fzProd, p+k)
}

// peerWords copies what only the consumers may write into out[:0].
func (s *prodFuzz) peerWords(out []byte) []byte {
	out = append(out[:0], s.b[:256]...)
	for q, ql := range s.l.Queues {
		d := s.l.QueueTable + uint64(q)*ivshmem.QueueDescSize
		out = append(out, s.b[d+48:d+56]...)
		out = append(out, s.b[ql.DataRing+fzCons:ql.DataRing+fzSlots]...)
		out = append(out, s.b[ql.RetRing+fzProd:ql.RetRing+fzCons]...)
		out = append(out, s.b[ql.RetRing+fzSlots:ql.RetRing+ivshmem.RingBytes(ql.Slots)]...)
	}
	return out
}

// host runs one host call: it first notes which loans the consumer could
// have given back by now, then checks what the call did.
func (s *prodFuzz) host(what string, call func()) {
	for q, ql := range s.l.Queues {
		for i := range uint64(ql.Slots) {
			if h := fzGet(s.b, ql.RetRing+fzSlots+4*i); h < s.l.NumBufs && s.lentOn[h] == int8(q+1) {
				s.returnable[h] = true
			}
		}
		if s.hsTouched[q] {
			for h := range s.lentOn {
				if s.lentOn[h] == int8(q+1) {
					s.returnable[h] = true
				}
			}
		}
	}
	s.before = s.peerWords(s.before)
	call()
	if s.after = s.peerWords(s.after); !bytes.Equal(s.before, s.after) {
		s.t.Fatalf("%s: the host wrote into words only the consumer owns", what)
	}
	for q := range 2 {
		out, lent := s.prod[q].Outstanding(), 0
		for _, o := range s.lentOn {
			if o == int8(q+1) {
				lent++
			}
		}
		if out < 0 || out > s.prod[q].Slots() || out > lent {
			s.t.Fatalf("%s: queue %d has %d outstanding, %d slots, %d lent as far as the test knows", what, q, out, s.prod[q].Slots(), lent)
		}
	}
}

// handedOut checks a buffer the host just took from its pool for q.
func (s *prodFuzz) handedOut(what string, h uint32) {
	l := s.l
	if h < l.EngineFirst || h >= l.EngineFirst+l.EngineCount {
		s.t.Fatalf("%s: buffer %d is not one of the engine pool's [%d,+%d)", what, h, l.EngineFirst, l.EngineCount)
	}
	if s.allocated[h] {
		s.t.Fatalf("%s: buffer %d handed out twice", what, h)
	}
	if o := s.lentOn[h]; o != 0 && !s.returnable[h] {
		s.t.Fatalf("%s: buffer %d handed out while lent on queue %d, and its consumer never gave it back", what, h, o-1)
	}
	s.lentOn[h], s.returnable[h] = 0, false
}

func (s *prodFuzz) hostSend(q, n, size int, free bool) {
	s.host("send", func() {
		got, err := s.prod[q].Alloc(s.pkts[:n])
		if !fzPeerErr(err) || got < 0 || got > n {
			s.t.Fatalf("alloc of %d on queue %d: %d, %v", n, q, got, err)
		}
		for i := range s.pkts[:got] {
			p := &s.pkts[i]
			fzInBuffer(s.t, "alloc", s.l, s.b, p)
			if len(p.Data) != int(s.l.BufSize) {
				s.t.Fatalf("alloc: %d-byte buffer", len(p.Data))
			}
			s.handedOut("alloc", p.Handle())
			s.allocated[p.Handle()] = true
			p.Data = p.Data[:min(size, len(p.Data))]
			for j := range p.Data {
				p.Data[j] = byte(i + j)
			}
		}
		sent, err := s.prod[q].SendBurst(s.pkts[:got])
		if !fzPeerErr(err) || sent < 0 || sent > got {
			s.t.Fatalf("send of %d on queue %d: %d, %v", got, q, sent, err)
		}
		for i := range s.pkts[:got] {
			h := s.pkts[i].Handle()
			s.allocated[h] = false
			if i < sent {
				s.lentOn[h] = int8(q + 1)
			}
		}
		if free {
			s.prod[q].Free(s.pkts[sent:got])
		} else {
			s.prod[q].Drop(s.pkts[sent:got])
		}
	})
}

// hostSendBurst reserves n buffers on queue q, writes size bytes into
// each and commits k of them (the fast path: Reserve, Buf, Commit).
func (s *prodFuzz) hostSendBurst(q, n, size, k int) {
	s.host("send a burst", func() {
		got, err := s.prod[q].Reserve(&s.burst, n)
		if !fzPeerErr(err) || got < 0 || got > n || s.burst.Len() != got {
			s.t.Fatalf("reserve of %d on queue %d: %d (Len %d), %v", n, q, got, s.burst.Len(), err)
		}
		for i := range got {
			p := Packet{Data: s.burst.Buf(i), handle: s.burst.hs[i]}
			fzInBuffer(s.t, "reserve", s.l, s.b, &p)
			s.handedOut("reserve", p.handle)
			s.allocated[p.handle] = true
			l := min(size, len(p.Data))
			for j := range l {
				p.Data[j] = byte(i + j)
			}
			s.burst.SetLen(i, l)
			if i%3 == 0 {
				s.burst.SetMeta(i, Meta{Seq: uint32(i)})
			}
		}
		hs := append([]uint32(nil), s.burst.hs[:got]...)
		sent, err := s.prod[q].Commit(&s.burst, k)
		if !fzPeerErr(err) || sent < 0 || sent > min(k, got) || s.burst.Len() != 0 {
			s.t.Fatalf("commit of %d of %d on queue %d: %d, %v", k, got, q, sent, err)
		}
		for i, h := range hs {
			s.allocated[h] = false
			if i < sent {
				s.lentOn[h] = int8(q + 1)
			}
		}
	})
}

func (s *prodFuzz) hostSendCopy(q, size int) {
	s.host("send a copy", func() {
		data := make([]byte, size)
		err := s.prod[q].Send(data)
		switch {
		case err == nil:
			// The host's own slot, just written: the buffer it lent.
			r := s.l.Queues[q].DataRing
			h := fzGet(s.b, r+fzSlots+ivshmem.DescSize*uint64((fzGet(s.b, r+fzProd)-1)%16))
			if h >= s.l.NumBufs {
				s.t.Fatalf("send a copy: buffer %d of %d", h, s.l.NumBufs)
			}
			s.handedOut("send a copy", h)
			s.lentOn[h] = int8(q + 1)
		case size > int(s.l.BufSize):
		case errors.Is(err, ErrQueueFull), errors.Is(err, ErrNoBuffers), fzPeerErr(err):
		default:
			s.t.Fatalf("send a copy on queue %d: %v", q, err)
		}
	})
}

// FuzzBalancerInput: a worker moves packets from queue 0, whose producer
// (the script) is hostile, to outputs drained by honest consumers in the
// same process. The flags byte picks the worker: its low three bits the
// mode (0 round-robin, 1 IP pair, 2 fan-out, 3 5-tuple, 4 GTP; 5-7 a
// pipeline stage that drops packets whose first byte is odd), bit 3 the
// Wait policy, bits 4-6 the burst (1+flags>>4&7), bit 7 a guest that
// reclaims its return ring while the outputs' consumers release (else
// only when the script says). Queue 0 has buffers of its own, the guest's
// pool. Steps (op):
//
//	0 raw write (see above)
//	1 produce: the guest sends up to b%17 packets from its pool, c bytes
//	  each (synthetic frames, so the hashes have flows to read), honestly
//	2 forge: the guest puts v (v modulo the buffer count with a&1) in the
//	  next data descriptor with b*2 as its length and c*2 as its offset
//	  (later sends of that handle carry them too), bumps its index
//	3 repeat: the guest puts the last handle it sent again, 1+b%4 times
//	4 the guest stores v as the data ring's producer index
//	5 reclaim: the guest takes back what the host returned, honestly
//	6 run: the worker runs until it can do nothing more (fzIdleCtx),
//	  then the outputs' consumers receive everything and release it,
//	  and the outputs reclaim
//	7 nothing
//
// Steps right after a run with bit 7 of a set are applied while the
// worker runs, one for each packet it hashes or filters.
//
// Checks: no panic or hang; the worker returns nil or an error wrapping
// ErrCorrupt, ErrGone or ErrClosed; every packet the worker sees and
// every packet an output's consumer receives lies inside its own buffer;
// an output's consumer never receives a buffer it holds already; no
// buffer an output's consumer holds was given back to the guest; and
// after each run, once the consumers released everything, each output
// has nothing outstanding (no slot leaks), unless the script wrote into
// that output's descriptor or rings or the header.
func FuzzBalancerInput(f *testing.F) {
	fx := newFuzzFixture(f, fuzzBalancerConfig)
	for _, s := range fuzzBalancerSeeds(&fx.c.r.l) {
		f.Add(s[0][0], s[1])
	}
	f.Fuzz(func(t *testing.T, flags byte, in []byte) {
		defer fuzzWatchdog(t)()
		fuzzBalancerOnce(t, fx.fresh(), flags, in)
	})
}

const fuzzBalancerID = 63

var fuzzBalancerConfig = Config{ID: fuzzBalancerID, Queues: 3, QueueLen: 16, BufferSize: 256, Buffers: 16, QueueBuffers: 16, Backing: BackingShm}

func fuzzBalancerSeeds(l *ivshmem.Layout) [][2][]byte {
	in := l.Queues[0]
	produce := func(n, c byte) fuzzStep { return fuzzStep{op: 1, b: n, c: c} }
	forge := func(h uint32, ln, off byte) fuzzStep { return fuzzStep{op: 2, b: ln, c: off, v: h} }
	run, reclaim := fuzzStep{op: 6}, fuzzStep{op: 5}
	mid := func(s fuzzStep) fuzzStep { s.a |= 0x80; return s }
	seed := func(flags byte, steps ...fuzzStep) [2][]byte { return [2][]byte{{flags}, fzScript(steps...)} }
	var overfill []fuzzStep
	for h := range uint32(16) {
		overfill = append(overfill, mid(forge(h, 32, 0)))
	}
	return [][2][]byte{
		seed(0),
		// Honest traffic through every mode.
		seed(0, produce(8, 64), run, reclaim, produce(16, 100), run, reclaim),
		seed(1|0x30, produce(16, 80), run, reclaim, produce(4, 60), run),
		seed(2, produce(8, 64), run, reclaim),
		seed(3|8, produce(16, 64), run, reclaim, produce(16, 64), run),
		seed(4, produce(8, 64), run),
		seed(5|0x70, produce(12, 64), run, reclaim),
		// Repeated handles: the jam of issue 8 (16 duplicates fill a
		// 16-slot output).
		seed(0, produce(1, 64), fuzzStep{op: 3, b: 3}, fuzzStep{op: 3, b: 3}, fuzzStep{op: 3, b: 3}, fuzzStep{op: 3, b: 2}, run, reclaim, produce(8, 64), run),
		seed(2|8, produce(2, 64), fuzzStep{op: 3, b: 3}, run, produce(2, 64), fuzzStep{op: 3}, run),
		// Handles out of range, of another queue's pool, bad lengths and
		// offsets, a length and offset that wrap.
		seed(0, forge(0xffffffff, 10, 0), forge(64, 10, 0), forge(20, 10, 0), forge(17, 200, 0), forge(18, 100, 100), forge(19, 0, 128), run),
		seed(0, fzRaw(l, l.MetaOff+16*ivshmem.MetaSize, 0xfffffff0), fzRaw(l, l.MetaOff+16*ivshmem.MetaSize+4, 0x20), fuzzStep{op: 2, a: 1, b: 10, v: 16}, run),
		// The producer index far ahead; then rewritten while the worker runs.
		seed(0, produce(4, 64), fuzzStep{op: 4, v: 1000}, run),
		seed(1, produce(8, 64), run, mid(produce(4, 64)), mid(fuzzStep{op: 3}), mid(fuzzStep{op: 4, v: 3}), reclaim, produce(2, 64), run),
		seed(5, produce(8, 64), run, mid(fuzzStep{op: 3, b: 3}), mid(fzRaw(l, in.DataRing, 0)), produce(4, 64), run),
		// More packets than an output holds, by buffers the guest names
		// outside its pool while the worker runs: drops (Drop policy) and
		// waits that end (Wait, the context has ended).
		seed(1|0x80, append([]fuzzStep{produce(16, 64), run}, overfill...)...),
		seed(1|8|0x30|0x80, append([]fuzzStep{produce(16, 64), run}, overfill...)...),
		seed(1|0x10, append([]fuzzStep{produce(16, 64), run}, overfill...)...),
		// The header wiped: every queue goes away.
		seed(0, produce(4, 64), fzRaw(l, 0, 0), run),
	}
}

// balFuzz is one run of FuzzBalancerInput.
type balFuzz struct {
	t      *testing.T
	l      *ivshmem.Layout
	b      []byte
	lenOff map[uint32][2]uint32 // length and offset the guest gives each buffer
	flags  byte
	in     *Queue   // the worker's input: the host consumer of queue 0
	out    []*Queue // the worker's outputs
	oc     []*Queue // the outputs' honest consumers
	free   []uint32 // the guest's free buffers
	last   uint32   // the handle the guest sent last
	mid    []fuzzStep
	recv   []Packet

	outTouched []bool // a raw write hit output j's descriptor or rings
	header     bool   // a raw write hit the header
	honest     bool   // the guest only sent honestly since the last run
}

func fuzzBalancerOnce(t *testing.T, c *Cluster, flags byte, in []byte) {
	var err error
	s := &balFuzz{t: t, l: &c.r.l, b: c.Bytes(), flags: flags, recv: make([]Packet, 32)}
	if s.in, err = c.Consumer(0); err != nil {
		t.Fatal(err)
	}
	defer s.in.Close()
	nout := 2
	if flags&7 >= 5 {
		nout = 1
	}
	for j := 1; j <= nout; j++ {
		o, err := c.Output(j)
		if err != nil {
			t.Fatal(err)
		}
		defer o.Close()
		oc, err := c.Consumer(j)
		if err != nil {
			t.Fatal(err)
		}
		defer oc.Close()
		s.out, s.oc = append(s.out, o), append(s.oc, oc)
	}
	s.outTouched = make([]bool, nout)
	ql := s.l.Queues[0]
	for h := ql.PoolFirst + ql.PoolCount; h > ql.PoolFirst; h-- {
		s.free = append(s.free, h-1)
	}
	steps := fuzzSteps(in)
	s.honest = true
	for i := 0; i < len(steps); i++ {
		if steps[i].op != 6 {
			s.guest(steps[i])
			continue
		}
		j := i + 1
		for j < len(steps) && steps[j].a&0x80 != 0 && steps[j].op != 6 {
			j++
		}
		s.mid = steps[i+1 : j]
		s.run(len(s.mid) == 0 && s.honest)
		s.honest = true
		for _, st := range s.mid { // what the worker did not use
			s.guest(st)
		}
		i = j - 1
	}
}

// guest applies one step of the guest producer.
func (s *balFuzz) guest(st fuzzStep) {
	l, b := s.l, s.b
	r := l.Queues[0].DataRing
	// A descriptor carries the length and offset meta gave the handle last.
	push := func(h uint32) {
		p := fzGet(b, r+fzProd)
		slot := r + fzSlots + ivshmem.DescSize*uint64(p%16)
		lo := s.lenOff[h]
		fzPut(b, slot, h)
		fzPut(b, slot+4, lo[0])
		fzPut(b, slot+8, lo[1])
		fzPut(b, slot+12, 0)
		fzPut(b, r+fzProd, p+1)
		s.last = h
	}
	meta := func(h, n, off uint32) {
		if s.lenOff == nil {
			s.lenOff = map[uint32][2]uint32{}
		}
		s.lenOff[h] = [2]uint32{n, off}
	}
	if st.op != 1 && st.op != 5 {
		s.honest = false
	}
	switch st.op {
	case 0:
		off := fzOff(l, st.off())
		if off < 256 {
			s.header = true
		}
		for j := range s.out {
			ql := l.Queues[j+1]
			d := l.QueueTable + uint64(j+1)*ivshmem.QueueDescSize
			if off >= d && off < d+ivshmem.QueueDescSize ||
				off >= ql.DataRing && off < ql.DataRing+ivshmem.DescRingBytes(ql.Slots) ||
				off >= ql.RetRing && off < ql.RetRing+ivshmem.RingBytes(ql.Slots) {
				s.outTouched[j] = true
			}
		}
		fzPut(b, off, st.v)
	case 1:
		p, c := fzGet(b, r+fzProd), fzGet(b, r+fzCons)
		if p-c > 16 {
			return
		}
		n := min(int(st.b%17), len(s.free), int(16-(p-c)))
		for range n {
			h := s.free[len(s.free)-1]
			s.free = s.free[:len(s.free)-1]
			size := max(int(st.c), MinSynthLen)
			buf := l.Buffer(b, h)
			meta(h, uint32(SynthFrame(buf, uint64(st.v)+uint64(h), size, 16)), 0)
			buf[0] = byte(h) // odd or even: what a pipeline stage drops
			push(h)
		}
	case 2:
		h := st.v
		if st.a&1 != 0 {
			h %= l.NumBufs
		}
		meta(h, uint32(st.b)*2, uint32(st.c)*2)
		push(h)
	case 3:
		for range 1 + st.b%4 {
			push(s.last)
		}
	case 4:
		fzPut(b, r+fzProd, st.v)
	case 5:
		rr := l.Queues[0].RetRing
		p, c := fzGet(b, rr+fzProd), fzGet(b, rr+fzCons)
		if p-c > 16 {
			return
		}
		ql := l.Queues[0]
		for i := c; i != p; i++ {
			h := fzGet(b, rr+fzSlots+4*uint64(i%16))
			if h-ql.PoolFirst >= ql.PoolCount {
				continue
			}
			dup := false
			for _, f := range s.free {
				dup = dup || f == h
			}
			if !dup {
				s.free = append(s.free, h)
			}
		}
		fzPut(b, rr+fzCons, p)
	}
}

// run runs the worker until its input is idle, then drains and checks
// the outputs. With exact, the guest only sent distinct buffers of its
// free list since the last run (and writes nothing while the worker
// runs), so a buffer an output's consumer holds afterwards cannot also
// be one the worker returned during the run.
func (s *balFuzz) run(exact bool) {
	t := s.t
	for j := range s.out {
		if s.out[j].Outstanding() > 0 {
			return // only after writes into that output: no fresh worker can take it
		}
	}
	rr := s.l.Queues[0].RetRing
	retStart := fzGet(s.b, rr+fzProd) // the worker's own index
	ctx := s.idleContext()
	midStep := func(p *Packet) {
		fzInBuffer(t, "worker input", s.l, s.b, p)
		if len(s.mid) > 0 {
			st := s.mid[0]
			s.mid = s.mid[1:]
			s.guest(st)
		}
	}
	opt := WorkerOptions{Burst: 1 + int(s.flags>>4&7)}
	if s.flags&8 != 0 {
		opt.Policy = Wait
	}
	var err error
	switch mode := HashMode(s.flags & 7); {
	case mode >= 5:
		_, err = RunPipeline(ctx, s.in, s.out[0], func(p *Packet) bool {
			midStep(p)
			return len(p.Data) == 0 || p.Data[0]&1 == 0
		}, opt)
	case mode == ModeRoundRobin || mode == ModeFanout:
		_, err = RunBalancer(ctx, []*Queue{s.in}, s.out, mode, nil, opt)
	default:
		fn := mode.Func()
		_, err = RunBalancer(ctx, []*Queue{s.in}, s.out, mode, func(p *Packet) uint32 {
			midStep(p)
			return fn(p)
		}, opt)
	}
	if !fzPeerErr(err) {
		t.Fatalf("worker (flags %#x): %v", s.flags, err)
	}
	// The outputs' consumers take everything there is.
	held := make([]map[uint32]bool, len(s.oc))
	var all [][]Packet
	for j, oc := range s.oc {
		held[j] = map[uint32]bool{}
		var got []Packet
		for range 4 * oc.Slots() {
			n, err := oc.RecvBurst(s.recv)
			if !fzPeerErr(err) {
				t.Fatalf("output %d: recv: %v", j, err)
			}
			for i := range s.recv[:n] {
				p := s.recv[i]
				fzInBuffer(t, fmt.Sprintf("output %d", j), s.l, s.b, &p)
				if held[j][p.Handle()] {
					t.Fatalf("output %d: buffer %d received twice", j, p.Handle())
				}
				held[j][p.Handle()] = true
				got = append(got, p)
			}
			if n == 0 {
				break
			}
		}
		all = append(all, got)
	}
	// Nothing they hold went back to the guest during the run.
	if exact {
		p := fzGet(s.b, rr+fzProd)
		for i := retStart; i != p && p-retStart <= 16; i++ {
			h := fzGet(s.b, rr+fzSlots+4*uint64(i%16))
			for j := range held {
				if held[j][h] {
					t.Fatalf("buffer %d given back to the guest while output %d's consumer holds it", h, j)
				}
			}
		}
	}
	for j, oc := range s.oc {
		// In fours, the outputs reclaiming (which gives the buffers back
		// to the guest) and, with flag bit 7, the guest reclaiming too.
		for pk := all[j]; len(pk) > 0; pk = pk[min(4, len(pk)):] {
			if err := oc.Release(pk[:min(4, len(pk))]...); !fzPeerErr(err) {
				t.Fatalf("output %d: release: %v", j, err)
			}
			s.out[j].reclaim()
			if s.flags&0x80 != 0 {
				s.guest(fuzzStep{op: 5})
			}
		}
		s.out[j].reclaim()
		if !s.outTouched[j] && !s.header {
			if n := s.out[j].Outstanding(); n != 0 {
				t.Fatalf("output %d: %d slots still on loan after its consumer released everything (flags %#x)", j, n, s.flags)
			}
		}
	}
	// Every buffer the worker took from the guest went back to it.
	clean := !s.header && err == nil && s.in.Err() == nil
	for j := range s.out {
		clean = clean && !s.outTouched[j]
	}
	if held := fzHeld(s.in); clean && held != 0 {
		t.Fatalf("input: the worker still holds %d of the guest's buffers after every output gave its packets back (flags %#x)", held, s.flags)
	}
}

// fzIdleCtx is the worker's context in FuzzBalancerInput: it ends when
// the worker can do nothing more, so that a run is one deterministic
// call. It ends (for good) when Done is called and the input is idle
// (its ring empty, or failed), or when Done was called four times in a
// row without the input's consumer index moving (the worker waits for
// room in an output nobody drains while it runs). RunBalancer calls Done
// at its start and on every 16th poll while it waits, never from another
// goroutine.
type fzIdleCtx struct {
	context.Context
	idle         func() bool
	mark         func() uint32
	last         uint32
	still        int
	stopped      bool
	open, closed chan struct{}
}

func (s *balFuzz) idleContext() *fzIdleCtx {
	r := s.l.Queues[0].DataRing
	c := &fzIdleCtx{
		Context: context.Background(),
		idle: func() bool {
			return s.in.Err() != nil || fzGet(s.b, r+fzProd) == fzGet(s.b, r+fzCons)
		},
		mark:   func() uint32 { return fzGet(s.b, r+fzCons) },
		open:   make(chan struct{}),
		closed: make(chan struct{}),
	}
	close(c.closed)
	c.last = c.mark()
	return c
}

func (c *fzIdleCtx) Done() <-chan struct{} {
	if !c.stopped {
		if m := c.mark(); m != c.last {
			c.last, c.still = m, 0
		} else {
			c.still++
		}
		c.stopped = c.idle() || c.still >= 4
	}
	if c.stopped {
		return c.closed
	}
	return c.open
}

func (c *fzIdleCtx) Err() error {
	if c.stopped {
		return context.Canceled
	}
	return nil
}

// fzHeld counts the buffers consumer end q holds.
func fzHeld(q *Queue) int {
	n := 0
	for _, w := range q.held {
		n += bits.OnesCount64(w)
	}
	return n
}
