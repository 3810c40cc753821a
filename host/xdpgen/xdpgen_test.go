package xdpgen

import (
	"bytes"
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/zcfabric/zc/host/afxdp"
	"github.com/zcfabric/zc/internal/netns"
	"github.com/zcfabric/zc/internal/testgate"
	"golang.org/x/sys/unix"
)

// pair makes a veth pair whose A end has NAPI (an XDP program that passes
// every frame, as the AF_XDP program does with no socket bound), so frames
// sent out of B with ndo_xdp_xmit reach A's stack and its packet sockets.
func pair(t testing.TB) *netns.Pair {
	t.Helper()
	testgate.NetAdmin(t)
	p := netns.New(t, netns.Config{})
	err := p.A.Do(func() error {
		prog, err := afxdp.Attach(p.A.Ifname, afxdp.ProgramOptions{Mode: afxdp.XDPDriver})
		if err != nil {
			return err
		}
		t.Cleanup(func() { prog.Close() })
		return nil
	})
	if err != nil {
		t.Skipf("requires native XDP on veth: %v", err)
	}
	return p
}

// openIn opens a Flood on B's interface from inside B's namespace; the
// caller must Send from there too.
func openIn(t testing.TB, e netns.End, frame []byte, batch int) *Flood {
	t.Helper()
	var f *Flood
	err := e.Do(func() (err error) {
		f, err = Open(Config{Ifname: e.Ifname, Frame: frame, Batch: batch})
		return err
	})
	if err != nil {
		t.Skipf("requires BPF and XDP live frames (Linux >= 5.18): %v", err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// TestFloodArrivesExactlyOnce: every frame the generator counts arrives at
// the peer's packet socket, byte for byte, and no more than that. The flood
// is paced (Run sends in bursts of a tenth of a second's worth), and the
// socket's buffer holds a whole burst.
func TestFloodArrivesExactlyOnce(t *testing.T) {
	p := pair(t)
	frame := netns.AppendFrame(nil, p.A.MAC, p.B.MAC, 7, 128)
	f := openIn(t, p.B, frame, 16)
	rx, err := p.A.OpenRaw(netns.EtherType)
	if err != nil {
		t.Fatal(err)
	}
	defer rx.Close()
	if err := rx.SetReadBuffer(64 << 20); err != nil {
		t.Fatal(err)
	}

	const n = 3000
	errc := make(chan error, 1)
	go func() {
		errc <- p.B.Do(func() error {
			sent, err := f.Run(context.Background(), n, 30000, 0)
			if err == nil && sent != n {
				err = errors.New("short run")
			}
			return err
		})
	}()
	buf := make([]byte, 2048)
	got := 0
	for {
		k, err := rx.Recv(buf, 2*time.Second)
		if errors.Is(err, unix.EAGAIN) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf[:k], frame) {
			t.Fatalf("frame %d: got % x, want % x", got, buf[:min(k, 32)], frame[:32])
		}
		got++
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	sent, err := f.Sent()
	if err != nil {
		t.Fatal(err)
	}
	if sent != n || got != n {
		t.Fatalf("sent %d, received %d: want %d each", sent, got, n)
	}
}

// TestFloodStopsAtDeadline: with no count, Run ends at its duration and at
// a cancelled context, and reports what it sent.
func TestFloodStopsAtDeadline(t *testing.T) {
	p := pair(t)
	f := openIn(t, p.B, netns.AppendFrame(nil, p.A.MAC, p.B.MAC, 1, 60), 0)
	var sent uint64
	start := time.Now()
	err := p.B.Do(func() (err error) {
		sent, err = f.Run(context.Background(), 0, 0, 200*time.Millisecond)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el < 200*time.Millisecond || el > 10*time.Second {
		t.Errorf("Run with a 200ms duration took %v", el)
	}
	if sent == 0 {
		t.Error("sent nothing in 200ms")
	}
	if c, _ := f.Sent(); c != sent {
		t.Errorf("Run reported %d, counter says %d", sent, c)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err = p.B.Do(func() (err error) {
		sent, err = f.Run(ctx, 0, 0, 0)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if c, _ := f.Sent(); c != sent {
		t.Errorf("cancelled Run reported %d, counter says %d", sent, c)
	}
}

// TestSendExactUnderSignals: signals that interrupt the kernel's loop
// (here SIGURG, the Go runtime's own preemption signal, sent to the
// sending thread every 200 µs) do not change what Send sends: exactly n
// frames, no more (cilium/ebpf's retry would start the whole run again)
// and no fewer.
func TestSendExactUnderSignals(t *testing.T) {
	p := pair(t)
	f := openIn(t, p.B, netns.AppendFrame(nil, p.A.MAC, p.B.MAC, 1, 60), 0)
	const n = 1 << 20
	var kills atomic.Int64
	err := p.B.Do(func() error {
		tid := unix.Gettid()
		stop := make(chan struct{})
		storm := make(chan struct{})
		go func() {
			defer close(storm)
			for {
				select {
				case <-stop:
					return
				default:
				}
				if unix.Tgkill(unix.Getpid(), tid, unix.SIGURG) == nil {
					kills.Add(1)
				}
				time.Sleep(200 * time.Microsecond)
			}
		}()
		err := f.Send(n)
		close(stop)
		<-storm
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	sent, err := f.Sent()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d signals during the send", kills.Load())
	if sent != n {
		t.Fatalf("Send(%d) under signals sent %d", n, sent)
	}
}

// TestRunInterruptedByCancel: an unpaced, unbounded Run (calls of 50 ms
// or more each) returns soon after its context is cancelled, with the
// exact count: the call in progress is interrupted, not waited for. The
// 10 s bound is a hang guard; the time taken is logged.
func TestRunInterruptedByCancel(t *testing.T) {
	p := pair(t)
	f := openIn(t, p.B, netns.AppendFrame(nil, p.A.MAC, p.B.MAC, 1, 60), 0)
	ctx, cancel := context.WithCancel(context.Background())
	type result struct {
		sent uint64
		err  error
		at   time.Time
	}
	done := make(chan result, 1)
	go func() {
		var r result
		r.err = p.B.Do(func() (err error) {
			r.sent, err = f.Run(ctx, 0, 0, 0)
			return err
		})
		r.at = time.Now()
		done <- r
	}()
	time.Sleep(500 * time.Millisecond) // long enough for Run to grow its calls
	cancelled := time.Now()
	cancel()
	select {
	case r := <-done:
		if r.err != nil {
			t.Fatal(r.err)
		}
		t.Logf("Run returned %v after the cancel, %d frames sent", r.at.Sub(cancelled), r.sent)
		if c, _ := f.Sent(); c != r.sent || r.sent == 0 {
			t.Errorf("Run reported %d, counter says %d; want the same, not 0", r.sent, c)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return within 10 s of its context's cancel")
	}
}

// TestOpenRejects: bad input is refused with the interface named.
func TestOpenRejects(t *testing.T) {
	for _, c := range []struct {
		name string
		cfg  Config
	}{
		{"short frame", Config{Ifname: "lo", Frame: make([]byte, 13)}},
		{"huge frame", Config{Ifname: "lo", Frame: make([]byte, 4000)}},
		{"batch", Config{Ifname: "lo", Frame: make([]byte, 60), Batch: MaxBatch + 1}},
		{"no such interface", Config{Ifname: "zc-nonexistent0", Frame: make([]byte, 60)}},
	} {
		_, err := Open(c.cfg)
		if err == nil {
			t.Errorf("%s: Open succeeded", c.name)
			continue
		}
		if !bytes.Contains([]byte(err.Error()), []byte(c.cfg.Ifname)) {
			t.Errorf("%s: error %q does not name %s", c.name, err, c.cfg.Ifname)
		}
	}
}
