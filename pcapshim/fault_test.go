package pcapshim

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/zcfabric/zc"
)

// A region is a shared mapping of a file another process can truncate:
// touching its pages then raises SIGBUS, which must not kill the tool.
// These tests truncate region files under readers.

// truncateRegion truncates a region file to zero bytes and grows it back
// (zeros) at the end of the test, so that the region's other users in
// this process (the creator's Close) do not fault.
func truncateRegion(t *testing.T, path string) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, 0); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Truncate(path, fi.Size()) })
}

// TestTruncatedUnderTcpdump: the region file of a queue zchost streams
// into is truncated while tcpdump reads it: tcpdump ends with the queue
// gone (a memory fault), exit status 1, not SIGBUS; what it wrote before
// is intact and in order.
func TestTruncatedUnderTcpdump(t *testing.T) {
	e := newEnv(t)
	e.startAgent(74, "-i", "gen:len=64,count=100000000,rate=50000", "-n", "1")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out := filepath.Join(t.TempDir(), "truncated.pcap")
	td := e.preloaded(ctx, "tcpdump", "-i", "zc:74@0", "-w", out)
	log, done := listening(t, td, "zc:74@0")
	time.Sleep(300 * time.Millisecond) // let it read some
	truncateRegion(t, filepath.Join(e.dir, "zc-74"))
	endsGone(t, td, log, done, "cluster 74 gone (region memory fault")
	frames := readPcap(t, out)
	if len(frames) < 2 {
		t.Fatalf("tcpdump wrote %d frames before the truncation:\n%s", len(frames), log)
	}
	// The last frame may be zeros: a packet the callback was writing out
	// when its pages went (the shim put zero pages in their place).
	prev := int64(-1)
	for i, f := range frames[:len(frames)-1] {
		seq, err := zc.CheckSynth(f)
		if err != nil || int64(seq) <= prev {
			t.Fatalf("frame %d: seq %d after %d: %v", i, seq, prev, err)
		}
		prev = int64(seq)
	}
	t.Logf("%d frames before the truncation; tcpdump said:\n%s", len(frames), log)
}

// TestTruncatedUnderCallerRead: the program holds a packet from
// pcap_next_ex when the region file is truncated, and reads its bytes
// outside any library call: it reads zeros instead of dying of SIGBUS,
// and its next pcap_next_ex fails with the queue gone. A fault outside
// the region still kills as SIGBUS does, and a handler the program
// installed before still gets its faults.
func TestTruncatedUnderCallerRead(t *testing.T) {
	e := newEnv(t)
	c := e.newRegion(75)
	prod, err := c.Producer(0)
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()
	for i := range 3 {
		if err := prod.Send([]byte(strings.Repeat(fmt.Sprintf("packet %d ", i), 10))); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	hold, stdin, sc, stderr := e.startHold(ctx, t, "zc:75@0")
	if !sc.Scan() || sc.Text() != "got 90" {
		hold.Wait()
		t.Fatalf("hold: first line %q, want \"got 90\"\n%s", sc.Text(), stderr.String())
	}
	prod.Close() // the producer stops touching the region before it goes
	truncateRegion(t, c.File())
	io.WriteString(stdin, "go\n")
	var lines []string
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if err := hold.Wait(); err != nil {
		t.Fatalf("hold after the truncation: %v\n%s\n%s", err, strings.Join(lines, "\n"), stderr.String())
	}
	want := []string{"sum 0", "next -1 zc:75@0: cluster 75 gone (region memory fault"}
	if len(lines) != 2 || lines[0] != want[0] || !strings.HasPrefix(lines[1], want[1]) {
		t.Errorf("hold printed %q, want %q then %q...", lines, want[0], want[1])
	}

	// Faults that are not the region's (on a queue of another region).
	e.newRegion(76)
	res, err := e.preloaded(ctx, filepath.Join(e.bin, "hold"), "elsewhere", "zc:76@0").CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || !ee.Sys().(syscall.WaitStatus).Signaled() || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGBUS {
		t.Errorf("a fault outside the region: %v, want death by SIGBUS\n%s", err, res)
	}
	res, err = e.preloaded(ctx, filepath.Join(e.bin, "hold"), "own", "zc:76@0").CombinedOutput()
	if !errors.As(err, &ee) || ee.ExitCode() != 3 || !strings.Contains(string(res), "own handler") {
		t.Errorf("a fault outside the region with the program's own handler: %v, want its handler (exit 3)\n%s", err, res)
	}
}

// TestIdleProducerRecoversDeadReader: a reader killed while it holds a
// packet, with the queue empty behind it, is replaced by the next while
// the producer is idle for longer than zc.HandshakeWait (an agent asleep
// between packets). The new reader waits on for the producer's answer
// while there is nothing to read, and the producer's next send takes the
// dead reader's buffer back. (The reader used to give up after
// HandshakeWait, and the buffer stayed lent for good.)
func TestIdleProducerRecoversDeadReader(t *testing.T) {
	e := newEnv(t)
	c := e.newRegion(77)
	prod, err := c.Producer(0)
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// start runs hold on the queue, sends a packet, and waits until hold
	// printed "got LEN".
	start := func(sent []byte) (*exec.Cmd, io.WriteCloser) {
		t.Helper()
		hold, stdin, sc, _ := e.startHold(ctx, t, "zc:77@0")
		time.Sleep(2 * zc.HandshakeWait) // attached (and, the second, past its handshake wait)
		if sent != nil {
			if err := prod.Send(sent); err != nil {
				t.Fatal(err)
			}
		}
		if want := fmt.Sprintf("got %d", 60); !sc.Scan() || sc.Text() != want {
			hold.Process.Kill()
			hold.Wait()
			t.Fatalf("hold: first line %q, want %q", sc.Text(), want)
		}
		return hold, stdin
	}
	pkt := []byte(strings.Repeat("idle 12345", 6))
	first, _ := start(pkt)
	first.Process.Kill() // holding the packet: the queue is empty behind it
	first.Wait()
	second, stdin := start(pkt)
	defer func() { stdin.Close(); second.Process.Kill(); second.Wait() }()
	if st := prod.Stats(); st.Recovered != 1 || prod.Outstanding() != 1 {
		t.Errorf("producer: recovered %d, outstanding %d; want 1 and 1 (the dead reader's buffer taken back, the new reader's lent)", st.Recovered, prod.Outstanding())
	}
}

// startHold starts testdata/hold.c's hold mode on dev: it reads one
// packet, prints "got LEN" and waits for a line on its stdin.
func (e *env) startHold(ctx context.Context, t *testing.T, dev string) (hold *exec.Cmd, stdin io.WriteCloser, stdout *bufio.Scanner, stderr *strings.Builder) {
	t.Helper()
	hold = e.preloaded(ctx, filepath.Join(e.bin, "hold"), "hold", dev)
	stdin, err := hold.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := hold.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr = new(strings.Builder)
	hold.Stderr = stderr
	if err := hold.Start(); err != nil {
		t.Fatal(err)
	}
	return hold, stdin, bufio.NewScanner(out), stderr
}
