package agent

import (
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/zcfabric/zc/host/doorbell"
)

// TestRelayRateLimited: a guest that rings the agent's doorbell server
// without pause (here the host end of the eventfd, rung as fast as it
// takes it, as QEMU does for a guest's writes) costs the agent at most one
// relay pass per relayMinGap, and the relay ends when the server closes.
func TestRelayRateLimited(t *testing.T) {
	dir := t.TempDir()
	mem, err := os.Create(filepath.Join(dir, "region"))
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	if err := mem.Truncate(1 << 20); err != nil {
		t.Fatal(err)
	}
	srv, err := doorbell.Listen(doorbell.Config{Path: filepath.Join(dir, "bell.sock"), Memory: mem, Vectors: 1, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	var passes atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		relayRings(srv, func() int { passes.Add(1); return 0 })
	}()
	start, rings := time.Now(), 0
	for time.Since(start) < time.Second {
		if err := srv.RingHost(0); err != nil {
			t.Fatal(err)
		}
		rings++
	}
	elapsed := time.Since(start)
	srv.Close()
	select {
	case <-done:
	case <-time.After(5 * time.Second): // a hang bound
		t.Fatal("the relay did not end when the server closed")
	}
	limit := int64(time.Since(start)/relayMinGap) + 1
	t.Logf("%d rings in %v: %d relay passes (at most %d)", rings, elapsed, passes.Load(), limit)
	if p := passes.Load(); p == 0 || p > limit {
		t.Errorf("%d relay passes for %d rings in %v, want 1..%d", p, rings, elapsed, limit)
	}
}
