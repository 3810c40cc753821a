package ivshmem

import (
	"bytes"
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

// FuzzRingConsumer plays a hostile producer: it sets the producer index
// before the consumer attaches, then between any two calls rewrites the
// producer index and the slots at will. The consumer is checked against an
// exact model of the protocol: it reloads the producer index only when
// the value it validated last shows fewer entries than asked for (so an
// empty Dequeue(0) or a Dequeue the cached value covers returns without
// looking), rejects a reloaded value more than size ahead of its own
// index with ErrCorrupt, never returns more than asked or than the ring
// holds, hands out exactly the slots' current contents, publishes its own
// index and writes nothing else of the producer's.
//
// The input is the consumer index at attach, the producer index at
// attach, and a script of 5-byte steps: an op byte and a 32-bit value.
// Op bit 7 stores the value as the producer index, bit 6 stores it in
// slot op&15, then bit 5 calls Len, else Dequeue of op&31 handles.
func FuzzRingConsumer(f *testing.F) {
	step := func(op byte, v uint32) []byte {
		return []byte{op, byte(v), byte(v >> 8), byte(v >> 16), byte(v >> 24)}
	}
	cat := func(ss ...[]byte) []byte {
		var out []byte
		for _, s := range ss {
			out = append(out, s...)
		}
		return out
	}
	f.Add(uint32(0), uint32(3), step(4, 0))
	f.Add(uint32(5), uint32(1<<31), step(8, 0))
	f.Add(uint32(0xfffffff0), uint32(0xffffffff), cat(step(16, 0), step(0x80|16, 0x10), step(0x20, 0)))
	f.Add(uint32(0xfffffff8), uint32(0xfffffff8), cat(step(0x80|4, 2), step(0x40|1, 99), step(4, 0), step(0x80|31, 100), step(0, 0)))
	f.Fuzz(func(t *testing.T, cons, prod uint32, script []byte) {
		const size = 16
		b := alignedCopy(make([]byte, RingBytes(size)))
		slot := func(i uint32) *uint32 { return u32ptr(b, rOffSlots+4*uint64(i%size)) }
		for i := range uint32(size) {
			atomic.StoreUint32(slot(i), 0xa000+i)
		}
		atomic.StoreUint32(u32ptr(b, rOffCons), cons)
		atomic.StoreUint32(u32ptr(b, rOffProd), prod)
		c, err := NewRingConsumer(b, 0, size)
		if corrupt := prod-cons > size; corrupt != (err != nil) {
			t.Fatalf("attach with prod %d cons %d: %v", prod, cons, err)
		} else if corrupt {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("attach with prod %d cons %d: %v, want ErrCorrupt", prod, cons, err)
			}
			return
		}
		pos, cached := cons, prod // the model: the consumer's index, the producer index it validated last
		out := make([]uint32, 32)
		for ; len(script) >= 5; script = script[5:] {
			op, v := script[0], uint32(script[1])|uint32(script[2])<<8|uint32(script[3])<<16|uint32(script[4])<<24
			if op&0x80 != 0 {
				atomic.StoreUint32(u32ptr(b, rOffProd), v)
			}
			if op&0x40 != 0 {
				atomic.StoreUint32(slot(uint32(op&15)), v)
			}
			before := bytes.Clone(b[:rOffCons])
			slotsBefore := bytes.Clone(b[rOffSlots:])
			p := atomic.LoadUint32(u32ptr(b, rOffProd))
			var n int
			var wantN uint32
			wantErr := false
			if op&0x20 != 0 {
				var l uint32
				l, err = c.Len()
				n = int(l)
				if p-pos > size {
					wantErr = true
				} else {
					cached, wantN = p, p-pos
				}
			} else {
				want := uint32(op & 31)
				clear(out)
				n, err = c.Dequeue(out[:want])
				avail := cached - pos
				if want > avail {
					if p-pos > size {
						wantErr = true
					} else {
						cached, avail = p, p-pos
					}
				}
				if !wantErr {
					wantN = min(want, avail)
					for i := range wantN {
						if out[i] != *slot(pos + i) {
							t.Fatalf("dequeue at %d: entry %d is %#x, slot holds %#x", pos, i, out[i], *slot(pos + i))
						}
					}
					pos += wantN
				}
			}
			if wantErr {
				if !errors.Is(err, ErrCorrupt) || n != 0 {
					t.Fatalf("op %#x: prod %d, consumer at %d: got %d, %v; want ErrCorrupt", op, p, pos, n, err)
				}
			} else if err != nil || n != int(wantN) {
				t.Fatalf("op %#x: prod %d, consumer at %d (cached prod %d): got %d, %v; want %d", op, p, pos, cached, n, err, wantN)
			}
			if got := atomic.LoadUint32(u32ptr(b, rOffCons)); got != pos {
				t.Fatalf("consumer index in the ring %d, want %d", got, pos)
			}
			if !bytes.Equal(before, b[:rOffCons]) || !bytes.Equal(slotsBefore, b[rOffSlots:]) {
				t.Fatal("the consumer wrote into the producer's words or the slots")
			}
		}
	})
}
