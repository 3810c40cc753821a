package pcapshim

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket/pcapgo"
	"github.com/zcfabric/zc"
)

// Other stock Debian capture tools through the shim: tshark (which
// captures through dumpcap, a child process that inherits LD_PRELOAD) and
// the softflowd flow exporter.

// needTool skips the test when a tool is not installed.
func needTool(t *testing.T, name, pkg string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Skipf("no %s (apt-get install %s): %v", name, pkg, err)
	}
}

// quiet is preloaded without ZCPCAP_VERBOSE: dumpcap's stderr is its
// message pipe to tshark, and a line the shim writes there breaks the
// capture ("Unknown message from dumpcap").
func (e *env) quiet(ctx context.Context, name string, args ...string) *exec.Cmd {
	c := exec.CommandContext(ctx, name, args...)
	c.Env = append(e.vars, "LD_PRELOAD="+filepath.Join(e.bin, "libzcpcap.so"), "ZCPCAP_VERBOSE=")
	return c
}

// readPcapng reads every frame of a pcapng file and the name of its first
// interface.
func readPcapng(t *testing.T, path string) (string, [][]byte) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := pcapgo.NewNgReader(f, pcapgo.DefaultNgReaderOptions)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	var frames [][]byte
	for {
		data, ci, err := r.ReadPacketData()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("read %s: frame %d: %v", path, len(frames), err)
		}
		if ci.CaptureLength != ci.Length {
			t.Fatalf("frame %d: captured %d of %d bytes", len(frames), ci.CaptureLength, ci.Length)
		}
		frames = append(frames, data)
	}
	ifc, err := r.Interface(0)
	if err != nil {
		t.Fatalf("read %s: interface 0: %v", path, err)
	}
	return ifc.Name, frames
}

// TestTsharkWritesEveryPacket: tshark -i zc:C@Q -c N -w (dumpcap does the
// capture) writes exactly the N generated frames, intact and in order, to
// a pcapng file whose interface is the queue.
func TestTsharkWritesEveryPacket(t *testing.T) {
	needTool(t, "tshark", "tshark")
	e := newEnv(t)
	const n = 20000
	a := e.startAgent(71, "-i", fmt.Sprintf("gen:len=64,count=%d", n), "-n", "1", "--wait-consumers", "30s", "--lossless")
	out := filepath.Join(t.TempDir(), "out.pcapng")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	res, err := e.quiet(ctx, "tshark", "-i", "zc:71@0", "-c", strconv.Itoa(n), "-w", out).CombinedOutput()
	if err != nil {
		t.Fatalf("tshark: %v\n%s\nzchost:\n%s", err, res, a)
	}
	if !strings.Contains(string(res), "Capturing on 'zc:71@0'") || !strings.Contains(string(res), fmt.Sprintf("%d packets captured", n)) {
		t.Errorf("tshark output:\n%s", res)
	}
	name, frames := readPcapng(t, out)
	if name != "zc:71@0" {
		t.Errorf("pcapng interface %q, want zc:71@0", name)
	}
	if len(frames) != n {
		t.Fatalf("%s holds %d frames, want %d", out, len(frames), n)
	}
	for i, f := range frames {
		seq, err := zc.CheckSynth(f)
		if err != nil || seq != uint64(i) || len(f) != 64 {
			t.Fatalf("frame %d: seq %d, %d bytes, %v (want seq %d, 64 bytes, intact)", i, seq, len(f), err, i)
		}
	}
	log := a.wait(t)
	if !strings.Contains(log, fmt.Sprintf("sent=%d drops=0", n)) {
		t.Errorf("zchost did not send all %d frames:\n%s", n, log)
	}
}

// TestTsharkFilters: a capture filter (-f, compiled by dumpcap's libpcap,
// run by the shim) passes two flows of four, -c stops after N of them, and
// a display filter (-Y, tshark's own) shows one of the two: exactly the
// expected sequence numbers, read from the dissected UDP payload.
func TestTsharkFilters(t *testing.T) {
	needTool(t, "tshark", "tshark")
	e := newEnv(t)
	const n, flows, captured = 8000, 4, 2000
	a := e.startAgent(72, "-i", fmt.Sprintf("gen:len=64,count=%d,flows=%d", n, flows), "-n", "1", "--wait-consumers", "30s", "--lossless")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	// Flow F is UDP from port 1024+F; its frames are seq F, F+4, ...
	td := e.quiet(ctx, "tshark", "-i", "zc:72@0", "-c", strconv.Itoa(captured),
		"-f", "udp src port 1024 or udp src port 1025", "-Y", "udp.srcport == 1025",
		"-T", "fields", "-e", "udp.srcport", "-e", "data.data")
	var stderr strings.Builder
	td.Stderr = &stderr
	out, err := td.Output()
	if err != nil {
		t.Fatalf("tshark: %v\n%s\nzchost:\n%s", err, stderr.String(), a)
	}
	// The first 2000 frames of flows 0 and 1 are seq 0..3997; flow 1's
	// are 1, 5, ..., 3997.
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != captured/2 {
		t.Fatalf("tshark displayed %d packets, want %d\n%s", len(lines), captured/2, stderr.String())
	}
	for i, l := range lines {
		port, payload, ok := strings.Cut(l, "\t")
		b, err := hex.DecodeString(payload)
		if !ok || port != "1025" || err != nil || len(b) < 12 {
			t.Fatalf("line %d: %q: want port 1025 and the UDP payload", i, l)
		}
		if seq := binary.BigEndian.Uint64(b[4:12]); seq != uint64(i*flows+1) {
			t.Fatalf("line %d: seq %d, want %d", i, seq, i*flows+1)
		}
	}
	a.wait(t)
}

// TestTsharkListAndErrors: tshark -D (dumpcap -D) lists the queues and the
// real interfaces; a missing cluster is named in tshark's error.
func TestTsharkListAndErrors(t *testing.T) {
	needTool(t, "tshark", "tshark")
	e := newEnv(t)
	a := e.startAgent(73, "-n", "2")
	defer a.stop(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	list, err := e.quiet(ctx, "tshark", "-D").CombinedOutput()
	if err != nil {
		t.Fatalf("tshark -D: %v\n%s", err, list)
	}
	for _, want := range []string{". zc:73@0\n", ". zc:73@1\n", ". lo"} {
		if !strings.Contains(string(list), want) {
			t.Errorf("tshark -D does not list %q:\n%s", strings.TrimSpace(want), list)
		}
	}
	res, err := e.quiet(ctx, "tshark", "-i", "zc:74@0", "-c", "1", "-w", filepath.Join(t.TempDir(), "x.pcapng")).CombinedOutput()
	if err == nil || !strings.Contains(string(res), "no such cluster 74") {
		t.Errorf("tshark on a missing cluster: %v\n%s", err, res)
	}
}

// netflow5 is one NetFlow v5 flow record (the fields the test checks).
type netflow5 struct {
	src, dst       [4]byte
	input          uint16
	packets, bytes uint32
	sport, dport   uint16
	proto          uint8
}

// parseNetflow5 parses a NetFlow v5 export datagram: a 24-byte header
// (version 5, record count, ..., flow sequence) and 48-byte records.
func parseNetflow5(b []byte) (seq uint32, recs []netflow5, err error) {
	if len(b) < 24 || binary.BigEndian.Uint16(b) != 5 {
		return 0, nil, fmt.Errorf("not a NetFlow v5 datagram (%d bytes)", len(b))
	}
	n := int(binary.BigEndian.Uint16(b[2:]))
	if len(b) != 24+48*n {
		return 0, nil, fmt.Errorf("NetFlow v5: %d records in %d bytes", n, len(b))
	}
	seq = binary.BigEndian.Uint32(b[16:])
	for i := range n {
		r := b[24+48*i:]
		recs = append(recs, netflow5{
			src: [4]byte(r[0:4]), dst: [4]byte(r[4:8]),
			input:   binary.BigEndian.Uint16(r[12:]),
			packets: binary.BigEndian.Uint32(r[16:]), bytes: binary.BigEndian.Uint32(r[20:]),
			sport: binary.BigEndian.Uint16(r[32:]), dport: binary.BigEndian.Uint16(r[34:]),
			proto: r[38],
		})
	}
	return seq, recs, nil
}

// TestSoftflowdNetFlow: softflowd reads a queue through the shim (it polls
// pcap_fileno before each pcap_dispatch) and, told to shut down over its
// control socket, exports every flow as NetFlow v5 to a UDP listener: one
// record per generated flow, with exactly the packets and IP bytes the
// generator sent in it.
func TestSoftflowdNetFlow(t *testing.T) {
	needTool(t, "softflowd", "softflowd")
	needTool(t, "softflowctl", "softflowd")
	e := newEnv(t)
	const n, flows, length = 20011, 50, 64 // 20011 = 50*400 + 11: flows 0..10 get one more
	a := e.startAgent(75, "-i", fmt.Sprintf("gen:len=%d,count=%d,flows=%d", length, n, flows), "-n", "1",
		"--wait-consumers", "30s", "--lossless", "--keep")
	defer a.stop(t)

	collector, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer collector.Close()
	dir := t.TempDir()
	ctl := filepath.Join(dir, "sf.ctl")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	// -i IFINDEX:NAME: softflowd splits the name at its first colon.
	sf := e.quiet(ctx, "softflowd", "-d", "-i", "7:zc:75@0", "-n", collector.LocalAddr().String(), "-v", "5",
		"-c", ctl, "-p", filepath.Join(dir, "sf.pid"))
	var sflog strings.Builder
	sf.Stdout, sf.Stderr = &sflog, &sflog
	if err := sf.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- sf.Wait() }()
	defer func() {
		select {
		case <-done:
		default:
			sf.Process.Kill()
			<-done
		}
	}()

	// Wait until softflowd has processed every frame (its statistics,
	// over the control socket).
	processed := fmt.Sprintf("Packets processed: %d\n", n)
	var stats []byte
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		stats, _ = exec.CommandContext(ctx, "softflowctl", "-c", ctl, "statistics").CombinedOutput()
		if strings.Contains(string(stats), processed) {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("softflowd exited: %v\n%s\nzchost:\n%s", err, sflog.String(), a)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("softflowd did not process %d packets:\n%s\nsoftflowd:\n%s\nzchost:\n%s", n, stats, sflog.String(), a)
		}
	}
	if !strings.Contains(string(stats), fmt.Sprintf("Packets received by libpcap: %d\n", n)) ||
		!strings.Contains(string(stats), "Packets dropped by libpcap: 0\n") {
		t.Errorf("softflowd's pcap_stats:\n%s", stats)
	}
	if out, err := exec.CommandContext(ctx, "softflowctl", "-c", ctl, "shutdown").CombinedOutput(); err != nil {
		t.Fatalf("softflowctl shutdown: %v\n%s", err, out)
	}
	// Graceful shutdown expires and exports every flow, then exits
	// (Debian's softflowd 1.1.0 exits with status 1 even then).
	select {
	case <-done:
		done <- nil
	case <-ctx.Done():
		t.Fatalf("softflowd did not exit after shutdown:\n%s", sflog.String())
	}
	if !strings.Contains(sflog.String(), "Shutting down on user request") {
		t.Errorf("softflowd did not shut down gracefully:\n%s", sflog.String())
	}

	got := map[uint16]netflow5{}
	var total uint64
	buf := make([]byte, 65536)
	wantSeq := uint32(0)
	for {
		collector.SetReadDeadline(time.Now().Add(2 * time.Second))
		m, err := collector.Read(buf)
		if err != nil {
			break // every datagram was sent before softflowd exited
		}
		seq, recs, err := parseNetflow5(buf[:m])
		if err != nil {
			t.Fatal(err)
		}
		if seq != wantSeq {
			t.Errorf("NetFlow flow sequence %d, want %d (a datagram lost?)", seq, wantSeq)
		}
		wantSeq = seq + uint32(len(recs))
		for _, r := range recs {
			f := r.sport - 1024
			if _, dup := got[r.sport]; dup || r.sport < 1024 || f >= flows {
				t.Errorf("unexpected or repeated record %+v", r)
				continue
			}
			got[r.sport] = r
			total += uint64(r.packets)
		}
	}
	if len(got) != flows || total != n {
		t.Fatalf("NetFlow: %d flows, %d packets; want %d flows, %d packets\nsoftflowd:\n%s", len(got), total, flows, n, sflog.String())
	}
	for f := range uint16(flows) {
		r := got[1024+f]
		pk := uint32(n / flows)
		if int(f) < n%flows {
			pk++
		}
		want := netflow5{src: [4]byte{10, 0, byte(f >> 8), byte(f)}, dst: [4]byte{10, 1, 0, 1}, input: 7,
			packets: pk, bytes: pk * (length - 14), sport: 1024 + f, dport: 9, proto: 17}
		if r != want {
			t.Errorf("flow %d: record %+v, want %+v", f, r, want)
		}
	}
}
