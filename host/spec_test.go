package host

import (
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/zcfabric/zc"
	"github.com/zcfabric/zc/host/afxdp"
	"github.com/zcfabric/zc/internal/pcaptest"
)

func TestParseSourceErrors(t *testing.T) {
	for _, spec := range []string{
		"gen:len=abc",
		"bogus:eth0",
		"afxdp:",
		"afxdp:eth0@x",
		"afxdp:eth0?mode=fast",
		"afxdp:eth0?xdp=hw",
		"afxdp:eth0?color=red",
		"afpacket:eth0@1",
		"afpacket:eth0?mode=copy",
		"zc:99@0",
		"afxdp:eth0,,eth1",
		"pcap:/x.pcap?loops=many",
		"afxdp:eth0?ring=1000",
		"afxdp:eth0?ring=32",
		"zc:eth0?ring=x",
	} {
		_, err := ParseSource(spec, SourceOptions{})
		if !errors.Is(err, ErrBadSpec) {
			t.Errorf("ParseSource(%q) = %v, want ErrBadSpec", spec, err)
			continue
		}
		if !strings.Contains(err.Error(), spec) {
			t.Errorf("ParseSource(%q): error %q does not name the spec", spec, err)
		}
	}
	// afxdp needs a cluster for its UMEM.
	if _, err := ParseSource("afxdp:lo", SourceOptions{}); !errors.Is(err, ErrBadSpec) {
		t.Errorf("afxdp without a cluster: %v, want ErrBadSpec", err)
	}
	if _, err := ParseSource("afpacket:zct-no-such-if", SourceOptions{}); err == nil || !strings.Contains(err.Error(), "zct-no-such-if") {
		t.Errorf("missing interface: %v", err)
	}
	if _, err := ParseSource("gen:count=1", SourceOptions{BPF: "2\n6 0 0"}); !errors.Is(err, ErrBadFilter) {
		t.Errorf("bad --bpf: %v, want ErrBadFilter", err)
	}
}

// TestRingBuffers: the pool sizing helper counts a fill ring per AF_XDP
// socket a spec opens (zc: may be AF_XDP) and nothing for other kinds.
func TestRingBuffers(t *testing.T) {
	d := afxdp.DefaultRingSize
	for _, c := range []struct {
		spec string
		want int
	}{
		{"afxdp:eth0", d},
		{"afxdp:eth0@0,eth0@1", 2 * d},
		{"zc:eth0?ring=1024", 1024},
		{"eth0", d},
		{"afpacket:eth0,eth1", 0},
		{"gen:count=10", 0},
		{"pcap:/x.pcap", 0},
	} {
		got, err := RingBuffers(c.spec)
		if err != nil || got != c.want {
			t.Errorf("RingBuffers(%q) = %d, %v; want %d", c.spec, got, err, c.want)
		}
	}
	if _, err := RingBuffers("afxdp:eth0?ring=3"); !errors.Is(err, ErrBadSpec) {
		t.Errorf("RingBuffers with ring=3: %v, want ErrBadSpec", err)
	}
}

func TestParseSourceGenPcap(t *testing.T) {
	srcs, err := ParseSource("gen:len=100,count=10", SourceOptions{})
	if err != nil || len(srcs) != 1 || srcs[0].Name() != "gen:len=100,count=10" {
		t.Fatalf("gen: %v %v", srcs, err)
	}
	path := pcaptest.File(t)
	srcs, err = ParseSource("pcap:"+path+"?timing=1&loops=3", SourceOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer srcs[0].Close()
	p := srcs[0].(*Pcap)
	if !p.cfg.Timing || p.cfg.Loops != 3 {
		t.Errorf("pcap config %+v, want timing, 3 loops", p.cfg)
	}
}

func TestParseFilter(t *testing.T) {
	for _, s := range []string{filterTestType, "4,40 0 0 12,21 0 1 34997,6 0 0 262144,6 0 0 0", "4;0x28 0 0 0xc;21 0 1 34997;6 0 0 262144;6 0 0 0"} {
		f, err := ParseFilter(s)
		if err != nil {
			t.Fatalf("ParseFilter(%q): %v", s, err)
		}
		if f.Len() != 4 || !f.UserSpace() {
			t.Errorf("ParseFilter(%q): %d instructions, user space %v", s, f.Len(), f.UserSpace())
		}
		frame := make([]byte, 60)
		frame[12], frame[13] = 0x88, 0xb5
		if !f.Match(frame) {
			t.Errorf("0x88b5 frame rejected")
		}
		frame[13] = 0xb6
		if f.Match(frame) {
			t.Errorf("0x88b6 frame accepted")
		}
		if f.Match(frame[:10]) {
			t.Errorf("short frame accepted")
		}
	}
	for _, s := range []string{"", "x", "3\n6 0 0 0", "1\n6 0 0", "1\n6 0 0 99999999999"} {
		if _, err := ParseFilter(s); !errors.Is(err, ErrBadFilter) {
			t.Errorf("ParseFilter(%q) = %v, want ErrBadFilter", s, err)
		}
	}
	// tcpdump -ddd 'vlan' uses ancillary loads: kernel only.
	f, err := ParseFilter("4\n48 0 0 4294963244\n21 1 0 1\n6 0 0 0\n6 0 0 262144\n")
	if err != nil {
		t.Fatal(err)
	}
	if f.UserSpace() {
		t.Errorf("ancillary load program claims to run in user space")
	}
}

func TestFilterMatchAllocs(t *testing.T) {
	f, err := ParseFilter(filterTestType)
	if err != nil {
		t.Fatal(err)
	}
	frame := make([]byte, 64)
	if a := testing.AllocsPerRun(1000, func() { f.Match(frame) }); a != 0 {
		t.Errorf("Match allocates %v times", a)
	}
}

// TestAFPacketRecvNoTraffic: Recv on an idle source allocates nothing and
// gives the burst's buffers back.
func TestAFPacketRecvNoTraffic(t *testing.T) {
	c := newCluster(t, 256)
	a, err := OpenAFPacket("lo")
	if err != nil {
		t.Skipf("AF_PACKET on lo: %v (needs CAP_NET_RAW)", err)
	}
	defer a.Close()
	pool := c.Pool()
	free := pool.Len()
	pkts := make([]zc.Packet, 32)
	allocs := testing.AllocsPerRun(100, func() {
		n, _ := a.Recv(pool, pkts)
		pool.Free(pkts[:n])
	})
	if allocs != 0 {
		t.Errorf("Recv allocates %v times", allocs)
	}
	if pool.Len() != free {
		t.Errorf("pool has %d free buffers, had %d", pool.Len(), free)
	}
}

// udpPort53 is `tcpdump -ddd 'udp port 53'` (20 instructions).
const udpPort53 = `20
40 0 0 12
21 0 6 34525
48 0 0 20
21 0 15 17
40 0 0 54
21 12 0 53
40 0 0 56
21 10 11 53
21 0 10 2048
48 0 0 23
21 0 8 17
40 0 0 20
69 6 0 8191
177 0 0 14
72 0 0 14
21 2 0 53
72 0 0 16
21 0 1 53
6 0 0 262144
6 0 0 0`

// BenchmarkFilterMatch: the user-space cost of a tcpdump filter per
// packet (a 64-byte UDP frame to port 53, accepted after 13 instructions).
func BenchmarkFilterMatch(b *testing.B) {
	f, err := ParseFilter(udpPort53)
	if err != nil {
		b.Fatal(err)
	}
	frame := make([]byte, 64)
	frame[12], frame[13] = 0x08, 0x00
	frame[14], frame[23] = 0x45, 17
	frame[36], frame[37] = 0, 53
	if !f.Match(frame) {
		b.Fatal("filter rejects a UDP port 53 frame")
	}
	for b.Loop() {
		f.Match(frame)
	}
}

// srcPort1025 is a classic BPF program accepting UDP/IPv4 frames from
// source port 1025 (no IP options): ldh [34]; jeq #1025; ret all; ret 0.
// The generator gives flow f source port 1024+f.
const srcPort1025 = "4\n40 0 0 34\n21 0 1 1025\n6 0 0 262144\n6 0 0 0"

// TestFilterGenPcap: --bpf applies to the generator and to pcap replay as
// to captures (it was silently ignored there): what the filter rejects is
// counted as Filtered, its buffer goes back to the pool, and only the
// accepted frames come out, in order.
func TestFilterGenPcap(t *testing.T) {
	c := newCluster(t, 256)
	pool := c.Pool()
	// A pcap file of the generator's first 100 frames, four flows.
	frames := make([][]byte, 100)
	for seq := range frames {
		frames[seq] = make([]byte, 64)
		zc.SynthFrame(frames[seq], uint64(seq), 64, 4)
	}
	path := pcaptest.File(t, frames...)
	for _, spec := range []string{"gen:count=100,flows=4", "pcap:" + path} {
		srcs, err := ParseSource(spec, SourceOptions{BPF: srcPort1025})
		if err != nil {
			t.Fatalf("%s: %v", spec, err)
		}
		s := srcs[0]
		free := pool.Len()
		pkts := make([]zc.Packet, 32)
		var got []uint64
		for range 100 {
			n, err := s.Recv(pool, pkts)
			for _, p := range pkts[:n] {
				if len(p.Data) < 54 || p.Data[35] != 1 || p.Data[34] != 4 {
					t.Fatalf("%s: a frame the filter rejects came out: %x", spec, p.Data)
				}
				got = append(got, binary.BigEndian.Uint64(p.Data[46:]))
			}
			pool.Free(pkts[:n])
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("%s: %v", spec, err)
			}
		}
		s.Close()
		st := s.Stats()
		if len(got) != 25 || st.Packets != 25 || st.Filtered != 75 {
			t.Errorf("%s: %d frames out, stats %+v; want 25 out, 75 filtered", spec, len(got), st)
		}
		for i, seq := range got {
			if seq != uint64(4*i+1) {
				t.Errorf("%s: frame %d is seq %d, want %d", spec, i, seq, 4*i+1)
				break
			}
		}
		if pool.Len() != free {
			t.Errorf("%s: pool has %d free buffers, had %d", spec, pool.Len(), free)
		}
	}
	// A program that needs the kernel (an ancillary load) is refused, not
	// ignored, where it can only run in user space.
	for _, spec := range []string{"gen:count=1", "pcap:" + path} {
		if _, err := ParseSource(spec, SourceOptions{BPF: "2\n32 0 0 4294963200\n6 0 0 0"}); !errors.Is(err, ErrBadFilter) {
			t.Errorf("%s with an ancillary load: %v, want ErrBadFilter", spec, err)
		}
	}
}
