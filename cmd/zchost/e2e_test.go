package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/zcfabric/zc"
	"github.com/zcfabric/zc/internal/pcaptest"
)

// build compiles the agent and zcount once per test binary.
var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

func binaries(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "zchost-e2e-")
		if buildErr != nil {
			return
		}
		for _, pkg := range []string{".", "../../examples/zcount", "../../examples/zsend"} {
			out, err := exec.Command("go", "build", "-o", binDir+"/", pkg).CombinedOutput()
			if err != nil {
				buildErr = &buildError{pkg, err, out}
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

// shmDir points ZC_DIR at a fresh folder on /dev/shm (named prefix...)
// for the test, removed at its end.
func shmDir(t *testing.T, prefix string) string {
	t.Helper()
	dir, err := os.MkdirTemp("/dev/shm", prefix)
	if err != nil {
		t.Fatalf("temp dir on /dev/shm: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	t.Setenv("ZC_DIR", dir)
	return dir
}

type buildError struct {
	pkg string
	err error
	out []byte
}

func (e *buildError) Error() string {
	return "go build " + e.pkg + ": " + e.err.Error() + "\n" + string(e.out)
}

type countResult struct {
	Packets, Bytes, Drops uint64
	Verified, Corrupt     uint64
	OutOfOrder            uint64 `json:"out_of_order"`
	Error                 string
}

func shmEnv(t testing.TB) []string {
	d, err := os.MkdirTemp("/dev/shm", "zce2e-")
	if err != nil {
		d = t.TempDir()
	} else {
		t.Cleanup(func() { os.RemoveAll(d) })
	}
	return append(os.Environ(), "ZC_DIR="+d)
}

// runPipeline starts consumers (waiting for the cluster), then the agent,
// and returns each consumer's summary and the agent's log.
func runPipeline(t *testing.T, agentArgs []string, consumers [][]string) ([]countResult, string) {
	bin := binaries(t)
	env := shmEnv(t)
	var outs []*bytes.Buffer
	var cmds []*exec.Cmd
	for _, args := range consumers {
		c := exec.Command(filepath.Join(bin, "zcount"), append(args, "--json", "--wait", "20s", "--interval", "0")...)
		c.Env = env
		var o, e bytes.Buffer
		c.Stdout, c.Stderr = &o, &e
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Process.Kill() })
		outs = append(outs, &o)
		cmds = append(cmds, c)
	}
	time.Sleep(100 * time.Millisecond)
	agent := exec.Command(filepath.Join(bin, "zchost"), append([]string{"run", "--stats-interval", "0", "--wait-consumers", "30s"}, agentArgs...)...)
	agent.Env = env
	var alog bytes.Buffer
	agent.Stdout, agent.Stderr = &alog, &alog
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- agent.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("zchost: %v\n%s", err, alog.String())
		}
	case <-time.After(120 * time.Second):
		agent.Process.Kill()
		t.Fatalf("zchost did not finish\n%s", alog.String())
	}
	var res []countResult
	for i, c := range cmds {
		if err := c.Wait(); err != nil {
			t.Fatalf("zcount %v: %v\n%s", consumers[i], err, outs[i].String())
		}
		var r countResult
		if err := json.Unmarshal(outs[i].Bytes(), &r); err != nil {
			t.Fatalf("zcount output %q: %v", outs[i].String(), err)
		}
		res = append(res, r)
	}
	return res, alog.String()
}

// TestLosslessTwoQueues: zchost run -n 2 --lossless with two zcount
// processes: every generated packet is received exactly once, verified.
func TestLosslessTwoQueues(t *testing.T) {
	const total = 1_000_000
	id := strconv.Itoa(40000 + os.Getpid()%10000)
	res, log := runPipeline(t,
		[]string{"-c", id, "-i", "gen:len=64,count=" + strconv.Itoa(total), "-n", "2", "-m", "0", "--lossless", "--backing", "shm"},
		[][]string{{"-i", "zc:" + id + "@0", "-n", strconv.Itoa(total / 2), "--verify"}, {"-i", "zc:" + id + "@1", "--verify"}})
	var sum uint64
	for i, r := range res {
		if r.Packets != total/2 || r.Bytes != 64*total/2 || r.Drops != 0 || r.Corrupt != 0 || r.OutOfOrder != 0 || r.Verified != total/2 {
			t.Errorf("queue %d: %+v", i, r)
		}
		sum += r.Packets
	}
	if sum != total {
		t.Fatalf("received %d of %d\n%s", sum, total, log)
	}
}

// TestDropsAccounted: without --lossless, and with a hash that sends most
// traffic to one queue, drops are counted and sent = received + drops.
func TestDropsAccounted(t *testing.T) {
	const total = 300_000
	id := strconv.Itoa(50000 + os.Getpid()%10000)
	res, log := runPipeline(t,
		[]string{"-c", id, "-i", "gen:len=128,count=" + strconv.Itoa(total), "-n", "2", "-m", "1", "-q", "64", "--backing", "shm"},
		[][]string{{"-i", "zc:" + id + "@0", "--verify"}, {"-i", "zc:" + id + "@1", "--verify"}})
	var recv, drops uint64
	for _, r := range res {
		recv += r.Packets
		drops += r.Drops
		if r.Corrupt != 0 || r.OutOfOrder != 0 {
			t.Errorf("bad packets: %+v", r)
		}
	}
	if recv+drops != total {
		t.Fatalf("received %d + drops %d != %d generated\n%s", recv, drops, total, log)
	}
	t.Logf("received %d, dropped %d (counted)", recv, drops)
}

// TestDrainGivesUpOnStalledConsumer: a consumer that attaches and never
// reads (a stuck process, a hostile guest) cannot hold zchost at the end
// of its sources: after --drain-timeout without progress it exits,
// saying how many packets were left.
func TestDrainGivesUpOnStalledConsumer(t *testing.T) {
	bin := binaries(t)
	env := shmEnv(t)
	var dir string
	for _, e := range env {
		if v, ok := strings.CutPrefix(e, "ZC_DIR="); ok {
			dir = v
		}
	}
	t.Setenv("ZC_DIR", dir)
	id := strconv.Itoa(45000 + os.Getpid()%10000)
	agent := exec.Command(filepath.Join(bin, "zchost"), "run", "-c", id, "-i", "gen:len=64,count=1000", "-n", "1",
		"--backing", "shm", "--stats-interval", "0", "--wait-consumers", "20s", "--drain-timeout", "300ms")
	agent.Env = env
	var alog bytes.Buffer
	agent.Stdout, agent.Stderr = &alog, &alog
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	defer agent.Process.Kill()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	q, err := zc.OpenWait(ctx, "zc:"+id+"@0", 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	done := make(chan error, 1)
	go func() { done <- agent.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("zchost: %v\n%s", err, alog.String())
		}
	case <-ctx.Done():
		t.Fatalf("zchost still waiting for a consumer that reads nothing\n%s", alog.String())
	}
	if !strings.Contains(alog.String(), "consumers stopped reading") || !strings.Contains(alog.String(), "packets_left=1000") {
		t.Fatalf("no warning about the undelivered packets:\n%s", alog.String())
	}
}

// TestDrainTimeoutZeroWaits: --drain-timeout 0 means no bound (it gave up
// at once): zchost keeps waiting for a consumer that holds packets
// queued, says so, and stops when interrupted, saying it was.
func TestDrainTimeoutZeroWaits(t *testing.T) {
	bin := binaries(t)
	env := shmEnv(t)
	for _, e := range env {
		if v, ok := strings.CutPrefix(e, "ZC_DIR="); ok {
			t.Setenv("ZC_DIR", v)
		}
	}
	id := strconv.Itoa(35000 + os.Getpid()%10000)
	agent := exec.Command(filepath.Join(bin, "zchost"), "run", "-c", id, "-i", "gen:len=64,count=1000", "-n", "1",
		"--backing", "shm", "--stats-interval", "0", "--wait-consumers", "20s", "--drain-timeout", "0")
	agent.Env = env
	var alog lockedBuffer
	agent.Stdout, agent.Stderr = &alog, &alog
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	defer agent.Process.Kill()
	q, err := zc.OpenWait(context.Background(), "zc:"+id+"@0", 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	done := make(chan error, 1)
	go func() { done <- agent.Wait() }()
	// The sources end at once; zchost then waits. Two seconds without a
	// packet read is far past what 0 used to allow (none at all).
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(alog.String(), "waiting for consumers to drain") && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	select {
	case err := <-done:
		t.Fatalf("zchost exited (%v) with a consumer holding packets and --drain-timeout 0\n%s", err, alog.String())
	case <-time.After(2 * time.Second):
	}
	agent.Process.Signal(os.Interrupt)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("zchost: %v\n%s", err, alog.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("zchost did not stop on SIGINT\n%s", alog.String())
	}
	if !strings.Contains(alog.String(), "interrupted while consumers were still reading") || strings.Contains(alog.String(), "consumers stopped reading") {
		t.Fatalf("log:\n%s", alog.String())
	}
}

// TestRunFailsWhenASourceFails: a source that fails (a pcap file cut
// short) does not stop the others, but zchost run then exits 1 naming
// it: a replay script learns that part of its input was lost (it exited
// 0).
func TestRunFailsWhenASourceFails(t *testing.T) {
	bin := binaries(t)
	env := shmEnv(t)
	path := pcaptest.File(t, pcaptest.Synth(10, 100, 1)...)
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, st.Size()-30); err != nil {
		t.Fatal(err)
	}
	id := strconv.Itoa(36000 + os.Getpid()%10000)
	c := exec.Command(filepath.Join(bin, "zchost"), "run", "-c", id, "-i", "pcap:"+path, "-i", "gen:len=64,count=500",
		"--backing", "shm", "--stats-interval", "0")
	c.Env = env
	out, err := c.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(string(out), "sources failed: 1 of 2") || !strings.Contains(string(out), path) {
		t.Fatalf("zchost run with a truncated pcap: %v, want exit 1 naming the failed source:\n%s", err, out)
	}
	if !strings.Contains(string(out), `source total: name="gen:len=64,count=500" packets=500`) {
		t.Errorf("the other source did not run to its end:\n%s", out)
	}
}

// TestRunReportsCutAndFiltered: frames longer than a buffer are cut and
// said so (a warning, and the summary), and what the filter rejected is in
// the summary too (it was only in the source's line, and cut frames were
// counted nowhere an operator could see).
func TestRunReportsCutAndFiltered(t *testing.T) {
	bin := binaries(t)
	env := shmEnv(t)
	path := pcaptest.File(t, pcaptest.Synth(10, 3000, 2)...) // flows 0, 1: UDP from 1024, 1025
	const srcPort1025 = "4\n40 0 0 34\n21 0 1 1025\n6 0 0 262144\n6 0 0 0"
	id := strconv.Itoa(37000 + os.Getpid()%10000)
	c := exec.Command(filepath.Join(bin, "zchost"), "run", "-c", id, "-i", "pcap:"+path, "--bpf", srcPort1025,
		"--backing", "shm", "--stats-interval", "0")
	c.Env = env
	out, err := c.CombinedOutput()
	if err != nil {
		t.Fatalf("zchost run: %v\n%s", err, out)
	}
	for _, want := range []string{
		"frames longer than a buffer were cut to the buffer size", "truncated=5",
		"summary: copied_to_vm_regions=0 packets_in=5 filtered=5 truncated=5 queued=5",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("zchost run does not say %q:\n%s", want, out)
		}
	}
}

// TestRunSummaryFanOut: with fan-out every packet is queued once per
// queue, and the summary says so (it showed queued three times packets_in
// with nothing to explain it).
func TestRunSummaryFanOut(t *testing.T) {
	bin := binaries(t)
	env := shmEnv(t)
	id := strconv.Itoa(38000 + os.Getpid()%10000)
	c := exec.Command(filepath.Join(bin, "zchost"), "run", "-c", id, "-i", "gen:len=64,count=1000", "-n", "3", "-m", "fan-out",
		"--backing", "shm", "--stats-interval", "0")
	c.Env = env
	out, err := c.CombinedOutput()
	if err != nil {
		t.Fatalf("zchost run: %v\n%s", err, out)
	}
	if want := "packets_in=1000 filtered=0 truncated=0 queued=3000 dropped=0"; !strings.Contains(string(out), want) || !strings.Contains(string(out), "fan_out_queues=3") {
		t.Errorf("summary does not say %q and fan_out_queues=3:\n%s", want, out)
	}
}
