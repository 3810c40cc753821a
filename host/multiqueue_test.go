package host

import (
	"strings"
	"testing"
	"time"

	"github.com/zcfabric/zc"
	"github.com/zcfabric/zc/internal/netns"
	"github.com/zcfabric/zc/internal/testgate"
)

// phase sends n test frames from the peer on its TX queue q, which veth
// delivers to RX queue q; src is the index of the source that must
// receive them, or -1 when no socket is bound to q (the XDP program passes
// them to the kernel stack, where a raw socket sees them).
type phase struct{ q, n, src int }

// TestCaptureAFXDPQueue2: afxdp:IF@2 on a 4-queue veth receives exactly the
// frames that arrive on RX queue 2, and none of those on queue 0.
func TestCaptureAFXDPQueue2(t *testing.T) {
	testQueues(t, []string{"afxdp:IF@2"}, []phase{{2, 1000, 0}, {0, 300, -1}, {2, 500, 0}})
}

// TestCaptureAFXDPTwoQueueFlags: two separate ParseSource calls (zchost run
// -i afxdp:IF@0 -i afxdp:IF@1) share one XDP program, each socket gets its
// queue's frames exactly once, a queue with no socket goes to the stack.
func TestCaptureAFXDPTwoQueueFlags(t *testing.T) {
	testQueues(t, []string{"afxdp:IF@0", "afxdp:IF@1"},
		[]phase{{0, 800, 0}, {1, 800, 1}, {3, 200, -1}, {0, 300, 0}, {1, 100, 1}})
}

// TestCaptureAFXDPQueueList: the comma form, afxdp:IF@1,IF@3.
func TestCaptureAFXDPQueueList(t *testing.T) {
	testQueues(t, []string{"afxdp:IF@1,IF@3"},
		[]phase{{3, 500, 1}, {1, 500, 0}, {2, 100, -1}})
}

// TestCaptureAFXDPQueueGeneric: generic (SKB) XDP on veth sees a frame
// that left the peer on TX queue q on RX queue q-1 (q 0 stays 0): veth
// leaves the TX queue in skb->queue_mapping, which the generic XDP path
// reads as "RX queue recorded + 1" (netif_get_rxqueue). Driver-mode XDP
// uses the veth RX queue itself, q. This pins that kernel behaviour.
func TestCaptureAFXDPQueueGeneric(t *testing.T) {
	testQueues(t, []string{"afxdp:IF@0,IF@2?xdp=generic"},
		[]phase{{3, 500, 1}, {1, 500, 0}, {0, 200, 0}, {2, 100, -1}})
}

func testQueues(t *testing.T, specs []string, phases []phase) {
	testgate.NetAdmin(t)
	const window = 64
	p := netns.New(t, netns.Config{Queues: 4})
	c := newCluster(t, 1024)
	var srcs []Source
	for _, spec := range specs {
		srcs = append(srcs, openSources(t, p.A, strings.ReplaceAll(spec, "IF", p.A.Ifname), SourceOptions{Cluster: c})...)
	}
	var shared *sharedProgram
	for i, s := range srcs {
		a, ok := s.(*AFXDP)
		if !ok {
			t.Fatalf("source %d is %T, want *AFXDP", i, s)
		}
		t.Logf("%s: %s", a.Name(), a.Mode())
		if i == 0 {
			shared = a.shared
		}
		if a.shared == nil || a.shared != shared {
			t.Fatalf("source %s does not share the first source's XDP program", a.Name())
		}
	}
	if shared.refs != len(srcs) {
		t.Errorf("shared program has %d references, want %d", shared.refs, len(srcs))
	}
	out, err := netns.LinkShow(p.A.NS, p.A.Ifname)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(out, "prog/xdp id"); n != 1 {
		t.Errorf("%d XDP programs attached, want 1:\n%s", n, out)
	}

	cons, stopEngine := startEngine(t, c, srcs)
	defer stopEngine()

	tx, err := p.B.OpenRaw(netns.EtherType)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Close()
	stack, err := p.A.OpenRaw(netns.EtherType) // frames XDP passed on
	if err != nil {
		t.Fatal(err)
	}
	defer stack.Close()

	total := 0
	for _, ph := range phases {
		total += ph.n
	}
	seen := make([]int, total)   // by the consumer
	passed := make([]int, total) // by the raw socket on the stack
	wantBySrc := make([]uint64, len(srcs))
	pkts := make([]zc.Packet, 64)
	rbuf := make([]byte, 4096)
	var buf []byte
	seq := 0
	for _, ph := range phases {
		if err := p.B.SteerTX(ph.q); err != nil {
			t.Fatal(err)
		}
		got := 0
		// take reads what has arrived where this phase's frames go.
		take := func() {
			if ph.src < 0 {
				n, err := stack.Recv(rbuf, 100*time.Millisecond)
				if err != nil {
					return // nothing yet
				}
				if s, ok, err := netns.CheckFrame(rbuf[:n]); ok && err == nil && int(s) < total {
					passed[s]++
					got++
				} else {
					t.Errorf("stack: unexpected frame (seq %d, ok %v, err %v)", s, ok, err)
				}
				return
			}
			n, err := cons.RecvBurst(pkts)
			if err != nil {
				t.Fatalf("RecvBurst: %v", err)
			}
			for i := range pkts[:n] {
				s, ok, err := netns.CheckFrame(pkts[i].Data)
				if !ok || err != nil || int(s) >= total {
					t.Errorf("consumer: bad frame (seq %d, ok %v, err %v)", s, ok, err)
					continue
				}
				seen[s]++
				got++
			}
			if n > 0 {
				if err := cons.Release(pkts[:n]...); err != nil {
					t.Fatal(err)
				}
			} else {
				time.Sleep(20 * time.Microsecond)
			}
		}
		guard := time.Now().Add(30 * time.Second)
		for i := 0; i < ph.n; i++ {
			for i-got >= window {
				if time.Now().After(guard) {
					t.Fatalf("phase %+v: stalled, %d of %d sent frames arrived", ph, got, i)
				}
				take()
			}
			buf = netns.AppendFrame(buf[:0], p.A.MAC, p.B.MAC, uint32(seq), netns.FrameLen(uint32(seq), 1400))
			if err := tx.Send(buf); err != nil {
				t.Fatal(err)
			}
			seq++
		}
		for got < ph.n {
			if time.Now().After(guard) {
				t.Fatalf("phase %+v: %d of %d frames arrived", ph, got, ph.n)
			}
			take()
		}
		if ph.src >= 0 {
			wantBySrc[ph.src] += uint64(ph.n)
		}
	}
	// Everything sent has arrived at its expected place; now make sure
	// nothing arrived twice or at the other place.
	stopEngine()
	if n, _ := cons.RecvBurst(pkts); n != 0 {
		t.Errorf("%d frames more than sent reached the consumer", n)
	}
	seq = 0
	for _, ph := range phases {
		for range ph.n {
			want, wantPassed := 1, 0
			if ph.src < 0 {
				want, wantPassed = 0, 1
			}
			if seen[seq] != want || passed[seq] != wantPassed {
				t.Errorf("frame %d (queue %d): consumer saw it %d times, stack %d; want %d, %d", seq, ph.q, seen[seq], passed[seq], want, wantPassed)
			}
			seq++
		}
	}
	for i, s := range srcs {
		st := s.Stats()
		t.Logf("%s: %+v", s.Name(), st)
		if st.Packets != wantBySrc[i] || st.KernelDrops != 0 {
			t.Errorf("%s: %d packets, %d kernel drops; want %d, 0", s.Name(), st.Packets, st.KernelDrops, wantBySrc[i])
		}
	}
	for _, s := range srcs {
		if err := s.Close(); err != nil {
			t.Errorf("Close %s: %v", s.Name(), err)
		}
	}
	if out, err = netns.LinkShow(p.A.NS, p.A.Ifname); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out, "prog/xdp") {
		t.Errorf("XDP program still attached after every source closed:\n%s", out)
	}
}
