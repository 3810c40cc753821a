// Package ticker runs a function at a fixed interval on a goroutine of its
// own, until stopped.
package ticker

import "time"

// Every calls fn every interval (counted from the end of the previous
// call) until the returned function is called; that function returns
// once fn is no longer running. An interval <= 0 never calls fn.
func Every(interval time.Duration, fn func(now time.Time)) (stop func()) {
	return Ramp(interval, interval, fn)
}

// Ramp calls fn after first, then after intervals that double from
// first up to every, then every interval, until the returned function is
// called; that function returns once fn is no longer running. A caller
// thus looks soon after it starts (a run that just began shows), then at
// its steady pace. first or every <= 0 never calls fn.
func Ramp(first, every time.Duration, fn func(now time.Time)) (stop func()) {
	if first <= 0 || every <= 0 {
		return func() {}
	}
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		next := min(first, every)
		t := time.NewTimer(next)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case now := <-t.C:
				fn(now)
				next = min(2*next, every)
				t.Reset(next)
			}
		}
	}()
	return func() { close(done); <-finished }
}
