package main

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/zcfabric/zc"
	"github.com/zcfabric/zc/internal/pcaptest"
)

// cluster creates a cluster whose queue 0 has buffers of its own (as
// zchost run --queue-buffers makes it) for zsend to produce into, and
// returns its name and its consumer end.
func cluster(t *testing.T) (string, *zc.Queue) {
	t.Helper()
	c := newCluster(t)
	cons, err := c.Consumer(0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cons.Close() })
	return zc.Name{Cluster: c.ID(), Queue: 0}.String(), cons
}

// newCluster is cluster without the consumer.
func newCluster(t *testing.T) *zc.Cluster {
	t.Helper()
	base := "/dev/shm"
	if _, err := os.Stat(base); err != nil {
		base = ""
	}
	dir, err := os.MkdirTemp(base, "zsend-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	t.Setenv("ZC_DIR", dir)
	c, err := zc.CreateCluster(zc.Config{ID: 0x7d000000 | rand.Uint32N(1<<24), QueueLen: 64, QueueBuffers: 64, Backing: zc.BackingShm})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// writePcap writes a pcap file of frames of the given lengths (each a
// ramp of bytes) and returns its path.
func writePcap(t *testing.T, lens ...int) string {
	frames := make([][]byte, len(lens))
	for i, l := range lens {
		frames[i] = make([]byte, l)
		for j := range frames[i] {
			frames[i][j] = byte(i + j)
		}
	}
	return pcaptest.File(t, frames...)
}

// recvLens reads what is in q and returns the lengths of the frames.
func recvLens(t *testing.T, q *zc.Queue) []int {
	t.Helper()
	var lens []int
	pkts := make([]zc.Packet, 64)
	for {
		n, err := q.RecvBurst(pkts)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return lens
		}
		for _, p := range pkts[:n] {
			lens = append(lens, len(p.Data))
		}
		q.Release(pkts[:n]...)
	}
}

// TestPcapCut: zsend -f sends a frame longer than the buffers cut to their
// size, goes on with the rest, and says how many it cut, in the summary
// (text and JSON) and on standard error; it exits 0.
func TestPcapCut(t *testing.T) {
	for _, asJSON := range []bool{false, true} {
		name, cons := cluster(t)
		path := writePcap(t, 100, 3000, 2048, 2049, 60)
		args := []string{"-o", name, "-f", path, "-n", "0"}
		if asJSON {
			args = append(args, "--json")
		}
		var stdout, stderr bytes.Buffer
		if code := run(args, &stdout, &stderr); code != 0 {
			t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, &stdout, &stderr)
		}
		if got, want := recvLens(t, cons), []int{100, 2048, 2048, 2048, 60}; !slices.Equal(got, want) {
			t.Errorf("frames received: %v, want %v", got, want)
		}
		if !strings.Contains(stderr.String(), "frames longer than the 2048-byte buffers, cut to 2048 bytes: 2 of 5 read") {
			t.Errorf("stderr does not count the 2 frames cut:\n%s", &stderr)
		}
		if asJSON {
			var s map[string]any
			if err := json.Unmarshal(stdout.Bytes(), &s); err != nil {
				t.Fatalf("summary %q: %v", &stdout, err)
			}
			if s["packets"] != 5.0 || s["truncated"] != 2.0 || s["error"] != nil {
				t.Errorf("summary %v: want 5 packets, 2 truncated, no error", s)
			}
		} else if !strings.Contains(stdout.String(), "sent 5 packets, 6304 bytes") || !strings.Contains(stdout.String(), "frames cut to 2048 bytes: 2") {
			t.Errorf("summary does not say 5 packets, 6304 bytes, 2 cut:\n%s", &stdout)
		}
	}
}

// TestPcapCorrupt: a pcap file cut short in its third frame: zsend sends
// the two frames before it, prints its summary and what went wrong (the
// file and the frame), and exits 1.
func TestPcapCorrupt(t *testing.T) {
	name, cons := cluster(t)
	path := writePcap(t, 100, 200, 300)
	if err := os.Truncate(path, 24+2*16+300+16+50); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	if code := run([]string{"-o", name, "-f", path, "-n", "0"}, &stdout, &stderr); code != 1 {
		t.Fatalf("exit %d, want 1\nstdout:\n%s\nstderr:\n%s", code, &stdout, &stderr)
	}
	if got, want := recvLens(t, cons), []int{100, 200}; !slices.Equal(got, want) {
		t.Errorf("frames received: %v, want %v", got, want)
	}
	if !strings.Contains(stdout.String(), "sent 2 packets, 300 bytes") {
		t.Errorf("summary does not say 2 packets, 300 bytes:\n%s", &stdout)
	}
	if want := "zsend: read " + path + ": frame 3: unexpected EOF"; !strings.Contains(stderr.String(), want) {
		t.Errorf("stderr does not say %q:\n%s", want, &stderr)
	}
}

// TestUsage: bad values, a stray argument, and a frame length beyond the
// queue's buffers (known once it is open) are usage errors naming the
// flag: exit 2, nothing sent.
func TestUsage(t *testing.T) {
	name, cons := cluster(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-r", "-1"}, "zsend: -r -1: want a finite number, 0 or more"},
		{[]string{"--wait", "-1s"}, "zsend: --wait -1s: want 0 or more"},
		{[]string{"-l", "0"}, "zsend: -l 0: want 60 to 65536 bytes"},
		{[]string{"-l", "59"}, "zsend: -l 59: want 60 to 65536 bytes"},
		{[]string{"-l", "70000"}, "zsend: -l 70000: want 60 to 65536 bytes"},
		{[]string{"-l", "2049"}, "zsend: -l 2049: " + name + " has 2048-byte buffers: want 60 to 2048 bytes"},
		{[]string{"foo", "-n", "bad"}, `zsend: unexpected argument "foo"`},
		{[]string{"--lossless", "false"}, `--lossless=false`},
	} {
		var stdout, stderr bytes.Buffer
		args := append([]string{"-o", name, "-n", "3"}, tc.args...)
		if code := run(args, &stdout, &stderr); code != 2 || !strings.Contains(stderr.String(), tc.want) || !strings.Contains(stderr.String(), "Usage: zsend") {
			t.Errorf("%q: exit %d, want 2 and %q then the usage\nstdout:\n%s\nstderr:\n%s", tc.args, code, tc.want, &stdout, &stderr)
		}
	}
	if got := recvLens(t, cons); len(got) != 0 {
		t.Errorf("%d frames sent, want none", len(got))
	}
	var stdout, stderr bytes.Buffer
	if code := run([]string{"-o", name, "-n", "3", "-l", "2048"}, &stdout, &stderr); code != 0 || len(recvLens(t, cons)) != 3 {
		t.Errorf("-l 2048: exit %d, want 0 and 3 frames\n%s", code, &stderr)
	}
}

// TestPacedAnswersNewReader: a paced zsend (a frame every 2.5 s) takes
// back the buffer of a reader that went away holding it, when a new
// reader takes the queue over with a frame waiting: before the new reader
// stops waiting for it (zc.HandshakeWait, 1.5 s), though no frame is due
// by then. Before, zsend slept until its next frame and the buffer stayed
// lent for good.
func TestPacedAnswersNewReader(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: takes 5 s (a frame every 2.5 s)")
	}
	c := newCluster(t)
	name := zc.Name{Cluster: c.ID(), Queue: 0}.String()
	dead, err := zc.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	// dead is never closed: it goes away holding frame 0.

	var stdout, stderr bytes.Buffer
	code := make(chan int, 1)
	go func() { code <- run([]string{"-o", name, "-r", "0.4", "-n", "3"}, &stdout, &stderr) }()
	got := make([]zc.Packet, 4)
	wait := func(what string, ok func() bool) {
		t.Helper()
		for deadline := time.Now().Add(20 * time.Second); !ok(); time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("no %s in 20 s; zsend: %s", what, stderr.String())
			}
		}
	}
	wait("frame 0", func() bool {
		n, err := dead.RecvBurst(got[:1])
		if err != nil {
			t.Fatal(err)
		}
		return n == 1
	})
	wait("frame 1 sent", func() bool { return c.Stats()[0].Sent >= 2 })

	next, err := zc.Open(name, zc.Force())
	if err != nil {
		t.Fatal(err)
	}
	defer next.Close()
	wait("frame 1 read by the new reader", func() bool {
		n, err := next.RecvBurst(got)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return false
		}
		if st := c.Stats()[0]; st.Recovered != 1 {
			t.Fatalf("the new reader read before zsend took back the dead reader's buffer: recovered %d, want 1", st.Recovered)
		}
		next.Release(got[:n]...)
		return true
	})
	if rc := <-code; rc != 0 {
		t.Fatalf("zsend exited %d: %s", rc, stderr.String())
	}
	if st := c.Stats()[0]; st.Sent != 3 || st.Recovered != 1 {
		t.Fatalf("sent %d, recovered %d; want 3 and 1", st.Sent, st.Recovered)
	}
}
