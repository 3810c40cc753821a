package cpuset

import (
	"runtime"
	"testing"
)

// RunPair times a two-sided benchmark: produce runs pinned to the first
// allowed CPU on a new goroutine, consume pinned to the second on this
// one. It reports b.N per second of the whole transfer as unit
// ("pkts/s", "handles/s").
func RunPair(b *testing.B, unit string, produce, consume func()) {
	b.ReportAllocs()
	done := make(chan struct{})
	b.ResetTimer()
	go func() {
		defer close(done)
		Pinned(0, produce)
	}()
	Pinned(1, consume)
	<-done
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), unit)
}

// Spin is the wait of a benchmark side that found its ring full or empty:
// busy polling, with a yield every 128 polls so that an unpinned run on
// one CPU still makes progress.
func Spin(n *int) {
	*n++
	if *n&127 == 0 {
		runtime.Gosched()
	}
}
