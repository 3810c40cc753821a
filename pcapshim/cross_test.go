package pcapshim

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/zcfabric/zc"
	"github.com/zcfabric/zc/ivshmem"
)

// Cross-tests of the shim's C reader against zc's Go producer: the Go
// side writes packets of a pattern (crossPacket) and the C side
// (testdata/crossread.c, through the libpcap API with the shim preloaded)
// checks every packet's length, bytes, order and time stamp; then the Go
// side checks that every buffer came back, and nothing it did not lend.

// crossTS0 is the time stamp base of the pattern (crossread.c's TS0).
const crossTS0 = 1700000000000000000

// crossLen is packet seq's length in a buffer of b bytes.
func crossLen(seq uint64, b uint32) uint32 {
	switch {
	case seq%97 == 0:
		return b
	case seq%89 == 0:
		return 1
	}
	return 14 + uint32(seq*37%uint64(b/2))
}

// crossFill writes packet seq's bytes into d (len(d) == crossLen).
func crossFill(seq uint64, d []byte) {
	for i := range d {
		if i < 4 {
			d[i] = byte(seq >> (8 * i))
		} else {
			d[i] = byte(seq*131 + uint64(i)*7)
		}
	}
}

// crossTime is packet seq's time stamp, 0 for none.
func crossTime(seq uint64) int64 {
	if seq%3 != 0 {
		return 0
	}
	return crossTS0 + int64(seq)*1000 + 999
}

// setIndices sets both indices of both rings of queue q to v, before
// either end attaches: the ends take over from there, so the run crosses
// the uint32 wrap of the free-running indices.
func setIndices(t *testing.T, b []byte, q int, v uint32) ivshmem.QueueLayout {
	t.Helper()
	l, err := ivshmem.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	ql := l.Queues[q]
	for _, ring := range []uint64{ql.DataRing, ql.RetRing} {
		binary.LittleEndian.PutUint32(b[ring:], v)     // producer index
		binary.LittleEndian.PutUint32(b[ring+128:], v) // consumer index
	}
	return ql
}

// crossReader starts crossread on device with the shim preloaded and
// waits until it attached. Its stdout lines come on the channel, which is
// closed when it ends.
func (e *env) crossReader(ctx context.Context, device string, n int, bufSize uint32) (*exec.Cmd, *strings.Builder, *lineBuffer) {
	t := e.t
	t.Helper()
	c := e.preloaded(ctx, filepath.Join(e.bin, "crossread"), device, strconv.Itoa(n), strconv.Itoa(int(bufSize)))
	stderr := &strings.Builder{}
	c.Stderr = stderr
	stdout, err := c.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	lines := &lineBuffer{ended: make(chan struct{}), first: make(chan string, 1)}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if len(lines.first) == 0 && lines.out == nil {
				lines.first <- sc.Text()
				lines.out = []string{}
				continue
			}
			lines.out = append(lines.out, sc.Text())
		}
		close(lines.first)
		close(lines.ended)
	}()
	if l := <-lines.first; l != "attached" {
		c.Wait()
		t.Fatalf("crossread: %q\n%s", l, stderr)
	}
	return c, stderr, lines
}

// lineBuffer gathers crossread's output: out is complete once ended is
// closed (the reader exited).
type lineBuffer struct {
	first chan string
	out   []string
	ended chan struct{}
}

// stuck fails the test if the reader ended while the producer still had
// packets for it (it found a bad one, or failed).
func (l *lineBuffer) stuck(t *testing.T, c *exec.Cmd, stderr *strings.Builder, seq uint64) {
	t.Helper()
	select {
	case <-l.ended:
		err := c.Wait()
		t.Fatalf("crossread ended at the producer's seq %d: %v\n%s\n%s", seq, err, strings.Join(l.out, "\n"), stderr)
	default:
	}
}

// crossResult waits for crossread and checks that it read all n packets.
func crossResult(t *testing.T, c *exec.Cmd, stderr *strings.Builder, lines *lineBuffer, n int) [5]uint64 {
	t.Helper()
	<-lines.ended
	out := lines.out
	err := c.Wait()
	if err != nil || len(out) != 2 || out[0] != fmt.Sprintf("ok %d", n) {
		t.Fatalf("crossread: %v\n%s\n%s", err, strings.Join(out, "\n"), stderr)
	}
	return shimStats(t, stderr.String())
}

// TestCrossZcProducer: zc's producer (Cluster.Producer, SendBurstWait:
// lossless) sends packets of every length from 1 byte to the whole
// buffer, with metadata (a time stamp; other fields only) and without, in
// bursts of 1 to 61 into a 64-slot queue (full most of the time), pausing
// now and then so that the reader goes to sleep and is woken, with ring
// indices that cross 2^32. The C reader gets every packet intact and in
// order, and the producer sees every buffer returned, none it did not
// lend.
func TestCrossZcProducer(t *testing.T) {
	e := newEnv(t)
	const n = 40000
	c := e.newRegion(81)
	b := c.Bytes()
	bufSize := uint32(2048)
	start := uint32(0xffffffff - 20000)
	ql := setIndices(t, b, 0, start)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	rd, stderr, lines := e.crossReader(ctx, "zc:81@0", n, bufSize)

	prod, err := c.Producer(0)
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()
	if got := prod.BufferSize(); uint32(got) != bufSize {
		t.Fatalf("buffer size %d, want %d", got, bufSize)
	}
	pk := make([]zc.Packet, 64)
	pause := uint64(10000)
	for seq := uint64(0); seq < n; {
		if seq >= pause {
			pause += 10000
			time.Sleep(300 * time.Millisecond) // the reader runs dry and sleeps
		}
		want := min(int(1+seq%61), n-int(seq))
		k, err := prod.Alloc(pk[:want])
		if err != nil {
			t.Fatal(err)
		}
		if k == 0 {
			lines.stuck(t, rd, stderr, seq)
			prod.Pool().Reclaim()
			time.Sleep(50 * time.Microsecond)
			continue
		}
		for i := range pk[:k] {
			s := seq + uint64(i)
			p := &pk[i]
			p.Data = p.Data[:crossLen(s, bufSize)]
			crossFill(s, p.Data)
			p.Timestamp, p.Hash, p.Port, p.Seq, p.Flags = crossTime(s), 0, 0, 0, uint32(s)&0xffff
			if s%3 == 1 { // metadata without a time stamp
				p.Hash, p.Port, p.Seq = uint32(s), 7, uint32(s)
			}
		}
		sctx, scancel := context.WithTimeout(ctx, 5*time.Second)
		sent, err := prod.SendBurstWait(sctx, pk[:k])
		scancel()
		lines.stuck(t, rd, stderr, seq)
		if err != nil || sent != k {
			t.Fatalf("send at seq %d: %d of %d: %v\n%s", seq, sent, k, err, stderr)
		}
		seq += uint64(k)
	}
	st := crossResult(t, rd, stderr, lines, n)
	if st != [5]uint64{n, n, 0, 0, 0} {
		t.Errorf("shim statistics %v, want %d received and passed, nothing filtered, bad or dropped", st, n)
	}
	if !strings.Contains(stderr.String(), ", sleeps 0") && strings.Contains(stderr.String(), ", sleeps ") {
		t.Logf("the reader slept and was woken: %s", strings.TrimSpace(stderr.String()))
	} else {
		t.Errorf("the reader never slept on the futex across the producer's pauses:\n%s", stderr)
	}

	// Every buffer back, nothing the producer did not lend.
	prod.Pool().Reclaim()
	qs := prod.Stats()
	if prod.Outstanding() != 0 || qs.BadReturns != 0 || qs.Reclaimed != n || qs.Sent != n || qs.Bad != 0 {
		t.Errorf("producer: outstanding %d, stats %+v; want 0 outstanding, %d sent and reclaimed, no bad returns", prod.Outstanding(), qs, n)
	}
	if end := binary.LittleEndian.Uint32(b[ql.DataRing:]); end != start+n || end > start {
		t.Errorf("data ring producer index %#x, want %#x (past the wrap)", end, start+n)
	}
}

// TestCrossDescriptors: a producer written on ivshmem's rings directly
// (as zc's own producer is, but free to place a packet anywhere in its
// buffer) sends packets at offsets from 0 to the end of the buffer
// (offset+length == buffer size too), flags with and without the metadata
// bit, application flags set, handles out of order, indices that cross
// 2^32; it answers the reader's wake word as zc's producer does. Every
// packet reaches the C reader intact, and every handle comes back once.
func TestCrossDescriptors(t *testing.T) {
	e := newEnv(t)
	const n = 30000
	c := e.newRegion(82)
	b := c.Bytes()
	l, err := ivshmem.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	start := uint32(0xffffffff - 5000)
	ql := setIndices(t, b, 0, start)
	prod, err := ivshmem.NewDescProducer(b, ql.DataRing, ql.Slots)
	if err != nil {
		t.Fatal(err)
	}
	rets, err := ivshmem.NewRingConsumer(b, ql.RetRing, ql.Slots)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	rd, stderr, lines := e.crossReader(ctx, "zc:82@0", n, l.BufSize)

	// The producer's buffers: the engine pool's, handed out in an order
	// that is not the handles' (a stack, refilled by returns).
	free := make([]uint32, 0, l.NumBufs)
	for h := uint32(0); h < l.NumBufs; h++ {
		free = append(free, (h*7)%l.NumBufs)
	}
	lent := make([]bool, l.NumBufs)
	var badReturns, returned, outstanding int
	hs := make([]uint32, 256)
	reclaim := func() int {
		k, err := rets.Dequeue(hs)
		if err != nil {
			t.Fatal(err)
		}
		for _, h := range hs[:k] {
			if h >= l.NumBufs || !lent[h] {
				badReturns++
				continue
			}
			lent[h] = false
			free = append(free, h)
			returned++
			outstanding--
		}
		return k
	}
	for seq := uint64(0); seq < n; {
		// At most a ring's worth lent (in the ring, held, or on the way
		// back), so the return ring never overflows (ivshmem/doc.go).
		if len(free) == 0 || outstanding >= int(ql.Slots) {
			if reclaim() == 0 {
				lines.stuck(t, rd, stderr, seq)
				time.Sleep(20 * time.Microsecond)
			}
			continue
		}
		h := free[len(free)-1]
		size := crossLen(seq, l.BufSize)
		off := uint32(seq*13) % (l.BufSize - size + 1)
		if seq%5 == 0 {
			off = l.BufSize - size // flush with the buffer's end
		}
		crossFill(seq, l.Buffer(b, h)[off:off+size])
		d := ivshmem.Desc{Handle: h, Len: size, Off: off, Flags: uint32(seq) & 0x7fff}
		if ts := crossTime(seq); ts != 0 {
			binary.LittleEndian.PutUint64(l.Meta(b, h)[ivshmem.MetaOffTime:], uint64(ts))
			d.Flags |= ivshmem.DescMeta
		}
		k, err := prod.EnqueueDescs([]ivshmem.Desc{d})
		if err != nil {
			t.Fatal(err)
		}
		if k == 0 { // the ring is full
			if reclaim() == 0 {
				lines.stuck(t, rd, stderr, seq)
				time.Sleep(20 * time.Microsecond)
			}
			continue
		}
		if prod.Waiting() == ivshmem.WakeFutex {
			prod.Wake()
		}
		free = free[:len(free)-1]
		lent[h] = true
		outstanding++
		seq++
	}
	st := crossResult(t, rd, stderr, lines, n)
	if st != [5]uint64{n, n, 0, 0, 0} {
		t.Errorf("shim statistics %v, want %d received and passed, nothing filtered, bad or dropped", st, n)
	}
	for reclaim() > 0 {
	}
	if returned != n || badReturns != 0 {
		t.Errorf("%d of %d buffers returned, %d bad returns", returned, n, badReturns)
	}
	for h, out := range lent {
		if out {
			t.Errorf("buffer %d never came back", h)
		}
	}
}
