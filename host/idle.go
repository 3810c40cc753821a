package host

import "time"

// idler paces a polling loop that found nothing to do: 64 free polls,
// then sleeps of 200 µs. A flat sleep, not a ramp from a few µs: at a few
// hundred thousand packets a second a ramp is reset by every packet and
// the loop spins on bursts of one (measured: 2.6x the CPU per captured
// packet, docs/PERFORMANCE.md); a 200 µs sleep lets the kernel ring
// gather a burst, as libpcap's block timeout does.
type idler struct{ n int }

// reset marks work done.
func (i *idler) reset() { i.n = 0 }

// first reports whether this is the first idle poll since work (time to
// flush what was batched).
func (i *idler) first() bool { return i.n == 0 }

// wait records one idle poll and sleeps when the loop has been idle long.
func (i *idler) wait() {
	i.n++
	if i.n > 64 {
		time.Sleep(200 * time.Microsecond)
	}
}
