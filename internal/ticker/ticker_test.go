package ticker

import (
	"sync/atomic"
	"testing"
	"time"
)

func TestEveryStops(t *testing.T) {
	var n atomic.Int32
	stop := Every(time.Millisecond, func(time.Time) { n.Add(1) })
	for n.Load() < 3 {
		time.Sleep(time.Millisecond)
	}
	stop()
	got := n.Load()
	time.Sleep(20 * time.Millisecond)
	if n.Load() != got {
		t.Fatalf("fn called after stop returned: %d, then %d", got, n.Load())
	}
}

// TestRampDoubles: the intervals double from first to every, then stay.
// Only lower bounds are checked (a timer never fires early).
func TestRampDoubles(t *testing.T) {
	const first, every = 2 * time.Millisecond, 16 * time.Millisecond
	var calls []time.Time
	done := make(chan struct{})
	stop := Ramp(first, every, func(time.Time) {
		if calls = append(calls, time.Now()); len(calls) == 8 {
			close(done)
		}
	})
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("8 calls did not come in 10s")
	}
	// A ninth call may have come meanwhile: only the first eight count.
	stop()
	want := []time.Duration{2 * first, 4 * first, every, every, every, every, every} // gaps after calls 1..7
	for i, w := range want {
		if gap := calls[i+1].Sub(calls[i]); gap < w {
			t.Errorf("gap after call %d: %v, want at least %v", i+1, gap, w)
		}
	}
}
