package main

import (
	"bytes"
	"math/rand/v2"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/zcfabric/zc"
)

// The traffic the tests send: synthetic UDP frames over 4 flows, TCP
// segments of one flow, ARP requests.
const (
	nUDP = 400
	nTCP = 50
	nARP = 7
)

// produce creates a cluster with one queue and sends the traffic into it.
func produce(t *testing.T) (*zc.Cluster, *zc.Queue) {
	t.Helper()
	base := "/dev/shm"
	if _, err := os.Stat(base); err != nil {
		base = ""
	}
	dir, err := os.MkdirTemp(base, "zdecode-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	t.Setenv("ZC_DIR", dir)
	c, err := zc.CreateCluster(zc.Config{ID: 0x7e000000 | rand.Uint32N(1<<24), QueueLen: 1024, Backing: zc.BackingShm})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	prod, err := c.Producer(0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { prod.Close() })
	frames := make([][]byte, 0, nUDP+nTCP+nARP)
	buf := make([]byte, 2048)
	for seq := range uint64(nUDP) {
		frames = append(frames, append([]byte(nil), buf[:zc.SynthFrame(buf, seq, 100, 4)]...))
	}
	eth := layers.Ethernet{SrcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, DstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2}, EthernetType: layers.EthernetTypeIPv4}
	ip := layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: net.IP{192, 168, 1, 1}, DstIP: net.IP{192, 168, 1, 2}}
	tcp := layers.TCP{SrcPort: 40000, DstPort: 5201, Seq: 1, ACK: true, Window: 1000}
	tcp.SetNetworkLayerForChecksum(&ip)
	for i := range nTCP {
		frames = append(frames, serialize(t, &eth, &ip, &tcp, gopacket.Payload(bytes.Repeat([]byte{byte(i)}, 10+i))))
	}
	arpEth := eth
	arpEth.EthernetType, arpEth.DstMAC = layers.EthernetTypeARP, layers.EthernetBroadcast
	arp := layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4, Operation: layers.ARPRequest,
		SourceHwAddress: eth.SrcMAC, SourceProtAddress: []byte{192, 168, 1, 1}, DstHwAddress: make([]byte, 6), DstProtAddress: []byte{192, 168, 1, 9}}
	for range nARP {
		frames = append(frames, serialize(t, &arpEth, &arp))
	}
	for i, f := range frames {
		if err := prod.Send(f); err != nil {
			t.Fatalf("send frame %d: %v", i, err)
		}
	}
	return c, prod
}

func serialize(t *testing.T, ls ...gopacket.SerializableLayer) []byte {
	t.Helper()
	b := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(b, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// counts reads "  NAME  N" lines of zdecode's layer table.
func counts(out string) map[string]int {
	m := map[string]int{}
	for _, l := range regexp.MustCompile(`(?m)^  (\S+) +(\d+)$`).FindAllStringSubmatch(out, -1) {
		m[l[1]], _ = strconv.Atoi(l[2])
	}
	return m
}

// TestDecode: zdecode, fast and full, counts every packet under each of
// its layers and finds the flows, ending after -n packets.
func TestDecode(t *testing.T) {
	for _, full := range []bool{false, true} {
		t.Run(map[bool]string{false: "fast", true: "full"}[full], func(t *testing.T) {
			c, _ := produce(t)
			total := nUDP + nTCP + nARP
			args := []string{"-i", zc.Name{Cluster: c.ID(), Queue: 0}.String(), "-n", strconv.Itoa(total), "--top", "5"}
			if full {
				args = append(args, "--full")
			}
			var stdout, stderr bytes.Buffer
			if code := run(args, &stdout, &stderr); code != 0 {
				t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, &stdout, &stderr)
			}
			out := stdout.String()
			t.Logf("output:\n%s", out)
			got := counts(out)
			want := map[string]int{"Ethernet": total, "IPv4": nUDP + nTCP, "UDP": nUDP, "TCP": nTCP, "ARP": nARP, "Payload": total} // ARP too: an empty one
			for l, n := range want {
				if got[l] != n {
					t.Errorf("layer %s: %d packets, want %d", l, got[l], n)
				}
			}
			if !strings.Contains(out, "top flows (of 5):") {
				t.Errorf("want 5 flows (4 UDP, 1 TCP)")
			}
			if !strings.Contains(out, "10.0.0.0:1024 > 10.1.0.1:9 UDP") || !strings.Contains(out, strconv.Itoa(nUDP/4)) {
				t.Errorf("UDP flow 0 (%d packets) not listed", nUDP/4)
			}
			if !regexp.MustCompile(`192\.168\.1\.1:40000 > 192\.168\.1\.2:5201 TCP +` + strconv.Itoa(nTCP)).MatchString(out) {
				t.Errorf("TCP flow (%d packets) not listed", nTCP)
			}
		})
	}
}

// TestDecodeTopZero: --top 0 lists no flow, only how many there were.
func TestDecodeTopZero(t *testing.T) {
	c, _ := produce(t)
	var stdout, stderr bytes.Buffer
	if code := run([]string{"-i", zc.Name{Cluster: c.ID(), Queue: 0}.String(), "-n", "10", "--top", "0"}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, &stdout, &stderr)
	}
	if out := stdout.String(); !strings.HasSuffix(out, "top flows (of 4):\n") {
		t.Errorf("want the top flows' header last, no flow listed:\n%s", out)
	}
}

// TestDecodeEndsWhenClusterCloses: without -n, zdecode reads until the
// creator closes the cluster, then exits 0 having counted everything.
func TestDecodeEndsWhenClusterCloses(t *testing.T) {
	c, prod := produce(t)
	var stdout, stderr bytes.Buffer
	done := make(chan int, 1)
	go func() { done <- run([]string{"-i", zc.Name{Cluster: c.ID(), Queue: 0}.String()}, &stdout, &stderr) }()
	// Close once zdecode has attached (or exited).
	for prod.Stats().Consumer == 0 && len(done) == 0 {
		time.Sleep(time.Millisecond)
	}
	prod.Close()
	c.Close()
	if code := <-done; code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, &stdout, &stderr)
	}
	if got := counts(stdout.String())["Ethernet"]; got != nUDP+nTCP+nARP {
		t.Fatalf("%d packets counted, want %d\n%s", got, nUDP+nTCP+nARP, &stdout)
	}
	if !strings.Contains(stderr.String(), "cluster closed by its creator") {
		t.Fatalf("stderr does not say the cluster closed:\n%s", &stderr)
	}
}

// TestUsage: --help explains and exits 0; a missing -i, a negative
// --top, --interval or --wait, and a stray argument are usage errors; a
// missing cluster fails with status 1.
func TestUsage(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := run([]string{"--help"}, &stdout, &stderr); code != 0 || !strings.Contains(stderr.String(), "DecodingLayerParser") || !strings.Contains(stderr.String(), "-top") {
		t.Fatalf("--help: exit %d\n%s", code, &stderr)
	}
	stderr.Reset()
	if code := run(nil, &stdout, &stderr); code != 2 || !strings.Contains(stderr.String(), "-i zc:CLUSTER@QUEUE is required") {
		t.Fatalf("no -i: exit %d\n%s", code, &stderr)
	}
	t.Setenv("ZC_DIR", t.TempDir())
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--top", "-1"}, "zdecode: --top -1: want 0 or more"},
		{[]string{"--interval", "-1s"}, "zdecode: --interval -1s: want 0 or more"},
		{[]string{"--wait", "-2s"}, "zdecode: --wait -2s: want 0 or more"},
		{[]string{"foo", "--top", "-1"}, `zdecode: unexpected argument "foo"`},
	} {
		stderr.Reset()
		if code := run(append([]string{"-i", "zc:12345@0"}, tc.args...), &stdout, &stderr); code != 2 || !strings.Contains(stderr.String(), tc.want) || !strings.Contains(stderr.String(), "Usage: zdecode") {
			t.Errorf("%q: exit %d, want 2 and %q then the usage\n%s", tc.args, code, tc.want, &stderr)
		}
	}
	stderr.Reset()
	if code := run([]string{"-i", "zc:12345@0"}, &stdout, &stderr); code != 1 || !strings.Contains(stderr.String(), "not found") {
		t.Fatalf("missing cluster: exit %d\n%s", code, &stderr)
	}
}
