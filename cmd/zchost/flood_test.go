package main

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/zcfabric/zc"
	"github.com/zcfabric/zc/internal/netns"
	"github.com/zcfabric/zc/internal/testgate"
)

// TestFloodIntoAFXDPCapture: `zchost flood` in one namespace of a veth
// pair sends N frames from inside the kernel; `zchost run -i afxdp:IF` in
// the other captures them into a cluster, where this test reads them as a
// consumer: exactly the N frames the veth took (N less what the flood
// says the veth's full ring refused, which a loaded machine sees now and
// then), each byte for byte the flood's template, and the agent's totals
// agree. The flood comes in bursts of a tenth of a
// second's worth (2000 frames), which the 4096-frame rings hold even if
// the agent is off the CPU for a whole burst; --lossless keeps the queue
// from dropping if this consumer is.
func TestFloodIntoAFXDPCapture(t *testing.T) {
	testgate.NetAdmin(t)
	const total = 4000
	bin := binaries(t)
	shmDir(t, "zcflood-")
	p := netns.New(t, netns.Config{})
	id := 0x7c000000 | rand.Uint32N(1<<24)
	ids := strconv.FormatUint(uint64(id), 10)

	agent := startAgent(t, []string{"netns", "exec", p.A.NS, filepath.Join(bin, "zchost"), "run",
		"-c", ids, "-i", "afxdp:" + p.A.Ifname, "--lossless", "--stats-interval", "0", "--backing", "shm"})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second) // a hang guard
	defer cancel()
	q, err := zc.OpenWait(ctx, "zc:"+ids+"@0", 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()

	flood := exec.Command("ip", "netns", "exec", p.B.NS, filepath.Join(bin, "zchost"), "flood",
		"-o", p.B.Ifname, "-n", strconv.Itoa(total), "--rate", "20000", "--dst", p.A.MAC.String(), "--stats-interval", "0")
	out, err := flood.CombinedOutput()
	if err != nil {
		if strings.Contains(string(out), "live-frame mode unavailable") {
			t.Skipf("requires XDP live frames (Linux >= 5.18): %s", out)
		}
		t.Fatalf("zchost flood: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "sent="+strconv.Itoa(total)) {
		t.Errorf("zchost flood did not report sent=%d:\n%s", total, out)
	}
	taken := total
	if m := notTakenRE.FindStringSubmatch(string(out)); m != nil {
		refused, _ := strconv.Atoi(m[1])
		taken -= refused
		if refused > 0 {
			t.Logf("the veth refused %d frames (its ring was full): expecting %d", refused, taken)
		}
	}

	want := make([]byte, 60)
	zc.SynthFrame(want, 0, 60, 1)
	copy(want[0:6], p.A.MAC)
	copy(want[6:12], p.B.MAC)
	pkts := make([]zc.Packet, 64)
	got := 0
	for got < taken {
		n, err := q.RecvBurstWait(ctx, pkts)
		if err != nil {
			t.Fatalf("after %d of %d frames: %v\nagent:\n%s", got, taken, err, agent.log.String())
		}
		for _, pk := range pkts[:n] {
			if !bytes.Equal(pk.Data, want) {
				t.Fatalf("frame %d: % x, want % x", got, pk.Data, want)
			}
			got++
		}
		q.Release(pkts[:n]...)
	}
	// Nothing beyond the N frames.
	short, cancelShort := context.WithTimeout(ctx, 300*time.Millisecond)
	n, _ := q.RecvBurstWait(short, pkts)
	cancelShort()
	if n != 0 {
		t.Errorf("%d frames more than the %d the veth took", n, taken)
	}
	log := agent.stop(t)
	m := sourceTotalRE.FindStringSubmatch(log)
	if m == nil || m[2] != strconv.Itoa(taken) || m[4] != "0" {
		t.Errorf("agent source total %q: want packets=%d kernel_drops=0\n%s", m, taken, log)
	}
}

// notTakenRE finds the frames the flood's interface did not take.
var notTakenRE = regexp.MustCompile(`summary: .*not_taken=(\d+)`)

// TestFloodUsage: command-line mistakes are usage errors (exit 2, usage
// printed); an unknown interface is named in the error.
func TestFloodUsage(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"-o", "lo", "--len", "10"},
		{"-o", "lo", "--dst", "zz:zz"},
		{"-o", "lo", "--ethertype", "0x1ffff"},
		{"-o", "lo", "extra"},
		{"-o", "lo", "--batch", "0"},
		{"-o", "lo", "--batch", "300"},
		{"-o", "lo", "--rate", "-5"},
		{"-o", "lo", "-d", "-1s"},
	} {
		if err := floodCmd(args); !errors.Is(err, errUsage) {
			t.Errorf("zchost flood %q: %v, want a usage error", args, err)
		}
	}
	err := floodCmd([]string{"-o", "zct-no-such-if", "-n", "1"})
	if err == nil || errors.Is(err, errUsage) || !strings.Contains(err.Error(), "zct-no-such-if") {
		t.Errorf("unknown interface: %v, want an error naming it", err)
	}
}

// TestFloodFrame: the template is synthetic frame 0 with the asked
// destination and EtherType.
func TestFloodFrame(t *testing.T) {
	b, err := floodFrame("lo", 100, "02:aa:bb:cc:dd:ee", "0x88b5")
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != 100 || !bytes.Equal(b[0:6], []byte{2, 0xaa, 0xbb, 0xcc, 0xdd, 0xee}) || b[12] != 0x88 || b[13] != 0xb5 {
		t.Errorf("frame % x", b[:14])
	}
	b, err = floodFrame("lo", 64, "", "")
	if err != nil {
		t.Fatal(err)
	}
	if seq, err := zc.CheckSynth(b); err != nil || seq != 0 {
		t.Errorf("default frame: seq %d, %v; want a valid synthetic frame 0", seq, err)
	}
}

// TestFloodWarnsWhenRefused: frames a veth refuses (its peer has no NAPI:
// no XDP program, GRO off) are not lost silently: the summary says none
// were taken and a warning says why.
func TestFloodWarnsWhenRefused(t *testing.T) {
	testgate.NetAdmin(t)
	bin := binaries(t)
	p := netns.New(t, netns.Config{})
	out, err := exec.Command("ip", "netns", "exec", p.B.NS, filepath.Join(bin, "zchost"), "flood",
		"-o", p.B.Ifname, "-n", "1000", "--stats-interval", "0").CombinedOutput()
	if err != nil {
		if strings.Contains(string(out), "live-frame mode unavailable") {
			t.Skipf("requires XDP live frames (Linux >= 5.18): %s", out)
		}
		t.Fatalf("zchost flood: %v\n%s", err, out)
	}
	for _, want := range []string{"sent=1000", "if_tx_packets=0", "not_taken=1000", "counted none of the frames", "gro on"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}
