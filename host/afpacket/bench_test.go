package afpacket

import (
	"sync/atomic"
	"testing"
	"time"

	gpafpacket "github.com/gopacket/gopacket/afpacket"
	"github.com/zcfabric/zc/internal/netns"
	"github.com/zcfabric/zc/internal/testgate"
)

// BenchmarkRX measures frames received per second from a flood of 64-byte
// frames sent by the peer namespace through a TX ring (qdisc bypassed),
// each copied once into a buffer as a capture engine would. sent/s is the
// flood's own rate in the same run; drops are frames the RX ring had no room
// for. On a veth pair the sender, the kernel's softirq work and the reader
// share the machine's CPUs, so the rates bound each other.
func BenchmarkRX(b *testing.B) {
	testgate.NetAdmin(b)
	p := netns.New(b, netns.Config{})
	r := openRXIn(b, p.A, RXOptions{})
	tx := openTXIn(b, p.B, TXOptions{QdiscBypass: true})
	var sent atomic.Int64
	stop, done := make(chan struct{}), make(chan error, 1)
	netns.Flood(tx, p.A.MAC, p.B.MAC, 64, &sent, stop, done)
	defer func() {
		close(stop)
		if err := <-done; err != nil {
			b.Error(err)
		}
	}()
	dst := make([]byte, 2048)
	fn := func(f []byte, _ int64) { copy(dst, f) }
	// Warm up until the flood reaches us, then measure.
	if ok, err := r.Poll(time.Second); !ok || err != nil {
		b.Fatalf("no frame within a second (err %v)", err)
	}
	before, _ := r.Stats()
	sent0 := sent.Load()
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for got := 0; got < b.N; {
		n := r.Read(min(256, b.N-got), fn)
		if n == 0 {
			if _, err := r.Poll(time.Second); err != nil {
				b.Fatal(err)
			}
		}
		got += n
	}
	el := time.Since(start).Seconds()
	b.StopTimer()
	st, err := r.Stats()
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/el, "pkts/s")
	b.ReportMetric(float64(sent.Load()-sent0)/el, "sent/s")
	b.ReportMetric(float64(st.Drops-before.Drops), "drops")
}

// BenchmarkDrain measures the CPU cost of reading one frame, with the
// flood out of the picture: the peer fills the ring while the timer is
// stopped, then the timed loop drains it, copying each frame once. The
// gopacket sub-benchmark drains the same way with gopacket's TPACKET_V3
// reader (ZeroCopyReadPacketData + copy), the baseline this package was
// written against.
func BenchmarkDrain(b *testing.B) {
	b.Run("zc", func(b *testing.B) {
		benchDrain(b, func(p *netns.Pair) (func(dst []byte) int, func()) {
			r := openRXIn(b, p.A, RXOptions{BlockTimeout: time.Millisecond})
			return func(dst []byte) int {
				return r.Read(256, func(f []byte, _ int64) { copy(dst, f) })
			}, nil
		})
	})
	b.Run("gopacket", func(b *testing.B) {
		benchDrain(b, func(p *netns.Pair) (func(dst []byte) int, func()) {
			var h *gpafpacket.TPacket
			if err := p.A.Do(func() (err error) {
				h, err = gpafpacket.NewTPacket(gpafpacket.OptInterface(p.A.Ifname),
					gpafpacket.TPacketVersion3, gpafpacket.OptBlockSize(DefaultBlockSize),
					gpafpacket.OptNumBlocks(DefaultNumBlocks), gpafpacket.OptBlockTimeout(time.Millisecond),
					gpafpacket.OptPollTimeout(time.Millisecond))
				return err
			}); err != nil {
				b.Fatal(err)
			}
			return func(dst []byte) int {
				n := 0
				for ; n < 256; n++ {
					f, _, err := h.ZeroCopyReadPacketData()
					if err != nil {
						break
					}
					copy(dst, f)
				}
				return n
			}, h.Close
		})
	})
}

func benchDrain(b *testing.B, open func(*netns.Pair) (read func(dst []byte) int, closer func())) {
	testgate.NetAdmin(b)
	const fill = 20000 // 64-byte frames: well under the 16 MiB ring
	p := netns.New(b, netns.Config{})
	read, closer := open(p)
	if closer != nil {
		defer closer()
	}
	tx := openTXIn(b, p.B, TXOptions{QdiscBypass: true})
	frames := make([][]byte, 64)
	for i := range frames {
		frames[i] = netns.AppendFrame(nil, p.A.MAC, p.B.MAC, uint32(i), 64)
	}
	dst := make([]byte, 2048)
	b.ReportAllocs()
	b.ResetTimer()
	for got := 0; got < b.N; {
		b.StopTimer()
		for sent := 0; sent < fill; {
			n, err := tx.Send(frames)
			if err != nil {
				b.Fatal(err)
			}
			sent += n
		}
		time.Sleep(5 * time.Millisecond) // let the last block retire
		b.StartTimer()
		for got < b.N {
			n := read(dst)
			if n == 0 {
				break
			}
			got += n
		}
	}
}
