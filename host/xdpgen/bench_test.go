package xdpgen

import (
	"fmt"
	"testing"
	"time"

	"github.com/zcfabric/zc/internal/netns"
)

// BenchmarkSend: frames per second through one Send call of 16384 and of
// 65536 frames into a veth pair (the peer's stack drops them), in the same
// run. Each call pays a fixed kernel set-up cost, which is why Run grows
// its calls; the gap between the two sizes measures it (logged: a call's
// time is setup + frames × per-frame cost, solved from the two sizes).
func BenchmarkSend(b *testing.B) {
	p := pair(b)
	f := openIn(b, p.B, netns.AppendFrame(nil, p.A.MAC, p.B.MAC, 1, 60), 0)
	per := map[uint32]time.Duration{}
	for _, chunk := range []uint32{16384, 65536} {
		b.Run(fmt.Sprint(chunk), func(b *testing.B) {
			var el time.Duration
			err := p.B.Do(func() error {
				for b.Loop() {
					t := time.Now()
					if err := f.Send(chunk); err != nil {
						return err
					}
					el += time.Since(t)
				}
				return nil
			})
			if err != nil {
				b.Fatal(err)
			}
			per[chunk] = el / time.Duration(b.N)
			b.ReportMetric(float64(chunk)*float64(b.N)/el.Seconds(), "pkts/s")
		})
	}
	if small, big := per[16384], per[65536]; small > 0 && big > 0 {
		// small = setup + 16384*c, big = setup + 65536*c.
		setup := small - (big-small)/3
		b.Logf("fixed cost per Send: about %.1f ms", float64(setup)/1e6)
	}
}
