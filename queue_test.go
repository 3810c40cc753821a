package zc

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"testing"
	"time"
)

func fill(p *Packet, seq uint32, n int) {
	p.Data = p.Data[:n]
	binary.BigEndian.PutUint32(p.Data, seq)
	for i := 4; i < n; i++ {
		p.Data[i] = byte(seq) + byte(i)
	}
	p.Seq = seq
}

// fillFrame is fill with an IPv4 header whose source address is seq, so
// the balancer's hashes spread the packets.
func fillFrame(p *Packet, seq uint32, n int) {
	fill(p, seq, n)
	d := p.Data
	d[12], d[13], d[14] = 0x08, 0x00, 0x45
	binary.BigEndian.PutUint32(d[26:], seq)
	binary.BigEndian.PutUint32(d[30:], 0x0a000001)
}

// checkPkt reports whether p is the packet fill or fillFrame made: it
// returns an error rather than failing, so other goroutines can use it.
func checkPkt(p *Packet, seq uint32, n int) error {
	if len(p.Data) != n || binary.BigEndian.Uint32(p.Data) != seq || p.Seq != seq {
		return fmt.Errorf("packet %d: len %d seq %d/%d", seq, len(p.Data), binary.BigEndian.Uint32(p.Data), p.Seq)
	}
	for i := 34; i < n; i++ {
		if p.Data[i] != byte(seq)+byte(i) {
			return fmt.Errorf("packet %d byte %d = %d", seq, i, p.Data[i])
		}
	}
	return nil
}

func TestSendRecvInProcess(t *testing.T) {
	c := newCluster(t, Config{ID: 7, Queues: 2, QueueLen: 64, Buffers: 200})
	must := mustQ(t)
	prod := must(c.Producer(0))
	cons := must(Open("zc:7@0"))
	if _, err := Open("zc:7@0"); !errors.Is(err, ErrBusy) {
		t.Fatalf("second consumer: %v", err)
	}
	pkts := make([]Packet, 32)
	got := make([]Packet, 32)
	seq, want := uint32(0), uint32(0)
	for round := 0; round < 100; round++ {
		n, _ := prod.Alloc(pkts)
		for i := range pkts[:n] {
			fill(&pkts[i], seq+uint32(i), 60+i)
		}
		sent, err := prod.SendBurst(pkts[:n])
		if err != nil {
			t.Fatal(err)
		}
		prod.Free(pkts[sent:n])
		seq += uint32(sent)
		k, err := cons.RecvBurst(got)
		if err != nil {
			t.Fatal(err)
		}
		for i := range got[:k] {
			if err := checkPkt(&got[i], want, len(got[i].Data)); err != nil {
				t.Fatal(err)
			}
			want++
		}
		if err := cons.Release(got[:k]...); err != nil {
			t.Fatal(err)
		}
	}
	if want != seq || seq < 3000 {
		t.Fatalf("sent %d received %d", seq, want)
	}
	st := prod.Stats()
	if st.Sent != uint64(seq) || st.Received != uint64(seq) || st.Drops != 0 || st.Bad != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestQueueFullDropsCounted(t *testing.T) {
	c := newCluster(t, Config{ID: 8, Queues: 1, QueueLen: 16, Buffers: 64})
	must := mustQ(t)
	prod := must(c.Producer(0))
	cons := must(c.Consumer(0))
	for i := range 40 {
		err := prod.Send([]byte{byte(i), 1, 2, 3})
		if i < 16 && err != nil || i >= 16 && !errors.Is(err, ErrQueueFull) {
			t.Fatalf("send %d: %v", i, err)
		}
	}
	st := prod.Stats()
	if st.Sent != 16 || st.Drops != 24 || st.Depth != 16 {
		t.Fatalf("stats %+v", st)
	}
	// Packets held by the consumer still count against the queue: no room
	// until they are released.
	got := make([]Packet, 16)
	n, _ := cons.RecvBurst(got)
	if n != 16 {
		t.Fatalf("received %d", n)
	}
	if err := prod.Send([]byte{1}); !errors.Is(err, ErrQueueFull) {
		t.Fatalf("send with all buffers held: %v", err)
	}
	cons.Release(got[:n]...)
	if err := prod.Send([]byte{1}); err != nil {
		t.Fatalf("send after release: %v", err)
	}
	if c.Pool().Len() != 64-1 {
		t.Fatalf("pool has %d free", c.Pool().Len())
	}
}

func TestRecvWaitAndClose(t *testing.T) {
	c := newCluster(t, Config{ID: 9, Queues: 1, QueueLen: 16, Buffers: 32})
	cons := mustQ(t)(Open("zc:9@0"))
	prod := mustQ(t)(c.Producer(0))
	sent := make(chan error)
	go func() {
		time.Sleep(20 * time.Millisecond)
		sent <- prod.Send([]byte("hello"))
	}()
	defer func() {
		if err := <-sent; err != nil {
			t.Error(err)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	p, err := cons.Recv(ctx)
	if err != nil || string(p.Data) != "hello" {
		t.Fatalf("recv %q %v", p.Data, err)
	}
	cons.Release(p)
	short, cancel2 := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel2()
	if _, err := cons.Recv(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("recv on empty queue: %v", err)
	}
	c.Close()
	if _, err := cons.Recv(ctx); !errors.Is(err, ErrClosed) {
		t.Fatalf("recv after cluster close: %v", err)
	}
}

func TestWrongEndAndNames(t *testing.T) {
	c := newCluster(t, Config{ID: 10, Queues: 1, QueueLen: 16, Buffers: 32})
	prod := mustQ(t)(c.Producer(0))
	if _, err := prod.RecvBurst(make([]Packet, 1)); !errors.Is(err, ErrWrongEnd) {
		t.Fatal(err)
	}
	if _, err := Open("zc:10@5"); !errors.Is(err, ErrNoQueue) {
		t.Fatal(err)
	}
	if _, err := Open("zc:11@0"); !errors.Is(err, ErrNotFound) {
		t.Fatal(err)
	}
	if _, err := Open("zc:10@0", AsProducer()); !errors.Is(err, ErrBusy) {
		t.Fatalf("second producer: %v", err)
	}
	for _, bad := range []string{"eth0", "zc:x@1", "zc:1", "zc:1@-1"} {
		if _, err := ParseName(bad); !errors.Is(err, ErrBadName) {
			t.Fatalf("%s: %v", bad, err)
		}
	}
	if _, err := CreateCluster(Config{ID: 10, Backing: BackingShm}); !errors.Is(err, ErrExists) {
		t.Fatalf("create twice: %v", err)
	}
}

// TestBadReturnsCounted: a consumer that returns handles it never got
// (hostile or buggy) cannot make the producer hand a buffer out twice.
func TestBadReturnsCounted(t *testing.T) {
	c := newCluster(t, Config{ID: 12, Queues: 1, QueueLen: 16, Buffers: 32})
	prod := mustQ(t)(c.Producer(0))
	cons := mustQ(t)(c.Consumer(0))
	prod.Send([]byte("x"))
	got := make([]Packet, 1)
	cons.RecvBurst(got)
	forged := got[0]
	forged.handle = 5 // never lent
	// The API refuses a double or stray release and sends nothing for it...
	if err := cons.Release(got[0], got[0], forged); err == nil {
		t.Fatal("double and stray release accepted")
	}
	// ...so play the hostile consumer on the return ring itself: the
	// same handle again, and one that was never lent.
	hostile := []uint32{got[0].handle, 5}
	if n, err := cons.back.Enqueue(hostile); n != 2 || err != nil {
		t.Fatal(n, err)
	}
	c.Pool().Reclaim() // reclaiming is lazy: force it
	st := prod.Stats()
	if st.Reclaimed != 1 || st.BadReturns != 2 {
		t.Fatalf("reclaimed %d bad returns %d", st.Reclaimed, st.BadReturns)
	}
	if c.Pool().Len() != 32 {
		t.Fatalf("pool has %d free, want 32", c.Pool().Len())
	}
}

func TestExternalProducerPool(t *testing.T) {
	newCluster(t, Config{ID: 13, Queues: 2, QueueLen: 16, Buffers: 8, QueueBuffers: 16})
	if _, err := Open("zc:13@0", AsProducer()); err != nil {
		t.Fatal(err)
	}
	cons := mustQ(t)(Open("zc:13@0"))
	c2 := newCluster(t, Config{ID: 14, Queues: 1, QueueLen: 16, Buffers: 8})
	_ = c2
	if _, err := Open("zc:14@0", AsProducer()); !errors.Is(err, ErrNoBuffers) {
		t.Fatalf("producer without queue buffers: %v", err)
	}
	_ = cons
}

func TestHotPathNoAllocs(t *testing.T) {
	c := newCluster(t, Config{ID: 15, Queues: 1, QueueLen: 256, Buffers: 512})
	prod := mustQ(t)(c.Producer(0))
	cons := mustQ(t)(c.Consumer(0))
	pkts, got := make([]Packet, 32), make([]Packet, 32)
	allocs := testing.AllocsPerRun(2000, func() {
		n, _ := prod.Alloc(pkts)
		for i := range pkts[:n] {
			pkts[i].Data = pkts[i].Data[:64]
		}
		s, _ := prod.SendBurst(pkts[:n])
		prod.Free(pkts[s:n])
		k, _ := cons.RecvBurst(got)
		cons.Release(got[:k]...)
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per burst", allocs)
	}
	// The waiting receive, as zcount uses it, with packets there.
	ctx := context.Background()
	allocs = testing.AllocsPerRun(2000, func() {
		n, _ := prod.Alloc(pkts)
		s, _ := prod.SendBurst(pkts[:n])
		prod.Free(pkts[s:n])
		k, _ := cons.RecvBurstWait(ctx, got)
		cons.Release(got[:k]...)
	})
	if allocs != 0 {
		t.Fatalf("RecvBurstWait: %v allocations per burst", allocs)
	}
}

// TestRecoverDeadConsumersBuffers: a consumer that goes away holding
// buffers (killed, or a VM unplugged mid-burst) does not shrink the
// queue for good: the next consumer's attach handshake makes the
// producer take them back.
func TestRecoverDeadConsumersBuffers(t *testing.T) {
	c := newCluster(t, Config{ID: 16, Queues: 1, QueueLen: 32, Buffers: 64})
	prod := mustQ(t)(c.Producer(0))
	dead, err := c.Consumer(0)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		prod.Send([]byte{byte(i)})
	}
	held := make([]Packet, 12)
	if n, _ := dead.RecvBurst(held); n != 12 {
		t.Fatalf("got %d", n)
	}
	// dead never releases nor closes; a new consumer takes the end over.
	next := mustQ(t)(Open("zc:16@0", Force()))
	if n, _ := next.RecvBurst(make([]Packet, 8)); n != 0 {
		t.Fatalf("read %d before the producer answered the handshake", n)
	}
	prod.Send([]byte{99}) // the producer's next burst answers it
	got := make([]Packet, 32)
	n, err := next.RecvBurst(got)
	if err != nil || n != 9 || got[0].Data[0] != 12 || got[8].Data[0] != 99 {
		t.Fatalf("new consumer got %d (%v), first %v", n, err, got[0].Data)
	}
	next.Release(got[:n]...)
	c.Pool().Reclaim()
	st := prod.Stats()
	if st.Recovered != 12 || prod.Outstanding() != 0 || c.Pool().Len() != 64 {
		t.Fatalf("recovered %d, outstanding %d, pool %d free", st.Recovered, prod.Outstanding(), c.Pool().Len())
	}
}

// TestRecoverAfterIdleProducer: the producer is idle for longer than
// HandshakeWait when a new consumer replaces one that died holding
// buffers (an agent asleep between packets). With nothing in the queue
// the consumer waits on, and the producer's next burst takes the buffers
// back before it is published. (The consumer used to give up after
// HandshakeWait, and the buffers stayed lent for good.)
func TestRecoverAfterIdleProducer(t *testing.T) {
	c := newCluster(t, Config{ID: 19, Queues: 1, QueueLen: 32, Buffers: 64})
	prod := mustQ(t)(c.Producer(0))
	dead, err := c.Consumer(0)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 12 {
		prod.Send([]byte{byte(i)})
	}
	if n, _ := dead.RecvBurst(make([]Packet, 12)); n != 12 {
		t.Fatalf("got %d", n)
	}
	next := mustQ(t)(Open("zc:19@0", Force()))
	got := make([]Packet, 32)
	time.Sleep(2 * HandshakeWait)
	if n, err := next.RecvBurst(got); n != 0 || err != nil {
		t.Fatalf("new consumer read %d (%v) from an empty queue", n, err)
	}
	prod.Send([]byte{99})
	n, err := next.RecvBurst(got)
	if err != nil || n != 1 || got[0].Data[0] != 99 {
		t.Fatalf("new consumer got %d (%v), want the one packet sent after its attach", n, err)
	}
	next.Release(got[:n]...)
	c.Pool().Reclaim()
	if st := prod.Stats(); st.Recovered != 12 || prod.Outstanding() != 0 || c.Pool().Len() != 64 {
		t.Fatalf("recovered %d, outstanding %d, pool %d free: the dead consumer's buffers stayed lent", st.Recovered, prod.Outstanding(), c.Pool().Len())
	}
}

// TestCloseReleasesHeld: a consumer that closes while holding packets gives
// them back; nothing leaks and nothing needs recovering.
func TestCloseReleasesHeld(t *testing.T) {
	c := newCluster(t, Config{ID: 17, Queues: 1, QueueLen: 16, Buffers: 32})
	prod := mustQ(t)(c.Producer(0))
	cons, err := c.Consumer(0)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		prod.Send([]byte{byte(i)})
	}
	got := make([]Packet, 6)
	if n, _ := cons.RecvBurst(got); n != 6 {
		t.Fatalf("got %d", n)
	}
	if err := cons.Close(); err != nil {
		t.Fatal(err)
	}
	c.Pool().Reclaim()
	st := prod.Stats()
	if st.Returned != 6 || prod.Outstanding() != 4 || st.Recovered != 0 {
		t.Fatalf("returned %d outstanding %d recovered %d", st.Returned, prod.Outstanding(), st.Recovered)
	}
}

// TestProducerReattachAdoptsInFlight: a producer that replaces an earlier
// one (zsend restarted) must not hand out a buffer the consumer still
// reads: the ones still queued are taken over as its own loans, and it
// waits for the consumer to give back the ones it holds.
func TestProducerReattachAdoptsInFlight(t *testing.T) {
	newCluster(t, Config{ID: 18, Queues: 1, QueueLen: 16, Buffers: 8, QueueBuffers: 16})
	first, err := Open("zc:18@0", AsProducer())
	if err != nil {
		t.Fatal(err)
	}
	cons := mustQ(t)(Open("zc:18@0"))
	for i := range 10 {
		if err := first.Send([]byte{byte(i), byte(i), byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	held := make([]Packet, 6)
	if n, _ := cons.RecvBurst(held); n != 6 {
		t.Fatalf("received %d", n)
	}
	first.Close() // the producer goes away with 10 buffers out
	released := make(chan struct{})
	go func() {
		time.Sleep(100 * time.Millisecond)
		for i := range held {
			if held[i].Data[0] != byte(i) || held[i].Data[2] != byte(i) {
				t.Errorf("held packet %d overwritten: %v", i, held[i].Data)
			}
		}
		cons.Release(held...)
		close(released)
	}()
	second := mustQ(t)(Open("zc:18@0", AsProducer()))
	<-released // Open waited for the held ones to come back
	// Fill every buffer the new producer will give out with garbage.
	pkts := make([]Packet, 16)
	n, _ := second.Alloc(pkts)
	if n != 12 {
		t.Fatalf("new producer has %d free buffers, want 16-4 in the ring", n)
	}
	for i := range pkts[:n] {
		for j := range pkts[i].Data {
			pkts[i].Data[j] = 0xff
		}
	}
	second.Free(pkts[:n])
	// The four still queued from the first producer arrive intact.
	got := make([]Packet, 8)
	k, _ := cons.RecvBurst(got)
	if k != 4 {
		t.Fatalf("received %d of the 4 left", k)
	}
	for i := range got[:k] {
		if want := byte(6 + i); got[i].Data[0] != want || got[i].Data[2] != want {
			t.Fatalf("queued packet %d overwritten: %v", 6+i, got[i].Data[:3])
		}
	}
	cons.Release(got[:k]...)
	second.Pool().Reclaim()
	if second.Outstanding() != 0 || second.Pool().Len() != 16 {
		t.Fatalf("outstanding %d, free %d", second.Outstanding(), second.Pool().Len())
	}
}
