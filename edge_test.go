package zc

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/zcfabric/zc/ivshmem"
)

// TestClosedClusterRefusesAttach: a cluster closed (or left) here
// attaches no queue: ErrClosed. Its mapping may be gone, and another
// cluster may sit at the same address: a closed cluster attached into it
// and wrote there.
func TestClosedClusterRefusesAttach(t *testing.T) {
	a := newCluster(t, Config{ID: 30, Queues: 2, QueueLen: 16, Buffers: 64})
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	b := newCluster(t, Config{ID: 31, Queues: 2, QueueLen: 16, Buffers: 64})
	for _, attach := range []func(int) (*Queue, error){a.Producer, a.Output, a.Consumer} {
		if q, err := attach(1); !errors.Is(err, ErrClosed) {
			t.Errorf("attach on a closed cluster: %v, %v; want ErrClosed", q, err)
		}
	}
	if st := b.Stats(); st[1].Producer != 0 || st[1].Sent != 0 {
		t.Errorf("cluster 31 touched through the closed cluster 30: %+v", st[1])
	}
	// Left: the same.
	c := newCluster(t, Config{ID: 32, Queues: 1, QueueLen: 16, Buffers: 64})
	keep := mustQ(t)(c.Consumer(0)) // the mapping stays: still refused
	defer keep.Close()
	c.Leave()
	if _, err := c.Producer(0); !errors.Is(err, ErrClosed) {
		t.Errorf("attach after Leave: %v, want ErrClosed", err)
	}
	if _, err := b.Consumer(5); !errors.Is(err, ErrNoQueue) {
		t.Errorf("queue 5 of 2: %v, want ErrNoQueue", err)
	}
	if _, err := b.Consumer(-1); !errors.Is(err, ErrNoQueue) {
		t.Errorf("queue -1: %v, want ErrNoQueue", err)
	}
}

// TestOpenWaitNoQueue: a queue number the cluster does not have is
// ErrNoQueue at once; OpenWait does not wait for it (it waited its whole
// time: ErrNoQueue is what it waits on).
func TestOpenWaitNoQueue(t *testing.T) {
	newCluster(t, Config{ID: 33, Queues: 1, QueueLen: 16, Buffers: 64})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second) // a hang bound
	defer cancel()
	if _, err := OpenWait(ctx, "zc:33@7", 20*time.Second); !errors.Is(err, ErrNoQueue) {
		t.Errorf("OpenWait(zc:33@7) = %v, want ErrNoQueue", err)
	}
}

// TestSendBurstRefusesWhatIsNotTheCallers: a packet sent already, one not
// from Alloc, one twice in a burst, or one resliced past its buffer is
// refused (ErrNotHeld) and the packets before it go; Free and Drop of a
// packet sent already do nothing. Accepted, each lost the queue a slot
// for good, or gave the consumer a buffer it still held.
func TestSendBurstRefusesWhatIsNotTheCallers(t *testing.T) {
	_, prod, cons := newPair(t, Config{ID: 34, Queues: 1, QueueLen: 8, Buffers: 16})
	pk := make([]Packet, 4)
	if n, err := prod.Alloc(pk); n != 4 || err != nil {
		t.Fatalf("Alloc: %d, %v", n, err)
	}
	if n, err := prod.SendBurst(pk[:2]); n != 2 || err != nil {
		t.Fatalf("SendBurst: %d, %v", n, err)
	}
	prod.Free(pk[:2]) // sent: must not come back to the pool
	prod.Drop(pk[:2])
	for _, c := range []struct {
		name string
		pkts []Packet
		sent int
	}{
		{"sent already", pk[:1], 0},
		{"twice in a burst", []Packet{pk[2], pk[2]}, 1},
		{"not from Alloc", []Packet{{Data: []byte("not from alloc")}}, 0},
		{"resliced past its buffer", []Packet{{Data: make([]byte, 4096), handle: pk[3].handle}}, 0},
	} {
		n, err := prod.SendBurst(c.pkts)
		if n != c.sent || !errors.Is(err, ErrNotHeld) {
			t.Errorf("%s: SendBurst = %d, %v; want %d and ErrNotHeld", c.name, n, err, c.sent)
		}
	}
	// The consumer gets each buffer once; everything comes back; nothing
	// is refused or left outstanding.
	got := make([]Packet, 8)
	n, err := cons.RecvBurst(got)
	if n != 3 || err != nil {
		t.Fatalf("RecvBurst: %d, %v; want the 3 sent", n, err)
	}
	if err := cons.Release(got[:n]...); err != nil {
		t.Fatal(err)
	}
	more := make([]Packet, 16)
	k, _ := prod.Alloc(more) // reclaims; pk[0..2] back, pk[3] still allocated
	st := prod.Stats()
	if st.BadReturns != 0 || prod.Outstanding() != 0 || k != 15 {
		t.Errorf("after the round: %d bad returns, %d outstanding, %d allocated of 15 free; want 0, 0, 15", st.BadReturns, prod.Outstanding(), k)
	}
	if d := prod.Stats().Drops; d != 0 {
		t.Errorf("Drop of sent packets counted %d drops", d)
	}
}

// TestCommitWithinRoom: buffers sent with SendBurst between Reserve and
// Commit count against the queue's room: Commit sends what fits and
// counts the rest as drops; the queue never lends more than its slots
// (the consumer's Release then found the return ring full: ErrCorrupt).
func TestCommitWithinRoom(t *testing.T) {
	_, prod, cons := newPair(t, Config{ID: 35, Queues: 1, QueueLen: 8, Buffers: 32})
	var b Burst
	if k, err := prod.Reserve(&b, 8); k != 8 || err != nil {
		t.Fatalf("Reserve: %d, %v", k, err)
	}
	pk := make([]Packet, 8)
	if n, _ := prod.Alloc(pk); n != 8 {
		t.Fatalf("Alloc: %d", n)
	}
	if n, err := prod.SendBurst(pk); n != 8 || err != nil {
		t.Fatalf("SendBurst: %d, %v", n, err)
	}
	got := make([]Packet, 16)
	n, _ := cons.RecvBurst(got)
	if sent, err := prod.Commit(&b, 8); sent != 0 || err != nil || prod.Outstanding() > 8 {
		t.Fatalf("Commit with the queue's room used: %d, %v, %d outstanding; want 0 sent, at most 8 outstanding", sent, err, prod.Outstanding())
	}
	if err := cons.Release(got[:n]...); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if err := cons.Err(); err != nil {
		t.Fatalf("consumer failed: %v", err)
	}
	if d := prod.Stats().Drops; d != 8 {
		t.Errorf("drops %d, want the 8 committed without room", d)
	}
}

// TestProducerSeesCreatorClose: a producer attached from outside learns
// that the cluster's creator closed it (ErrClosed) while the queue is full
// (it got "queue full" for ever).
func TestProducerSeesCreatorClose(t *testing.T) {
	c := newCluster(t, Config{ID: 36, Queues: 1, QueueLen: 64, QueueBuffers: 128})
	prod, err := Open("zc:36@0", AsProducer())
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()
	c.Close()
	var last error
	for range 5000 {
		if last = prod.Send([]byte("x")); errors.Is(last, ErrClosed) {
			break
		}
	}
	if !errors.Is(last, ErrClosed) {
		t.Errorf("Send after the creator closed the cluster: %v, want ErrClosed", last)
	}
	var b Burst
	if _, err := prod.Reserve(&b, 4); !errors.Is(err, ErrClosed) {
		t.Errorf("Reserve after: %v, want ErrClosed", err)
	}
}

// TestEmptyAndNegativeArguments: RecvBurstWait with no room returns at
// once (it spun until ctx ended), Reserve and ReserveWait of a negative
// count reserve nothing (they panicked).
func TestEmptyAndNegativeArguments(t *testing.T) {
	_, prod, cons := newPair(t, Config{ID: 37, Queues: 1, QueueLen: 8, Buffers: 16})
	if err := prod.Send([]byte("x")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second) // a hang bound
	defer cancel()
	if n, err := cons.RecvBurstWait(ctx, nil); n != 0 || err != nil {
		t.Errorf("RecvBurstWait(nil) = %d, %v; want 0, nil", n, err)
	}
	var b Burst
	if k, err := prod.Reserve(&b, -1); k != 0 || err != nil {
		t.Errorf("Reserve(-1) = %d, %v", k, err)
	}
	if k, err := prod.ReserveWait(ctx, &b, -1); k != 0 || err != nil {
		t.Errorf("ReserveWait(-1) = %d, %v", k, err)
	}
}

// TestPlanHugeMinSize: a minimum size past 1<<63 is ErrConfig (the next
// power of two overflowed, and Plan looped for ever).
func TestPlanHugeMinSize(t *testing.T) {
	done := make(chan error, 1)
	go func() {
		_, err := ivshmem.Plan(ivshmem.Config{ClusterID: 1, Queues: 1, Slots: 16, BufSize: 2048, Buffers: 64, MinSize: 1<<63 + 1})
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, ivshmem.ErrConfig) {
			t.Errorf("Plan with MinSize 1<<63+1: %v, want ErrConfig", err)
		}
	case <-time.After(20 * time.Second): // a hang bound
		t.Fatal("Plan did not return")
	}
}

// TestRefusedBalancerLeavesOutputs: RunBalancer refused by NewBalancer
// (here: outputs in two regions of one cluster id) leaves its outputs as
// they were: the one with its own pool still allocates (its pool was
// replaced by the worker's relay, for good).
func TestRefusedBalancerLeavesOutputs(t *testing.T) {
	c := newCluster(t, Config{ID: 38, Queues: 3, QueueLen: 16, Buffers: 64, QueueBuffers: 32})
	in := mustQ(t)(c.Consumer(2))
	own, err := Open("zc:38@0", AsProducer())
	if err != nil {
		t.Fatal(err)
	}
	defer own.Close()
	relayed := mustQ(t)(c.Output(1))
	_, err = RunBalancer(context.Background(), []*Queue{in}, []*Queue{own, relayed}, ModeRoundRobin, nil, WorkerOptions{})
	if err == nil {
		t.Fatal("RunBalancer over outputs of two mappings: no error")
	}
	if own.Pool() == nil {
		t.Fatalf("refused RunBalancer (%v) took the output's pool", err)
	}
	pk := make([]Packet, 1)
	if n, err := own.Alloc(pk); n != 1 || err != nil {
		t.Errorf("Alloc on the output after the refusal: %d, %v", n, err)
	}
}
