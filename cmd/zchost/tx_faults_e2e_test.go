package main

import (
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/zcfabric/zc"
	"github.com/zcfabric/zc/internal/netns"
	"github.com/zcfabric/zc/internal/testgate"
	"github.com/zcfabric/zc/ivshmem"
	"golang.org/x/sys/unix"
)

// hostileProducer writes straight into a queue's rings and buffers, as a
// broken or hostile guest would: no zc.Queue, no checks.
type hostileProducer struct {
	m    *ivshmem.Mapping
	b    []byte
	l    ivshmem.Layout
	q    ivshmem.QueueLayout
	data *ivshmem.RingProducer
	ret  *ivshmem.RingConsumer
	lens map[uint32]uint32 // descriptor length per buffer, set by fill
}

func mapHostile(t *testing.T, id uint32) *hostileProducer {
	t.Helper()
	m, err := ivshmem.Map(zc.RegionPath(id))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	h := &hostileProducer{m: m, b: m.Bytes}
	if h.l, err = ivshmem.Parse(h.b); err != nil {
		t.Fatal(err)
	}
	h.q = h.l.Queues[0]
	h.attach(t)
	return h
}

// attach (again) takes the producer side of the data ring and the
// consumer side of the return ring where the indices stand now.
func (h *hostileProducer) attach(t *testing.T) {
	t.Helper()
	var err error
	if h.data, err = ivshmem.NewDescProducer(h.b, h.q.DataRing, h.q.Slots); err != nil {
		t.Fatal(err)
	}
	if h.ret, err = ivshmem.NewRingConsumer(h.b, h.q.RetRing, h.q.Slots); err != nil {
		t.Fatal(err)
	}
}

// handle returns the i-th buffer of the queue's own pool.
func (h *hostileProducer) handle(i int) uint32 { return h.q.PoolFirst + uint32(i) }

// fill writes test frame seq (from src to dst) into buffer hd and its
// metadata record (the sequence); n overrides the length its descriptor
// will carry when > 0.
func (h *hostileProducer) fill(hd uint32, dst, src []byte, seq uint32, n int) {
	buf := h.b[h.l.BufOff+uint64(hd)*uint64(h.l.BufSize):][:h.l.BufSize]
	frame := netns.AppendFrame(buf[:0], dst, src, seq, netns.FrameLen(seq, 1400))
	if n <= 0 {
		n = len(frame)
	}
	meta := h.b[h.l.MetaOff+uint64(hd)*ivshmem.MetaSize:][:ivshmem.MetaSize]
	clear(meta)
	binary.LittleEndian.PutUint32(meta[ivshmem.MetaOffSeq:], seq)
	if h.lens == nil {
		h.lens = map[uint32]uint32{}
	}
	h.lens[hd] = uint32(n)
}

// publish puts descriptors of the handles (with the lengths fill gave
// them) in the data ring with one index store, so the consumer sees them
// in one burst.
func (h *hostileProducer) publish(t *testing.T, hs ...uint32) {
	t.Helper()
	ds := make([]ivshmem.Desc, len(hs))
	for i, hd := range hs {
		ds[i] = ivshmem.Desc{Handle: hd, Len: h.lens[hd], Flags: ivshmem.DescMeta}
	}
	if n, err := h.data.EnqueueDescs(ds); err != nil || n != len(hs) {
		t.Fatalf("enqueue %v: %d, %v", hs, n, err)
	}
}

// returned collects what the consumer gave back on the return ring.
func (h *hostileProducer) returned(t *testing.T, into map[uint32]int) {
	t.Helper()
	hs := make([]uint32, 64)
	for {
		n, err := h.ret.Dequeue(hs)
		if err != nil {
			t.Fatalf("return ring: %v", err)
		}
		if n == 0 {
			return
		}
		for _, x := range hs[:n] {
			into[x]++
		}
	}
}

// observer counts the test frames arriving at the peer, by sequence
// number, on a goroutine of its own.
type observer struct {
	seen chan uint32
	stop chan struct{}
}

func observe(t *testing.T, e netns.End) *observer {
	t.Helper()
	rx, err := e.OpenRaw(netns.EtherType)
	if err != nil {
		t.Fatal(err)
	}
	o := &observer{seen: make(chan uint32, 1024), stop: make(chan struct{})}
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		buf := make([]byte, 2048)
		for {
			select {
			case <-o.stop:
				return
			default:
			}
			n, err := rx.Recv(buf, 50*time.Millisecond)
			if errors.Is(err, unix.EAGAIN) {
				continue
			}
			if err != nil {
				return
			}
			if seq, ok, err := netns.CheckFrame(buf[:n]); err == nil && ok {
				o.seen <- seq
			}
		}
	}()
	t.Cleanup(func() { close(o.stop); <-ended; rx.Close() })
	return o
}

// expect waits for exactly the frames want (each once), then for a quiet
// moment in which no more arrive; it fails on a repeat or a stranger.
func (o *observer) expect(t *testing.T, tx *agentProc, want ...uint32) {
	t.Helper()
	left := slices.Clone(want)
	guard := time.After(20 * time.Second) // a hang guard
	for len(left) > 0 {
		select {
		case seq := <-o.seen:
			i := slices.Index(left, seq)
			if i < 0 {
				t.Fatalf("frame %d arrived, want only %v (each once)\n%s", seq, want, tx.log.String())
			}
			left = slices.Delete(left, i, i+1)
		case <-guard:
			t.Fatalf("frames %v never arrived\n%s", left, tx.log.String())
		}
	}
	select {
	case seq := <-o.seen:
		t.Fatalf("frame %d arrived after %v: sent twice, or a bad entry sent\n%s", seq, want, tx.log.String())
	case <-time.After(300 * time.Millisecond):
	}
}

// txRunning fails the test if zchost tx has exited.
func txRunning(t *testing.T, tx *agentProc, when string) {
	t.Helper()
	select {
	case err := <-tx.done:
		tx.done <- err
		t.Fatalf("zchost tx exited %s: %v\n%s", when, err, tx.log.String())
	default:
	}
}

// TestTxIgnoresProducerFaults: a producer that writes a handle twice in
// one burst, a handle outside the region and a record whose length does
// not fit its buffer, into a queue read by `zchost tx -o veth`, costs
// nothing but those entries: tx keeps running, sends every valid packet
// exactly once, counts the bad entries (queue stats Bad) and returns each
// valid buffer once. When the producer then breaks the ring itself (an
// index more than the ring's size ahead), tx logs the failed queue,
// keeps running, attaches again once the ring is sane, sends again, and
// exits 0 with its summary on SIGTERM.
func TestTxIgnoresProducerFaults(t *testing.T) {
	testgate.NetAdmin(t)
	bin := binaries(t)
	shmDir(t, "zctxf-")
	p := netns.New(t, netns.Config{})
	id := 0x7e000000 | rand.Uint32N(1<<24)
	c, err := zc.CreateCluster(zc.Config{ID: id, Queues: 1, QueueLen: 64, Buffers: 64, QueueBuffers: 64,
		BufferSize: 2048, Backing: zc.BackingShm})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	obs := observe(t, p.B)
	tx := startTx(t, "ip", "netns", "exec", p.A.NS, filepath.Join(bin, "zchost"), "tx",
		"-i", "zc:"+strconv.FormatUint(uint64(id), 10)+"@0", "-o", p.A.Ifname, "--stats-interval", "0", "--log-level", "debug")
	h := mapHostile(t, id)
	dst, src := p.B.MAC, p.A.MAC

	// Round 1: h0, h0 again in the same burst, a handle past the region's
	// last buffer, h1, h2.
	for i := range 3 {
		h.fill(h.handle(i), dst, src, uint32(i), 0)
	}
	h.publish(t, h.handle(0), h.handle(0), h.l.NumBufs+7, h.handle(1), h.handle(2))
	obs.expect(t, tx, 0, 1, 2)
	txRunning(t, tx, "after a repeated and a foreign handle")

	// Round 2: h3 three times, a record longer than its buffer (h5), h4.
	h.fill(h.handle(3), dst, src, 3, 0)
	h.fill(h.handle(4), dst, src, 4, 0)
	h.fill(h.handle(5), dst, src, 99, int(h.l.BufSize)+1)
	h.publish(t, h.handle(3), h.handle(3), h.handle(3), h.handle(5), h.handle(4))
	obs.expect(t, tx, 3, 4)
	txRunning(t, tx, "after a triple handle and a bad record")

	info, err := zc.Inspect(id)
	if err != nil {
		t.Fatal(err)
	}
	if q := info.Queues[0]; q.Bad != 5 || q.Received != 5 {
		t.Errorf("queue stats: received %d, bad %d; want 5 and 5 (h0 twice, a foreign handle, h3 twice more, h5's record)\n%s",
			q.Received, q.Bad, tx.log.String())
	}
	back := map[uint32]int{}
	deadline := time.Now().Add(10 * time.Second)
	for len(back) < 6 && time.Now().Before(deadline) {
		h.returned(t, back)
		time.Sleep(10 * time.Millisecond)
	}
	h.returned(t, back)
	for i := range 6 {
		if back[h.handle(i)] != 1 {
			t.Errorf("buffer h%d came back %d times, want once (returns: %v)", i, back[h.handle(i)], back)
		}
	}
	if len(back) != 6 {
		t.Errorf("returns %v, want h0..h5 once each", back)
	}

	// Round 3: the producer index jumps more than the ring's size ahead.
	prodWord := h.q.DataRing // the producer index: first word of the ring (ivshmem/doc.go)
	cons := binary.LittleEndian.Uint32(h.b[h.q.DataRing+128:])
	binary.LittleEndian.PutUint32(h.b[prodWord:], cons+h.q.Slots+5)
	if !tx.log.waitFor("queue failed", 20*time.Second) {
		t.Fatalf("zchost tx did not report the broken ring\n%s", tx.log.String())
	}
	time.Sleep(2500 * time.Millisecond) // two attempts to attach again, on a ring still broken
	txRunning(t, tx, "after the ring broke")
	// The producer puts the ring right; tx attaches again and sends.
	binary.LittleEndian.PutUint32(h.b[prodWord:], cons)
	h.attach(t)
	h.fill(h.handle(6), dst, src, 6, 0)
	h.publish(t, h.handle(6))
	obs.expect(t, tx, 6)

	took := sigterm(t, tx, "zchost tx")
	log := tx.log.String()
	t.Logf("zchost tx stopped %v after SIGTERM; log:\n%s", took.exit, log)
	if n := strings.Count(log, "queue failed:"); n != 1 {
		t.Errorf("%d warnings about the failed queue, want 1 (once per failure, not per attempt)", n)
	}
	for _, want := range []string{"packets=6", "bad=5", "queue_failures=1"} {
		if !strings.Contains(log, want) {
			t.Errorf("summary lacks %s", want)
		}
	}
}

// startTx starts zchost tx (argv: the whole command line) like
// startLoaded, but waits only until it says it is transmitting: it has
// nothing to move yet.
func startTx(t *testing.T, argv ...string) *agentProc {
	t.Helper()
	a := startLoaded(t, 0, argv...)
	if !a.log.waitFor("transmitting", 30*time.Second) {
		t.Fatalf("zchost tx did not start\n%s", a.log.String())
	}
	return a
}

// TestTxEndsWhenClusterGone: when the cluster's creator closes it (and
// removes its region), zchost tx ends by itself, status 0, with its
// summary: the one way a queue ends tx that a producer cannot cause.
func TestTxEndsWhenClusterGone(t *testing.T) {
	testgate.NetAdmin(t)
	bin := binaries(t)
	shmDir(t, "zctxg-")
	p := netns.New(t, netns.Config{})
	id := 0x7e000000 | rand.Uint32N(1<<24)
	c, err := zc.CreateCluster(zc.Config{ID: id, Queues: 1, QueueLen: 64, Buffers: 64, BufferSize: 2048, Backing: zc.BackingShm})
	if err != nil {
		t.Fatal(err)
	}
	tx := startTx(t, "ip", "netns", "exec", p.A.NS, filepath.Join(bin, "zchost"), "tx",
		"-i", "zc:"+strconv.FormatUint(uint64(id), 10)+"@0", "-o", p.A.Ifname, "--stats-interval", "0")
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-tx.done:
		tx.done <- err
		if err != nil {
			t.Fatalf("zchost tx after its cluster closed: %v\n%s", err, tx.log.String())
		}
	case <-time.After(20 * time.Second): // a hang guard
		t.Fatalf("zchost tx still runs 20 s after its cluster closed\n%s", tx.log.String())
	}
	tx.log.waitFor("summary", 5*time.Second)
	log := tx.log.String()
	if !strings.Contains(log, "cluster no longer exists") || !strings.Contains(log, "summary") || strings.Contains(log, "queue failed") {
		t.Errorf("want a summary after \"cluster no longer exists\", no failure warning:\n%s", log)
	}
}
