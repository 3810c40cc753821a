package agent

import (
	"context"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/zcfabric/zc"
	"github.com/zcfabric/zc/host/status"
)

// TestStatusTouchedWhileIdle: an agent whose counters stand still does
// not rewrite its status file every second (a file created, written and
// renamed: the most of an idle agent's CPU), it touches it; the file
// still says when the agent last looked (Checked, its last sign of life,
// which a successor's restart gap is measured from), and a change is
// written again at once.
func TestStatusTouchedWhileIdle(t *testing.T) {
	fakeVMs(t)
	const id = 73
	a := mustNew(t, Config{ID: id, Queues: 1, QueueLen: 64, Backing: zc.BackingShm,
		Sources: []string{"gen:len=64,rate=0.2"}, Log: hclog.NewNullLogger()})
	defer a.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() { cancel(); <-done }()

	path := status.Path(id)
	read := func() (status.File, uint64) {
		t.Helper()
		f, err := status.Read(path)
		if err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		return f, fi.Sys().(*syscall.Stat_t).Ino
	}
	sent := func(f status.File) uint64 {
		if len(f.Regions) == 0 || len(f.Regions[0].Queues) == 0 {
			return 0
		}
		return f.Regions[0].Queues[0].Sent
	}
	waitFor := func(what string, ok func(status.File) bool) status.File {
		t.Helper()
		for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			if f, _ := read(); ok(f) {
				return f
			}
		}
		f, _ := read()
		t.Fatalf("status file never showed %s: %+v", what, f)
		return f
	}
	// The generator sends its first packet at once, the next 5 s later.
	first := waitFor("the first packet sent", func(f status.File) bool { return sent(f) == 1 })
	_, ino := read()
	later := waitFor("a look 1.2 s after the last write", func(f status.File) bool {
		return f.Checked.Sub(f.Updated) > 1200*time.Millisecond
	})
	if _, ino2 := read(); sent(later) != 1 || ino2 != ino || !later.Updated.Equal(first.Updated) {
		t.Fatalf("idle agent rewrote its status file (inode %d then %d, updated %v then %v, sent %d)",
			ino, ino2, first.Updated, later.Updated, sent(later))
	}
	second := waitFor("the second packet sent", func(f status.File) bool { return sent(f) == 2 })
	if !second.Updated.After(first.Updated) || second.Checked.Before(second.Updated) {
		t.Fatalf("status file after a change: updated %v (before: %v), checked %v", second.Updated, first.Updated, second.Checked)
	}
}
