// Package ticker runs a function at a fixed interval on a goroutine of its
// own, until stopped.
package ticker

import "time"

// Every calls fn every interval until the returned function is called;
// that function returns once fn is no longer running. An interval <= 0
// never calls fn.
func Every(interval time.Duration, fn func(now time.Time)) (stop func()) {
	if interval <= 0 {
		return func() {}
	}
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case now := <-t.C:
				fn(now)
			}
		}
	}()
	return func() { close(done); <-finished }
}

// Paced calls fn first after fast, then after fast again when its
// previous call returned true (it found something going on), else after
// slow, until the returned function is called; that function returns once
// fn is no longer running. A caller that looks often while busy costs one
// timer wake-up per slow interval while idle. fast or slow <= 0 never
// calls fn.
func Paced(fast, slow time.Duration, fn func(now time.Time) (busy bool)) (stop func()) {
	if fast <= 0 || slow <= 0 {
		return func() {}
	}
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTimer(fast)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case now := <-t.C:
				if fn(now) {
					t.Reset(fast)
				} else {
					t.Reset(slow)
				}
			}
		}
	}()
	return func() { close(done); <-finished }
}
