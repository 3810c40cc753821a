package zc

import (
	"context"
	"errors"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/zcfabric/zc/ivshmem"
)

// cpuTime is the process's user+system CPU time so far.
func cpuTime(t *testing.T) time.Duration {
	t.Helper()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// checkAsleep fails the test if this process uses CPU over the next
// second, while who (a goroutine of it) should be asleep: generous, a
// loop napping at the pacer's longest nap would use about 25 ms.
func checkAsleep(t *testing.T, who string) {
	t.Helper()
	before := cpuTime(t)
	time.Sleep(time.Second)
	if used := cpuTime(t) - before; used > 20*time.Millisecond {
		t.Errorf("%s used %v of CPU in 1 s: it is not asleep", who, used)
	}
}

// TestIdleConsumerSleeps: a host consumer waiting on an empty queue of a
// host producer sleeps in futex(2): over two seconds the process uses
// next to no CPU (the v1 pacer napped every millisecond: 2.7% of a CPU),
// and the next packet wakes it.
func TestIdleConsumerSleeps(t *testing.T) {
	_, prod, cons := newPair(t, Config{ID: 40, Queues: 1, QueueLen: 64, Buffers: 128})
	got := make(chan time.Time, 1)
	go func() {
		pkts := make([]Packet, 8)
		n, err := cons.RecvBurstWait(context.Background(), pkts)
		if err != nil || n != 1 {
			t.Errorf("RecvBurstWait: %d %v", n, err)
		}
		got <- time.Now()
	}()
	time.Sleep(100 * time.Millisecond) // past the polls and naps
	before, start := cpuTime(t), time.Now()
	time.Sleep(2 * time.Second)
	used, wall := cpuTime(t)-before, time.Since(start)
	t.Logf("idle consumer: %v of CPU in %v (%.3f%%)", used, wall, 100*used.Seconds()/wall.Seconds())
	// Generous: a consumer napping at the pacer's longest nap would use
	// about 50 ms here; one asleep in futex wakes ten times a second.
	if used > 20*time.Millisecond {
		t.Errorf("an idle consumer used %v of CPU in %v: it is not asleep", used, wall)
	}
	sent := time.Now()
	if err := prod.Send([]byte("wake")); err != nil {
		t.Fatal(err)
	}
	select {
	case at := <-got:
		t.Logf("woken %v after the send", at.Sub(sent))
	case <-time.After(5 * time.Second): // a hang bound
		t.Fatal("the consumer was not woken by the packet")
	}
	if prod.Wakes() == 0 {
		t.Error("the producer sent no wake-up")
	}
}

// TestLosslessProducerSleeps: a producer waiting for room on a full
// queue sleeps until the consumer's returns wake it, and then sends
// everything.
func TestLosslessProducerSleeps(t *testing.T) {
	_, prod, cons := newPair(t, Config{ID: 41, Queues: 1, QueueLen: 16, Buffers: 64})
	pkts := make([]Packet, 48)
	n, _ := prod.Alloc(pkts)
	done := make(chan int, 1)
	go func() {
		k, err := prod.SendBurstWait(context.Background(), pkts[:n])
		if err != nil {
			t.Errorf("SendBurstWait: %v", err)
		}
		done <- k
	}()
	time.Sleep(200 * time.Millisecond) // the queue is full: the producer waits
	checkAsleep(t, "a producer waiting for room")
	recv := make([]Packet, 16)
	total := 0
	deadline := time.Now().Add(5 * time.Second)
	for total < n && time.Now().Before(deadline) {
		k, _ := cons.RecvBurstWait(context.Background(), recv)
		total += k
		cons.Release(recv[:k]...)
	}
	if k := <-done; k != n || total != n {
		t.Fatalf("sent %d, received %d, want %d", k, total, n)
	}
}

// TestAllocWaitSleeps: a producer whose every buffer is in flight sleeps
// in AllocWait (no CPU) until the consumer returns some, and a context
// ending wakes it with the context's error.
func TestAllocWaitSleeps(t *testing.T) {
	_, prod, cons := newPair(t, Config{ID: 43, Queues: 1, QueueLen: 64, Buffers: 64})
	pkts := make([]Packet, 64)
	if sendAll(t, prod, pkts) == 0 {
		t.Fatal("nothing sent")
	}
	cctx, ccancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	if n, err := prod.AllocWait(cctx, pkts[:1]); n != 0 || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("AllocWait with no buffer back: %d, %v; want 0 and the context's error", n, err)
	}
	ccancel()
	expectAllocWoken(t, prod, cons, pkts[:8], "a producer waiting for buffers", func() {
		checkAsleep(t, "a producer waiting for buffers")
	})
}

// expectAllocWoken runs prod.AllocWait(pkts) while every buffer is in
// flight, lets it wait 200 ms (then runs meanwhile, if not nil), returns
// some packets on cons, and fails unless AllocWait (who) wakes with no
// more buffers than came back.
func expectAllocWoken(t *testing.T, prod, cons *Queue, pkts []Packet, who string, meanwhile func()) {
	t.Helper()
	done := allocWaitAsync(t, prod, pkts)
	time.Sleep(200 * time.Millisecond) // every buffer in flight: the producer waits
	if meanwhile != nil {
		meanwhile()
	}
	k := returnSome(t, cons)
	select {
	case n := <-done:
		if n == 0 || n > k {
			t.Fatalf("%s: AllocWait got %d buffers after %d came back", who, n, k)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("%s: AllocWait not woken by the release", who)
	}
}

// TestAllocWaitSharedPool: producers that share a pool (a creator's
// queues draw from the cluster's pool) get buffers back from any of their
// queues, so AllocWait does not sleep on one queue's return ring (it would
// sleep through returns on the others): it naps, and the buffers a
// consumer of another queue releases end its wait.
func TestAllocWaitSharedPool(t *testing.T) {
	c := newCluster(t, Config{ID: 44, Queues: 2, QueueLen: 64, Buffers: 64})
	must := mustQ(t)
	p0, p1 := must(c.Producer(0)), must(c.Producer(1))
	must(c.Consumer(0))
	c1 := must(c.Consumer(1))
	pkts := make([]Packet, 64)
	sendAll(t, p1, pkts)
	done := allocWaitAsync(t, p0, pkts[:8])
	time.Sleep(200 * time.Millisecond) // the pool is empty: queue 0's producer waits
	if w := peek(c.r.b, c.r.l.Queues[0].RetRing+256); w&3 != ivshmem.WakeNone {
		t.Errorf("queue 0's producer sleeps on its own return ring (wake word %#x), but its buffers come back on queue 1", w)
	}
	returnSome(t, c1)
	select {
	case n := <-done:
		if n == 0 {
			t.Fatal("AllocWait returned no buffer")
		}
	case <-time.After(5 * time.Second): // a hang bound
		t.Fatal("AllocWait did not see the buffers released on the other queue")
	}
}

// sendAll sends packets on prod until its pool has no free buffer, and
// returns how many it sent.
func sendAll(t *testing.T, prod *Queue, pkts []Packet) int {
	t.Helper()
	sent := 0
	for {
		n, _ := prod.Alloc(pkts)
		if n == 0 {
			return sent
		}
		if k, err := prod.SendBurst(pkts[:n]); err != nil || k != n {
			t.Fatalf("send %d on %s: %d, %v", n, prod.Name(), k, err)
		}
		sent += n
	}
}

// allocWaitAsync runs prod.AllocWait(pkts) on a goroutine and hands back
// how many buffers it got.
func allocWaitAsync(t *testing.T, prod *Queue, pkts []Packet) <-chan int {
	done := make(chan int, 1)
	go func() {
		n, err := prod.AllocWait(context.Background(), pkts)
		if err != nil {
			t.Errorf("AllocWait: %v", err)
		}
		done <- n
	}()
	return done
}

// returnSome receives up to 8 packets on cons and releases them, and
// returns how many.
func returnSome(t *testing.T, cons *Queue) int {
	t.Helper()
	recv := make([]Packet, 8)
	k, err := cons.RecvBurst(recv)
	if err != nil || k == 0 {
		t.Fatalf("recv on %s: %d, %v", cons.Name(), k, err)
	}
	if err := cons.Release(recv[:k]...); err != nil {
		t.Fatal(err)
	}
	return k
}

// TestHostileWakeWordCostsWakeupsOnly: a consumer that keeps its wake
// word set gets a wake-up per burst sent to it and nothing else: the
// producer goes on sending, and its other queue gets nothing of it.
func TestHostileWakeWordCostsWakeupsOnly(t *testing.T) {
	c := newCluster(t, Config{ID: 42, Queues: 2, QueueLen: 64, Buffers: 256})
	must := mustQ(t)
	p0, p1 := must(c.Producer(0)), must(c.Producer(1))
	c0 := must(c.Consumer(0))
	must(c.Consumer(1))
	wake := c.r.l.Queues[1].DataRing + 256
	var bursts atomic.Int64
	for i := range 200 {
		poke(c.r.b, wake, uint32(i+1)<<2|ivshmem.WakeFutex) // the hostile consumer of queue 1: a new "sleep" each time
		if err := p1.Send([]byte{byte(i)}); err != nil && i < 64 {
			t.Fatal(err)
		}
		if err := p0.Send([]byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
		got := make([]Packet, 1)
		if n, _ := c0.RecvBurst(got); n == 1 {
			c0.Release(got...)
			bursts.Add(1)
		}
	}
	if bursts.Load() != 200 || p0.Wakes() != 0 {
		t.Fatalf("honest queue: %d of 200, %d wake-ups", bursts.Load(), p0.Wakes())
	}
	if w := p1.Wakes(); w == 0 || w > 200 {
		t.Fatalf("hostile queue: %d wake-ups for 200 sends", w)
	}
}
