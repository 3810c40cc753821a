package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/zcfabric/zc"
)

// Fault isolation on the host: a hostile process on one queue of a
// cluster, or one that truncates the region file, must cost the agent and
// the honest consumers nothing.

var (
	scribbleOnce sync.Once
	scribbleBin  string
	scribbleErr  error
)

// scribbler builds the hostile tool (vmtest/internal/scribble) next to
// the other binaries, once per test binary.
func scribbler(t *testing.T) string {
	t.Helper()
	dir := binaries(t)
	scribbleOnce.Do(func() {
		out, err := exec.Command("go", "build", "-o", dir+"/", "../../vmtest/internal/scribble").CombinedOutput()
		if err != nil {
			scribbleErr = &buildError{"../../vmtest/internal/scribble", err, out}
			return
		}
		scribbleBin = filepath.Join(dir, "scribble")
	})
	if scribbleErr != nil {
		t.Fatal(scribbleErr)
	}
	return scribbleBin
}

// hostileEnv makes a region directory on /dev/shm, points this process
// (zc.Inspect) and the children at it, and returns the children's
// environment.
func hostileEnv(t *testing.T) []string {
	env := shmEnv(t)
	for _, e := range env {
		if v, ok := strings.CutPrefix(e, "ZC_DIR="); ok {
			t.Setenv("ZC_DIR", v)
		}
	}
	return env
}

// startRun starts `zchost run args...`, kills it at cleanup if it still
// runs, and waits for it to log that its sources started.
func startRun(t *testing.T, env []string, args ...string) *agentProc {
	t.Helper()
	cmd := exec.Command(filepath.Join(binaries(t), "zchost"), append([]string{"run"}, args...)...)
	cmd.Env = env
	return waitSources(t, launch(t, cmd))
}

// running fails the test if the agent has exited.
func (a *agentProc) running(t *testing.T, when string) {
	t.Helper()
	select {
	case err := <-a.done:
		a.done <- err // for the cleanup
		t.Fatalf("zchost run exited %s: %v\n%s", when, err, a.log.String())
	default:
	}
}

// terminate sends SIGTERM and fails the test unless the agent exits 0 by
// itself with its summary; it returns the agent's log.
func (a *agentProc) terminate(t *testing.T) string {
	t.Helper()
	if err := a.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-a.done:
		a.done <- err
		if err != nil {
			t.Fatalf("zchost run after SIGTERM: %v\n%s", err, a.log.String())
		}
	case <-time.After(30 * time.Second): // a hang bound, not a performance threshold
		t.Fatalf("zchost run did not exit within 30 s of SIGTERM\n%s", a.log.String())
	}
	log := a.log.String()
	if !strings.Contains(log, "summary") {
		t.Errorf("zchost run printed no summary on SIGTERM:\n%s", log)
	}
	return log
}

// child is a zcount or scribble process whose stdout and stderr are kept.
type child struct {
	cmd            *exec.Cmd
	stdout, stderr bytes.Buffer
	done           chan struct{}
	err            error
	ended          time.Time
}

func startChild(t *testing.T, env []string, bin string, args ...string) *child {
	t.Helper()
	c := &child{cmd: exec.Command(bin, args...), done: make(chan struct{})}
	c.cmd.Env = env
	c.cmd.Stdout, c.cmd.Stderr = &c.stdout, &c.stderr
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		c.err = c.cmd.Wait()
		c.ended = time.Now()
		close(c.done)
	}()
	t.Cleanup(func() {
		select {
		case <-c.done:
		default:
			c.cmd.Process.Kill()
			<-c.done
		}
	})
	return c
}

// wait waits up to guard (a hang bound) for the child to exit, failing
// the test if it does not or if a signal killed it.
func (c *child) wait(t *testing.T, guard time.Duration) {
	t.Helper()
	select {
	case <-c.done:
	case <-time.After(guard):
		c.cmd.Process.Kill()
		<-c.done
		t.Fatalf("%s did not exit within %v\nstdout: %s\nstderr: %s", c.cmd.Args, guard, c.stdout.String(), c.stderr.String())
	}
	if ws, ok := c.cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		t.Fatalf("%s killed by %v\nstderr: %s", c.cmd.Args, ws.Signal(), c.stderr.String())
	}
}

// statsJSON is what these tests read of `zchost stats --json`.
type statsJSON struct {
	Path, State, Failure string
	Queues               []struct {
		Queue              int
		State, Failure     string
		BadReturns         uint64
		Recovered          uint64
		RecoveriesDeferred uint64
	}
}

// TestHostileProcessOneQueue: zchost run -n 2 from a paced generator, an
// honest zcount --verify on queue 0 and a hostile process on queue 1.
// "scribble": it writes random words over that queue's rings and
// handshake word, then hammers the handshake word with recovery
// requests; "hammer": only the recovery requests, which a queue may not
// refuse but must rate-limit (stats count the deferred ones) so that they
// cost the other queues nothing. Either way
// zcount counts every packet, verified, with no drop, the agent keeps
// running and SIGTERM stops it cleanly; after the scribbling, stats show
// queue 1 failed, and queue 0 ok.
func TestHostileProcessOneQueue(t *testing.T) {
	for _, c := range []struct {
		name, scribble, handshake string
		failed                    bool
	}{
		{"scribble", "1500ms", "1500ms", true},
		{"hammer", "0", "3s", false},
	} {
		t.Run(c.name, func(t *testing.T) { testHostileProcess(t, c.scribble, c.handshake, c.failed) })
	}
}

func testHostileProcess(t *testing.T, scribbleFor, handshakeFor string, failed bool) {
	const (
		rate = 20000 // packets per second, half to each queue
		n    = 60000 // zcount's share of 6 s: longer than the attack
	)
	bin, scribble := binaries(t), scribbler(t)
	env := hostileEnv(t)
	idn := uint32(47000 + os.Getpid()%1000)
	id := strconv.Itoa(int(idn))
	count := startChild(t, env, filepath.Join(bin, "zcount"), "-i", "zc:"+id+"@0", "-n", strconv.Itoa(n), "--verify", "--json", "--wait", "30s", "--interval", "0")
	agent := startRun(t, env, "-c", id, "-i", "gen:len=64,count=1000000000,rate="+strconv.Itoa(rate), "-n", "2", "-m", "0",
		"--backing", "shm", "--stats-interval", "1s")

	path := zc.RegionPath(idn)
	hostile := startChild(t, env, scribble, "--region", path, "--queue", "1", "--for", scribbleFor, "--handshake", handshakeFor)
	hostile.wait(t, 30*time.Second)
	var sc struct {
		Words           uint64 `json:"words"`
		HandshakeWrites uint64 `json:"handshake_writes"`
		Seed            uint64 `json:"seed"`
		Error           string `json:"error"`
	}
	if err := json.Unmarshal(hostile.stdout.Bytes(), &sc); err != nil || sc.Error != "" || (failed && sc.Words == 0) || sc.HandshakeWrites == 0 {
		t.Fatalf("scribble --region %s --queue 1: %v: %s %s", path, err, hostile.stdout.String(), hostile.stderr.String())
	}
	t.Logf("scribble (seed %d): %d random words, %d handshake requests on queue 1", sc.Seed, sc.Words, sc.HandshakeWrites)
	agent.running(t, "while a process attacked queue 1")

	count.wait(t, 60*time.Second)
	var r countResult
	if err := json.Unmarshal(count.stdout.Bytes(), &r); err != nil || count.err != nil {
		t.Fatalf("zcount on queue 0: %v / %v\nstdout: %s\nstderr: %s", count.err, err, count.stdout.String(), count.stderr.String())
	}
	if r.Packets != n || r.Verified != n || r.Corrupt != 0 || r.OutOfOrder != 0 || r.Drops != 0 || r.Error != "" {
		t.Errorf("zcount on queue 0: %+v, want %d packets, all verified, no drops, no error", r, n)
	}
	if !count.ended.After(hostile.ended) {
		t.Errorf("zcount finished before the hostile process: nothing was tested; raise n")
	}
	agent.running(t, "after a process attacked queue 1")

	stats := exec.Command(filepath.Join(bin, "zchost"), "stats", "-c", id, "--json")
	stats.Env = env
	out, err := stats.Output()
	if err != nil {
		t.Fatalf("zchost stats: %v", err)
	}
	var st statsJSON
	if err := json.Unmarshal(out, &st); err != nil || len(st.Queues) != 2 {
		t.Fatalf("zchost stats --json: %v\n%s", err, out)
	}
	if q := st.Queues[1]; failed && q.State != "failed" {
		t.Errorf("zchost stats: queue 1 State %q (Failure %q, bad returns %d), want failed", q.State, q.Failure, q.BadReturns)
	} else {
		t.Logf("queue 1: State %q %s; recovered %d buffers, %d recovery requests deferred", q.State, q.Failure, q.Recovered, q.RecoveriesDeferred)
	}
	if q := st.Queues[1]; !failed && q.RecoveriesDeferred == 0 {
		t.Errorf("zchost stats: queue 1 deferred no recovery request under the hammer (%+v): recoveries are not rate-limited", q)
	}
	if q := st.Queues[0]; q.State != "ok" {
		t.Errorf("zchost stats: queue 0 State %q (Failure %q), want ok", q.State, q.Failure)
	}
	agent.terminate(t)
}

// TestHostileTruncatedRegion: the cluster's region file is truncated to
// one page (by anything holding it read-write, as every consumer and
// QEMU do) while zcount reads from it and the agent feeds it. Neither may
// die of SIGBUS: zcount exits 1 saying the queue went away, the agent
// keeps running until SIGTERM and then exits cleanly.
func TestHostileTruncatedRegion(t *testing.T) {
	bin, scribble := binaries(t), scribbler(t)
	env := hostileEnv(t)
	idn := uint32(48000 + os.Getpid()%1000)
	id := strconv.Itoa(int(idn))
	count := startChild(t, env, filepath.Join(bin, "zcount"), "-i", "zc:"+id+"@0", "--verify", "--json", "--wait", "30s", "--interval", "0")
	agent := startRun(t, env, "-c", id, "-i", "gen:len=64,count=1000000000,rate=20000", "-n", "1", "--backing", "shm", "--stats-interval", "1s")

	// Truncate once zcount is reading.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		info, err := zc.Inspect(idn)
		if err == nil && len(info.Queues) == 1 && info.Queues[0].Received > 0 {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("zcount read nothing from queue 0 within 30 s (%v)\nzcount: %s\nagent:\n%s", err, count.stderr.String(), agent.log.String())
		case <-time.After(10 * time.Millisecond):
		}
	}
	path := zc.RegionPath(idn)
	if out, err := exec.Command(scribble, "--truncate", path, "--size", "4096").CombinedOutput(); err != nil || !bytes.Contains(out, []byte(`"size":4096`)) {
		t.Fatalf("scribble --truncate %s: %v: %s", path, err, out)
	}

	count.wait(t, 30*time.Second)
	var r countResult
	if err := json.Unmarshal(count.stdout.Bytes(), &r); err != nil {
		t.Fatalf("zcount printed no summary (%v): %v\nstdout: %s\nstderr: %s", count.err, err, count.stdout.String(), count.stderr.String())
	}
	var exit *exec.ExitError
	if !errors.As(count.err, &exit) || exit.ExitCode() != 1 || !strings.Contains(r.Error+count.stderr.String(), "went away") {
		t.Errorf("zcount after the truncation: %v, %+v; want exit status 1 and an error saying the queue went away\nstderr: %s", count.err, r, count.stderr.String())
	}
	if r.Packets == 0 || r.Corrupt != 0 || r.OutOfOrder != 0 {
		t.Errorf("zcount before the truncation: %+v; want packets, none corrupt or out of order", r)
	}
	agent.running(t, "after its region file was truncated")
	agent.terminate(t)
}

// TestGoneReaderWarned: a reader killed while its queue fills is named
// in a warning: with --lossless every queue then waits for it, which the
// agent said nowhere (only zchost stats showed "(gone)"). The queue's
// place is free: a new reader attaches and the run goes on.
func TestGoneReaderWarned(t *testing.T) {
	bin := binaries(t)
	env := hostileEnv(t)
	idn := uint32(49000 + os.Getpid()%1000)
	id := strconv.Itoa(int(idn))
	readers := make([]*child, 2)
	for q := range readers {
		readers[q] = startChild(t, env, filepath.Join(bin, "zcount"), "-i", fmt.Sprintf("zc:%s@%d", id, q), "--wait", "30s", "--interval", "0")
	}
	agent := startRun(t, env, "-c", id, "-i", "gen:len=64,rate=20000", "-n", "2", "-q", "64", "--lossless",
		"--wait-consumers", "30s", "--backing", "shm", "--stats-interval", "0")
	readers[0].cmd.Process.Kill()
	want := fmt.Sprintf(`every queue waits until a new reader attaches to it: queue=zc:%s@0 pid=%d`, id, readers[0].cmd.Process.Pid)
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(agent.log.String(), want); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) { // a hang bound
			t.Fatalf("no warning %q within 30 s:\n%s", want, agent.log.String())
		}
	}
	if n := strings.Count(agent.log.String(), "a queue's reader is gone"); n != 1 {
		t.Errorf("%d warnings about the gone reader, want 1:\n%s", n, agent.log.String())
	}
	// A new reader takes the place over; the queue moves again.
	again := startChild(t, env, filepath.Join(bin, "zcount"), "-i", "zc:"+id+"@0", "-n", "1000", "--wait", "30s", "--interval", "0")
	again.wait(t, 30*time.Second)
	if again.err != nil {
		t.Fatalf("a new reader of queue 0: %v\n%s", again.err, again.stderr.String())
	}
	agent.terminate(t)
}
