package idle

import (
	"slices"
	"testing"
	"time"
)

// BenchmarkSleep: what a 200 µs sleep really takes (ns/op), time.Sleep as
// the baseline against Nap, in the same run.
func BenchmarkSleep(b *testing.B) {
	for _, c := range []struct {
		name  string
		sleep func(time.Duration)
	}{{"time.Sleep", time.Sleep}, {"Nap", Nap}} {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				c.sleep(200 * time.Microsecond)
			}
		})
	}
}

// BenchmarkNapTail: the spread of 1 ms Naps, which shows how long the
// machine can keep a polling thread off its CPU (the rings must hold what
// arrives meanwhile). Reports the median, p99, p99.9 and the longest, in µs.
func BenchmarkNapTail(b *testing.B) {
	lat := make([]time.Duration, 0, b.N)
	for b.Loop() {
		t := time.Now()
		Nap(time.Millisecond)
		lat = append(lat, time.Since(t))
	}
	slices.Sort(lat)
	n := len(lat)
	us := func(d time.Duration) float64 { return float64(d) / 1e3 }
	b.ReportMetric(us(lat[n/2]), "p50-µs")
	b.ReportMetric(us(lat[n*99/100]), "p99-µs")
	b.ReportMetric(us(lat[n*999/1000]), "p99.9-µs")
	b.ReportMetric(us(lat[n-1]), "max-µs")
}
