package host

import "time"

// idler paces a polling loop that found nothing to do: 64 free polls,
// then sleeps growing by 5 µs up to 200 µs, so an idle engine costs
// little CPU and a busy one never sleeps.
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
		time.Sleep(min(time.Duration(i.n-64)*5*time.Microsecond, 200*time.Microsecond))
	}
}
