// Package idle paces polling loops that find nothing to do: a few free
// polls, then sleeps whose length adapts to the traffic.
package idle

import (
	"time"

	"golang.org/x/sys/unix"
)

// Pacing constants.
const (
	idlePolls = 64                      // polls that were not busy before a sleep
	napMin    = 50 * time.Microsecond   // shortest sleep
	napStart  = 200 * time.Microsecond  // first sleep
	napMax    = 1000 * time.Microsecond // longest sleep
	// gatherLow and gatherHigh bound the packets a sleep should let the
	// kernel ring gather: fewer and the loop wakes for too little work
	// (CPU per packet), more and it nears a 4096-frame ring's end (drops).
	gatherLow  = 512
	gatherHigh = 2048
)

// BusyBurst is the smallest poll result that counts as work waiting: a
// poll that found fewer packets drained the ring, and counts towards the
// sleep like an empty one. Otherwise a trickle (a packet every few µs)
// resets the count on every poll and the loop never sleeps: measured, 62%
// of a CPU for 0.24 Mpps.
const BusyBurst = 32

// Pacer paces a polling loop: after idlePolls polls that found less than
// BusyBurst packets each, it sleeps, for a time adapted to what the
// previous sleep let the ring gather. A packet rate that leaves fewer than
// gatherLow packets per sleep doubles the sleep (up to napMax: a loop
// that wakes every few µs handles bursts of one, measured 2.6x the CPU per
// packet, docs/PERFORMANCE.md); more than gatherHigh halves it (down to
// napMin), so a flood cannot fill a 4096-entry ring while the loop sleeps.
//
// The sleep is nanosleep(2) on the loop's thread: time.Sleep(200µs) parks
// the thread in epoll_wait with a 1 ms timeout (measured: 1.1 ms; nanosleep
// 0.3 ms), and sleeping 1.1 ms at a time cost a 1.5 Mpps flood 7% of its
// packets.
type Pacer struct {
	n        int           // polls since the last busy one
	fresh    bool          // packets handled since the last Wait
	gathered int           // packets handled since the last sleep
	nap      time.Duration // next sleep
	woke     bool          // woken from a sleep (Reset), no busy poll since
}

// Work records a poll that handled n packets; n >= BusyBurst ends an idle
// stretch. The caller goes on polling at once after a busy poll and calls
// Wait after any other.
func (i *Pacer) Work(n int) {
	if n <= 0 {
		return
	}
	i.fresh = true
	i.gathered += n
	if n >= BusyBurst {
		i.n = 0
		i.woke = false
	}
}

// Busy reports whether a poll that handled n packets was busy: poll again
// at once instead of calling Wait.
func Busy(n int) bool { return n >= BusyBurst }

// First reports whether packets were handled since the last Wait: time to
// flush what was batched.
func (i *Pacer) First() bool { return i.fresh }

// Wait records a poll that was not busy and, after idlePolls of them in a
// row, sleeps.
func (i *Pacer) Wait() {
	i.fresh = false
	i.n++
	if i.n <= idlePolls || i.woke && i.n == idlePolls+1 {
		// A trickle (woken, no burst since): Quiet says sleep until woken
		// from the next poll; a nap first would cost a second wake-up.
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
	Nap(i.nap)
}

// Quiet reports whether the loop may sleep until it is woken instead of
// napping: it is past its free polls, and its last nap gathered nothing,
// or it was woken from such a sleep and found no burst since (a trickle:
// a packet now and then, each worth a wake-up, none worth a nap). A loop
// that can be woken (a futex the producer wakes) then sleeps there, and
// calls Reset when it wakes.
func (i *Pacer) Quiet() bool {
	return i.n > idlePolls && (i.woke || i.nap != 0 && i.gathered == 0)
}

// Reset starts the free polls over, after a sleep that ended on a wake-up.
func (i *Pacer) Reset() { i.n, i.woke = 0, true }

// Nap sleeps for about d on the calling thread with nanosleep(2), at timer
// precision (time.Sleep of less than a millisecond takes about 1.1 ms on
// these machines: BenchmarkSleep). An interrupted sleep just ends early.
func Nap(d time.Duration) {
	ts := unix.NsecToTimespec(int64(d))
	_ = unix.Nanosleep(&ts, nil)
}
