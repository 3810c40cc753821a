package zc

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

// TestBurstRoundTrip: frames written in place with Reserve/Commit arrive
// whole and in order, with their optional fields where SetMeta gave some
// and none elsewhere; the queue's counters count them.
func TestBurstRoundTrip(t *testing.T) {
	c, prod, cons := newPair(t, Config{ID: 60, Queues: 1, QueueLen: 64, Buffers: 128})
	var b Burst
	n, err := prod.Reserve(&b, 8)
	if err != nil || n != 8 || b.Len() != 8 {
		t.Fatalf("reserve 8: %d (Len %d), %v", n, b.Len(), err)
	}
	for i := range n {
		buf := b.Buf(i)
		if len(buf) != c.BufferSize() {
			t.Fatalf("Buf(%d) is %d bytes, want the whole buffer (%d)", i, len(buf), c.BufferSize())
		}
		l := copy(buf, strings.Repeat(string(rune('a'+i)), 60+i))
		b.SetLen(i, l)
		if i%2 == 1 {
			b.SetMeta(i, Meta{Timestamp: int64(1000 + i), Hash: uint32(i), Port: 7, Seq: uint32(i)})
		}
	}
	if k, err := prod.Commit(&b, n); k != n || err != nil || b.Len() != 0 {
		t.Fatalf("commit %d: %d, %v (Len after %d)", n, k, err, b.Len())
	}
	got := make([]Packet, 16)
	k, err := cons.RecvBurst(got)
	if err != nil || k != n {
		t.Fatalf("received %d, %v; want %d", k, err, n)
	}
	for i, p := range got[:k] {
		want := bytes.Repeat([]byte{byte('a' + i)}, 60+i)
		if !bytes.Equal(p.Data, want) {
			t.Errorf("frame %d: %q, want %q", i, p.Data, want)
		}
		var m Meta
		if i%2 == 1 {
			m = Meta{Timestamp: int64(1000 + i), Hash: uint32(i), Port: 7, Seq: uint32(i)}
		}
		if (Meta{p.Timestamp, p.Hash, p.Port, p.Seq}) != m {
			t.Errorf("frame %d: meta %+v, want %+v", i, Meta{p.Timestamp, p.Hash, p.Port, p.Seq}, m)
		}
	}
	if err := cons.Release(got[:k]...); err != nil {
		t.Fatal(err)
	}
	var sum uint64
	for i := range n {
		sum += uint64(60 + i)
	}
	if s := prod.Stats(); s.Sent != uint64(n) || s.SentBytes != sum {
		t.Errorf("producer counted %d packets, %d bytes; want %d, %d", s.Sent, s.SentBytes, n, sum)
	}
}

// TestBurstPartialCommit: Commit(k) sends the first k frames and gives
// the other buffers back to the pool; a fresh Reserve on a burst still
// holding a reservation gives that back too. No buffer is lost.
func TestBurstPartialCommit(t *testing.T) {
	c, prod, cons := newPair(t, Config{ID: 61, Queues: 1, QueueLen: 64, Buffers: 64})
	pool := c.Pool()
	free := pool.Len()
	var b Burst
	n, _ := prod.Reserve(&b, 10)
	for i := range n {
		b.SetLen(i, 64)
	}
	if k, err := prod.Commit(&b, 4); k != 4 || err != nil {
		t.Fatalf("commit 4 of %d: %d, %v", n, k, err)
	}
	if got := pool.Len(); got != free-4 {
		t.Fatalf("pool holds %d free after sending 4, want %d", got, free-4)
	}
	prod.Reserve(&b, 5)
	prod.Reserve(&b, 3) // the 5 go back first
	if got := pool.Len(); got != free-4-3 {
		t.Fatalf("pool holds %d free with 4 sent and 3 reserved, want %d", got, free-7)
	}
	if k, _ := prod.Commit(&b, 0); k != 0 || pool.Len() != free-4 {
		t.Fatalf("commit 0: sent %d, pool %d free, want 0 and %d", k, pool.Len(), free-4)
	}
	got := make([]Packet, 16)
	if k, _ := cons.RecvBurst(got); k != 4 {
		t.Fatalf("received %d, want 4", k)
	}
}

// TestBurstFillsTheQueue: Reserve never hands out more than the queue
// takes, so every Commit goes in whole; once every slot is lent it
// returns 0, and the consumer's returns make room again.
func TestBurstFillsTheQueue(t *testing.T) {
	_, prod, cons := newPair(t, Config{ID: 62, Queues: 1, QueueLen: 16, Buffers: 64})
	var b Burst
	if sent := fillQueue(t, prod, &b, 7); sent != 16 {
		t.Fatalf("sent %d into a 16-slot queue", sent)
	}
	returnSome(t, cons)
	if n, _ := prod.Reserve(&b, 7); n == 0 {
		t.Fatal("no room after the consumer returned buffers")
	}
}

// TestBurstErrors: a consumer end has no pool; a burst reserved on one
// queue cannot be committed on another; SetLen beyond the buffer panics
// (as slicing would); a closed queue refuses.
func TestBurstErrors(t *testing.T) {
	c := newCluster(t, Config{ID: 63, Queues: 2, QueueLen: 16, Buffers: 64})
	must := mustQ(t)
	p0, p1, cons := must(c.Producer(0)), must(c.Producer(1)), must(c.Consumer(0))
	var b Burst
	if _, err := cons.Reserve(&b, 1); !errors.Is(err, ErrWrongEnd) {
		t.Errorf("reserve on a consumer: %v, want ErrWrongEnd", err)
	}
	p0.Reserve(&b, 2)
	if _, err := p1.Commit(&b, 2); err == nil || !strings.Contains(err.Error(), "reserved on zc:63@0") {
		t.Errorf("commit on another queue: %v", err)
	}
	func() {
		defer func() {
			if r := recover(); r == nil || !strings.Contains(r.(string), "buffers are") {
				t.Errorf("SetLen beyond the buffer: recovered %v, want a panic naming the size", r)
			}
		}()
		b.SetLen(0, c.BufferSize()+1)
	}()
	p0.Commit(&b, 0)
	p0.Close()
	if _, err := p0.Reserve(&b, 1); !errors.Is(err, ErrClosed) {
		t.Errorf("reserve on a closed queue: %v, want ErrClosed", err)
	}
}

// TestBurstNoAllocs: the fast path allocates nothing.
func TestBurstNoAllocs(t *testing.T) {
	_, prod, cons := newPair(t, Config{ID: 64, Queues: 1, QueueLen: 256, Buffers: 512})
	b, got := new(Burst), make([]Packet, 32)
	allocs := testing.AllocsPerRun(1000, func() {
		n, _ := prod.Reserve(b, 32)
		for i := range n {
			b.Buf(i)[0] = byte(i)
			b.SetLen(i, 64)
		}
		prod.Commit(b, n)
		k, _ := cons.RecvBurst(got)
		cons.Release(got[:k]...)
	})
	if allocs != 0 {
		t.Errorf("Reserve/Commit: %v allocations per burst, want 0", allocs)
	}
}

// TestReserveWaitSleeps: with every slot of the queue lent, ReserveWait
// sleeps (no CPU) until the consumer returns buffers, and a context that
// ends wakes it with the context's error.
func TestReserveWaitSleeps(t *testing.T) {
	_, prod, cons := newPair(t, Config{ID: 65, Queues: 1, QueueLen: 16, Buffers: 64})
	var b Burst
	fillQueue(t, prod, &b, 16)
	cctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	if n, err := prod.ReserveWait(cctx, &b, 4); n != 0 || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("ReserveWait on a full queue: %d, %v; want 0 and the context's error", n, err)
	}
	cancel()
	done := make(chan int, 1)
	go func() {
		n, err := prod.ReserveWait(context.Background(), &b, 4)
		if err != nil {
			t.Errorf("ReserveWait: %v", err)
		}
		done <- n
	}()
	time.Sleep(200 * time.Millisecond)
	checkAsleep(t, "a producer waiting in ReserveWait")
	k := returnSome(t, cons)
	select {
	case n := <-done:
		if n == 0 || n > min(k, 4) {
			t.Fatalf("ReserveWait got %d after %d came back", n, k)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("ReserveWait not woken by the consumer's release")
	}
}

// fillQueue sends bursts of up to per one-byte frames on prod until
// Reserve finds no room, and returns how many went in; each Commit must
// take its whole burst.
func fillQueue(t *testing.T, prod *Queue, b *Burst, per int) int {
	t.Helper()
	sent := 0
	for {
		n, err := prod.Reserve(b, per)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return sent
		}
		for i := range n {
			b.SetLen(i, 1)
		}
		if k, err := prod.Commit(b, n); err != nil || k != n {
			t.Fatalf("commit %d on %s: %d, %v", n, prod.Name(), k, err)
		}
		sent += n
	}
}
