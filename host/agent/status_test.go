package agent

import (
	"context"
	"os"
	"regexp"
	"strconv"
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

// TestAdoptWarnsFiniteSourceRestarts: an agent that adopts its
// predecessor's cluster starts a finite source (a generator with a
// count) from its beginning, and says so with what the cluster had been
// sent; a source without an end (a capture, a generator without a count)
// is not named.
func TestAdoptWarnsFiniteSourceRestarts(t *testing.T) {
	fakeVMs(t)
	var logs strings.Builder
	cfg := Config{ID: 74, Queues: 1, QueueLen: 64, Backing: zc.BackingShm,
		Sources: []string{"gen:len=64,count=40", "gen:len=64,rate=1"},
		Keep:    true, Adopt: true, KeepPlugged: true, StateDir: t.TempDir(),
		Log: hclog.New(&hclog.LoggerOptions{Output: &logs, Level: hclog.Info})}
	a := mustNew(t, cfg)
	// Run until the status file shows the 40 (and the first paced one).
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		f, err := status.Read(status.Path(74))
		if err == nil && len(f.Regions) > 0 && len(f.Regions[0].Queues) > 0 && f.Regions[0].Queues[0].Sent >= 41 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status file never showed 41 sent: %+v (%v)", f, err)
		}
	}
	cancel()
	<-done
	a.Close()
	if strings.Contains(logs.String(), "finite source") {
		t.Fatalf("a fresh agent warned about a restart:\n%s", logs.String())
	}

	b := mustNew(t, cfg)
	b.SetKeepPlugged(false)
	defer b.Close()
	out := logs.String()
	m := regexp.MustCompile(`finite source starts from its beginning again after a restart: what it sent before is sent again: source="gen:len=64,count=40" cluster_sent_before=(\d+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("the adopting agent did not say its counted generator starts over:\n%s", out)
	}
	if n, _ := strconv.Atoi(m[1]); n < 41 {
		t.Errorf("cluster_sent_before=%s, want the 41 or more the status file showed", m[1])
	}
	if strings.Contains(out, `source="gen:len=64,rate=1" cluster_sent_before`) || strings.Count(out, "finite source") != 1 {
		t.Errorf("the adopting agent named a source without an end:\n%s", out)
	}
}
