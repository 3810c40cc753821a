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

// TestPacedFollowsBusy: fn runs at the fast interval while it says busy,
// then at the slow one. Counted, not timed: the slow interval is an hour,
// so once fn says it is idle it is not called again here.
func TestPacedFollowsBusy(t *testing.T) {
	var n atomic.Int32
	idle := make(chan struct{})
	stop := Paced(time.Millisecond, time.Hour, func(time.Time) bool {
		if n.Add(1) == 5 {
			close(idle)
			return false
		}
		return true
	})
	defer stop()
	select {
	case <-idle:
	case <-time.After(10 * time.Second):
		t.Fatalf("fn called %d times in 10s at a 1ms fast interval, want 5", n.Load())
	}
	time.Sleep(50 * time.Millisecond)
	if got := n.Load(); got != 5 {
		t.Fatalf("fn called %d times, want 5: called again within the slow interval after saying idle", got)
	}
}
