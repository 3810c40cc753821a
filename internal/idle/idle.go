// Package idle paces polling loops that find nothing to do: a few free
// polls, then sleeps whose length adapts to the traffic.
package idle

import (
	"runtime"
	"time"

	"golang.org/x/sys/unix"
)

// Pacing constants.
const (
	idlePolls = 64                      // free polls before the first sleep
	napMin    = 50 * time.Microsecond   // shortest sleep
	napStart  = 200 * time.Microsecond  // first sleep
	napMax    = 1000 * time.Microsecond // longest sleep
	// gatherLow and gatherHigh bound the packets a sleep should let the
	// kernel ring gather: fewer and the loop wakes for too little work
	// (CPU per packet), more and it nears a 4096-frame ring's end (drops).
	gatherLow  = 512
	gatherHigh = 2048
)

// Pacer paces a polling loop that found nothing to do: idlePolls free
// polls (each yielding to other goroutines), then sleeps, each of a length adapted to what the previous one
// let the ring gather. A packet rate that leaves fewer than gatherLow
// packets per sleep doubles the sleep (up to napMax: at a few hundred
// thousand packets a second a loop that wakes every few µs spins on bursts
// of one, measured 2.6x the CPU per packet, docs/PERFORMANCE.md); more than
// gatherHigh halves it (down to napMin), so a flood cannot empty a fill
// ring while the loop sleeps.
//
// The sleep is nanosleep(2) on the loop's thread: time.Sleep(200µs) parks
// the thread in epoll_wait with a 1 ms timeout (measured: 1.1 ms; nanosleep
// 0.3 ms), and sleeping 1.1 ms at a time cost a 1.5 Mpps flood 7% of its
// packets.
type Pacer struct {
	n        int           // idle polls since the last work
	gathered int           // packets handled since the last sleep
	nap      time.Duration // next sleep
}

// Work records n packets handled (n > 0 ends an idle stretch).
func (i *Pacer) Work(n int) {
	if n > 0 {
		i.n = 0
		i.gathered += n
	}
}

// First reports whether this is the first idle poll since work (time to
// flush what was batched).
func (i *Pacer) First() bool { return i.n == 0 }

// Wait records one idle poll: it yields the processor to other goroutines
// for the first idlePolls, then sleeps.
func (i *Pacer) Wait() {
	i.n++
	if i.n <= idlePolls {
		runtime.Gosched()
		return
	}
	switch {
	case i.nap == 0:
		i.nap = napStart
	case i.gathered < gatherLow:
		i.nap = min(2*i.nap, napMax)
	case i.gathered > gatherHigh:
		i.nap = max(i.nap/2, napMin)
	}
	i.gathered = 0
	ts := unix.NsecToTimespec(int64(i.nap))
	_ = unix.Nanosleep(&ts, nil)
}
