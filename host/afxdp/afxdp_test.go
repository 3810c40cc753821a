package afxdp

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/zcfabric/zc/internal/netns"
	"github.com/zcfabric/zc/internal/testgate"
	"golang.org/x/sys/unix"
)

const testFrameSize = 2048

// newUMEM maps frames*frameSize bytes of a memfd MAP_SHARED, the way a
// cluster region is mapped, and unmaps it at cleanup.
func newUMEM(t testing.TB, frames int) []byte {
	t.Helper()
	fd, err := unix.MemfdCreate("zc-afxdp-test", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatalf("memfd_create: %v", err)
	}
	defer unix.Close(fd)
	size := frames * testFrameSize
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		t.Fatalf("ftruncate: %v", err)
	}
	mem, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatalf("mmap: %v", err)
	}
	t.Cleanup(func() { unix.Munmap(mem) })
	return mem
}

// openIn opens a socket on end e's interface, inside e's namespace, and
// closes it at cleanup.
func openIn(t testing.TB, e netns.End, umem []byte, opt Options) *Socket {
	t.Helper()
	var s *Socket
	err := e.Do(func() (err error) {
		s, err = Open(e.Ifname, 0, umem, testFrameSize, opt)
		return err
	})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

func TestReceiveCopyDriverXDP(t *testing.T)  { testReceive(t, XDPDriver) }
func TestReceiveCopyGenericXDP(t *testing.T) { testReceive(t, XDPGeneric) }

// testReceive sends 1000 distinct frames from the peer namespace and checks
// that each arrives exactly once with the right bytes, through 128 frames
// recycled via the fill ring.
func testReceive(t *testing.T, xdp XDPMode) {
	testgate.NetAdmin(t)
	const (
		total    = 1000
		poolSize = 128 // frames in circulation: each is reused ~8 times
		window   = 64  // frames the sender may have in flight
	)
	p := netns.New(t, netns.Config{})
	umem := newUMEM(t, poolSize)
	s := openIn(t, p.A, umem, Options{XDP: xdp})
	if got := s.Mode(); got.Bind != BindCopy || got.XDP != xdp {
		t.Fatalf("Mode() = %v, want copy/%v", got, xdp)
	}
	pool := make([]uint64, poolSize)
	for i := range pool {
		pool[i] = uint64(i * testFrameSize)
	}
	if n := s.Fill(pool); n != poolSize {
		t.Fatalf("Fill(%d frames) = %d", poolSize, n)
	}

	tx, err := p.B.OpenRaw(netns.EtherType)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Close()
	var received atomic.Int64
	sendErr := tx.SendWindow(p.A.MAC, p.B.MAC, total, window, &received, 10*time.Second)

	seen := make([]int, total)
	usedFrames := map[uint64]int{}
	descs := make([]Desc, 32)
	var want []byte
	deadline := time.Now().Add(15 * time.Second)
	for received.Load() < total {
		if time.Now().After(deadline) {
			t.Fatalf("received %d of %d frames before the deadline", received.Load(), total)
		}
		if _, err := s.Poll(100 * time.Millisecond); err != nil {
			t.Fatal(err)
		}
		n := s.Receive(descs)
		for _, d := range descs[:n] {
			f := s.Frame(d)
			seq, ok, err := netns.CheckFrame(f)
			if !ok {
				t.Errorf("unexpected frame of %d bytes: % x", len(f), f[:min(len(f), 32)])
			} else if err != nil {
				t.Error(err)
			} else if seq >= total {
				t.Errorf("sequence number %d out of range", seq)
			} else {
				want = netns.AppendFrame(want[:0], p.A.MAC, p.B.MAC, seq, netns.FrameLen(seq, 1400))
				if !bytes.Equal(f, want) {
					t.Errorf("frame %d: got %d bytes, want %d bytes % x...", seq, len(f), len(want), want[:22])
				}
				seen[seq]++
			}
			frame := d.Addr / testFrameSize
			if d.Addr%testFrameSize < unix.XDP_PACKET_HEADROOM {
				t.Errorf("descriptor address %#x: packet starts %d bytes into its frame, want at least XDP_PACKET_HEADROOM",
					d.Addr, d.Addr%testFrameSize)
			}
			usedFrames[frame]++
			pool[0] = frame * testFrameSize
			if s.Fill(pool[:1]) != 1 {
				t.Fatal("fill ring full although we only return frames we got")
			}
		}
		received.Add(int64(n))
	}
	if err := <-sendErr; err != nil {
		t.Fatalf("sender: %v", err)
	}
	for seq, c := range seen {
		if c != 1 {
			t.Errorf("frame %d received %d times, want once", seq, c)
		}
	}
	if len(usedFrames) > poolSize {
		t.Errorf("%d distinct frames used, but only %d were ever filled", len(usedFrames), poolSize)
	}
	reused := 0
	for _, c := range usedFrames {
		if c > 1 {
			reused++
		}
	}
	if reused == 0 {
		t.Errorf("no frame was reused in %d receives over %d frames", total, poolSize)
	}
	st, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	st.TxRingEmptyDescs = 0 // Poll drives TX in copy mode and counts empty looks
	if st != (Stats{}) {
		t.Errorf("Stats() = %+v, want no RX drops after a paced transfer", st)
	}
	t.Logf("mode %v; %d frames over %d distinct UMEM frames; fill ring need_wakeup=%v, TX ring need_wakeup=%v",
		s.Mode(), total, len(usedFrames), s.fill.needWakeup(), s.tx.needWakeup())
}

// TestTransmit sends 500 frames out of a copy-mode socket and checks that
// the peer sees each exactly once with the right bytes, while the frames
// are recycled through the completion ring.
func TestTransmit(t *testing.T) {
	testgate.NetAdmin(t)
	for _, noRX := range []bool{false, true} {
		name := "rx+tx"
		if noRX {
			name = "tx-only"
		}
		t.Run(name, func(t *testing.T) {
			const (
				total    = 500
				poolSize = 64
			)
			p := netns.New(t, netns.Config{})
			umem := newUMEM(t, poolSize)
			s := openIn(t, p.A, umem, Options{NoRX: noRX, XDP: XDPGeneric})
			if noRX && s.Mode().String() != "copy/none" {
				t.Errorf("Mode() = %v, want copy/none for a TX-only socket", s.Mode())
			}
			rx, err := p.B.OpenRaw(netns.EtherType)
			if err != nil {
				t.Fatal(err)
			}
			defer rx.Close()
			// Receive on the peer concurrently so its socket buffer never
			// overflows.
			type result struct {
				seen []int
				err  error
			}
			done := make(chan result, 1)
			// The sender keeps at most window frames unseen by the peer:
			// veth hands frames to the peer's backlog queue, which drops
			// (counted in the peer's rx_dropped) when it overflows.
			const window = 64
			var peerGot atomic.Int64
			go func() {
				seen := make([]int, total)
				buf := make([]byte, 4096)
				var want []byte
				for got := 0; got < total; got++ {
					n, err := rx.Recv(buf, 5*time.Second)
					if err != nil {
						done <- result{seen, fmt.Errorf("peer got %d of %d: %w", got, total, err)}
						return
					}
					seq, ok, err := netns.CheckFrame(buf[:n])
					if !ok || err != nil || seq >= total {
						done <- result{seen, errors.Join(errors.New("bad frame at peer"), err)}
						return
					}
					want = netns.AppendFrame(want[:0], p.B.MAC, p.A.MAC, seq, netns.FrameLen(seq, 1400))
					if !bytes.Equal(buf[:n], want) {
						done <- result{seen, errors.New("frame bytes differ at peer")}
						return
					}
					seen[seq]++
					peerGot.Add(1)
				}
				done <- result{seen, nil}
			}()

			free := make([]uint64, poolSize)
			for i := range free {
				free[i] = uint64(i * testFrameSize)
			}
			descs := make([]Desc, 0, 16)
			comp := make([]uint64, poolSize)
			deadline := time.Now().Add(10 * time.Second)
			for seq := uint32(0); seq < total; {
				if time.Now().After(deadline) {
					t.Fatalf("sent %d of %d before the deadline", seq, total)
				}
				n := s.Complete(comp)
				free = append(free, comp[:n]...)
				descs = descs[:0]
				for len(free) > 0 && len(descs) < cap(descs) && seq < total && int64(seq)-peerGot.Load() < window {
					a := free[len(free)-1]
					free = free[:len(free)-1]
					f := netns.AppendFrame(umem[a:a], p.B.MAC, p.A.MAC, seq, netns.FrameLen(seq, 1400))
					descs = append(descs, Desc{Addr: a, Len: uint32(len(f))})
					seq++
				}
				if len(descs) == 0 {
					if err := s.Kick(); err != nil {
						t.Fatal(err)
					}
					time.Sleep(100 * time.Microsecond)
					continue
				}
				if n, err := s.Transmit(descs); err != nil || n != len(descs) {
					t.Fatalf("Transmit(%d) = %d, %v", len(descs), n, err)
				}
			}
			r := <-done
			if r.err != nil {
				t.Fatal(r.err)
			}
			for seq, c := range r.seen {
				if c != 1 {
					t.Errorf("frame %d seen %d times at the peer, want once", seq, c)
				}
			}
			// Every frame comes back through the completion ring.
			for len(free) < poolSize && time.Now().Before(deadline) {
				n := s.Complete(comp)
				free = append(free, comp[:n]...)
				if n == 0 {
					time.Sleep(time.Millisecond)
				}
			}
			if len(free) != poolSize {
				t.Errorf("%d of %d frames back after completion", len(free), poolSize)
			}
			st, err := s.Stats()
			if err != nil {
				t.Fatal(err)
			}
			if st.TxInvalidDescs != 0 {
				t.Errorf("TxInvalidDescs = %d, want 0", st.TxInvalidDescs)
			}
		})
	}
}

// TestZeroCopyFallback: veth has no AF_XDP zero copy, so a forced
// zero-copy bind fails with ErrNotSupported (EOPNOTSUPP) and BindAuto falls
// back to copy mode and says so.
func TestZeroCopyFallback(t *testing.T) {
	testgate.NetAdmin(t)
	p := netns.New(t, netns.Config{})
	umem := newUMEM(t, 64)
	err := p.A.Do(func() error {
		s, err := Open(p.A.Ifname, 0, umem, testFrameSize, Options{Bind: BindZeroCopy})
		if err == nil {
			s.Close()
		}
		return err
	})
	if !errors.Is(err, ErrNotSupported) || !errors.Is(err, unix.EOPNOTSUPP) {
		t.Fatalf("forced zero-copy Open on veth: err = %v, want ErrNotSupported wrapping EOPNOTSUPP", err)
	}
	if want := "afxdp: bind " + p.A.Ifname + " queue 0 (zerocopy)"; !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not name %q", err, want)
	}
	s := openIn(t, p.A, umem, Options{})
	if got := s.Mode(); got.Bind != BindCopy || got.XDP != XDPDriver || got.String() != "copy/driver" {
		t.Errorf("auto Mode() = %v, want copy/driver on veth", got)
	}
	if !errors.Is(s.ZeroCopyErr(), ErrNotSupported) {
		t.Errorf("ZeroCopyErr() = %v, want ErrNotSupported", s.ZeroCopyErr())
	}
}

func TestOpenRejectsBadUMEM(t *testing.T) {
	umem := newUMEM(t, 4)
	for _, c := range []struct {
		name      string
		umem      []byte
		frameSize uint32
	}{
		{"frame size not a power of two", umem, 3000},
		{"frame size too small", umem, 1024},
		{"length not a multiple of the frame size", umem[:testFrameSize+1], testFrameSize},
		{"not page aligned", umem[testFrameSize : 3*testFrameSize], testFrameSize},
		{"empty", umem[:0], testFrameSize},
	} {
		if c.name == "not page aligned" && testFrameSize%4096 == 0 {
			continue
		}
		if _, err := Open("lo", 0, c.umem, c.frameSize, Options{}); err == nil || !strings.HasPrefix(err.Error(), "afxdp: open lo queue 0: ") {
			t.Errorf("%s: Open err = %v, want an afxdp: open lo queue 0 error", c.name, err)
		}
	}
}

// TestCleanup checks that Close detaches the program and that nothing is
// left after the test network goes.
func TestCleanup(t *testing.T) {
	testgate.NetAdmin(t)
	var names []string
	t.Run("network", func(t *testing.T) {
		p := netns.New(t, netns.Config{})
		names = p.Names()
		umem := newUMEM(t, 64)
		for _, xdp := range []XDPMode{XDPDriver, XDPGeneric} {
			var s *Socket
			if err := p.A.Do(func() (err error) {
				s, err = Open(p.A.Ifname, 0, umem, testFrameSize, Options{XDP: xdp})
				return err
			}); err != nil {
				t.Fatal(err)
			}
			out, err := netns.LinkShow(p.A.NS, p.A.Ifname)
			if err != nil {
				t.Fatal(err)
			}
			word := map[XDPMode]string{XDPDriver: "xdp ", XDPGeneric: "xdpgeneric "}[xdp]
			if !strings.Contains(out, word) {
				t.Errorf("%v: `ip link` does not show %q while open:\n%s", xdp, word, out)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			if out, err = netns.LinkShow(p.A.NS, p.A.Ifname); err != nil {
				t.Fatal(err)
			}
			if strings.Contains(out, "xdp") {
				t.Errorf("%v: XDP program still attached after Close:\n%s", xdp, out)
			}
		}
	})
	left, err := netns.Leftovers(names...)
	if err != nil {
		t.Fatal(err)
	}
	if len(left) > 0 {
		t.Errorf("left over after the test: %v", left)
	}
}

// TestSharedProgram: a Program attached once serves a socket, survives the
// socket's Close, and detaches on its own Close.
func TestSharedProgram(t *testing.T) {
	testgate.NetAdmin(t)
	p := netns.New(t, netns.Config{})
	umem := newUMEM(t, 64)
	var prog *Program
	if err := p.A.Do(func() (err error) {
		prog, err = Attach(p.A.Ifname, ProgramOptions{Mode: XDPGeneric})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer prog.Close()
	var s *Socket
	if err := p.A.Do(func() (err error) {
		s, err = Open(p.A.Ifname, 0, umem, testFrameSize, Options{Program: prog})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if s.Mode().XDP != XDPGeneric {
		t.Errorf("Mode().XDP = %v, want the program's generic", s.Mode().XDP)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	out, err := netns.LinkShow(p.A.NS, p.A.Ifname)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "xdpgeneric") {
		t.Errorf("shared program detached by a socket's Close:\n%s", out)
	}
	if err := prog.Close(); err != nil {
		t.Fatal(err)
	}
	if out, err = netns.LinkShow(p.A.NS, p.A.Ifname); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out, "xdp") {
		t.Errorf("program still attached after Program.Close:\n%s", out)
	}
}

// TestNoAllocs: the data path allocates nothing per call.
func TestNoAllocs(t *testing.T) {
	testgate.NetAdmin(t)
	p := netns.New(t, netns.Config{})
	umem := newUMEM(t, 256)
	s := openIn(t, p.A, umem, Options{XDP: XDPGeneric})
	addrs := make([]uint64, 64)
	for i := range addrs {
		addrs[i] = uint64(i * testFrameSize)
	}
	s.Fill(addrs)
	txd := make([]Desc, 8)
	for i := range txd {
		a := uint64((128 + i) * testFrameSize)
		f := netns.AppendFrame(umem[a:a], p.B.MAC, p.A.MAC, uint32(i), 100)
		txd[i] = Desc{Addr: a, Len: uint32(len(f))}
	}
	rxd := make([]Desc, 64)
	comp := make([]uint64, 64)
	var sent, completed int
	allocs := testing.AllocsPerRun(200, func() {
		n, err := s.Transmit(txd)
		if err != nil {
			panic(err)
		}
		sent += n
		for c := 0; c < n; {
			k := s.Complete(comp)
			c += k
			completed += k
		}
		n = s.Receive(rxd)
		for i := 0; i < n; i++ {
			addrs[i] = rxd[i].Addr
		}
		s.Fill(addrs[:n])
	})
	if allocs != 0 {
		t.Errorf("Transmit+Complete+Receive+Fill: %v allocations per run, want 0", allocs)
	}
	if sent == 0 || completed != sent {
		t.Errorf("sent %d, completed %d: the loop measured nothing", sent, completed)
	}
}
