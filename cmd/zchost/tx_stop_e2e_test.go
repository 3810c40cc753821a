package main

import (
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/zcfabric/zc/internal/netns"
	"github.com/zcfabric/zc/internal/testgate"
)

// SIGTERM under full load: each long-running TX command (zchost tx fed by
// an unpaced generator, zchost bounce under a zchost flood, the flood
// itself) must exit by itself, status 0, with its summary. The bound is a
// hang detector, not a performance threshold; the time each stop took is
// logged, and ZC_STOP_RUNS=N repeats each stop N times and logs the
// median (the figures in docs/PERFORMANCE.md, "Stopping under load").

// stopGuard is how long a command may take to exit after SIGTERM before
// the test calls it hung.
const stopGuard = 10 * time.Second

// stopRuns is how many times each stop is measured (ZC_STOP_RUNS, default 1).
func stopRuns() int {
	if n, err := strconv.Atoi(os.Getenv("ZC_STOP_RUNS")); err == nil && n > 0 {
		return n
	}
	return 1
}

// startLoaded starts a long-running command (argv: the program and its
// arguments, e.g. ip netns exec NS zchost tx ...), kills it at cleanup if
// it still runs, and waits until it has printed want stats lines showing
// packets moving, so that SIGTERM finds it under load.
func startLoaded(t *testing.T, want int, argv ...string) *agentProc {
	t.Helper()
	a := launch(t, exec.Command(argv[0], argv[1:]...))
	guard := time.After(30 * time.Second)
	for seen := 0; seen < want; {
		select {
		case line, ok := <-a.log.lines:
			if !ok {
				t.Fatalf("%s ended before it was under load\n%s", argv, a.log.String())
			}
			if m := statsPPS.FindStringSubmatch(line); m != nil && m[1] != "0" {
				seen++
			}
		case <-guard:
			t.Fatalf("%s moved no packets within 30 s\n%s", argv, a.log.String())
		}
	}
	return a
}

// statsPPS finds the rate in a stats line of tx, bounce or flood.
var statsPPS = regexp.MustCompile(`stats: .*pps=(\d+)`)

// stopTimes are how long a command took after SIGTERM: to print its
// summary (its loops had stopped) and to exit (after closing its sockets
// and regions, which the kernel may take a while over).
type stopTimes struct{ summary, exit time.Duration }

// summaryAt finds the timestamp hclog put on the summary line.
var summaryAt = regexp.MustCompile(`(?m)^(\S+) \[INFO\] +\S+: summary:`)

// sigterm sends SIGTERM to a and fails the test unless a exits with
// status 0 and prints its summary within stopGuard.
func sigterm(t *testing.T, a *agentProc, what string) stopTimes {
	t.Helper()
	start := time.Now()
	if err := a.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-a.done:
		st := stopTimes{exit: time.Since(start)}
		a.done <- err // for the cleanup
		if err != nil {
			t.Fatalf("%s after SIGTERM: %v\n%s", what, err, a.log.String())
		}
		// The log reader may lag the exit by a moment.
		if !strings.Contains(a.log.String(), "summary") && !a.log.waitFor("summary", stopGuard) {
			t.Fatalf("%s printed no summary after SIGTERM\n%s", what, a.log.String())
		}
		if m := summaryAt.FindStringSubmatch(a.log.String()); m != nil {
			if at, err := time.Parse(time.RFC3339Nano, m[1]); err == nil {
				st.summary = at.Sub(start)
			}
		}
		return st
	case <-time.After(stopGuard):
		t.Fatalf("%s did not exit within %v of SIGTERM under load: it checks for a stop only when idle\n%s", what, stopGuard, a.log.String())
	}
	return stopTimes{}
}

// report logs the stop times of what and their medians in milliseconds
// (the summary's to the log's millisecond).
func report(t *testing.T, what string, took []stopTimes) {
	ms := func(f func(stopTimes) time.Duration) string {
		var all []string
		d := make([]time.Duration, len(took))
		for i, s := range took {
			d[i] = f(s)
		}
		slices.Sort(d)
		for _, x := range d {
			all = append(all, strconv.FormatFloat(float64(x.Microseconds())/1000, 'f', 1, 64))
		}
		return all[len(all)/2] + " ms (" + strings.Join(all, ", ") + ")"
	}
	t.Logf("%s, %d runs: SIGTERM to summary: median %s; to exit: median %s", what, len(took),
		ms(func(s stopTimes) time.Duration { return s.summary }), ms(func(s stopTimes) time.Duration { return s.exit }))
}

// TestTxStopsUnderLoad: zchost tx fed by an unpaced generator (zchost run
// -i gen:, dropping what tx cannot take) exits on SIGTERM.
func TestTxStopsUnderLoad(t *testing.T) {
	testgate.NetAdmin(t)
	bin := binaries(t)
	shmDir(t, "zcstop-")
	p := netns.New(t, netns.Config{})
	ids := strconv.FormatUint(uint64(0x7d000000|rand.Uint32N(1<<24)), 10)
	agent := startAgent(t, []string{"netns", "exec", p.A.NS, filepath.Join(bin, "zchost"), "run",
		"-c", ids, "-i", "gen:len=64", "--backing", "shm", "--stats-interval", "0"})
	var took []stopTimes
	for range stopRuns() {
		tx := startLoaded(t, 3, "ip", "netns", "exec", p.A.NS, filepath.Join(bin, "zchost"), "tx",
			"-i", "zc:"+ids+"@0", "-o", p.A.Ifname, "--stats-interval", "200ms")
		took = append(took, sigterm(t, tx, "zchost tx"))
	}
	report(t, "zchost tx -i zc:C@0 -o veth (fed by zchost run -i gen:len=64)", took)
	agent.stop(t)
}

// TestBounceAndFloodStopUnderLoad: zchost bounce (AF_XDP in, AF_PACKET
// out of the same veth) under a zchost flood exits on SIGTERM; so does
// the flood, with the bounce's XDP program taking its frames.
func TestBounceAndFloodStopUnderLoad(t *testing.T) {
	testgate.NetAdmin(t)
	bin := binaries(t)
	p := netns.New(t, netns.Config{})
	zchost := filepath.Join(bin, "zchost")
	flood := func() *agentProc {
		return startLoaded(t, 2, "ip", "netns", "exec", p.B.NS, zchost, "flood",
			"-o", p.B.Ifname, "--dst", p.A.MAC.String(), "--stats-interval", "200ms")
	}
	bounce := func() *agentProc {
		return startLoaded(t, 3, "ip", "netns", "exec", p.A.NS, zchost, "bounce",
			"-i", "afxdp:"+p.A.Ifname, "-o", "afpacket:"+p.A.Ifname, "--stats-interval", "200ms")
	}
	// A flood of a few frames first: a kernel without live frames skips.
	if out, err := exec.Command("ip", "netns", "exec", p.B.NS, zchost, "flood", "-o", p.B.Ifname, "-n", "1",
		"--stats-interval", "0").CombinedOutput(); err != nil {
		if strings.Contains(string(out), "live-frame mode unavailable") {
			t.Skipf("requires XDP live frames (Linux >= 5.18): %s", out)
		}
		t.Fatalf("zchost flood: %v\n%s", err, out)
	}

	f := flood()
	var tookBounce, tookFlood []stopTimes
	for range stopRuns() {
		b := bounce()
		tookBounce = append(tookBounce, sigterm(t, b, "zchost bounce"))
	}
	b := bounce()
	tookFlood = append(tookFlood, sigterm(t, f, "zchost flood"))
	for range stopRuns() - 1 {
		tookFlood = append(tookFlood, sigterm(t, flood(), "zchost flood"))
	}
	sigterm(t, b, "zchost bounce")
	report(t, "zchost bounce -i afxdp:A -o afpacket:A (under zchost flood)", tookBounce)
	report(t, "zchost flood -o B (into A's AF_XDP bounce)", tookFlood)
}
