package zc

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/zcfabric/zc/ivshmem"
)

// These tests put a guest and the agent in one process: a second mapping
// of the cluster's region, validated as a guest's (SideGuest), whose
// doorbell is fakeBell. Ringing peer 0 is what QEMU turns into the
// agent's host eventfd; here it calls the agent's relay directly
// (Cluster.WakeDoorbellSleepers), and the agent ringing the guest
// (Cluster.OnGuestWake) raises fakeBell's interrupt. vmtest runs the same
// paths through a real ivshmem-doorbell device under QEMU.

// fakeBell is an in-process guest doorbell.
type fakeBell struct {
	ring  func()        // what ringing peer 0 does: the agent's relay
	irq   chan struct{} // the host's interrupt
	rings atomic.Int64
}

func newFakeBell(ring func()) *fakeBell {
	return &fakeBell{ring: ring, irq: make(chan struct{}, 1)}
}

func (b *fakeBell) Wait(ctx context.Context) (uint64, error) {
	select {
	case <-b.irq:
		return 1, nil
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

func (b *fakeBell) Ring(peer, vector uint16) {
	if peer == 0 && vector == 0 {
		b.rings.Add(1)
		b.ring()
	}
}

func (b *fakeBell) interrupt() {
	select {
	case b.irq <- struct{}{}:
	default:
	}
}

func (b *fakeBell) Close() error { return nil }

// guestView maps c's region again as a guest sees it, with bell as its
// doorbell (nil: a guest without one, an ivshmem-plain device).
func guestView(t *testing.T, c *Cluster, bell *fakeBell) *region {
	t.Helper()
	m, err := ivshmem.Map(c.Path())
	if err != nil {
		t.Fatal(err)
	}
	r, err := validate(m, c.ID(), ivshmem.SideGuest)
	if err != nil {
		m.Close()
		t.Fatal(err)
	}
	r.bellOnce.Do(func() {
		if bell == nil {
			r.bellErr = errNoTestBell
			return
		}
		r.bell = bell
	})
	t.Cleanup(func() { r.unref() })
	return r
}

var errNoTestBell = errors.New("an ivshmem-plain device: no doorbell")

// guestProducer attaches queue q of the guest's view as its producer,
// drawing on the queue's own buffers.
func guestProducer(t *testing.T, r *region, q uint32) *Queue {
	t.Helper()
	p, err := r.attach(q, ivshmem.EndProducer, false)
	if err != nil {
		t.Fatal(err)
	}
	ql := r.l.Queues[q]
	p.setSource(newPool(r, ql.PoolFirst, ql.PoolCount))
	t.Cleanup(func() { p.Close() })
	return p
}

// guestConsumer attaches queue q of the guest's view as its consumer.
func guestConsumer(t *testing.T, r *region, q uint32) *Queue {
	t.Helper()
	c, err := r.attach(q, ivshmem.EndConsumer, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// recvAsync runs cons.RecvBurstWait on a goroutine and hands back how
// many packets it got.
func recvAsync(t *testing.T, cons *Queue) <-chan int {
	got := make(chan int, 1)
	go func() {
		pkts := make([]Packet, 8)
		n, err := cons.RecvBurstWait(context.Background(), pkts)
		if err != nil {
			t.Errorf("RecvBurstWait on %s: %v", cons.Name(), err)
		}
		if n > 0 {
			cons.Release(pkts[:n]...)
		}
		got <- n
	}()
	return got
}

// expectSendWakes starts a receive on r, lets it go to sleep, sends one
// packet on prod and checks that it wakes r (who names r).
func expectSendWakes(t *testing.T, r, prod *Queue, who string) {
	t.Helper()
	got := recvAsync(t, r)
	time.Sleep(100 * time.Millisecond)
	if err := prod.Send([]byte("wake")); err != nil {
		t.Fatal(err)
	}
	expectWoken(t, got, who)
}

// expectWoken waits (bounded: a hang) for a receiver woken by what was
// just sent.
func expectWoken(t *testing.T, got <-chan int, who string) {
	t.Helper()
	select {
	case n := <-got:
		if n != 1 {
			t.Fatalf("%s got %d packets, want 1", who, n)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("%s was not woken", who)
	}
}

// TestHostSleepsOnGuestProducer: a host process reading a queue a guest
// produces sleeps in futex(2) (no CPU while idle) once the guest said it
// rings its doorbell, and the guest's next packet wakes it through the
// agent's relay. Without a doorbell in the guest, the host end polls and
// says why.
func TestHostSleepsOnGuestProducer(t *testing.T) {
	c := newCluster(t, Config{ID: 46, Queues: 2, QueueLen: 64, Buffers: 64, QueueBuffers: 64})
	var relayed atomic.Int64
	bell := newFakeBell(func() { relayed.Add(int64(c.WakeDoorbellSleepers(nil))) })
	g := guestView(t, c, bell)
	gp := guestProducer(t, g, 0)
	cons := mustQ(t)(c.Consumer(0))
	if m := cons.WakeMode(); m != "futex, woken through the guest's doorbell" {
		t.Fatalf("host consumer of a guest with a doorbell: idle waits %q", m)
	}
	got := recvAsync(t, cons)
	time.Sleep(100 * time.Millisecond) // past the polls and naps
	checkAsleep(t, "a host consumer of a guest's queue")
	if err := gp.Send([]byte("wake")); err != nil {
		t.Fatal(err)
	}
	expectWoken(t, got, "the host consumer")
	if bell.rings.Load() == 0 || relayed.Load() == 0 || gp.Wakes() == 0 {
		t.Errorf("guest rang %d times, relay woke %d sleepers, guest counted %d wake-ups; want each > 0",
			bell.rings.Load(), relayed.Load(), gp.Wakes())
	}

	// A guest without a doorbell says it does not ring: the host polls.
	plain := guestView(t, c, nil)
	guestProducer(t, plain, 1)
	if m := mustQ(t)(c.Consumer(1)).WakeMode(); m != "poll: the peer is a guest without a doorbell device" {
		t.Errorf("host consumer of a guest without a doorbell: idle waits %q", m)
	}
}

// TestGuestSleepsOnAgentRing: a guest reader sleeps on its doorbell only
// while the host producer is a process that rings it (it serves the
// guest's doorbell: OnGuestWake); the producer's next packet raises the
// guest's interrupt. Once that process stops serving it, the guest polls.
// The agent's lossless producer waiting for the guest's returns sleeps
// until the guest rings (through the relay).
func TestGuestSleepsOnAgentRing(t *testing.T) {
	c := newCluster(t, Config{ID: 47, Queues: 1, QueueLen: 16, Buffers: 16})
	var relayed atomic.Int64
	bell := newFakeBell(func() { relayed.Add(int64(c.WakeDoorbellSleepers(nil))) })
	g := guestView(t, c, bell)
	prod := mustQ(t)(c.Producer(0))
	gc := guestConsumer(t, g, 0)
	if m := gc.WakeMode(); !strings.HasPrefix(m, "doorbell (the host peer does not ring") {
		t.Fatalf("guest reader before the host serves its doorbell: idle waits %q", m)
	}
	remove := c.OnGuestWake(bell.interrupt)
	if m := gc.WakeMode(); m != "doorbell" {
		t.Fatalf("guest reader of the agent: idle waits %q", m)
	}
	expectSendWakes(t, gc, prod, "the guest reader")
	if prod.Wakes() == 0 {
		t.Error("the host producer rang no interrupt")
	}

	// Every buffer out with the guest: the producer waits for returns,
	// asleep, and the guest's release rings it awake through the relay.
	pkts := make([]Packet, 16)
	if sendAll(t, prod, pkts) == 0 {
		t.Fatal("nothing sent")
	}
	if m := prod.WakeMode(); m != "futex, woken through the guest's doorbell" {
		t.Fatalf("host producer of a guest reader: idle waits %q", m)
	}
	expectAllocWoken(t, prod, gc, pkts[:4], "the host producer of a guest reader", nil)
	if relayed.Load() == 0 {
		t.Error("the relay woke nobody: the producer was not asleep on the guest's ring")
	}

	remove()
	if m := gc.WakeMode(); m == "doorbell" {
		t.Errorf("guest reader after the host stopped serving its doorbell: idle waits %q", m)
	}
}

// TestGuestSleepsOnHostProcess: a guest reader fed by a host process
// that cannot ring it (not the one serving its doorbell) still sleeps on
// its doorbell: it rings the doorbell server as it goes to sleep, the
// server's watcher (here a loop of AwaitGuestSleep, as the agent runs)
// waits on the ring's index word, the producer's next packet wakes it
// (its notify: FUTEX_WAKE), and the watcher raises the guest's interrupt.
// The same for a guest producer waiting for a host consumer's returns.
func TestGuestSleepsOnHostProcess(t *testing.T) {
	c := newCluster(t, Config{ID: 49, Queues: 2, QueueLen: 16, Buffers: 16, QueueBuffers: 16})
	var bell *fakeBell
	var watches atomic.Int64
	bell = newFakeBell(func() {
		c.WakeDoorbellSleepers(func(g ivshmem.GuestSleep) {
			watches.Add(1)
			go func() {
				for {
					ring, asleep := c.AwaitGuestSleep(g, SleepSlice)
					if ring {
						bell.interrupt()
					}
					if ring || !asleep {
						return
					}
				}
			}()
		})
	})
	g := guestView(t, c, bell)
	prod := mustQ(t)(c.Producer(0)) // no OnGuestWake: it cannot ring the guest
	gc := guestConsumer(t, g, 0)
	if m := gc.WakeMode(); !strings.HasPrefix(m, "doorbell (the host peer does not ring") {
		t.Fatalf("guest reader of a host process: idle waits %q", m)
	}
	expectSendWakes(t, gc, prod, "the guest reader of a host process")
	if watches.Load() == 0 || prod.Wakes() == 0 {
		t.Errorf("watches %d, producer wake-ups %d: the guest was not woken through a watch", watches.Load(), prod.Wakes())
	}

	// A guest producer whose every buffer is out with a host consumer.
	gp := guestProducer(t, g, 1)
	cons := mustQ(t)(c.Consumer(1))
	pkts := make([]Packet, 16)
	if sendAll(t, gp, pkts) == 0 {
		t.Fatal("the guest sent nothing")
	}
	before := watches.Load()
	expectAllocWoken(t, gp, cons, pkts[:4], "the guest producer of a host reader", nil)
	if watches.Load() == before {
		t.Error("the guest producer was not watched for: it polled")
	}
}

// TestDoorbellWakerHostile: a guest that rings without pause, its sleeper
// word set, costs a host sleeper one wake-up per sleep; a guest consumer's
// own doorbell sleep (its queue's consumer end is a guest) is never
// answered by the relay.
func TestDoorbellWakerHostile(t *testing.T) {
	c := newCluster(t, Config{ID: 48, Queues: 2, QueueLen: 64, Buffers: 64, QueueBuffers: 64})
	g := guestView(t, c, newFakeBell(func() {}))
	guestProducer(t, g, 0)
	cons := mustQ(t)(c.Consumer(0))
	if ready, err := cons.in.Announce(ivshmem.WakeDoorbell); ready || err != nil {
		t.Fatalf("announce: %v %v", ready, err)
	}
	if n := c.WakeDoorbellSleepers(nil); n != 1 {
		t.Fatalf("relay woke %d, want the one host sleeper", n)
	}
	for range 1000 {
		if n := c.WakeDoorbellSleepers(nil); n != 0 {
			t.Fatalf("relay woke %d sleepers again for the same sleep", n)
		}
	}
	cons.in.Clear()
	// The guest's own reader on queue 1, asleep on its interrupt.
	gc := guestConsumer(t, g, 1)
	gc.in.Announce(ivshmem.WakeDoorbell)
	if n := c.WakeDoorbellSleepers(nil); n != 0 {
		t.Fatalf("relay woke %d: a guest's own sleeper", n)
	}
}
