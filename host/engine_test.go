package host

import (
	"context"
	"testing"
	"time"

	"github.com/zcfabric/zc"
)

// TestEngineSourceStats: while the engine runs, SourceStats shows the
// sources' progress (published from the engine's goroutine, so reading it
// races with nothing); after Run it shows the final counts.
func TestEngineSourceStats(t *testing.T) {
	c := newCluster(t, 4096)
	const total = 20000
	cfg, err := ParseGen("len=64,count=20000,rate=20000")
	if err != nil {
		t.Fatal(err)
	}
	cons, stop, eng := startEngineWith(t, c, []Source{NewGen("gen", cfg)})
	defer stop()
	pkts := make([]zc.Packet, 64)
	got := 0
	sawProgress := false
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second) // hang guard
	defer cancel()
	for got < total {
		n, err := cons.RecvBurstWait(ctx, pkts)
		if err != nil {
			t.Fatalf("after %d packets: %v", got, err)
		}
		got += n
		cons.Release(pkts[:n]...)
		if ss := eng.SourceStats(); len(ss) == 1 && ss[0].Packets > 0 && ss[0].Packets < total {
			sawProgress = true
		}
	}
	stop()
	if !sawProgress {
		t.Error("SourceStats never showed a run in progress")
	}
	ss := eng.SourceStats()
	if len(ss) != 1 || ss[0].Packets != total {
		t.Errorf("SourceStats after the run = %+v, want %d packets", ss, total)
	}
}
