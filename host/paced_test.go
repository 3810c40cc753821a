package host

import (
	"context"
	"testing"
	"time"

	"github.com/zcfabric/zc"
)

// countSink takes every packet and counts it.
type countSink struct{ n int }

func (c *countSink) Name() string                       { return "count" }
func (c *countSink) Send(pkts []zc.Packet) (int, error) { c.n += len(pkts); return len(pkts), nil }
func (c *countSink) Flush() error                       { return nil }
func (c *countSink) Stats() SinkStats                   { return SinkStats{} }
func (c *countSink) Mode() string                       { return "test" }
func (c *countSink) Close() error                       { return nil }

// TestPacedSinkRate: a paced sink never runs ahead of its rate. Only the
// lower bound on time is checked (a slow machine may take longer, never
// shorter): 2000 packets at 20,000 pps, with at most 32 packets of burst
// credit, cannot take less than (2000-32)/20000 s.
func TestPacedSinkRate(t *testing.T) {
	const n, pps = 2000, 20000
	inner := &countSink{}
	s := NewPacedSink(inner, pps)
	pkts := make([]zc.Packet, 64)
	start := time.Now()
	sent, err := 0, error(nil)
	for sent < n && err == nil {
		var k int
		k, err = sendAll(context.Background(), s, pkts[:min(len(pkts), n-sent)])
		sent += k
	}
	elapsed := time.Since(start)
	if err != nil || inner.n != n {
		t.Fatalf("sent %d (inner %d): %v", sent, inner.n, err)
	}
	if min := time.Duration(float64(n-32) / pps * float64(time.Second)); elapsed < min {
		t.Fatalf("%d packets at %d pps took %v, less than %v", n, pps, elapsed, min)
	}
}
