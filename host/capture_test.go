package host

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/zcfabric/zc"
	"github.com/zcfabric/zc/internal/netns"
	"github.com/zcfabric/zc/internal/testgate"
)

// newCluster creates a one-queue cluster in /dev/shm with a random id and
// closes it at cleanup.
func newCluster(t testing.TB, buffers int) *zc.Cluster {
	t.Helper()
	cfg := zc.Config{ID: 0x7a000000 | rand.Uint32N(1<<24), Queues: 1, QueueLen: 1024, Buffers: buffers, Backing: zc.BackingShm}
	c, err := zc.CreateCluster(cfg)
	if err != nil {
		t.Fatalf("CreateCluster: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// openSources runs ParseSource inside end e's namespace and closes the
// sources at cleanup.
func openSources(t testing.TB, e netns.End, spec string, opts SourceOptions) []Source {
	t.Helper()
	var srcs []Source
	err := e.Do(func() (err error) {
		srcs, err = ParseSource(spec, opts)
		return err
	})
	if err != nil {
		t.Fatalf("ParseSource(%q): %v", spec, err)
	}
	t.Cleanup(func() {
		for _, s := range srcs {
			if err := s.Close(); err != nil {
				t.Errorf("Close %s: %v", s.Name(), err)
			}
		}
	})
	return srcs
}

// otherType is the EtherType of frames a filter must reject.
const otherType = netns.EtherType + 1

type captureCase struct {
	spec    string // with IF for the interface
	mode    string // substring of the source's Mode()
	filter  string // tcpdump -ddd program, or ""
	kfilter bool
	others  int // frames of otherType interleaved (the filter drops them)
	xdpLink string
}

func TestCaptureAFXDPNativeCopy(t *testing.T) {
	testCapture(t, captureCase{spec: "afxdp:IF?mode=copy&xdp=native", mode: "AF_XDP copy/driver", xdpLink: "xdp "})
}

func TestCaptureAFXDPGeneric(t *testing.T) {
	testCapture(t, captureCase{spec: "afxdp:IF?xdp=generic", mode: "AF_XDP copy/generic", xdpLink: "xdpgeneric"})
}

func TestCaptureAFPacket(t *testing.T) {
	testCapture(t, captureCase{spec: "afpacket:IF", mode: "AF_PACKET"})
}

// TestCaptureBest: a bare interface name picks AF_XDP (copy on veth).
func TestCaptureBest(t *testing.T) {
	testCapture(t, captureCase{spec: "IF", mode: "AF_XDP copy"})
}

// filterTestType is `tcpdump -ddd 'ether proto 0x88b5'`.
const filterTestType = `4
40 0 0 12
21 0 1 34997
6 0 0 262144
6 0 0 0
`

func TestCaptureFilterAFXDP(t *testing.T) {
	testCapture(t, captureCase{spec: "afxdp:IF?xdp=generic", mode: "AF_XDP", filter: filterTestType, others: 300})
}

func TestCaptureFilterAFPacket(t *testing.T) {
	testCapture(t, captureCase{spec: "afpacket:IF", mode: "user space", filter: filterTestType, others: 300})
}

func TestCaptureFilterAFPacketKernel(t *testing.T) {
	testCapture(t, captureCase{spec: "afpacket:IF", mode: "in the kernel", filter: filterTestType, kfilter: true, others: 300})
}

// testCapture sends 2000 distinct test frames (and tc.others frames of
// another EtherType) from the peer namespace into the source's interface
// and checks, through a consumer attached with zc.Open, that each test
// frame arrives exactly once with the right bytes, and that the source's
// counters agree.
func testCapture(t *testing.T, tc captureCase) {
	testgate.NetAdmin(t)
	const (
		total  = 2000
		window = 64
	)
	p := netns.New(t, netns.Config{})
	c := newCluster(t, 512) // buffers recycle ~4 times
	opts := SourceOptions{Cluster: c, KernelFilter: tc.kfilter}
	if tc.filter != "" {
		f, err := ParseFilter(tc.filter)
		if err != nil {
			t.Fatal(err)
		}
		opts.Filter = f
	}
	srcs := openSources(t, p.A, strings.ReplaceAll(tc.spec, "IF", p.A.Ifname), opts)
	if len(srcs) != 1 {
		t.Fatalf("%d sources, want 1", len(srcs))
	}
	src := srcs[0]
	mode := src.(interface{ Mode() string }).Mode()
	t.Logf("%s: %s", src.Name(), mode)
	if !strings.Contains(mode, tc.mode) {
		t.Fatalf("Mode() = %q, want %q in it", mode, tc.mode)
	}
	if tc.xdpLink != "" {
		out, err := netns.LinkShow(p.A.NS, p.A.Ifname)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out, tc.xdpLink) {
			t.Errorf("ip link shows no %q program:\n%s", tc.xdpLink, out)
		}
	}

	cons, stopEngine := startEngine(t, c, srcs)
	defer stopEngine()

	tx, err := p.B.OpenRaw(netns.EtherType)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Close()
	var received atomic.Int64
	sendErr := make(chan error, 1)
	go func() {
		var buf []byte
		deadline := time.Now().Add(20 * time.Second)
		other := 0
		for seq := uint32(0); seq < total; seq++ {
			for int64(seq)-received.Load() >= window {
				if time.Now().After(deadline) {
					sendErr <- errors.New("receiver stalled")
					return
				}
				time.Sleep(50 * time.Microsecond)
			}
			if other < tc.others && seq%5 == 0 {
				buf = netns.AppendFrame(buf[:0], p.A.MAC, p.B.MAC, seq, 100)
				buf[12], buf[13] = byte(otherType>>8), byte(otherType&0xff)
				if err := tx.Send(buf); err != nil {
					sendErr <- err
					return
				}
				other++
			}
			buf = netns.AppendFrame(buf[:0], p.A.MAC, p.B.MAC, seq, netns.FrameLen(seq, 1400))
			if err := tx.Send(buf); err != nil {
				sendErr <- err
				return
			}
		}
		sendErr <- nil
	}()

	seen := make([]int, total)
	pkts := make([]zc.Packet, 64)
	var foreign, bad int
	deadline := time.Now().Add(30 * time.Second)
	for received.Load() < total && time.Now().Before(deadline) {
		n, err := cons.RecvBurst(pkts)
		if err != nil {
			t.Fatalf("RecvBurst: %v", err)
		}
		if n == 0 {
			select {
			case err := <-sendErr:
				if err != nil {
					t.Fatalf("send: %v", err)
				}
				sendErr <- nil
			default:
			}
			time.Sleep(20 * time.Microsecond)
			continue
		}
		for i := range pkts[:n] {
			seq, ok, err := netns.CheckFrame(pkts[i].Data)
			switch {
			case err != nil:
				if bad++; bad < 5 {
					t.Errorf("frame with wrong bytes: %v", err)
				}
			case !ok:
				foreign++
			case seq >= total:
				t.Errorf("sequence %d out of range", seq)
			default:
				seen[seq]++
				received.Add(1)
			}
			if pkts[i].Timestamp == 0 {
				t.Errorf("packet %d: no timestamp", i)
			}
		}
		if err := cons.Release(pkts[:n]...); err != nil {
			t.Fatal(err)
		}
	}
	if err := <-sendErr; err != nil {
		t.Fatalf("send: %v", err)
	}
	for seq, k := range seen {
		if k != 1 {
			t.Errorf("frame %d seen %d times", seq, k)
		}
	}
	if tc.filter != "" && foreign != 0 {
		t.Errorf("%d frames of another EtherType passed the filter", foreign)
	}
	// The frames of otherType are sent before the test frames that follow
	// them, so they have all been through the source by now.
	time.Sleep(20 * time.Millisecond)
	stopEngine() // Stats is not safe against a running Recv
	st := src.Stats()
	t.Logf("stats: %+v, foreign %d", st, foreign)
	if st.Packets < total {
		t.Errorf("source counted %d packets, want >= %d", st.Packets, total)
	}
	if st.KernelDrops != 0 {
		t.Errorf("kernel dropped %d", st.KernelDrops)
	}
	switch {
	case tc.filter != "" && !tc.kfilter:
		if st.Filtered != uint64(tc.others) {
			t.Errorf("Filtered = %d, want %d", st.Filtered, tc.others)
		}
	case st.Filtered != 0:
		t.Errorf("Filtered = %d, want 0", st.Filtered)
	}
}

// startEngine runs an Engine over srcs into queue 0 of c (lossless,
// round-robin), attaches a consumer to that queue, and returns once the
// sources stocked their kernel rings: a frame that arrives before that
// is dropped by the kernel (counted), and the windowed senders of these
// tests would wait for it forever. stop ends the engine and reports its
// error; it may be called more than once.
func startEngine(t *testing.T, c *zc.Cluster, srcs []Source) (cons *zc.Queue, stop func()) {
	t.Helper()
	cons, stop, _ = startEngineWith(t, c, srcs)
	return cons, stop
}

// startEngineWith is startEngine, also returning the running Engine.
func startEngineWith(t *testing.T, c *zc.Cluster, srcs []Source) (cons *zc.Queue, stop func(), eng *Engine) {
	t.Helper()
	return startEngineCtl(t, c, srcs, nil)
}

// startEngineCtl is startEngineWith with the engine's Control channel.
func startEngineCtl(t *testing.T, c *zc.Cluster, srcs []Source, ctl chan func()) (cons *zc.Queue, stop func(), eng *Engine) {
	t.Helper()
	prod, err := c.Producer(0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { prod.Close() })
	bal, err := zc.NewBalancer([]*zc.Queue{prod}, zc.ModeRoundRobin, nil, zc.Wait)
	if err != nil {
		t.Fatal(err)
	}
	cons, err = zc.Open(fmt.Sprintf("zc:%d@0", c.ID()))
	if err != nil {
		t.Fatalf("zc.Open: %v", err)
	}
	t.Cleanup(func() { cons.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	engDone := make(chan error, 1)
	started := make(chan struct{})
	eng = &Engine{Pool: c.Pool(), Sources: srcs, Balancer: bal, Control: ctl, OnStart: func() { close(started) }}
	go func() {
		_, err := eng.Run(ctx)
		engDone <- err
	}()
	stop = func() {
		if cancel != nil {
			cancel()
			cancel = nil
			if err := <-engDone; err != nil {
				t.Errorf("engine: %v", err)
			}
		}
	}
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		stop()
		t.Fatal("engine did not start")
	}
	return cons, stop, eng
}
