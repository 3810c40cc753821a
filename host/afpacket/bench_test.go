package afpacket

import (
	"sync/atomic"
	"testing"
	"time"

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
