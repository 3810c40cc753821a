package ivshmem

import (
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

func newDescRing(t testing.TB, slots uint32) ([]byte, *RingProducer, *RingConsumer) {
	t.Helper()
	b := alignedCopy(make([]byte, DescRingBytes(slots)))
	p, err := NewDescProducer(b, 0, slots)
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewDescConsumer(b, 0, slots)
	if err != nil {
		t.Fatal(err)
	}
	return b, p, c
}

// TestDescRingWraps: descriptors go through whole, in order, across the
// wrap, and a full ring takes no more.
func TestDescRingWraps(t *testing.T) {
	_, p, c := newDescRing(t, 8)
	out := make([]Desc, 16)
	for round := uint32(0); round < 50; round++ {
		in := make([]Desc, 5)
		for i := range in {
			in[i] = Desc{Handle: round + uint32(i), Len: 60 + uint32(i), Off: 2, Flags: DescMeta | round}
		}
		if n, err := p.EnqueueDescs(in); n != 5 || err != nil {
			t.Fatalf("round %d: enqueue %d %v", round, n, err)
		}
		if n, _ := p.EnqueueDescs(in); n != 3 {
			t.Fatalf("round %d: a ring with 3 free slots took %d", round, n)
		}
		n, err := c.DequeueDescs(out)
		if n != 8 || err != nil {
			t.Fatalf("round %d: dequeue %d %v", round, n, err)
		}
		for i := range 8 {
			if want := in[i%5]; out[i] != want {
				t.Fatalf("round %d slot %d: %+v, want %+v", round, i, out[i], want)
			}
		}
	}
}

// TestWakeProtocol: a consumer that announces and sleeps is woken by the
// producer's next enqueue; a busy ring (nobody announced) asks for no
// wake-up.
func TestWakeProtocol(t *testing.T) {
	_, p, c := newDescRing(t, 64)
	if p.EnqueueDescs([]Desc{{Handle: 1}}); p.Waiting() != WakeNone {
		t.Fatal("a wake-up asked while nobody sleeps")
	}
	c.DequeueDescs(make([]Desc, 1))
	woke := make(chan time.Duration, 1)
	var asleep atomic.Bool
	go func() {
		ready, err := c.Announce(WakeFutex)
		if err != nil || ready {
			woke <- -1
			return
		}
		asleep.Store(true)
		start := time.Now()
		c.FutexWait(10 * time.Second) // a hang bound
		c.Clear()
		woke <- time.Since(start)
	}()
	for !asleep.Load() {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond) // let it reach futex(2)
	p.EnqueueDescs([]Desc{{Handle: 2}})
	if w := p.Waiting(); w != WakeFutex {
		t.Fatalf("Waiting = %d, want WakeFutex", w)
	}
	p.Wake()
	if d := <-woke; d < 0 || d >= 10*time.Second {
		t.Fatalf("consumer not woken by the enqueue (slept %v)", d)
	}
	if p.Waiting() != WakeNone {
		t.Fatal("the request was not cleared")
	}
	// Announcing with entries waiting returns at once, word cleared.
	if ready, err := c.Announce(WakeFutex); !ready || err != nil {
		t.Fatalf("Announce with an entry waiting: %v %v", ready, err)
	}
	if p.Waiting() != WakeNone {
		t.Fatal("Announce left its word set")
	}
}

// TestHostileWakeWord: whatever a peer writes in the wake word, the
// producer answers each value once and never writes it; it never blocks.
func TestHostileWakeWord(t *testing.T) {
	b, p, _ := newDescRing(t, 8)
	for _, v := range []uint32{WakeFutex, 1<<2 | WakeDoorbell, 0xdeadbeef, 7} {
		atomic.StoreUint32(u32ptr(b, rOffWake), v)
		if got := p.Waiting(); got != v&wakeCode {
			t.Fatalf("Waiting = %#x, want %#x", got, v&wakeCode)
		}
		if got := p.Waiting(); got != WakeNone {
			t.Fatalf("second Waiting = %#x, want none", got)
		}
		p.Wake() // a wake-up with nobody asleep: harmless
	}
}

// FuzzWakeWords drives a descriptor ring from both ends while a hostile
// peer writes its indices, slots and wake word between steps. Whatever it
// writes: no call blocks (a futex wait is bounded by its timeout and
// returns), Waiting answers the word's code once and never writes it, a dequeue
// never returns more entries than the ring holds, and every error is
// ErrCorrupt.
func FuzzWakeWords(f *testing.F) {
	f.Add([]byte{0, 1, 2, 3, 4, 5})
	f.Add([]byte{1, 0, 6, 0xff, 0xff, 0xff, 0xff, 2, 3})
	f.Add([]byte{6, 1, 0, 0, 0, 3, 4, 5, 6, 2, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, script []byte) {
		const slots = 8
		b, p, c := newDescRing(t, slots)
		ds := make([]Desc, 2*slots)
		for i := 0; i < len(script); i++ {
			switch op := script[i] % 8; op {
			case 0:
				n, err := p.EnqueueDescs(ds[:1+int(script[i]>>3)%slots])
				if err != nil && !errors.Is(err, ErrCorrupt) || n > slots {
					t.Fatalf("enqueue: %d %v", n, err)
				}
			case 1:
				n, err := c.DequeueDescs(ds)
				if err != nil && !errors.Is(err, ErrCorrupt) || n > slots {
					t.Fatalf("dequeue: %d %v", n, err)
				}
			case 2:
				before := atomic.LoadUint32(u32ptr(b, rOffWake))
				if got := p.Waiting(); got != before&wakeCode && got != WakeNone {
					t.Fatalf("Waiting = %#x, word held %#x", got, before)
				}
				if p.Waiting() != WakeNone {
					t.Fatal("Waiting answered the same word twice")
				}
				if after := atomic.LoadUint32(u32ptr(b, rOffWake)); after != before {
					t.Fatalf("Waiting wrote the consumer's word: %#x -> %#x", before, after)
				}
			case 3:
				if _, err := c.Announce(WakeFutex); err != nil && !errors.Is(err, ErrCorrupt) {
					t.Fatal(err)
				}
			case 4:
				c.FutexWait(time.Microsecond)
				c.Clear()
			case 5:
				p.Wake()
			case 6, 7: // the peer writes a word: producer, consumer, wake, a slot
				if i+5 > len(script) {
					return
				}
				v := uint32(script[i+1]) | uint32(script[i+2])<<8 | uint32(script[i+3])<<16 | uint32(script[i+4])<<24
				offs := []uint64{rOffProd, rOffCons, rOffWake, rOffSlots + 4*uint64(script[i]>>3%32)}
				atomic.StoreUint32(u32ptr(b, offs[int(script[i]>>3)%len(offs)]), v)
				i += 4
			}
		}
	})
}

// TestWakeNewProducer: a producer that attaches while the consumer sleeps
// wakes it with its first enqueue (a restarted zsend, the agent coming
// back).
func TestWakeNewProducer(t *testing.T) {
	b, _, c := newDescRing(t, 8)
	if ready, err := c.Announce(WakeFutex); ready || err != nil {
		t.Fatalf("Announce: %v %v", ready, err)
	}
	p, err := NewDescProducer(b, 0, 8)
	if err != nil {
		t.Fatal(err)
	}
	p.EnqueueDescs([]Desc{{Handle: 1}})
	if w := p.Waiting(); w != WakeFutex {
		t.Fatalf("a new producer's Waiting = %d, want WakeFutex for the consumer already asleep", w)
	}
}
