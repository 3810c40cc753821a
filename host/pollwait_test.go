package host

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/zcfabric/zc"
	"github.com/zcfabric/zc/internal/netns"
	"github.com/zcfabric/zc/internal/testgate"
)

// TestEngineSleepsOnQuietWire: an engine capturing from AF_PACKET and
// AF_XDP sockets on an idle veth sleeps in poll(2) (PollSleeps counts it),
// is woken by the kernel when frames arrive (every one is delivered), and
// a stop wakes it at once from its sleep.
func TestEngineSleepsOnQuietWire(t *testing.T) {
	for _, spec := range []string{"afpacket:IF", "afxdp:IF?xdp=generic"} {
		t.Run(strings.Split(spec, ":")[0], func(t *testing.T) {
			testgate.NetAdmin(t)
			p := netns.New(t, netns.Config{})
			c := newCluster(t, 512)
			srcs := openSources(t, p.A, strings.ReplaceAll(spec, "IF", p.A.Ifname), SourceOptions{Cluster: c})
			ctl := make(chan func())
			cons, stop, eng := startEngineCtl(t, c, srcs, ctl)
			defer stop()
			deadline := time.Now().Add(20 * time.Second)
			for eng.PollSleeps() == 0 && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			if eng.PollSleeps() == 0 {
				t.Fatal("the engine never slept in poll(2) on an idle wire")
			}
			slept := eng.PollSleeps()
			tx, err := p.B.OpenRaw(netns.EtherType)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Close()
			const total = 50
			var buf []byte
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			pkts := make([]zc.Packet, 16)
			for seq := uint32(0); seq < total; seq++ {
				buf = netns.AppendFrame(buf[:0], p.A.MAC, p.B.MAC, seq, 200)
				if err := tx.Send(buf); err != nil {
					t.Fatal(err)
				}
				// One at a time, with the engine asleep between them
				// (other frames the kernel sends on the link are skipped).
				for {
					n, err := cons.RecvBurstWait(ctx, pkts[:1])
					if err != nil || n != 1 {
						t.Fatalf("frame %d: %d, %v", seq, n, err)
					}
					got, ok, err := netns.CheckFrame(pkts[0].Data)
					cons.Release(pkts[:1]...)
					if !ok {
						continue
					}
					if err != nil || got != seq {
						t.Fatalf("frame %d: got %d (%v)", seq, got, err)
					}
					break
				}
				time.Sleep(5 * time.Millisecond)
			}
			if eng.PollSleeps() <= slept {
				t.Fatalf("no poll sleeps between frames (%d then %d)", slept, eng.PollSleeps())
			}
			// A control function sent with Wake reaches the sleeping
			// engine at once, not at the end of its poll slice (10 s).
			// Asleep in a whole slice: one poll sleep all along 500 ms (the
			// count goes up as each sleep starts; the sleeps right after
			// frames last up to publishEvery).
			for asleep := time.Now().Add(20 * time.Second); ; {
				slept = eng.PollSleeps()
				time.Sleep(2 * publishEvery)
				if eng.PollSleeps() == slept {
					break
				}
				if time.Now().After(asleep) {
					t.Fatal("the engine never slept 500 ms in one poll(2) on the quiet wire")
				}
			}
			took := time.After(5 * time.Second)
			for sent := false; !sent; {
				eng.Wake()
				select {
				case ctl <- func() {}:
					sent = true
				case <-time.After(20 * time.Millisecond):
				case <-took:
					t.Fatalf("the engine asleep in poll(2) took no control function in 5s (poll slice %v)", pollSlice)
				}
			}
			// A stop wakes the sleeping engine (stop waits for Run).
			time.Sleep(50 * time.Millisecond)
			stopped := make(chan struct{})
			go func() { stop(); close(stopped) }()
			select {
			case <-stopped:
			case <-time.After(5 * time.Second):
				t.Fatalf("the engine did not stop from its poll sleep in 5s (poll slice %v)", pollSlice)
			}
		})
	}
}

// TestEngineSleepPublishesCounters: an engine asleep on a quiet socket
// publishes what its sources counted soon (within publishEvery), not at
// the end of its poll slice: here frames its filter dropped, which
// deliver no packet.
func TestEngineSleepPublishesCounters(t *testing.T) {
	testgate.NetAdmin(t)
	p := netns.New(t, netns.Config{})
	c := newCluster(t, 512)
	srcs := openSources(t, p.A, "afpacket:"+p.A.Ifname, SourceOptions{Cluster: c, BPF: "1\n6 0 0 0"}) // drop all
	_, stop, eng := startEngineWith(t, c, srcs)
	defer stop()
	for deadline := time.Now().Add(20 * time.Second); eng.PollSleeps() == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the engine never slept in poll(2) on an idle wire")
		}
	}
	tx, err := p.B.OpenRaw(netns.EtherType)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Close()
	const total = 5
	var buf []byte
	for seq := uint32(0); seq < total; seq++ {
		buf = netns.AppendFrame(buf[:0], p.A.MAC, p.B.MAC, seq, 200)
		if err := tx.Send(buf); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for eng.SourceStats()[0].Filtered < total {
		if time.Now().After(deadline) {
			t.Fatalf("source counters published after 5s: %+v, want %d filtered (poll slice %v)", eng.SourceStats()[0], total, pollSlice)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
