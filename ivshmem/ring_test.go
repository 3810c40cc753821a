package ivshmem

import (
	"errors"
	"runtime"
	"sync/atomic"
	"testing"
)

func newRing(t testing.TB, slots uint32) ([]byte, *RingProducer, *RingConsumer) {
	t.Helper()
	b := alignedCopy(make([]byte, RingBytes(slots)))
	p, err := NewRingProducer(b, 0, slots)
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewRingConsumer(b, 0, slots)
	if err != nil {
		t.Fatal(err)
	}
	return b, p, c
}

func TestRingFullEmptyWrap(t *testing.T) {
	_, p, c := newRing(t, 8)
	out := make([]uint32, 16)
	for round := uint32(0); round < 100; round++ {
		in := []uint32{round, round + 1, round + 2, round + 3, round + 4}
		if n, err := p.Enqueue(in); n != 5 || err != nil {
			t.Fatalf("enqueue %d, %v", n, err)
		}
		if n, _ := p.Enqueue(in); n != 3 {
			t.Fatalf("enqueue into 3 free slots took %d", n)
		}
		if n, _ := p.Enqueue(in); n != 0 {
			t.Fatalf("enqueue into a full ring took %d", n)
		}
		n, err := c.Dequeue(out)
		if n != 8 || err != nil {
			t.Fatalf("dequeue %d, %v", n, err)
		}
		want := []uint32{round, round + 1, round + 2, round + 3, round + 4, round, round + 1, round + 2}
		for i := range want {
			if out[i] != want[i] {
				t.Fatalf("round %d slot %d = %d, want %d", round, i, out[i], want[i])
			}
		}
		if n, _ := c.Dequeue(out); n != 0 {
			t.Fatalf("dequeue from empty ring gave %d", n)
		}
	}
}

// TestRingConcurrent moves millions of sequence-numbered handles between
// two goroutines in random bursts and checks every one arrives in order.
func TestRingConcurrent(t *testing.T) {
	total := uint32(4_000_000)
	if testing.Short() {
		total = 200_000
	}
	_, p, c := newRing(t, 1024)
	done := make(chan error, 1)
	go func() {
		buf := make([]uint32, 64)
		next := uint32(0)
		for next < total {
			n, err := c.Dequeue(buf[:1+next%64])
			if err != nil {
				done <- err
				return
			}
			for _, h := range buf[:n] {
				if h != next {
					done <- errors.New("out of order")
					t.Errorf("got handle %d, want %d", h, next)
					return
				}
				next++
			}
			if n == 0 {
				runtime.Gosched()
			}
		}
		done <- nil
	}()
	buf := make([]uint32, 64)
	for seq := uint32(0); seq < total; {
		k := 1 + seq%61
		if k > total-seq {
			k = total - seq
		}
		for i := range k {
			buf[i] = seq + i
		}
		n, err := p.Enqueue(buf[:k])
		if err != nil {
			t.Fatal(err)
		}
		seq += uint32(n)
		if n == 0 {
			runtime.Gosched()
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestRingCorruptPeer: a peer that writes nonsense into its index makes the
// other side fail with ErrCorrupt instead of reading or writing past the
// ring.
func TestRingCorruptPeer(t *testing.T) {
	b, p, c := newRing(t, 8)
	p.Enqueue([]uint32{1, 2, 3})
	atomic.StoreUint32(u32ptr(b, rOffProd), 1000) // producer lies
	if _, err := c.Dequeue(make([]uint32, 8)); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("dequeue with prod 1000: %v", err)
	}
	atomic.StoreUint32(u32ptr(b, rOffCons), 77) // consumer lies: ahead of prod
	if _, err := p.Enqueue(make([]uint32, 8)); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("enqueue with cons ahead: %v", err)
	}
	// Attaching to rings with bad indices fails too.
	if _, err := NewRingConsumer(b, 0, 8); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("attach consumer: %v", err)
	}
	if _, err := NewRingProducer(b, 0, 16); err == nil {
		t.Fatal("attach with slots beyond the buffer succeeded")
	}
}

func TestRingNoAllocs(t *testing.T) {
	_, p, c := newRing(t, 256)
	in, out := make([]uint32, 32), make([]uint32, 32)
	allocs := testing.AllocsPerRun(1000, func() {
		p.Enqueue(in)
		c.Dequeue(out)
		p.Add(CountPackets, 32)
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per burst", allocs)
	}
}

// FuzzRingConsumer plays a hostile producer: arbitrary index values and
// slot contents. The consumer must never panic, never return more than it
// was asked for, and report corruption instead of reading past the ring.
func FuzzRingConsumer(f *testing.F) {
	f.Add(uint32(3), uint32(0), uint8(4))
	f.Add(uint32(1<<31), uint32(5), uint8(8))
	f.Add(uint32(0xffffffff), uint32(0xfffffff0), uint8(16))
	f.Fuzz(func(t *testing.T, prod, cons uint32, want uint8) {
		b := alignedCopy(make([]byte, RingBytes(16)))
		atomic.StoreUint32(u32ptr(b, rOffCons), cons)
		c, err := NewRingConsumer(b, 0, 16)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatal(err)
			}
			return
		}
		atomic.StoreUint32(u32ptr(b, rOffProd), prod)
		out := make([]uint32, want)
		n, err := c.Dequeue(out)
		if n > int(want) || n > 16 {
			t.Fatalf("dequeued %d of %d", n, want)
		}
		if err == nil && prod-cons > 16 {
			t.Fatalf("prod %d cons %d accepted", prod, cons)
		}
	})
}
