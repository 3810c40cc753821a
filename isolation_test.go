package zc

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/zcfabric/zc/ivshmem"
)

// Offsets inside a ring (see ivshmem/doc.go): the producer index, the
// consumer index, the first slot; a data ring's slots are 16-byte
// descriptors (handle, length, offset, flags).
const ringProd, ringCons, ringSlot0 = 0, 128, ivshmem.RingHeaderSize

// poke writes one little-endian word of region memory as a hostile peer
// would: no protocol, no ordering.
func poke(b []byte, off uint64, v uint32) { binary.LittleEndian.PutUint32(b[off:], v) }

func peek(b []byte, off uint64) uint32 { return binary.LittleEndian.Uint32(b[off:]) }

// pushAll allocates n packets from pool in bursts of 32, numbers them and
// pushes them through b, draining the consumers in between.
func pushAll(t *testing.T, b *Balancer, pool *Pool, n int, drain func()) {
	t.Helper()
	pkts := make([]Packet, 32)
	for sent := 0; sent < n; {
		k := pool.Alloc(pkts[:min(32, n-sent)])
		if k == 0 {
			drain()
			b.Reclaim()
			continue
		}
		for i := range pkts[:k] {
			fill(&pkts[i], uint32(sent+i), 64)
		}
		if err := b.Push(context.Background(), pkts[:k]); err != nil {
			t.Fatalf("push: %v (a failed output must not stop the balancer)", err)
		}
		sent += k
		drain()
	}
}

// drainer returns a function that receives and releases everything
// waiting on cons, counting it in *got and checking order.
func drainer(t *testing.T, cons *Queue, got *int) func() {
	buf := make([]Packet, 64)
	return func() {
		for {
			n, err := cons.RecvBurst(buf)
			if err != nil {
				t.Fatalf("honest consumer: %v", err)
			}
			if n == 0 {
				return
			}
			*got += n
			if err := cons.Release(buf[:n]...); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// TestBalancerOutputFailureIsLocal: a consumer that moves its return
// ring's producer index out of its window fails its own queue only. The
// balancer keeps going, the other queue gets every packet meant for it,
// and the failed queue's share is counted as its drops.
func TestBalancerOutputFailureIsLocal(t *testing.T) {
	c := newCluster(t, Config{ID: 30, Queues: 2, QueueLen: 64, Buffers: 512})
	must := mustQ(t)
	p0, p1 := must(c.Producer(0)), must(c.Producer(1))
	c0 := must(c.Consumer(0))
	must(c.Consumer(1)) // the hostile one: it never reads, it writes
	bal, err := NewBalancer([]*Queue{p0, p1}, ModeRoundRobin, nil, Drop)
	if err != nil {
		t.Fatal(err)
	}
	poke(c.r.b, c.r.l.Queues[1].RetRing+ringProd, 0x7fff0000)
	got := 0
	pushAll(t, bal, c.Pool(), 2000, drainer(t, c0, &got))
	if got != 1000 {
		t.Fatalf("honest queue 0 got %d of 1000", got)
	}
	if err := p1.Err(); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("queue 1: Err %v, want ErrCorrupt", err)
	}
	if p0.Err() != nil {
		t.Fatalf("queue 0 failed too: %v", p0.Err())
	}
	s1 := p1.Stats()
	if s1.State != "failed" || s1.Failure == "" || s1.View != "producer" || s1.Sent+s1.Drops != 1000 {
		t.Fatalf("queue 1 stats %+v: want failed, sent+drops = 1000", s1)
	}
	if s0 := p0.Stats(); s0.State != "ok" || s0.Sent != 1000 || s0.Drops != 0 {
		t.Fatalf("queue 0 stats %+v", s0)
	}
	// Drops go on in process memory; the region's copy is not touched.
	before := peek(c.r.b, c.r.l.Queues[1].DataRing+8+16)
	pushAll(t, bal, c.Pool(), 64, drainer(t, c0, &got))
	if after := peek(c.r.b, c.r.l.Queues[1].DataRing+8+16); after != before {
		t.Fatalf("failed queue's region counter written: %d -> %d", before, after)
	}
	if s := p1.Stats(); s.Sent+s.Drops != 1032 {
		t.Fatalf("failed queue counted %d, want 1032", s.Sent+s.Drops)
	}
	// Nothing of the honest queue's leaks: every buffer not lent to the
	// failed queue is free again.
	bal.Reclaim()
	if free, lost := c.Pool().Len(), p1.Outstanding(); free+lost != c.Pool().Cap() {
		t.Fatalf("pool: %d free + %d lost to the failed queue != %d", free, lost, c.Pool().Cap())
	}
}

// TestRecvSkipsDuplicateHandle: a producer that puts a handle in the ring
// twice gets it delivered once; the second is counted as bad, and
// releasing everything received is not a double release.
func TestRecvSkipsDuplicateHandle(t *testing.T) {
	c, prod, cons := newPair(t, Config{ID: 31, Queues: 1, QueueLen: 16, Buffers: 32})
	for i := range 3 {
		if err := prod.Send([]byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	// The "producer" repeats slot 0's descriptor in slot 3 and 4.
	ring := c.r.l.Queues[0].DataRing
	d0 := c.r.b[ring+ringSlot0 : ring+ringSlot0+ivshmem.DescSize]
	copy(c.r.b[ring+ringSlot0+3*ivshmem.DescSize:], d0)
	copy(c.r.b[ring+ringSlot0+4*ivshmem.DescSize:], d0)
	poke(c.r.b, ring+ringProd, 5)
	got := make([]Packet, 8)
	n, err := cons.RecvBurst(got)
	if err != nil || n != 3 {
		t.Fatalf("received %d (%v), want 3", n, err)
	}
	if st := cons.Stats(); st.Bad != 2 || st.View != "consumer" {
		t.Fatalf("consumer stats %+v: want 2 bad", st)
	}
	if err := cons.Release(got[:n]...); err != nil {
		t.Fatalf("release: %v", err)
	}
}

// rawProducer plays a hostile producer on queue q's data ring: it writes
// slots and metadata directly.
type rawProducer struct {
	b   []byte
	l   *ivshmem.Layout
	q   int
	pos uint32
}

func (p *rawProducer) send(hs ...uint32) {
	ring := p.l.Queues[p.q].DataRing
	for _, h := range hs {
		slot := ring + ringSlot0 + ivshmem.DescSize*uint64(p.pos%p.l.Queues[p.q].Slots)
		poke(p.b, slot, h)    // handle
		poke(p.b, slot+4, 64) // length
		poke(p.b, slot+8, 0)  // offset
		poke(p.b, slot+12, 0) // flags
		p.pos++
	}
	poke(p.b, ring+ringProd, p.pos)
}

// TestWorkerDuplicatesDoNotLeak: repeated handles on a worker's inputs,
// within one input and across two, are refused and counted; the output
// queue's slots all come back (16 duplicates used to jam a 16-slot
// queue for good).
func TestWorkerDuplicatesDoNotLeak(t *testing.T) {
	c := newCluster(t, Config{ID: 32, Queues: 3, QueueLen: 16, Buffers: 64, QueueBuffers: 16})
	must := mustQ(t)
	in0, in1 := must(c.Consumer(0)), must(c.Consumer(1))
	out := must(c.Output(2))
	cons := must(c.Consumer(2))
	r0 := &rawProducer{b: c.r.b, l: &c.r.l, q: 0}
	r1 := &rawProducer{b: c.r.b, l: &c.r.l, q: 1}
	// Queue 0's own buffers are its producer's to send.
	first := c.r.l.Queues[0].PoolFirst
	ctx, cancel := context.WithCancel(context.Background())
	type result struct {
		st  WorkerStats
		err error
	}
	done := make(chan result, 1)
	go func() {
		st, err := RunBalancer(ctx, []*Queue{in0, in1}, []*Queue{out}, ModeRoundRobin, nil, WorkerOptions{})
		done <- result{st, err}
	}()
	got := 0
	recv := make([]Packet, 32)
	readFor := func(want int) {
		deadline := time.Now().Add(10 * time.Second)
		for got < want && time.Now().Before(deadline) {
			n, err := cons.RecvBurst(recv)
			if err != nil {
				t.Fatal(err)
			}
			got += n
			if err := cons.Release(recv[:n]...); err != nil {
				t.Fatal(err)
			}
			if n == 0 {
				time.Sleep(time.Millisecond)
			}
		}
	}
	// 16 copies of one handle on input 0, then the same handle on input 1
	// while the first is still held by the worker... then ten rounds of a
	// handle reused after it came back.
	dup := make([]uint32, 16)
	for i := range dup {
		dup[i] = first
	}
	r0.send(dup...)
	r1.send(first)
	readFor(1)
	for i := range 10 {
		h := first + 1 + uint32(i)
		r0.send(h, h, h)
		readFor(2 + i)
	}
	time.Sleep(20 * time.Millisecond) // let the worker see any late entry
	cancel()
	res := <-done
	if res.err != nil {
		t.Fatal(res.err)
	}
	if got != 11 {
		t.Fatalf("output consumer got %d packets, want 11 (each buffer once)", got)
	}
	if res.st.Duplicates+in0.Stats().Bad+in1.Stats().Bad != 15+1+20 {
		t.Fatalf("worker refused %d, inputs counted bad %d + %d: want 36 in all", res.st.Duplicates, in0.Stats().Bad, in1.Stats().Bad)
	}
	out.reclaim()
	if out.Outstanding() != 0 {
		t.Fatalf("output has %d slots taken for good", out.Outstanding())
	}
}

// TestRunBalancerChecksBeforeBinding: a refused worker call leaves its
// outputs as they were (still fed by their own pool).
func TestRunBalancerChecksBeforeBinding(t *testing.T) {
	c := newCluster(t, Config{ID: 33, Queues: 3, QueueLen: 16, Buffers: 64})
	must := mustQ(t)
	in := must(c.Consumer(0))
	good := must(c.Output(1))
	wrong := must(c.Consumer(2)) // a consumer end where an output belongs
	src := good.src
	if _, err := RunBalancer(context.Background(), []*Queue{in}, []*Queue{good, wrong}, ModeRoundRobin, nil, WorkerOptions{}); !errors.Is(err, ErrWrongEnd) {
		t.Fatalf("err %v, want ErrWrongEnd", err)
	}
	if good.src != src {
		t.Fatal("a refused RunBalancer rebound an output")
	}
}

// hammer plays a consumer that asks for a recovery again as soon as the
// last one is answered: the handshake word (epoch+1)<<2|wait.
type hammer struct {
	b     []byte
	l     *ivshmem.Layout
	q     uint32
	epoch uint32
	done  int
}

func (h *hammer) poke() {
	v := h.l.Handshake(h.b, h.q)
	if h.epoch != 0 && v != h.epoch<<2|ivshmem.HSDone {
		return // not answered yet
	}
	if h.epoch != 0 {
		h.done++
	}
	h.epoch = v>>2 + 1
	h.l.SetHandshake(h.b, h.q, h.epoch<<2|ivshmem.HSWait)
}

// TestHandshakeHammerRateLimited: a consumer that asks for a recovery
// after every answer gets one per RecoverEvery, not one per burst.
func TestHandshakeHammerRateLimited(t *testing.T) {
	c, prod, cons := newPair(t, Config{ID: 34, Queues: 1, QueueLen: 1024, Buffers: 2048})
	h := &hammer{b: c.r.b, l: &c.r.l}
	pkts, recv := make([]Packet, 32), make([]Packet, 32)
	start := time.Now()
	bursts := 0
	for time.Since(start) < 350*time.Millisecond {
		h.poke()
		n, _ := prod.Alloc(pkts)
		k, err := prod.SendBurst(pkts[:n])
		if err != nil {
			t.Fatal(err)
		}
		prod.Free(pkts[k:n])
		m, _ := cons.RecvBurst(recv)
		cons.Release(recv[:m]...)
		bursts++
	}
	elapsed := time.Since(start)
	limit := int(elapsed/RecoverEvery) + 1
	if h.done == 0 || h.done > limit {
		t.Fatalf("%d recoveries in %v over %d bursts: want 1..%d", h.done, elapsed, bursts, limit)
	}
	if prod.RecoveriesDeferred() == 0 {
		t.Fatal("no request was deferred")
	}
	t.Logf("%d bursts, %d recoveries, %d deferrals in %v", bursts, h.done, prod.RecoveriesDeferred(), elapsed)
}

// BenchmarkHandshakeHammer: the cost of a 32-packet push to an honest
// queue with and without a consumer hammering its handshake word (the
// issue measured 647 -> 11,643 ns per push at 4096 slots before the rate
// limit).
func BenchmarkHandshakeHammer(b *testing.B) {
	for _, slots := range []int{4096, 32768} {
		for _, hammering := range []bool{false, true} {
			b.Run(fmt.Sprintf("%d/hammer=%v", slots, hammering), func(b *testing.B) {
				c := newCluster(b, Config{ID: 35, Queues: 1, QueueLen: slots, Buffers: slots + 1024})
				prod, _ := c.Producer(0)
				cons, _ := c.Consumer(0)
				defer prod.Close()
				defer cons.Close()
				h := &hammer{b: c.r.b, l: &c.r.l}
				pkts, recv := make([]Packet, 32), make([]Packet, 32)
				b.ReportAllocs()
				b.ResetTimer()
				for range b.N {
					if hammering {
						h.poke()
					}
					n, _ := prod.Alloc(pkts)
					k, _ := prod.SendBurst(pkts[:n])
					prod.Free(pkts[k:n])
					m, _ := cons.RecvBurst(recv)
					cons.Release(recv[:m]...)
				}
				b.ReportMetric(float64(b.N)*32/b.Elapsed().Seconds(), "pkts/s")
				b.ReportMetric(float64(h.done), "recoveries")
			})
		}
	}
}

// TestTruncatedRegion: a VM region's file truncated under the agent (a
// hostile QEMU could) faults on the next touch. The fault fails that
// output only, the home queue gets every packet meant for it, the
// originals of the copies go back to the home pool, and a consumer of the
// truncated region gets ErrGone instead of SIGBUS.
func TestTruncatedRegion(t *testing.T) {
	home := newCluster(t, Config{ID: 36, Queues: 1, QueueLen: 64, Buffers: 256})
	vm, err := CreateCluster(Config{ID: 36, Queues: 1, QueueLen: 64, Buffers: 128, Backing: BackingShm, Path: RegionPath(36) + ".vm1"})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	must := mustQ(t)
	h0, v0 := must(home.Producer(0)), must(vm.Producer(0))
	hc := must(home.Consumer(0))
	vc, err := vm.Consumer(0)
	if err != nil {
		t.Fatal(err)
	}
	bal, err := NewBalancer([]*Queue{h0, v0}, ModeRoundRobin, nil, Drop)
	if err != nil {
		t.Fatal(err)
	}
	if err := bal.From(home.Pool()); err != nil {
		t.Fatal(err)
	}
	got := 0
	vrecv := make([]Packet, 64)
	pushAll(t, bal, home.Pool(), 100, drainer(t, hc, &got))
	if n, err := vc.RecvBurst(vrecv); n != 50 || err != nil {
		t.Fatalf("vm consumer before truncation: %d %v", n, err)
	}
	if err := os.Truncate(vm.File(), 4096); err != nil {
		t.Fatal(err)
	}
	pushAll(t, bal, home.Pool(), 100, drainer(t, hc, &got))
	if got != 100 {
		t.Fatalf("home queue got %d of 100", got)
	}
	if err := v0.Err(); !errors.Is(err, ErrFault) || !errors.Is(err, ErrGone) {
		t.Fatalf("vm output: %v, want ErrFault (wrapping ErrGone)", err)
	}
	if s := v0.Stats(); s.State != "failed" || s.Sent+s.Drops != 100 {
		t.Fatalf("vm output stats %+v: want failed, sent+drops = 100", s)
	}
	bal.Reclaim()
	if home.Pool().Len() != home.Pool().Cap() {
		t.Fatalf("home pool %d free of %d: copies' originals leaked", home.Pool().Len(), home.Pool().Cap())
	}
	// The consumer in the truncated region: an error, not a crash.
	if err := vc.Release(vrecv[:50]...); !errors.Is(err, ErrGone) {
		t.Fatalf("release into a truncated region: %v, want ErrGone", err)
	}
	if _, err := vc.RecvBurst(vrecv); !errors.Is(err, ErrGone) {
		t.Fatalf("recv from a truncated region: %v, want ErrGone", err)
	}
	vc.Close()
	vms, err := InspectVMRegions(36)
	if err != nil || len(vms) != 1 || vms[0].State != "corrupt" {
		t.Fatalf("inspect: %+v %v: want the truncated region listed as corrupt", vms, err)
	}
}

// TestTruncatedRegionMetadata: the region truncated while the balancer
// writes packets' metadata records (they carry a sequence number): the
// fault fails the queues in it, their packets are dropped and counted,
// and Push returns instead of the process dying of SIGBUS.
func TestTruncatedRegionMetadata(t *testing.T) {
	home := newCluster(t, Config{ID: 37, Queues: 2, QueueLen: 64, Buffers: 256})
	must := mustQ(t)
	h0, h1 := must(home.Producer(0)), must(home.Producer(1))
	bal, err := NewBalancer([]*Queue{h0, h1}, ModeRoundRobin, nil, Drop)
	if err != nil {
		t.Fatal(err)
	}
	if err := bal.From(home.Pool()); err != nil {
		t.Fatal(err)
	}
	pkts := make([]Packet, 32)
	if n := home.Pool().Alloc(pkts); n != len(pkts) {
		t.Fatalf("alloc %d", n)
	}
	for i := range pkts {
		pkts[i].Data = pkts[i].Data[:0] // nothing written: the region goes first
		pkts[i].Seq = uint32(i + 1)
	}
	if err := os.Truncate(home.File(), 4096); err != nil {
		t.Fatal(err)
	}
	if err := bal.Push(context.Background(), pkts); err != nil {
		t.Fatalf("push: %v", err)
	}
	var drops uint64
	for _, q := range []*Queue{h0, h1} {
		if err := q.Err(); !errors.Is(err, ErrFault) {
			t.Fatalf("%s: %v, want ErrFault", q.Name(), err)
		}
		drops += q.Stats().Drops
	}
	if drops != uint64(len(pkts)) {
		t.Fatalf("%d drops counted, want %d", drops, len(pkts))
	}
}
