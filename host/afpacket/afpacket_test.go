package afpacket

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
)

func openRXIn(t testing.TB, e netns.End, opt RXOptions) *RX {
	t.Helper()
	var r *RX
	if err := e.Do(func() (err error) { r, err = OpenRX(e.Ifname, opt); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Errorf("RX.Close: %v", err)
		}
	})
	return r
}

func openTXIn(t testing.TB, e netns.End, opt TXOptions) *TX {
	t.Helper()
	var tx *TX
	if err := e.Do(func() (err error) { tx, err = OpenTX(e.Ifname, opt); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := tx.Close(); err != nil {
			t.Errorf("TX.Close: %v", err)
		}
	})
	return tx
}

// TestRXKnownSet sends 1000 distinct frames from the peer and checks that
// Read delivers each exactly once with the right bytes and a plausible
// timestamp, through a ring small enough (8 blocks of 4 KiB) that blocks
// are handed back and reused many times.
func TestRXKnownSet(t *testing.T) {
	testgate.NetAdmin(t)
	const (
		total  = 1000
		window = 16 // frames in flight: under the 8 small blocks' capacity
	)
	p := netns.New(t, netns.Config{})
	r := openRXIn(t, p.A, RXOptions{BlockSize: 4096, NumBlocks: 8, BlockTimeout: time.Millisecond})
	tx, err := p.B.OpenRaw(netns.EtherType)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Close()

	var received atomic.Int64
	start := time.Now().UnixNano()
	sendErr := tx.SendWindow(p.A.MAC, p.B.MAC, total, window, &received, 10*time.Second)

	seen := make([]int, total)
	var want []byte
	var others int
	var lastTS int64
	fn := func(f []byte, ts int64) {
		seq, ok, err := netns.CheckFrame(f)
		switch {
		case !ok:
			others++
			return
		case err != nil:
			t.Error(err)
		case seq >= total:
			t.Errorf("sequence number %d out of range", seq)
			return
		default:
			want = netns.AppendFrame(want[:0], p.A.MAC, p.B.MAC, seq, netns.FrameLen(seq, 1400))
			if !bytes.Equal(f, want) {
				t.Errorf("frame %d: %d bytes differ from the %d sent", seq, len(f), len(want))
			}
		}
		if ts < start || ts > time.Now().UnixNano() || ts < lastTS {
			t.Errorf("frame %d: timestamp %d outside [%d, now] or before the previous %d", seq, ts, start, lastTS)
		}
		lastTS = ts
		seen[seq]++
		received.Add(1)
	}
	deadline := time.Now().Add(15 * time.Second)
	for received.Load() < total {
		if time.Now().After(deadline) {
			t.Fatalf("received %d of %d frames before the deadline", received.Load(), total)
		}
		if _, err := r.Poll(100 * time.Millisecond); err != nil {
			t.Fatal(err)
		}
		r.Read(7, fn) // an odd burst, so reads stop in the middle of blocks
	}
	if err := <-sendErr; err != nil {
		t.Fatalf("sender: %v", err)
	}
	for seq, c := range seen {
		if c != 1 {
			t.Errorf("frame %d received %d times, want once", seq, c)
		}
	}
	st, err := r.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Drops != 0 || st.Truncated != 0 || st.Packets != uint64(total+others) {
		t.Errorf("Stats() = %+v, want %d packets (%d not ours), no drops or truncation", st, total+others, others)
	}
	if others > 0 {
		t.Logf("%d frames that were not test frames", others)
	}
}

// TestRXDropsCounted floods a tiny ring without reading it and checks that
// what did not fit is counted as dropped, and that the kernel counters
// accumulate across Stats calls.
func TestRXDropsCounted(t *testing.T) {
	testgate.NetAdmin(t)
	p := netns.New(t, netns.Config{})
	r := openRXIn(t, p.A, RXOptions{BlockSize: 4096, NumBlocks: 2, BlockTimeout: time.Millisecond})
	tx, err := p.B.OpenRaw(netns.EtherType)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Close()
	const total = 200 // 1000-byte frames: 3 per 4 KiB block, 6 fit
	var buf []byte
	for seq := uint32(0); seq < total; seq++ {
		buf = netns.AppendFrame(buf[:0], p.A.MAC, p.B.MAC, seq, 1000)
		if err := tx.Send(buf); err != nil {
			t.Fatal(err)
		}
		if seq == total/2 {
			if _, err := r.Stats(); err != nil { // resets the kernel's counters
				t.Fatal(err)
			}
		}
	}
	time.Sleep(20 * time.Millisecond)
	got := 0
	for {
		n := r.Read(100, func([]byte, int64) {})
		if n == 0 {
			break
		}
		got += n
	}
	st, err := r.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Drops == 0 || st.Packets != total || st.Packets-st.Drops != uint64(got) {
		t.Errorf("Stats() = %+v after %d sent and %d read: want Packets=%d and Packets-Drops=%d", st, total, got, total, got)
	}
}

// TestTXObservedOnPeer sends 500 frames through the TX ring and checks that
// the peer sees each exactly once with the right bytes.
func TestTXObservedOnPeer(t *testing.T) {
	testgate.NetAdmin(t)
	for _, bypass := range []bool{false, true} {
		t.Run(fmt.Sprintf("qdisc-bypass=%v", bypass), func(t *testing.T) {
			const (
				total  = 500
				burst  = 16
				window = 64
			)
			p := netns.New(t, netns.Config{})
			tx := openTXIn(t, p.A, TXOptions{NumFrames: 64, QdiscBypass: bypass})
			rx, err := p.B.OpenRaw(netns.EtherType)
			if err != nil {
				t.Fatal(err)
			}
			defer rx.Close()
			var peerGot atomic.Int64
			done := make(chan error, 1)
			seen := make([]int, total)
			go func() {
				buf := make([]byte, 4096)
				var want []byte
				for got := 0; got < total; got++ {
					n, err := rx.Recv(buf, 5*time.Second)
					if err != nil {
						done <- fmt.Errorf("peer got %d of %d: %w", got, total, err)
						return
					}
					seq, ok, err := netns.CheckFrame(buf[:n])
					if !ok || err != nil || seq >= total {
						done <- errors.Join(fmt.Errorf("bad frame at peer (seq %d, ok %v)", seq, ok), err)
						return
					}
					want = netns.AppendFrame(want[:0], p.B.MAC, p.A.MAC, seq, netns.FrameLen(seq, 1400))
					if !bytes.Equal(buf[:n], want) {
						done <- fmt.Errorf("frame %d: bytes differ at peer", seq)
						return
					}
					seen[seq]++
					peerGot.Add(1)
				}
				done <- nil
			}()
			frames := make([][]byte, 0, burst)
			store := make([][]byte, burst)
			deadline := time.Now().Add(10 * time.Second)
			for seq := uint32(0); seq < total; {
				if time.Now().After(deadline) {
					t.Fatalf("queued %d of %d before the deadline", seq, total)
				}
				frames = frames[:0]
				for i := 0; i < burst && seq+uint32(i) < total && int64(seq)+int64(i)-peerGot.Load() < window; i++ {
					s := seq + uint32(i)
					store[i] = netns.AppendFrame(store[i][:0], p.B.MAC, p.A.MAC, s, netns.FrameLen(s, 1400))
					frames = append(frames, store[i])
				}
				if len(frames) == 0 {
					time.Sleep(50 * time.Microsecond)
					continue
				}
				n, err := tx.Send(frames)
				if err != nil {
					t.Fatal(err)
				}
				seq += uint32(n)
			}
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			for seq, c := range seen {
				if c != 1 {
					t.Errorf("frame %d seen %d times at the peer, want once", seq, c)
				}
			}
			for tx.Pending() > 0 && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			if n := tx.Pending(); n != 0 {
				t.Errorf("%d slots still pending after the peer saw every frame", n)
			}
		})
	}
}

func TestTXRejectsLongFrame(t *testing.T) {
	testgate.NetAdmin(t)
	p := netns.New(t, netns.Config{})
	tx := openTXIn(t, p.A, TXOptions{})
	n, err := tx.Send([][]byte{make([]byte, 60), make([]byte, tx.MaxFrameLen()+1)})
	if n != 1 || !errors.Is(err, ErrFrameTooLong) {
		t.Fatalf("Send(ok, too long) = %d, %v; want 1, ErrFrameTooLong", n, err)
	}
	if !strings.HasPrefix(err.Error(), "afpacket: send on "+p.A.Ifname) {
		t.Errorf("error %q does not name the operation and interface", err)
	}
}

func TestOpenErrors(t *testing.T) {
	if _, err := OpenRX("zct-no-such", RXOptions{}); err == nil || !strings.HasPrefix(err.Error(), "afpacket: open RX on zct-no-such: ") {
		t.Errorf("OpenRX(missing interface) err = %v", err)
	}
	if _, err := OpenRX("lo", RXOptions{BlockSize: 5000}); err == nil {
		t.Error("OpenRX accepted a block size that is not a power of two")
	}
	if _, err := OpenTX("lo", TXOptions{FrameSize: 3000}); err == nil {
		t.Error("OpenTX accepted a frame size that is not a power of two")
	}
}

// TestNoAllocs: Read and Send allocate nothing per call.
func TestNoAllocs(t *testing.T) {
	testgate.NetAdmin(t)
	p := netns.New(t, netns.Config{})
	r := openRXIn(t, p.A, RXOptions{BlockSize: 4096, NumBlocks: 64, BlockTimeout: time.Millisecond})
	tx := openTXIn(t, p.B, TXOptions{QdiscBypass: true})
	frames := make([][]byte, 8)
	for i := range frames {
		frames[i] = netns.AppendFrame(nil, p.A.MAC, p.B.MAC, uint32(i), 100)
	}
	dst := make([]byte, 2048)
	var got, sent int
	fn := func(f []byte, ts int64) { copy(dst, f); got++ }
	allocs := testing.AllocsPerRun(100, func() {
		n, err := tx.Send(frames)
		if err != nil {
			panic(err)
		}
		sent += n
		r.Poll(10 * time.Millisecond)
		r.Read(64, fn)
	})
	if allocs != 0 {
		t.Errorf("Send+Poll+Read: %v allocations per run, want 0", allocs)
	}
	if got == 0 || sent == 0 {
		t.Errorf("sent %d, read %d: the loop measured nothing", sent, got)
	}
}

// TestCleanup: nothing of the test network is left after a test that used
// both sockets.
func TestCleanup(t *testing.T) {
	testgate.NetAdmin(t)
	var names []string
	t.Run("network", func(t *testing.T) {
		p := netns.New(t, netns.Config{})
		names = p.Names()
		openRXIn(t, p.A, RXOptions{})
		openTXIn(t, p.B, TXOptions{})
	})
	left, err := netns.Leftovers(names...)
	if err != nil {
		t.Fatal(err)
	}
	if len(left) > 0 {
		t.Errorf("left over after the test: %v", left)
	}
}
