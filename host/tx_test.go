package host

import (
	"context"
	"errors"
	"math/rand/v2"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/zcfabric/zc"
	"github.com/zcfabric/zc/internal/netns"
	"github.com/zcfabric/zc/internal/testgate"
	"golang.org/x/sys/unix"
)

func openSink(t testing.TB, e netns.End, spec string) Sink {
	t.Helper()
	var s Sink
	if err := e.Do(func() (err error) { s, err = OpenSink(spec); return err }); err != nil {
		t.Fatalf("OpenSink(%q): %v", spec, err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close %s: %v", s.Name(), err)
		}
	})
	return s
}

// observe receives test frames on r until want distinct ones arrived or
// 20 s passed, counting each sequence number, and checks every byte.
func observe(t *testing.T, r *netns.Raw, seen []int, got *atomic.Int64) {
	t.Helper()
	buf := make([]byte, 2048)
	deadline := time.Now().Add(20 * time.Second)
	for got.Load() < int64(len(seen)) && time.Now().Before(deadline) {
		n, err := r.Recv(buf, 100*time.Millisecond)
		if errors.Is(err, unix.EAGAIN) {
			continue
		}
		if err != nil {
			t.Fatalf("recv: %v", err)
		}
		seq, ok, err := netns.CheckFrame(buf[:n])
		if err != nil {
			t.Errorf("frame with wrong bytes: %v", err)
			continue
		}
		if !ok || int(seq) >= len(seen) {
			continue
		}
		seen[seq]++
		got.Add(1)
	}
	for seq, k := range seen {
		if k != 1 {
			t.Errorf("frame %d seen %d times on the peer", seq, k)
		}
	}
}

func TestTransmitAFPacket(t *testing.T) { testTransmit(t, "afpacket:IF", "AF_PACKET") }
func TestTransmitAFXDP(t *testing.T)    { testTransmit(t, "afxdp:IF?mode=copy", "AF_XDP copy") }
func TestTransmitBest(t *testing.T)     { testTransmit(t, "IF", "AF_XDP") }

// testTransmit puts 1000 test frames on a queue and sends them with
// TransmitQueue out of a veth; the peer must see each once, byte-exact.
func testTransmit(t *testing.T, spec, mode string) {
	testgate.NetAdmin(t)
	const total, window = 1000, 32
	p := netns.New(t, netns.Config{})
	c := newCluster(t, 512)
	sink := openSink(t, p.A, strings.ReplaceAll(spec, "IF", p.A.Ifname))
	if !strings.Contains(sink.Mode(), mode) {
		t.Fatalf("Mode() = %q, want %q", sink.Mode(), mode)
	}
	obs, err := p.B.OpenRaw(netns.EtherType)
	if err != nil {
		t.Fatal(err)
	}
	defer obs.Close()
	prod, err := c.Producer(0)
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()
	cons, err := c.Consumer(0)
	if err != nil {
		t.Fatal(err)
	}
	defer cons.Close()

	var got atomic.Int64
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	prodErr := make(chan error, 1)
	go func() { // producer: test frames, at most window ahead of the peer
		pk := make([]zc.Packet, 1)
		for seq := uint32(0); seq < total; {
			if int64(seq)-got.Load() >= window {
				if ctx.Err() != nil {
					prodErr <- ctx.Err()
					return
				}
				time.Sleep(20 * time.Microsecond)
				continue
			}
			n, err := prod.Alloc(pk)
			if err != nil {
				prodErr <- err
				return
			}
			if n == 0 {
				time.Sleep(20 * time.Microsecond)
				continue
			}
			pk[0].Data = netns.AppendFrame(pk[0].Data[:0], p.B.MAC, p.A.MAC, seq, netns.FrameLen(seq, 1400))
			if _, err := prod.SendBurstWait(ctx, pk); err != nil {
				prodErr <- err
				return
			}
			seq++
		}
		prodErr <- nil
	}()
	txDone := make(chan error, 1)
	var st TxStats
	go func() {
		var err error
		st, err = TransmitQueue(ctx, cons, sink, total)
		txDone <- err
	}()
	seen := make([]int, total)
	observe(t, obs, seen, &got)
	if err := <-prodErr; err != nil {
		t.Fatalf("producer: %v", err)
	}
	if err := <-txDone; err != nil {
		t.Fatalf("TransmitQueue: %v", err)
	}
	ss := sink.Stats()
	t.Logf("%s (%s): %+v, loop %+v", sink.Name(), sink.Mode(), ss, st)
	if st.Packets != total || ss.Packets != total {
		t.Errorf("sent %d (sink %d), want %d", st.Packets, ss.Packets, total)
	}
}

// TestBounce receives on one veth (AF_XDP into cluster buffers) and sends
// out of another (AF_PACKET): the peer of the second sees every frame the
// peer of the first sent, once, byte-exact.
func TestBounce(t *testing.T) {
	testgate.NetAdmin(t)
	const total, window = 1000, 32
	in := netns.New(t, netns.Config{})
	out := netns.New(t, netns.Config{})
	c := newCluster(t, 512)
	srcs := openSources(t, in.A, "afxdp:"+in.A.Ifname, SourceOptions{Cluster: c})
	sink := openSink(t, out.A, "afpacket:"+out.A.Ifname)
	obs, err := out.B.OpenRaw(netns.EtherType)
	if err != nil {
		t.Fatal(err)
	}
	defer obs.Close()
	tx, err := in.B.OpenRaw(netns.EtherType)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Close()

	// Stock the AF_XDP fill ring before the first frame is sent: Bounce
	// does on its first Recv, but its goroutine may start late, and the
	// frames that find no buffer are dropped while the sender waits for
	// them (it keeps a window of 32 in flight).
	if p, ok := srcs[0].(primer); ok {
		p.prime(c.Pool())
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var st TxStats
	go func() {
		var err error
		st, err = Bounce(ctx, srcs[0], c.Pool(), sink)
		done <- err
	}()
	var got atomic.Int64
	sendErr := tx.SendWindow(in.A.MAC, in.B.MAC, total, window, &got, 20*time.Second)
	seen := make([]int, total)
	observe(t, obs, seen, &got)
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Bounce: %v", err)
	}
	if err := <-sendErr; err != nil {
		t.Fatalf("send: %v", err)
	}
	t.Logf("bounced %+v; source %+v; sink %+v", st, srcs[0].Stats(), sink.Stats())
	if st.Packets != total {
		t.Errorf("bounced %d, want %d", st.Packets, total)
	}
}

// TestAFXDPSinkTooLongCountedOnce: with the peer down the TX ring fills;
// a too-long frame behind the first frame the ring refused is offered
// again by the caller and must be counted once, not at every offer.
func TestAFXDPSinkTooLongCountedOnce(t *testing.T) {
	testgate.NetAdmin(t)
	p := netns.New(t, netns.Config{})
	c, err := zc.CreateCluster(zc.Config{ID: 0x7a000000 | rand.Uint32N(1<<24), Queues: 1, QueueLen: 64, Buffers: 256, BufferSize: 4096, Backing: zc.BackingShm})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sink := openSink(t, p.A, "afxdp:"+p.A.Ifname+"?mode=copy")
	if out, err := exec.Command("ip", "-n", p.B.NS, "link", "set", p.B.Ifname, "down").CombinedOutput(); err != nil {
		t.Fatalf("ip link set down: %v: %s", err, out)
	}
	pool := c.Pool()
	pkts := make([]zc.Packet, 64)
	if n := pool.Alloc(pkts); n != len(pkts) {
		t.Fatalf("Alloc = %d", n)
	}
	defer pool.Free(pkts)
	tooLong := 0
	for i := range pkts {
		n := 100
		if i%8 == 7 {
			n = 2048 + 1 // longer than the sink's 2048-byte frames
			tooLong++
		}
		pkts[i].Data = pkts[i].Data[:cap(pkts[i].Data)]
		if n > len(pkts[i].Data) {
			t.Skipf("cluster buffers of %d bytes cannot hold a too-long frame", len(pkts[i].Data))
		}
		pkts[i].Data = netns.AppendFrame(pkts[i].Data[:0], p.B.MAC, p.A.MAC, uint32(i), n)
	}
	// Offer the burst until the ring refuses part of it, counting what
	// was taken; then offer the rest again, as sendAll does.
	var offeredTooLong uint64
	full := false
	for round := 0; round < 10000 && !full; round++ {
		taken, err := sink.Send(pkts)
		if err != nil && !errors.Is(err, unix.ENETDOWN) && !errors.Is(err, unix.ENXIO) {
			t.Logf("send: %v", err)
		}
		for _, q := range pkts[:taken] {
			if len(q.Data) > sinkFrameSize {
				offeredTooLong++
			}
		}
		if taken < len(pkts) {
			full = true
			for k := 0; k < 3; k++ { // offer the refused tail again
				again, _ := sink.Send(pkts[taken:])
				for _, q := range pkts[taken : taken+again] {
					if len(q.Data) > sinkFrameSize {
						offeredTooLong++
					}
				}
				taken += again
			}
		}
	}
	if !full {
		t.Skip("the TX ring never filled with the peer down")
	}
	st := sink.Stats()
	t.Logf("stats %+v, too-long frames taken %d", st, offeredTooLong)
	if st.TooLong != offeredTooLong {
		t.Fatalf("TooLong = %d, want %d (each too-long frame taken counted once)", st.TooLong, offeredTooLong)
	}
}
