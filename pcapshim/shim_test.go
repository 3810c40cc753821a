package pcapshim

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gopacket/gopacket/pcapgo"
	"github.com/zcfabric/zc"
)

// The tests build libzcpcap.so with cc, zchost with go build, and run
// stock tcpdump with LD_PRELOAD against queues zchost feeds from its
// generator: the shim is cross-tested against the Go producer.

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
)

// TestMain removes what tools built.
func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// tools builds the shim, zchost and the nextex test program once, into a
// directory that lives as long as the test binary, and returns it. It
// skips the test when cc, tcpdump or the libpcap headers are missing.
func tools(t *testing.T) string {
	t.Helper()
	for _, p := range []string{"cc", "tcpdump"} {
		if _, err := exec.LookPath(p); err != nil {
			t.Skipf("no %s (scripts/setup.sh installs it): %v", p, err)
		}
	}
	if _, err := os.Stat("/usr/include/pcap/pcap.h"); err != nil {
		t.Skip("no libpcap headers (apt-get install libpcap-dev; scripts/setup.sh installs it)")
	}
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "zcpcap-test-")
		if buildErr != nil {
			return
		}
		steps := [][]string{
			{"cc", "-O2", "-Wall", "-Wextra", "-Werror", "-fPIC", "-shared", "-o", filepath.Join(buildDir, "libzcpcap.so"), "src/zcpcap.c", "-ldl"},
			{"cc", "-O2", "-Wall", "-o", filepath.Join(buildDir, "nextex"), "testdata/nextex.c", "-lpcap"},
			{"cc", "-O2", "-Wall", "-o", filepath.Join(buildDir, "hold"), "testdata/hold.c", "-lpcap"},
			{"cc", "-O2", "-Wall", "-Werror", "-o", filepath.Join(buildDir, "crossread"), "testdata/crossread.c", "-lpcap"},
			{"cc", "-O2", "-Wall", "-Werror", "-o", filepath.Join(buildDir, "apicheck"), "testdata/apicheck.c", "-lpcap"},
			{"go", "build", "-o", buildDir, "github.com/zcfabric/zc/cmd/zchost"},
		}
		if zchost := os.Getenv("ZCPCAP_TEST_ZCHOST"); zchost != "" {
			// A zchost built elsewhere (while cmd/zchost is mid-change).
			steps[len(steps)-1] = []string{"cp", zchost, buildDir}
		}
		for _, s := range steps {
			if out, err := exec.Command(s[0], s[1:]...).CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("%s: %w\n%s", strings.Join(s, " "), err, out)
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildDir
}

// env is the environment of a test's processes: its own region directory
// (ZC_DIR), and the shim preloaded when preload is set.
type env struct {
	t    *testing.T
	bin  string
	dir  string
	vars []string
}

func newEnv(t *testing.T) *env {
	bin := tools(t)
	dir, err := os.MkdirTemp("/dev/shm", "zcpcap-")
	if err != nil {
		t.Skipf("no /dev/shm: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return &env{t: t, bin: bin, dir: dir, vars: append(os.Environ(), "ZC_DIR="+dir)}
}

func (e *env) preloaded(ctx context.Context, name string, args ...string) *exec.Cmd {
	c := exec.CommandContext(ctx, name, args...)
	c.Env = append(e.vars, "LD_PRELOAD="+filepath.Join(e.bin, "libzcpcap.so"), "ZCPCAP_VERBOSE=1")
	return c
}

// agent is a running zchost.
type agent struct {
	cmd  *exec.Cmd
	log  *bytes.Buffer
	mu   *sync.Mutex
	done chan error
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (a *agent) String() string { a.mu.Lock(); defer a.mu.Unlock(); return a.log.String() }

// startAgent runs zchost run -c cluster with args and waits until its
// region exists.
func (e *env) startAgent(cluster int, args ...string) *agent {
	t := e.t
	a := &agent{log: &bytes.Buffer{}, mu: &sync.Mutex{}, done: make(chan error, 1)}
	a.cmd = exec.Command(filepath.Join(e.bin, "zchost"), append([]string{"run", "-c", strconv.Itoa(cluster), "--backing", "shm", "--stats-interval", "0"}, args...)...)
	a.cmd.Env = e.vars
	a.cmd.Stdout, a.cmd.Stderr = lockedWriter{a.mu, a.log}, lockedWriter{a.mu, a.log}
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { a.done <- a.cmd.Wait() }()
	t.Cleanup(func() {
		select {
		case err := <-a.done:
			a.done <- err
		default:
			a.cmd.Process.Kill()
			<-a.done
		}
	})
	region := filepath.Join(e.dir, "zc-"+strconv.Itoa(cluster))
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(region); err == nil {
			return a
		}
		select {
		case err := <-a.done:
			t.Fatalf("zchost exited before creating %s: %v\n%s", region, err, a)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("zchost did not create %s\n%s", region, a)
		}
	}
}

// wait waits for zchost to exit on its own (its sources ended and the
// consumers drained the queues) and fails unless it exits cleanly.
func (a *agent) wait(t *testing.T) string {
	t.Helper()
	select {
	case err := <-a.done:
		a.done <- err
		if err != nil {
			t.Fatalf("zchost: %v\n%s", err, a)
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("zchost did not finish\n%s", a)
	}
	return a.String()
}

// stop interrupts zchost and waits for it.
func (a *agent) stop(t *testing.T) {
	t.Helper()
	a.cmd.Process.Signal(syscall.SIGINT)
	a.wait(t)
}

// readPcap reads every frame of a pcap file.
func readPcap(t *testing.T, path string) [][]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := pcapgo.NewReader(f)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	var frames [][]byte
	for {
		data, ci, err := r.ReadPacketData()
		if errors.Is(err, io.EOF) {
			return frames
		}
		if err != nil {
			t.Fatalf("read %s: frame %d: %v", path, len(frames), err)
		}
		if ci.CaptureLength != ci.Length {
			t.Fatalf("frame %d: captured %d of %d bytes", len(frames), ci.CaptureLength, ci.Length)
		}
		frames = append(frames, data)
	}
}

var statsLine = regexp.MustCompile(`libzcpcap: (zc:\d+@\d+): received (\d+), passed filter (\d+), filtered (\d+), bad (\d+), queue drops (\d+)`)

// shimStats parses the line the shim prints at pcap_close
// (ZCPCAP_VERBOSE): received, passed, filtered, bad, drops.
func shimStats(t *testing.T, stderr string) [5]uint64 {
	t.Helper()
	m := statsLine.FindStringSubmatch(stderr)
	if m == nil {
		t.Fatalf("no libzcpcap statistics line in:\n%s", stderr)
	}
	var v [5]uint64
	for i := range v {
		v[i], _ = strconv.ParseUint(m[i+2], 10, 64)
	}
	return v
}

// TestTcpdumpWritesEveryPacket: tcpdump -c N -w on a lossless queue
// writes exactly the N generated frames, intact and in order, and zchost
// sees all of them returned.
func TestTcpdumpWritesEveryPacket(t *testing.T) {
	e := newEnv(t)
	const n = 20000
	a := e.startAgent(61, "-i", fmt.Sprintf("gen:len=64,count=%d", n), "-n", "1", "--wait-consumers", "20s", "--lossless")
	out := filepath.Join(t.TempDir(), "out.pcap")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	td := e.preloaded(ctx, "tcpdump", "-i", "zc:61@0", "-c", strconv.Itoa(n), "-w", out)
	res, err := td.CombinedOutput()
	if err != nil {
		t.Fatalf("tcpdump: %v\n%s\nzchost:\n%s", err, res, a)
	}
	if !strings.Contains(string(res), "link-type EN10MB") || !strings.Contains(string(res), fmt.Sprintf("%d packets captured", n)) {
		t.Errorf("tcpdump output:\n%s", res)
	}
	frames := readPcap(t, out)
	if len(frames) != n {
		t.Fatalf("%s holds %d frames, want %d", out, len(frames), n)
	}
	for i, f := range frames {
		seq, err := zc.CheckSynth(f)
		if err != nil || seq != uint64(i) || len(f) != 64 {
			t.Fatalf("frame %d: seq %d, %d bytes, %v (want seq %d, 64 bytes, intact)", i, seq, len(f), err, i)
		}
	}
	st := shimStats(t, string(res))
	if st != [5]uint64{n, n, 0, 0, 0} {
		t.Errorf("shim statistics %v, want %d received and passed, nothing filtered, bad or dropped", st, n)
	}
	log := a.wait(t)
	if !strings.Contains(log, fmt.Sprintf("received_reported=%d", n)) {
		t.Errorf("zchost did not see %d packets consumed:\n%s", n, log)
	}
}

// TestTcpdumpCountLeavesTheRest: tcpdump -c N takes N packets off the
// queue and no more (its reads are sized to what is left), so a second
// reader gets the rest, from packet N on: nothing is taken and dropped
// unread when the first one stops.
func TestTcpdumpCountLeavesTheRest(t *testing.T) {
	e := newEnv(t)
	const total, first = 20000, 7777
	a := e.startAgent(64, "-i", fmt.Sprintf("gen:len=64,count=%d", total), "-n", "1", "--wait-consumers", "20s", "--lossless")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var frames [][]byte
	for _, n := range []int{first, total - first} {
		out := filepath.Join(t.TempDir(), "out.pcap")
		res, err := e.preloaded(ctx, "tcpdump", "-i", "zc:64@0", "-c", strconv.Itoa(n), "-w", out).CombinedOutput()
		if err != nil {
			t.Fatalf("tcpdump -c %d: %v\n%s\nzchost:\n%s", n, err, res, a)
		}
		got := readPcap(t, out)
		if len(got) != n {
			t.Fatalf("tcpdump -c %d wrote %d frames", n, len(got))
		}
		frames = append(frames, got...)
	}
	for i, f := range frames {
		if seq, err := zc.CheckSynth(f); err != nil || seq != uint64(i) {
			t.Fatalf("frame %d of the two captures: seq %d (%v): packets were lost between the readers", i, seq, err)
		}
	}
	a.wait(t)
}

// TestTcpdumpFilter: a BPF expression that picks one flow of four passes
// exactly that flow's frames, and the shim counts the others as filtered.
func TestTcpdumpFilter(t *testing.T) {
	e := newEnv(t)
	const n, flows = 8000, 4
	a := e.startAgent(62, "-i", fmt.Sprintf("gen:len=128,count=%d,flows=%d", n, flows), "-n", "1", "--wait-consumers", "20s", "--lossless")
	out := filepath.Join(t.TempDir(), "flow0.pcap")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// Flow F is UDP from port 1024+F (zc.SynthFrame): flow 0's frames
	// are seq 0, 4, 8, ...
	want := n / flows
	td := e.preloaded(ctx, "tcpdump", "-i", "zc:62@0", "-c", strconv.Itoa(want), "-w", out, "udp src port 1024")
	res, err := td.CombinedOutput()
	if err != nil {
		t.Fatalf("tcpdump: %v\n%s\nzchost:\n%s", err, res, a)
	}
	frames := readPcap(t, out)
	if len(frames) != want {
		t.Fatalf("%d frames passed the filter, want %d", len(frames), want)
	}
	for i, f := range frames {
		seq, err := zc.CheckSynth(f)
		if err != nil || seq != uint64(i*flows) {
			t.Fatalf("frame %d: seq %d, %v; want seq %d", i, seq, err, i*flows)
		}
	}
	// The last frame that passes is seq n-flows: every earlier frame of
	// another flow went through the filter and was dropped by it.
	st := shimStats(t, string(res))
	wantFiltered := uint64(n-flows) - uint64(want-1)
	if st[1] != uint64(want) || st[2] != wantFiltered {
		t.Errorf("shim statistics %v: passed %d (want %d), filtered %d (want %d)", st, st[1], want, st[2], wantFiltered)
	}
	a.wait(t)
}

// TestListAndErrors: tcpdump -D lists the queues of the regions it can
// see; a second reader of a queue is refused with a clear message, as is
// a cluster that does not exist; SIGINT ends a waiting tcpdump cleanly.
func TestListAndErrors(t *testing.T) {
	e := newEnv(t)
	a := e.startAgent(63, "-n", "2") // no sources: the cluster waits
	defer a.stop(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	list, err := e.preloaded(ctx, "tcpdump", "-D").CombinedOutput()
	if err != nil {
		t.Fatalf("tcpdump -D: %v\n%s", err, list)
	}
	for _, q := range []string{"zc:63@0", "zc:63@1"} {
		if !strings.Contains(string(list), "."+q+" (zcfabric cluster 63 queue") {
			t.Errorf("tcpdump -D does not list %s:\n%s", q, list)
		}
	}
	if !strings.Contains(string(list), "lo ") && !strings.Contains(string(list), ".lo") {
		t.Errorf("tcpdump -D lost the real interfaces:\n%s", list)
	}

	res, err := e.preloaded(ctx, "tcpdump", "-i", "zc:64@0", "-c", "1").CombinedOutput()
	if err == nil || !strings.Contains(string(res), "no such cluster 64") {
		t.Errorf("tcpdump on a missing cluster: %v\n%s", err, res)
	}

	first := e.preloaded(ctx, "tcpdump", "-i", "zc:63@1", "-w", os.DevNull)
	var ferr bytes.Buffer
	stderr, err := first.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := first.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stderr)
	listening := false
	for !listening && sc.Scan() {
		ferr.WriteString(sc.Text() + "\n")
		listening = strings.Contains(sc.Text(), "listening on zc:63@1")
	}
	if !listening {
		first.Wait()
		t.Fatalf("first tcpdump did not start:\n%s", ferr.String())
	}
	copied := make(chan struct{})
	go func() { io.Copy(&ferr, stderr); close(copied) }()
	res, err = e.preloaded(ctx, "tcpdump", "-i", "zc:63@1", "-c", "1").CombinedOutput()
	if err == nil || !strings.Contains(string(res), "queue taken") || !strings.Contains(string(res), "pid "+strconv.Itoa(first.Process.Pid)) {
		t.Errorf("second reader of a queue: %v\n%s", err, res)
	}
	// From a pid namespace of its own (a container), where the first
	// one's pid does not exist: refused too, not taken for gone.
	if _, lerr := exec.LookPath("unshare"); lerr == nil {
		// A reader that took the queue would wait for a packet: bounded,
		// and --kill-child ends tcpdump with unshare.
		nctx, ncancel := context.WithTimeout(ctx, 10*time.Second)
		nested := e.preloaded(nctx, "unshare", "--pid", "--fork", "--mount-proc", "--kill-child", "tcpdump", "-i", "zc:63@1", "-c", "1")
		nested.WaitDelay = time.Second
		res, err = nested.CombinedOutput()
		ncancel()
		switch {
		case strings.HasPrefix(string(res), "unshare:"):
			t.Logf("no nested pid namespace here: %s", res)
		case err == nil || !strings.Contains(string(res), "queue taken"):
			t.Errorf("a reader in a nested pid namespace took a live reader's queue: %v\n%s", err, res)
		}
	}
	first.Process.Signal(syscall.SIGINT)
	<-copied
	if err := first.Wait(); err != nil {
		t.Errorf("tcpdump after SIGINT: %v\n%s", err, ferr.String())
	}
	// The queue is free again: a new reader attaches.
	if !strings.Contains(ferr.String(), "libzcpcap: zc:63@1: received 0") {
		t.Errorf("first tcpdump did not close its queue:\n%s", ferr.String())
	}
	// The queue is free again: a new reader attaches (and waits).
	again := e.preloaded(ctx, "tcpdump", "-i", "zc:63@1", "-w", os.DevNull)
	stderr, err = again.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := again.Start(); err != nil {
		t.Fatal(err)
	}
	sc = bufio.NewScanner(stderr)
	var aerr bytes.Buffer
	listening = false
	for !listening && sc.Scan() {
		aerr.WriteString(sc.Text() + "\n")
		listening = strings.Contains(sc.Text(), "listening on zc:63@1")
	}
	again.Process.Signal(syscall.SIGINT)
	io.Copy(&aerr, stderr)
	if err := again.Wait(); err != nil || !listening {
		t.Errorf("a new reader after the first ended: %v\n%s", err, aerr.String())
	}
}

// TestOtherInterfaces: with the shim preloaded, tcpdump still captures
// a real interface (lo) through the real libpcap.
func TestOtherInterfaces(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out := filepath.Join(t.TempDir(), "lo.pcap")
	td := e.preloaded(ctx, "tcpdump", "-i", "lo", "-c", "3", "--immediate-mode", "-w", out, "udp dst port 47999")
	stderr, err := td.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := td.Start(); err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer
	sc := bufio.NewScanner(stderr)
	listening := false
	for !listening && sc.Scan() {
		log.WriteString(sc.Text() + "\n")
		listening = strings.Contains(sc.Text(), "listening on lo")
	}
	if !listening {
		td.Wait()
		if strings.Contains(log.String(), "Operation not permitted") {
			t.Skipf("no permission to capture on lo:\n%s", log.String())
		}
		t.Fatalf("tcpdump -i lo did not start:\n%s", log.String())
	}
	go io.Copy(&log, stderr)
	done := make(chan error, 1)
	go func() { done <- td.Wait() }()
	conn, err := net.Dial("udp", "127.0.0.1:47999")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for {
		conn.Write([]byte("zcpcap"))
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("tcpdump -i lo: %v\n%s", err, log.String())
			}
			if got := len(readPcap(t, out)); got != 3 {
				t.Errorf("lo capture holds %d packets, want 3", got)
			}
			return
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// TestNextEx: a libpcap program using pcap_open_live, pcap_next_ex and
// non-blocking pcap_dispatch gets every frame in order, and pcap_stats
// counts them.
func TestNextEx(t *testing.T) {
	e := newEnv(t)
	const n = 5000
	a := e.startAgent(65, "-i", fmt.Sprintf("gen:len=100,count=%d", n), "-n", "1", "--wait-consumers", "20s", "--lossless")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := e.preloaded(ctx, filepath.Join(e.bin, "nextex"), "zc:65@0", strconv.Itoa(n))
	var stdout, stderr bytes.Buffer
	c.Stdout, c.Stderr = &stdout, &stderr
	if err := c.Run(); err != nil {
		t.Fatalf("nextex: %v\n%s\nzchost:\n%s", err, stderr.String(), a)
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	if len(lines) != n+1 {
		t.Fatalf("nextex printed %d lines, want %d", len(lines), n+1)
	}
	for i, l := range lines[:n] {
		if want := fmt.Sprintf("seq 100 %d", i); l != want {
			t.Fatalf("line %d: %q, want %q", i, l, want)
		}
	}
	if want := fmt.Sprintf("stats %d 0", n); lines[n] != want {
		t.Errorf("stats line %q, want %q", lines[n], want)
	}
	a.wait(t)
}

// TestDeadReaderReplaced: a tcpdump killed while it reads leaves a stale
// owner word and buffers nobody returns; the next tcpdump replaces it
// (its process is gone), the attach handshake has zchost take those
// buffers back, and the lossless producer finishes: every frame reached
// one of the two readers, the second one's in order.
func TestDeadReaderReplaced(t *testing.T) {
	e := newEnv(t)
	const n = 30000
	a := e.startAgent(66, "-i", fmt.Sprintf("gen:len=64,count=%d,rate=50000", n), "-n", "1", "--wait-consumers", "20s", "--lossless")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	first := e.preloaded(ctx, "tcpdump", "-i", "zc:66@0", "-w", os.DevNull)
	stderr, err := first.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := first.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stderr)
	for sc.Scan() && !strings.Contains(sc.Text(), "listening on") {
	}
	time.Sleep(100 * time.Millisecond) // let it hold some buffers
	first.Process.Kill()
	first.Wait()

	out := filepath.Join(t.TempDir(), "second.pcap")
	res, _ := e.preloaded(ctx, "tcpdump", "-i", "zc:66@0", "-w", out).CombinedOutput()
	// It reads until zchost closes the cluster, and says so.
	if !strings.Contains(string(res), "closed by its creator") {
		t.Errorf("second tcpdump did not end with the cluster closed:\n%s", res)
	}
	log := a.wait(t)
	if !strings.Contains(log, fmt.Sprintf("sent=%d drops=0", n)) {
		t.Errorf("zchost did not send all %d frames:\n%s", n, log)
	}
	frames := readPcap(t, out)
	if len(frames) == 0 {
		t.Fatalf("the second reader got nothing:\n%s", res)
	}
	prev := int64(-1)
	for i, f := range frames {
		seq, err := zc.CheckSynth(f)
		if err != nil || int64(seq) <= prev {
			t.Fatalf("frame %d: seq %d after %d: %v", i, seq, prev, err)
		}
		prev = int64(seq)
	}
	if prev != n-1 {
		t.Errorf("the second reader's last frame is seq %d, want %d", prev, n-1)
	}
}

// TestContainerReaders: tcpdumps in a container (a pid namespace of its
// own, unshare): one killed with SIGKILL is replaced by the next in the
// same container (its namespace's tag, its pid gone), and once the whole
// container is gone, by a tcpdump outside it (from the initial namespace
// the shim sees that no process of that namespace is left).
func TestContainerReaders(t *testing.T) {
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("no unshare(1) (util-linux)")
	}
	e := newEnv(t)
	e.startAgent(65, "-i", "gen:len=64,count=100000000,rate=2000", "-n", "1")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	run := func(args ...string) (string, error) {
		c := e.preloaded(ctx, args[0], args[1:]...)
		c.WaitDelay = time.Second
		res, err := c.CombinedOutput()
		if strings.HasPrefix(string(res), "unshare:") {
			t.Skipf("no pid namespace of its own here (needs CAP_SYS_ADMIN): %s", res)
		}
		return string(res), err
	}
	// In one container: a reader killed while it holds the queue, then
	// another; then the container ends with a third killed holding it.
	res, err := run("unshare", "--pid", "--fork", "--mount-proc", "--kill-child", "sh", "-c", `
tcpdump -i zc:65@0 -w /dev/null 2>/dev/null & sleep 1; kill -9 $!; wait
tcpdump -i zc:65@0 -c 100 -w /dev/null 2>&1 && echo SIBLING-OK
tcpdump -i zc:65@0 -w /dev/null 2>/dev/null & sleep 1; kill -9 $!; wait`)
	if err != nil || !strings.Contains(res, "SIBLING-OK") {
		t.Fatalf("a reader in place of its killed sibling in the same container: %v\n%s", err, res)
	}
	res, err = run("tcpdump", "-i", "zc:65@0", "-c", "100", "-w", os.DevNull)
	if err != nil {
		t.Errorf("a host reader in place of a gone container's reader: %v\n%s", err, res)
	}
}
