package host

import (
	"context"
	"errors"
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

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var st TxStats
	go func() {
		var err error
		st, err = Bounce(ctx, srcs[0], c.Pool(), sink)
		done <- err
	}()
	var got atomic.Int64
	sendErr := make(chan error, 1)
	go func() {
		var buf []byte
		deadline := time.Now().Add(20 * time.Second)
		for seq := uint32(0); seq < total; seq++ {
			for int64(seq)-got.Load() >= window {
				if time.Now().After(deadline) {
					sendErr <- errors.New("bounce stalled")
					return
				}
				time.Sleep(20 * time.Microsecond)
			}
			buf = netns.AppendFrame(buf[:0], in.A.MAC, in.B.MAC, seq, netns.FrameLen(seq, 1400))
			if err := tx.Send(buf); err != nil {
				sendErr <- err
				return
			}
		}
		sendErr <- nil
	}()
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
