package zcgopacket

import (
	"testing"

	"github.com/zcfabric/zc"
)

// BenchmarkRead: packets/s through a Source, zero copy and copying,
// against zc's own RecvBurst/Release loop (the baseline) in the same run.
// One goroutine produces and consumes in turns (refilling 1024 packets at
// a time), so it measures the CPU per packet, not cross-core traffic.
func BenchmarkRead(b *testing.B) {
	for _, mode := range []string{"RecvBurst", "ZeroCopy", "Copy"} {
		b.Run(mode, func(b *testing.B) {
			c, prod := newCluster(b, zc.Config{QueueLen: 4096})
			const refill = 1024
			pkts := make([]zc.Packet, 64)
			fill := func() {
				for left := refill; left > 0; {
					n, err := prod.Alloc(pkts[:min(left, len(pkts))])
					if err != nil || n == 0 {
						b.Fatalf("alloc: %d, %v", n, err)
					}
					for i := range pkts[:n] {
						pkts[i].Data = pkts[i].Data[:zc.SynthFrame(pkts[i].Data, 0, 64, 4)]
					}
					if k, err := prod.SendBurst(pkts[:n]); k != n || err != nil {
						b.Fatalf("send: %d of %d, %v", k, n, err)
					}
					left -= n
				}
			}
			var read func() int
			switch mode {
			case "RecvBurst":
				q, err := c.Consumer(0)
				if err != nil {
					b.Fatal(err)
				}
				defer q.Close()
				in := make([]zc.Packet, DefaultBurst)
				read = func() int {
					n, err := q.RecvBurst(in)
					if err != nil || n == 0 {
						b.Fatalf("recv: %d, %v", n, err)
					}
					q.Release(in[:n]...)
					return n
				}
			case "ZeroCopy", "Copy":
				s := open(b, c)
				get := s.ZeroCopyReadPacketData
				if mode == "Copy" {
					get = s.ReadPacketData
				}
				read = func() int {
					if _, _, err := get(); err != nil {
						b.Fatal(err)
					}
					return 1
				}
			}
			b.ReportAllocs()
			b.ResetTimer()
			queued := 0
			for done := 0; done < b.N; {
				if queued < DefaultBurst+1 {
					b.StopTimer()
					fill()
					queued += refill
					b.StartTimer()
				}
				n := read()
				done += n
				queued -= n
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pkts/s")
		})
	}
}
