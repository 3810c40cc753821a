package idle

import "testing"

// stretch polls until the pacer sleeps, with work(n) before every poll as
// a trickle of n packets per poll would, and returns the sleep it chose
// and the polls it took.
func stretch(p *Pacer, n int) (nap int64, polls int) {
	for polls = 1; ; polls++ {
		p.Work(n)
		p.Wait()
		if p.n > idlePolls {
			return int64(p.nap), polls
		}
	}
}

// TestPacerAdapts: little gathered per sleep lengthens the sleep up to
// napMax, a lot shortens it down to napMin, in between it stays put.
func TestPacerAdapts(t *testing.T) {
	var p Pacer
	if got, _ := stretch(&p, 0); got != int64(napStart) {
		t.Fatalf("first sleep %d, want %d", got, napStart)
	}
	for range 10 {
		p.Work(1)
		stretch(&p, 0)
	}
	if p.nap != napMax {
		t.Errorf("after sparse traffic: %v, want %v", p.nap, napMax)
	}
	for range 10 {
		p.Work(10 * gatherHigh)
		stretch(&p, 0)
	}
	if p.nap != napMin {
		t.Errorf("after a flood: %v, want %v", p.nap, napMin)
	}
	want := p.nap * 2
	stretch(&p, 0) // nothing gathered: doubles
	for range 5 {
		p.Work((gatherLow + gatherHigh) / 2)
		stretch(&p, 0)
	}
	if p.nap != want {
		t.Errorf("steady in-band traffic moved the sleep: %v, want %v", p.nap, want)
	}
}

// TestPacerTrickleSleeps: polls that find a packet or two (a trickle) count
// towards the sleep like empty ones; a busy poll starts the count again.
func TestPacerTrickleSleeps(t *testing.T) {
	var p Pacer
	p.Wait() // one empty poll
	if _, polls := stretch(&p, 1); polls > idlePolls+1 {
		t.Errorf("a trickle of one packet per poll slept after %d polls, want at most %d", polls, idlePolls+1)
	}
	p.Work(BusyBurst)
	if p.n != 0 {
		t.Errorf("a busy poll left the idle count at %d", p.n)
	}
	if !Busy(BusyBurst) || Busy(BusyBurst-1) || Busy(0) {
		t.Error("Busy disagrees with BusyBurst")
	}
}

// TestPacerFirst: First says whether packets were handled since the last
// Wait (a TX loop flushes then).
func TestPacerFirst(t *testing.T) {
	var p Pacer
	if p.First() {
		t.Error("First before any work")
	}
	p.Work(3)
	if !p.First() {
		t.Error("not First after work")
	}
	p.Wait()
	if p.First() {
		t.Error("First after a Wait with no new work")
	}
}

// TestPacerNoAllocs: polling and sleeping allocate nothing.
func TestPacerNoAllocs(t *testing.T) {
	var p Pacer
	p.nap = napMin
	if a := testing.AllocsPerRun(200, func() { p.Work(1); p.Wait() }); a != 0 {
		t.Errorf("%v allocations per poll", a)
	}
}
