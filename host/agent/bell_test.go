package agent

import (
	"math/bits"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/zcfabric/zc/host/doorbell"
)

// TestRelayRateLimited: a guest that rings the agent's doorbell server
// without pause (here the host end of the eventfd, rung as fast as it
// takes it, as QEMU does for a guest's writes) costs the agent about one
// relay pass per relayMaxGap; a ring after a quiet spell gets a pass at
// once; the relay ends when the server closes.
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
	stormPasses := passes.Load()
	// After a quiet gap, one ring is answered by a pass of its own.
	time.Sleep(2 * relayMaxGap)
	before := passes.Load()
	if err := srv.RingHost(0); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); passes.Load() == before; { // a hang bound
		if time.Now().After(deadline) {
			t.Fatal("a ring after a quiet spell got no relay pass")
		}
		time.Sleep(time.Millisecond)
	}
	srv.Close()
	select {
	case <-done:
	case <-time.After(5 * time.Second): // a hang bound
		t.Fatal("the relay did not end when the server closed")
	}
	// The gap doubles from relayMinGap to relayMaxGap: a few passes on the
	// way up (and a few more while the first rings come one by one), then
	// one per relayMaxGap.
	limit := int64(elapsed/relayMaxGap) + 5 + int64(bits.Len64(uint64(relayMaxGap/relayMinGap)))
	t.Logf("%d rings in %v: %d relay passes (at most %d)", rings, elapsed, stormPasses, limit)
	if stormPasses == 0 || stormPasses > limit {
		t.Errorf("%d relay passes for %d rings in %v, want 1..%d", stormPasses, rings, elapsed, limit)
	}
}
