package agent

import (
	"context"
	"fmt"
	"os"
	"strings"
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

// TestAdoptResumesFiniteSource: an agent that adopts its predecessor's
// cluster (stopped mid-way with KeepPlugged: its last record is exact)
// resumes a counted generator where it got, so that the queue is sent
// each frame once, and says so. The position comes from the marks file
// (written after every burst) where the record is older, as a killed
// agent's is.
func TestAdoptResumesFiniteSource(t *testing.T) {
	fakeVMs(t)
	var logs strings.Builder
	cfg := Config{ID: 74, Queues: 1, QueueLen: 256, Backing: zc.BackingShm,
		Sources: []string{"gen:len=64,count=100,rate=100"},
		Keep:    true, Adopt: true, KeepPlugged: true, StateDir: t.TempDir(),
		Log: hclog.New(&hclog.LoggerOptions{Output: &logs, Level: hclog.Info})}
	// runUntil runs a until its queue was sent at least n packets.
	runUntil := func(a *Agent, n uint64) {
		t.Helper()
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- a.Run(ctx) }()
		defer func() { cancel(); <-done }()
		for deadline := time.Now().Add(20 * time.Second); a.Stats()[0].Sent < n; time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("queue sent %d in 20s, want %d", a.Stats()[0].Sent, n)
			}
		}
	}
	a := mustNew(t, cfg)
	runUntil(a, 30)
	a.Close()
	f, err := status.Read(status.Path(74))
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Sources) != 1 || f.Sources[0].Name != "gen:len=64,count=100,rate=100" || f.Sources[0].Position != sent(f) {
		t.Fatalf("record after a keep-plugged stop: sources %+v, sent %d; want the generator at what the queue was sent", f.Sources, sent(f))
	}
	pos := f.Sources[0].Position
	if pos < 30 || pos >= 100 {
		t.Fatalf("stopped at %d of 100, want mid-way", pos)
	}
	if pid, marks, err := status.ReadMarks(status.MarksPath(74)); err != nil || pid != f.PID || len(marks) != 1 || marks[0] != pos {
		t.Fatalf("marks after a keep-plugged stop: pid %d, %v (%v); want pid %d, [%d]", pid, marks, err, f.PID, pos)
	}
	// A killed agent's record is up to a second old; its marks are not.
	// Make the record stale: the successor must resume from the marks.
	f.Sources[0].Position = pos - 20
	if err := status.Write(status.Path(74), f); err != nil {
		t.Fatal(err)
	}

	b := mustNew(t, cfg)
	b.SetKeepPlugged(false)
	defer b.Close()
	if want := fmt.Sprintf(`finite source resumed where its predecessor got (the last burst before a kill may be sent again): source="gen:len=64,count=100,rate=100" position=%d`, pos); !strings.Contains(logs.String(), want) {
		t.Errorf("the adopting agent did not say it resumed the generator at %d:\n%s", pos, logs.String())
	}
	runUntil(b, 100)
	time.Sleep(100 * time.Millisecond) // a frame too many would be sent by now (100/s)
	if st := b.Stats()[0]; st.Sent != 100 || st.Drops != 0 {
		t.Fatalf("the queue was sent %d (dropped %d) over both agents, want each of the 100 frames once", st.Sent, st.Drops)
	}
}

// sent is what the record says the cluster's first queue was sent.
func sent(f status.File) uint64 {
	if len(f.Regions) == 0 || len(f.Regions[0].Queues) == 0 {
		return 0
	}
	return f.Regions[0].Queues[0].Sent
}
