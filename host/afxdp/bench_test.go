package afxdp

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/zcfabric/zc/host/afpacket"
	"github.com/zcfabric/zc/internal/netns"
	"github.com/zcfabric/zc/internal/testgate"
)

// BenchmarkReceive measures frames received per second in copy mode from a
// flood of 64-byte frames sent by the peer namespace through an AF_PACKET
// TX ring (qdisc bypassed), refilling each frame at once. sent/s is the
// flood's own rate in the same run; the drop metrics are the socket's
// fill-ring-empty and RX-ring-full counts. On a veth pair the sender, the
// kernel's softirq work and the reader share the machine's CPUs, so the
// rates bound each other.
func BenchmarkReceive(b *testing.B) {
	for _, xdp := range []XDPMode{XDPDriver, XDPGeneric} {
		b.Run(xdp.String(), func(b *testing.B) { benchReceive(b, xdp) })
	}
}

func benchReceive(b *testing.B, xdp XDPMode) {
	testgate.NetAdmin(b)
	const frames = 4096
	p := netns.New(b, netns.Config{})
	umem := newUMEM(b, frames)
	s := openIn(b, p.A, umem, Options{XDP: xdp, FillSize: frames, RxSize: frames})
	addrs := make([]uint64, frames)
	for i := range addrs {
		addrs[i] = uint64(i * testFrameSize)
	}
	if n := s.Fill(addrs); n != frames {
		b.Fatalf("Fill = %d, want %d", n, frames)
	}
	var tx *afpacket.TX
	if err := p.B.Do(func() (err error) {
		tx, err = afpacket.OpenTX(p.B.Ifname, afpacket.TXOptions{QdiscBypass: true})
		return err
	}); err != nil {
		b.Fatal(err)
	}
	defer tx.Close()
	var sent atomic.Int64
	stop, done := make(chan struct{}), make(chan error, 1)
	netns.Flood(tx, p.A.MAC, p.B.MAC, 64, &sent, stop, done)
	defer func() {
		close(stop)
		if err := <-done; err != nil {
			b.Error(err)
		}
	}()
	if ok, err := s.Poll(time.Second); !ok || err != nil {
		b.Fatalf("no frame within a second (err %v)", err)
	}
	descs := make([]Desc, 256)
	before, err := s.Stats()
	if err != nil {
		b.Fatal(err)
	}
	sent0 := sent.Load()
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for got := 0; got < b.N; {
		n := s.Receive(descs[:min(len(descs), b.N-got)])
		if n == 0 {
			if _, err := s.Poll(time.Second); err != nil {
				b.Fatal(err)
			}
			continue
		}
		for i, d := range descs[:n] {
			addrs[i] = d.Addr
		}
		s.Fill(addrs[:n])
		got += n
	}
	el := time.Since(start).Seconds()
	b.StopTimer()
	st, err := s.Stats()
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/el, "pkts/s")
	b.ReportMetric(float64(sent.Load()-sent0)/el, "sent/s")
	b.ReportMetric(float64(st.FillRingEmpty-before.FillRingEmpty), "fill-empty")
	b.ReportMetric(float64(st.RxRingFull-before.RxRingFull), "rx-full")
}
