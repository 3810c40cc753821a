package pcapshim

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gopacket/gopacket/pcapgo"
	"github.com/zcfabric/zc"
)

// TestSnapLenAndFilter: the filter sees the whole packet and the snap
// length cuts only what is delivered, as on Linux: tcpdump -s 20 udp
// captures every UDP frame, 20 bytes of each, and a filter reading past
// the snap length (the generator's magic in the UDP payload) still
// matches. The shim cut first and filtered the cut packet: nothing
// passed.
func TestSnapLenAndFilter(t *testing.T) {
	e := newEnv(t)
	const n = 200
	a := e.startAgent(66, "-i", fmt.Sprintf("gen:len=64,count=%d", n), "-n", "1", "--wait-consumers", "20s", "--lossless", "--keep")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, c := range []struct {
		snap   int
		filter string
	}{{20, "udp"}, {42, "udp[8:4] = 0x5a43474e"}} {
		out := filepath.Join(t.TempDir(), "snap.pcap")
		res, err := e.preloaded(ctx, "tcpdump", "-i", "zc:66@0", "-s", strconv.Itoa(c.snap), "-c", strconv.Itoa(n/2), "-w", out, c.filter).CombinedOutput()
		if err != nil {
			t.Fatalf("tcpdump -s %d %s: %v\n%s\nzchost:\n%s", c.snap, c.filter, err, res, a)
		}
		f, err := os.Open(out)
		if err != nil {
			t.Fatal(err)
		}
		r, err := pcapgo.NewReader(f)
		if err != nil {
			t.Fatal(err)
		}
		k := 0
		for ; ; k++ {
			_, ci, err := r.ReadPacketData()
			if err != nil {
				break
			}
			if ci.CaptureLength != c.snap || ci.Length != 64 {
				t.Fatalf("-s %d: frame %d captured %d of %d bytes, want %d of 64", c.snap, k, ci.CaptureLength, ci.Length, c.snap)
			}
		}
		f.Close()
		if k != n/2 {
			t.Fatalf("tcpdump -s %d %q: %d frames, want %d\n%s", c.snap, c.filter, k, n/2, res)
		}
	}
	a.stop(t)
}

// TestNextExKeepsTheRest: a libpcap program that reads a packet or two
// with pcap_next_ex and closes takes no more off the queue than it
// delivered (it took a whole burst of up to 256, lost at pcap_close):
// three runs in a row read seq 0-1, 2-3, 4-5.
func TestNextExKeepsTheRest(t *testing.T) {
	e := newEnv(t)
	const n = 1000
	a := e.startAgent(67, "-i", fmt.Sprintf("gen:len=100,count=%d", n), "-n", "1", "--wait-consumers", "20s", "--lossless", "--keep")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for run := range 3 {
		c := e.preloaded(ctx, filepath.Join(e.bin, "nextex"), "zc:67@0", "2")
		var stdout, stderr bytes.Buffer
		c.Stdout, c.Stderr = &stdout, &stderr
		if err := c.Run(); err != nil {
			t.Fatalf("nextex: %v\n%s\nzchost:\n%s", err, stderr.String(), a)
		}
		want := fmt.Sprintf("seq 100 %d\nseq 100 %d\nstats 2 0\n", 2*run, 2*run+1)
		if stdout.String() != want {
			t.Fatalf("run %d of nextex: printed\n%swant\n%s%s", run, stdout.String(), want, stderr.String())
		}
		if !strings.Contains(stderr.String(), "taken but not delivered 0") {
			t.Errorf("run %d: packets taken and not delivered:\n%s", run, stderr.String())
		}
	}
	// The rest is all there, from seq 6 on.
	rest := filepath.Join(t.TempDir(), "rest.pcap")
	res, err := e.preloaded(ctx, "tcpdump", "-i", "zc:67@0", "-c", strconv.Itoa(n-6), "-w", rest).CombinedOutput()
	if err != nil {
		t.Fatalf("tcpdump for the rest: %v\n%s", err, res)
	}
	for i, f := range readPcap(t, rest) {
		if seq, err := zc.CheckSynth(f); err != nil || seq != uint64(6+i) {
			t.Fatalf("frame %d of the rest: seq %d, %v; want %d", i, seq, err, 6+i)
		}
	}
	a.stop(t)
}

// TestRealLibpcapErrors: what the real libpcap does on a queue's handle
// (compile the filter, open the -w file) reports its own error, which the
// shim's pcap_geterr hid ("tcpdump: " and nothing); the calls a queue
// cannot honour say so: sending (pcap_inject, pcap_sendpacket) and the
// adapter's clock (a warning, as libpcap gives).
func TestRealLibpcapErrors(t *testing.T) {
	e := newEnv(t)
	a := e.startAgent(68, "-n", "1")
	defer a.stop(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"-i", "zc:68@0", "-c", "1", "bogus filter"}, "syntax error"},
		{[]string{"-i", "zc:68@0", "-c", "1", "-w", "/nonexistent/dir/x.pcap"}, "No such file or directory"},
	} {
		res, err := e.preloaded(ctx, "tcpdump", c.args...).CombinedOutput()
		if err == nil || !strings.Contains(string(res), c.want) {
			t.Errorf("tcpdump %q: %v, want an error saying %q:\n%s", c.args, err, c.want, res)
		}
	}
	out, err := e.preloaded(ctx, filepath.Join(e.bin, "apicheck"), "zc:68@0").CombinedOutput()
	if err != nil {
		t.Fatalf("apicheck: %v\n%s", err, out)
	}
	for _, want := range []string{
		fmt.Sprintf("tstamp_type %d\n", 3), // PCAP_WARNING_TSTAMP_TYPE_NOTSUP
		"inject -1 zc:68@0: sending is not supported: the shim reads a queue (zsend -o zc:68@0 writes one)",
		"sendpacket -1 zc:68@0: sending is not supported",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("apicheck does not say %q:\n%s", want, out)
		}
	}
}

// TestListOrder: tcpdump -D lists the interfaces before the queues, so
// that a tcpdump without -i takes an interface, not a queue's one reader
// place, and says when a queue's consumer is gone.
func TestListOrder(t *testing.T) {
	e := newEnv(t)
	a := e.startAgent(69, "-n", "2")
	defer a.stop(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// A reader of queue 1, killed: its claim stays, its process is gone.
	r := e.preloaded(ctx, "tcpdump", "-i", "zc:69@1", "-w", "/dev/null")
	_, done := listening(t, r, "zc:69@1")
	r.Process.Kill()
	<-done
	r.Wait()
	list, err := e.preloaded(ctx, "tcpdump", "-D").CombinedOutput()
	if err != nil {
		t.Fatalf("tcpdump -D: %v\n%s", err, list)
	}
	lo := regexp.MustCompile(`(?m)^(\d+)\.lo\b`).FindSubmatch(list)
	q := regexp.MustCompile(`(?m)^(\d+)\.zc:69@0 `).FindSubmatch(list)
	if lo == nil || q == nil {
		t.Fatalf("tcpdump -D lists no lo or no zc:69@0:\n%s", list)
	}
	if il, _ := strconv.Atoi(string(lo[1])); il > func() int { n, _ := strconv.Atoi(string(q[1])); return n }() {
		t.Errorf("a queue is listed before lo:\n%s", list)
	}
	if !strings.Contains(string(list), fmt.Sprintf("zc:69@1 (zcfabric cluster 69 queue 1 (consumer gone, its place free: pid %d))", r.Process.Pid)) {
		t.Errorf("tcpdump -D does not say queue 1's reader (pid %d) is gone:\n%s", r.Process.Pid, list)
	}
}

// TestDropsAfterClose: the queue's drops a reader saw stay in its
// statistics when the cluster's creator closes it: tcpdump's "dropped by
// kernel" matches zchost's count (it said 0 once the queue was gone).
func TestDropsAfterClose(t *testing.T) {
	e := newEnv(t)
	const n = 20000
	a := e.startAgent(70, "-i", fmt.Sprintf("gen:len=64,count=%d", n), "-n", "1", "-q", "64", "--wait-consumers", "20s", "--drain-timeout", "60s")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	td := e.preloaded(ctx, "tcpdump", "-i", "zc:70@0", "-w", "/dev/null")
	out, done := listening(t, td, "zc:70@0")
	// Stopped, the reader lets the 64-packet queue fill: the generator
	// drops the rest. Then it drains, and zchost closes the cluster.
	td.Process.Signal(syscall.SIGSTOP)
	// (zchost waits for it to drain, or, when the queue was empty as it
	// stopped, ends at once.)
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if log := a.String(); strings.Contains(log, "waiting for consumers to drain") || strings.Contains(log, "summary:") {
			break
		}
	}
	td.Process.Signal(syscall.SIGCONT)
	log := a.wait(t)
	<-done
	td.Wait()
	m := regexp.MustCompile(`dropped=(\d+)`).FindStringSubmatch(log)
	if m == nil || m[1] == "0" {
		t.Fatalf("zchost dropped nothing (the test needs drops):\n%s", log)
	}
	if want := m[1] + " packets dropped by kernel"; !strings.Contains(out.String(), want) {
		t.Errorf("tcpdump does not say %q:\n%s", want, out.String())
	}
	if st := shimStats(t, out.String()); strconv.FormatUint(st[4], 10) != m[1] {
		t.Errorf("shim statistics %v: queue drops %d, zchost dropped %s", st, st[4], m[1])
	}
}
