package main

import (
	"math/rand/v2"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/zcfabric/zc/internal/netns"
	"github.com/zcfabric/zc/internal/testgate"
)

// TestRunStopsUnderGenerator: zchost run with an unpaced, endless
// generator and a consumer reading flat out exits on SIGTERM, status 0,
// with its summary (the engine used to look for a stop only when idle).
func TestRunStopsUnderGenerator(t *testing.T) {
	bin := binaries(t)
	shmDir(t, "zcstop-")
	var took []stopTimes
	for range stopRuns() {
		id := strconv.FormatUint(uint64(0x7e000000|rand.Uint32N(1<<24)), 10)
		a := startLoaded(t, 2, filepath.Join(bin, "zchost"), "run", "-c", id, "-i", "gen:len=64", "-n", "2",
			"--backing", "shm", "--stats-interval", "200ms")
		c0 := exec.Command(filepath.Join(bin, "zcount"), "-i", "zc:"+id+"@0", "--interval", "0")
		if err := c0.Start(); err != nil {
			t.Fatal(err)
		}
		took = append(took, sigterm(t, a, "zchost run -i gen:"))
		c0.Wait()
	}
	report(t, "zchost run -i gen:len=64 -n 2 (unpaced, one zcount)", took)
}

// TestRunStopsUnderCaptureFlood: zchost run capturing with AF_XDP from a
// veth under a zchost flood (more than it can take) exits on SIGTERM.
func TestRunStopsUnderCaptureFlood(t *testing.T) {
	testgate.NetAdmin(t)
	bin := binaries(t)
	shmDir(t, "zcstop-")
	p := netns.New(t, netns.Config{})
	zchost := filepath.Join(bin, "zchost")
	if out, err := exec.Command("ip", "netns", "exec", p.B.NS, zchost, "flood", "-o", p.B.Ifname, "-n", "1",
		"--stats-interval", "0").CombinedOutput(); err != nil {
		if strings.Contains(string(out), "live-frame mode unavailable") {
			t.Skipf("requires XDP live frames (Linux >= 5.18): %s", out)
		}
		t.Fatalf("zchost flood: %v\n%s", err, out)
	}
	var took []stopTimes
	for range stopRuns() {
		id := strconv.FormatUint(uint64(0x7f000000|rand.Uint32N(1<<24)), 10)
		a := startLoaded(t, 0, "ip", "netns", "exec", p.A.NS, zchost, "run", "-c", id, "-i", "afxdp:"+p.A.Ifname,
			"-n", "1", "--backing", "shm", "--stats-interval", "200ms")
		f := startLoaded(t, 2, "ip", "netns", "exec", p.B.NS, zchost, "flood",
			"-o", p.B.Ifname, "--dst", p.A.MAC.String(), "--stats-interval", "200ms")
		// The capture under the flood: wait for two more lines with packets.
		for seen := 0; seen < 2; {
			if m := statsPPS.FindStringSubmatch(<-a.log.lines); m != nil && m[1] != "0" {
				seen++
			}
		}
		took = append(took, sigterm(t, a, "zchost run -i afxdp: under a flood"))
		sigterm(t, f, "zchost flood")
	}
	report(t, "zchost run -i afxdp:veth under zchost flood", took)
}
