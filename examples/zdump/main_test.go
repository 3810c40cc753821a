package main

import (
	"bytes"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/zcfabric/zc"
)

// TestDumpReadByTcpdump generates frames onto a queue, runs the zdump
// binary on it as another process, and reads the pcapng back with
// `tcpdump -r`: the same number of packets.
func TestDumpReadByTcpdump(t *testing.T) {
	tcpdump, err := exec.LookPath("tcpdump")
	if err != nil {
		t.Skip("tcpdump not installed (apt-get install tcpdump)")
	}
	const total = 700
	dir := t.TempDir()
	bin := filepath.Join(dir, "zdump")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	c, err := zc.CreateCluster(zc.Config{ID: 0x7c000000 | rand.Uint32N(1<<24), QueueLen: 1024, Buffers: 1024, Backing: zc.BackingShm})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	prod, err := c.Producer(0)
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()
	pkts := make([]zc.Packet, 1)
	for seq := range uint64(total) {
		if n, err := prod.Alloc(pkts); n != 1 || err != nil {
			t.Fatalf("Alloc: %d, %v", n, err)
		}
		pkts[0].Data = pkts[0].Data[:zc.SynthFrame(pkts[0].Data, seq, 60+int(seq%200), 8)]
		pkts[0].Timestamp = 1_700_000_000_123_456_789 + int64(seq)
		if n, err := prod.SendBurst(pkts); n != 1 || err != nil {
			t.Fatalf("SendBurst: %d, %v", n, err)
		}
	}
	out := filepath.Join(dir, "out.pcapng")
	name := zc.Name{Cluster: c.ID(), Queue: 0}.String()
	cmd := exec.Command(bin, "-i", name, "-w", out, "-n", strconv.Itoa(total))
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("zdump: %v\n%s", err, b)
	}
	b, err := exec.Command(tcpdump, "-nn", "-r", out).CombinedOutput()
	if err != nil {
		t.Fatalf("tcpdump -r: %v\n%s", err, b)
	}
	lines := regexp.MustCompile(`(?m)^\d\d:\d\d:\d\d\.\d+ `).FindAll(b, -1)
	if len(lines) != total {
		t.Errorf("tcpdump read %d packets, want %d:\n%.2000s", len(lines), total, b)
	}
	if st, err := os.Stat(out); err != nil || st.Size() == 0 {
		t.Errorf("out.pcapng: %v", err)
	}
}

// TestUsage: missing flags, a negative --wait and a stray argument are
// usage errors naming them (exit 2); a missing cluster fails with 1.
func TestUsage(t *testing.T) {
	t.Setenv("ZC_DIR", t.TempDir())
	out := filepath.Join(t.TempDir(), "out.pcapng")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-i", "zc:12345@0"}, "zdump: -i zc:CLUSTER@QUEUE and -w FILE are required"},
		{[]string{"-i", "zc:12345@0", "-w", out, "--wait", "-1s"}, "zdump: --wait -1s: want 0 or more"},
		{[]string{"-i", "zc:12345@0", "foo", "-w", out}, `zdump: unexpected argument "foo"`},
	} {
		var stdout, stderr bytes.Buffer
		if code := run(tc.args, &stdout, &stderr); code != 2 || !strings.Contains(stderr.String(), tc.want) || !strings.Contains(stderr.String(), "Usage: zdump") {
			t.Errorf("%q: exit %d, want 2 and %q then the usage\n%s", tc.args, code, tc.want, &stderr)
		}
	}
	var stdout, stderr bytes.Buffer
	if code := run([]string{"-i", "zc:12345@0", "-w", out}, &stdout, &stderr); code != 1 || !strings.Contains(stderr.String(), "not found") {
		t.Errorf("missing cluster: exit %d, want 1\n%s", code, &stderr)
	}
}
