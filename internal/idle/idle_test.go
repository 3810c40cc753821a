package idle

import "testing"

// idleStretch runs one idle stretch of the loop: work(gathered) then polls
// until the idler has slept once; returns the sleep it chose.
func idleStretch(i *Pacer, gathered int) int64 {
	i.Work(gathered)
	for range idlePolls + 1 {
		i.Wait()
	}
	return int64(i.nap)
}

// TestPacerAdapts: little gathered per sleep lengthens the sleep up to
// napMax, a lot shortens it down to napMin, in between it stays put.
func TestPacerAdapts(t *testing.T) {
	var i Pacer
	if got := idleStretch(&i, 0); got != int64(napStart) {
		t.Fatalf("first sleep %d, want %d", got, napStart)
	}
	for range 10 {
		idleStretch(&i, 1)
	}
	if i.nap != napMax {
		t.Errorf("after sparse traffic: %v, want %v", i.nap, napMax)
	}
	for range 10 {
		idleStretch(&i, 10*gatherHigh)
	}
	if i.nap != napMin {
		t.Errorf("after a flood: %v, want %v", i.nap, napMin)
	}
	before := i.nap * 2
	idleStretch(&i, 1) // doubles
	for range 5 {
		idleStretch(&i, (gatherLow+gatherHigh)/2)
	}
	if i.nap != before {
		t.Errorf("steady in-band traffic moved the sleep: %v, want %v", i.nap, before)
	}
	// Polls before the first sleep cost nothing and do not adapt.
	var j Pacer
	j.Work(5)
	for range idlePolls {
		j.Wait()
	}
	if j.nap != 0 {
		t.Errorf("slept after %d polls", idlePolls)
	}
}
