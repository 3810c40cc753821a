package vmtest

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket/pcapgo"
	"github.com/zcfabric/zc"
	"github.com/zcfabric/zc/host/qmp"
	"github.com/zcfabric/zc/internal/testgate"
)

// Stock tcpdump inside a guest, reading a hot-plugged queue through the
// libpcap shim (pcapshim/src/zcpcap.c): the initramfs carries Debian's
// /usr/bin/tcpdump, the shared libraries ldd finds for it and for the
// shim, the dynamic loader, and a libzcpcap.so this test builds with gcc
// as scripts/build.sh does (or the one $VMTEST_LIBZCPCAP names, e.g.
// bin/libzcpcap.so). Nothing of it is committed.

// waitDevice is a shell function for the guest's script: wait (up to 60 s)
// until an ivshmem device (1af4:1110) with its BAR2 is there.
const waitDevice = `waitdev() {
	i=0
	while [ $i -lt 1200 ]; do
		for d in /sys/bus/pci/devices/*; do
			[ "$(cat $d/vendor)" = 0x1af4 ] && [ "$(cat $d/device)" = 0x1110 ] && [ -e $d/resource2 ] && return 0
		done
		sleep 0.05
		i=$((i+1))
	done
	echo "no ivshmem device appeared"
	return 1
}
chmod 1777 /tmp # tcpdump writes -w files as user tcpdump (Debian's default -Z)
export PATH=/bin:/usr/bin
tcpdump --version 2>&1 || exit 1
`

// tcpdumpGuest is what a guest running tcpdump needs.
type tcpdumpGuest struct {
	opts []Option // HostFile for each file
}

// newTcpdumpGuest builds the shim and lists the files the guest needs. It
// skips when tcpdump, gcc, the libpcap headers or ldd are absent.
func newTcpdumpGuest(t *testing.T) *tcpdumpGuest {
	t.Helper()
	testgate.Short(t, "boots a QEMU guest")
	testgate.QEMU(t)
	tcpdump, err := exec.LookPath("tcpdump")
	if err != nil {
		t.Skip("requires tcpdump on the host, copied into the guest (apt-get install tcpdump)")
	}
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		t.Skip("requires gcc to build the libpcap shim (apt-get install gcc)")
	}
	if _, err := exec.LookPath("ldd"); err != nil {
		t.Skip("requires ldd to find tcpdump's libraries (libc-bin)")
	}
	hdr := exec.Command(gcc, "-E", "-x", "c", "-")
	hdr.Stdin = strings.NewReader("#include <pcap/pcap.h>\n")
	if err := hdr.Run(); err != nil {
		t.Skip("requires the libpcap headers to build the shim (apt-get install libpcap-dev)")
	}
	dir := t.TempDir()
	shim := os.Getenv("VMTEST_LIBZCPCAP")
	if shim == "" {
		shim = filepath.Join(dir, "libzcpcap.so")
		// As scripts/build.sh builds it (the test runs in vmtest/).
		if out, err := exec.Command(gcc, "-O2", "-Wall", "-Wextra", "-fPIC", "-shared", "-o", shim, "../pcapshim/src/zcpcap.c", "-ldl").CombinedOutput(); err != nil {
			t.Fatalf("build the shim: %v\n%s", err, out)
		}
	}
	g := &tcpdumpGuest{}
	g.opts = append(g.opts, HostFile("/usr/bin/tcpdump", tcpdump), HostFile("/libzcpcap.so", shim))
	libs := map[string]bool{}
	for _, bin := range []string{tcpdump, shim} {
		for _, l := range ldd(t, bin) {
			libs[l] = true
		}
	}
	var names []string
	for l := range libs {
		g.opts = append(g.opts, HostFile(l, l))
		names = append(names, filepath.Base(l))
	}
	sort.Strings(names)
	t.Logf("guest files: /usr/bin/tcpdump, /libzcpcap.so and %d libraries: %s", len(names), strings.Join(names, " "))
	// Debian's tcpdump drops to user tcpdump after opening the device.
	etc := map[string]string{
		"passwd": "root:x:0:0:root:/root:/bin/sh\ntcpdump:x:104:109::/nonexistent:/bin/false\n",
		"group":  "root:x:0:\ntcpdump:x:109:\n",
	}
	for name, text := range etc {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		g.opts = append(g.opts, HostFile("/etc/"+name, p))
	}
	return g
}

// lddLine is "name => /path (0x...)" or "/path (0x...)" (the loader).
var lddLine = regexp.MustCompile(`^\s*(?:\S+ => )?(/\S+) \(0x[0-9a-f]+\)$`)

// ldd returns the absolute paths of the shared objects bin loads,
// the dynamic loader included.
func ldd(t *testing.T, bin string) []string {
	t.Helper()
	out, err := exec.Command("ldd", bin).Output()
	if err != nil {
		t.Fatalf("ldd %s: %v", bin, err)
	}
	var paths []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if m := lddLine.FindStringSubmatch(sc.Text()); m != nil {
			paths = append(paths, m[1])
		} else if strings.Contains(sc.Text(), "not found") {
			t.Fatalf("ldd %s: %s", bin, sc.Text())
		}
	}
	if len(paths) == 0 {
		t.Fatalf("ldd %s found no libraries:\n%s", bin, out)
	}
	return paths
}

// pcapCluster creates cluster id (a region in a fresh folder on /dev/shm,
// which QEMU maps) and attaches its producer end.
func pcapCluster(t *testing.T, id uint32) (*zc.Cluster, *zc.Queue) {
	t.Helper()
	base := "/dev/shm"
	if fi, err := os.Stat(base); err != nil || !fi.IsDir() {
		base = ""
	}
	dir, err := os.MkdirTemp(base, "zcpcapvm-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	t.Setenv("ZC_DIR", dir)
	c, err := zc.CreateCluster(zc.Config{ID: id, QueueLen: 256, Buffers: 512, Backing: zc.BackingShm})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	prod, err := c.Producer(0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { prod.Close() })
	return c, prod
}

// pcapFrameLen is the length of synthetic frame seq the tests send.
func pcapFrameLen(seq uint64) int { return 60 + int(seq%40) }

// pcapStamp is the timestamp frame seq carries (whole microseconds: the
// pcap file has microsecond resolution).
func pcapStamp(seq uint64) int64 {
	return 1_700_000_000_000_000_000 + int64(seq)*1_000_000_000 + int64(seq)*1000
}

// sendFrames queues synthetic frames first..first+n-1 (zc.SynthFrame) with
// their timestamps; the queue has room for them.
func sendFrames(t *testing.T, prod *zc.Queue, first, n uint64) {
	t.Helper()
	pkts := make([]zc.Packet, 1)
	for seq := first; seq < first+n; seq++ {
		if k, err := prod.Alloc(pkts); k != 1 || err != nil {
			t.Fatalf("alloc for frame %d: %d, %v", seq, k, err)
		}
		pkts[0].Data = pkts[0].Data[:zc.SynthFrame(pkts[0].Data, seq, pcapFrameLen(seq), 4)]
		pkts[0].Timestamp = pcapStamp(seq)
		if k, err := prod.SendBurst(pkts); k != 1 || err != nil {
			t.Fatalf("send frame %d: %d, %v", seq, k, err)
		}
	}
}

const zdecodePkg = "github.com/zcfabric/zc/examples/zdecode"

// TestGuestTcpdump: Debian's tcpdump, unmodified, preloaded with the shim
// inside a TCG guest, reads a queue hot-plugged over QMP.
//
//   - count: `tcpdump -i zc:C@0 -c N -w FILE` stops after exactly N of the
//     N+10 packets sent (half queued before it started, half while it
//     reads), says "N packets captured", and the file, carried back over
//     the console, holds frames 0..N-1 in order, whole, with the
//     producer's timestamps. `tcpdump -D` lists the queue. Then zdecode
//     (gopacket through zcgopacket) takes the queue and decodes 10 more.
//   - unplug: the device is unplugged while tcpdump reads (printing each
//     packet): tcpdump prints the shim's error and exits with a status of
//     its own, not a signal, and the guest goes on.
func TestGuestTcpdump(t *testing.T) {
	g := newTcpdumpGuest(t)
	t.Run("count", func(t *testing.T) { testTcpdumpCount(t, g) })
	t.Run("unplug", func(t *testing.T) { testTcpdumpUnplug(t, g) })
}

func testTcpdumpCount(t *testing.T, g *tcpdumpGuest) {
	const (
		id = 85
		n  = 40
	)
	script := waitDevice + fmt.Sprintf(`waitdev || exit 1
LD_PRELOAD=/libzcpcap.so tcpdump -D 2>&1
LD_PRELOAD=/libzcpcap.so tcpdump -i zc:%[1]d@0 -c %[2]d -w /tmp/x.pcap 2>&1
echo "ZCTCPDUMP $?"
echo "ZCPCAP $(base64 -w 0 /tmp/x.pcap)"
zdecode -i zc:%[1]d@0 -n 10 --interval 0 2>&1`, id, n)
	c, prod := pcapCluster(t, id)
	vm := Start(t, append(g.opts, Name("tcpdump"), Timeout(5*time.Minute), Script(script), GoBinary("zdecode", zdecodePkg))...)
	ctx := testCtx(t, 5*time.Minute)
	q, err := qmp.Dial(ctx, vm.QMPPath())
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	sendFrames(t, prod, 0, n/2) // waiting in the queue when tcpdump attaches
	if _, err := q.AttachRegion(ctx, qmp.AttachSpec{Path: c.File(), Size: c.Size(), Name: "c" + strconv.Itoa(id)}); err != nil {
		t.Fatal(err)
	}
	name := zc.Name{Cluster: id, Queue: 0}.String()
	if _, _, err := vm.ExpectRegexp(ctx, regexp.MustCompile(`^\d+\.`+name+`\b`)); err != nil { // tcpdump -D
		t.Fatalf("tcpdump -D in the guest did not list %s: %v", name, err)
	}
	if _, err := vm.Expect(ctx, "listening on "+name); err != nil {
		t.Fatal(err)
	}
	sendFrames(t, prod, n/2, n/2+10) // while it reads, and 10 more than -c
	_, m, err := vm.ExpectRegexp(ctx, regexp.MustCompile(`^(\d+) packets? captured`))
	if err != nil {
		t.Fatal(err)
	}
	if m[1] != strconv.Itoa(n) {
		t.Errorf("tcpdump -c %d says %s packets captured", n, m[1])
	}
	if _, m, err = vm.ExpectRegexp(ctx, regexp.MustCompile(`^ZCTCPDUMP (\d+)$`)); err != nil {
		t.Fatal(err)
	} else if m[1] != "0" {
		t.Errorf("tcpdump -c %d exited %s", n, m[1])
	}
	_, m, err = vm.ExpectRegexp(ctx, regexp.MustCompile(`^ZCPCAP (\S*)$`))
	if err != nil {
		t.Fatal(err)
	}
	file, err := base64.StdEncoding.DecodeString(m[1])
	if err != nil {
		t.Fatalf("the guest's pcap file, base64: %v", err)
	}
	checkPcap(t, file, n)
	// The same queue, next consumer: zdecode (gopacket through zcgopacket,
	// a static Go binary) reads 10 frames sent now. (Some of the 10 extra
	// frames sent before may have gone with tcpdump's last burst.)
	sendFrames(t, prod, n+10, 10)
	if _, m, err = vm.ExpectRegexp(ctx, regexp.MustCompile(`^  UDP +(\d+)$`)); err != nil {
		t.Fatalf("zdecode in the guest: %v", err)
	} else if m[1] != "10" {
		t.Errorf("zdecode in the guest decoded %s UDP packets, want 10", m[1])
	}
	if err := vm.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if st := prod.Stats(); st.Sent != n+20 {
		t.Errorf("the host sent %d packets, want %d", st.Sent, n+20)
	}
}

// checkPcap checks that file is a pcap file of frames 0..n-1 as sent.
func checkPcap(t *testing.T, file []byte, n int) {
	t.Helper()
	r, err := pcapgo.NewReader(bytes.NewReader(file))
	if err != nil {
		t.Fatalf("the guest's pcap file (%d bytes): %v", len(file), err)
	}
	var seq uint64
	for ; ; seq++ {
		data, ci, err := r.ReadPacketData()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("the guest's pcap file, packet %d: %v", seq, err)
		}
		got, err := zc.CheckSynth(data)
		if err != nil || got != seq || len(data) != pcapFrameLen(seq) || ci.Length != len(data) {
			t.Fatalf("the guest's pcap file, packet %d: seq %d (%v), %d bytes of %d; want frame %d, %d bytes", seq, got, err, len(data), ci.Length, seq, pcapFrameLen(seq))
		}
		if ci.Timestamp.UnixNano() != pcapStamp(seq) {
			t.Errorf("the guest's pcap file, packet %d: timestamp %d, want the producer's %d", seq, ci.Timestamp.UnixNano(), pcapStamp(seq))
		}
	}
	if seq != uint64(n) {
		t.Fatalf("the guest's pcap file holds %d packets, want %d", seq, n)
	}
	t.Logf("the guest's pcap file: %d bytes, frames 0..%d in order, whole, with their timestamps", len(file), n-1)
}

func testTcpdumpUnplug(t *testing.T, g *tcpdumpGuest) {
	const (
		id = 86
		n  = 5
	)
	script := waitDevice + fmt.Sprintf(`waitdev || exit 1
LD_PRELOAD=/libzcpcap.so tcpdump -i zc:%d@0 -nn -l 2>&1
echo "ZCTCPDUMP $?"
echo "ZCALIVE"`, id)
	c, prod := pcapCluster(t, id)
	vm := Start(t, append(g.opts, Name("tcpdump"), Timeout(5*time.Minute), Script(script))...)
	ctx := testCtx(t, 5*time.Minute)
	q, err := qmp.Dial(ctx, vm.QMPPath())
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	a, err := q.AttachRegion(ctx, qmp.AttachSpec{Path: c.File(), Size: c.Size(), Name: "c" + strconv.Itoa(id)})
	if err != nil {
		t.Fatal(err)
	}
	name := zc.Name{Cluster: id, Queue: 0}.String()
	if _, err := vm.Expect(ctx, "listening on "+name); err != nil {
		t.Fatal(err)
	}
	sendFrames(t, prod, 0, n)
	pkt := regexp.MustCompile(`^\d\d:\d\d:\d\d\.\d+ IP 10\.0\.0\.\d+\.\d+ > 10\.1\.0\.1\.9: UDP`)
	for i := range n {
		if _, _, err := vm.ExpectRegexp(ctx, pkt); err != nil {
			t.Fatalf("packet %d not printed by tcpdump: %v", i, err)
		}
	}
	// tcpdump waits on the empty queue now: unplug it.
	start := time.Now()
	if err := q.Detach(ctx, a); err != nil {
		t.Fatal(err)
	}
	stopCtx, cancel := context.WithTimeout(ctx, 60*time.Second) // a hang bound, not a measurement
	defer cancel()
	if _, _, err := vm.ExpectRegexp(stopCtx, regexp.MustCompile(`^(\d+) packets? captured`)); err != nil {
		t.Fatalf("tcpdump did not end with its statistics after the unplug (a hang?): %v", err)
	}
	l, m, err := vm.ExpectRegexp(stopCtx, regexp.MustCompile(`^ZCTCPDUMP (\d+)$`))
	if err != nil {
		t.Fatalf("tcpdump did not end after the unplug (a hang?): %v", err)
	}
	st, _ := strconv.Atoi(m[1])
	t.Logf("tcpdump ended %v after device_del, status %d", l.Time.Sub(start).Round(time.Millisecond), st)
	var errLine string
	for _, cl := range vm.Lines() {
		if strings.HasPrefix(cl.Text, "tcpdump: ") && strings.Contains(cl.Text, "gone") {
			errLine = cl.Text
		}
	}
	switch {
	case st == 0 || st >= 128:
		t.Errorf("tcpdump after the unplug exited %d, want an error status of its own (1..127; 128+ is a signal)", st)
	case errLine == "":
		t.Errorf("tcpdump printed no error saying the cluster is gone")
	default:
		t.Logf("tcpdump said: %s", errLine)
	}
	if _, err := vm.Expect(ctx, "ZCALIVE"); err != nil {
		t.Fatal(err)
	}
	if err := vm.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestInitramfsHostFiles: files HostFile carries land at their paths, after
// entries for every parent directory the archive lacked (the kernel's
// unpacker makes none).
func TestInitramfsHostFiles(t *testing.T) {
	src := filepath.Join(t.TempDir(), "lib.so")
	if err := os.WriteFile(src, []byte("ELF?"), 0o644); err != nil {
		t.Fatal(err)
	}
	c := defaultConfig()
	HostFile("/usr/lib/x86_64-linux-gnu/libx.so.1", src)(c)
	HostFile("/lib/y.so", src)(c)
	r := &initramfs{busybox: []byte("BB"), binaries: map[string][]byte{}}
	if err := r.addHostFiles(c.files); err != nil {
		t.Fatal(err)
	}
	img, err := r.build()
	if err != nil {
		t.Fatal(err)
	}
	zr, err := gzip.NewReader(bytes.NewReader(img))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{} // name → its index in the archive
	var order []string
	data := map[string]string{}
	for off := 0; ; {
		hex := func(i int) int {
			v, _ := strconv.ParseUint(string(raw[off+6+8*i:off+14+8*i]), 16, 32)
			return int(v)
		}
		size, nameLen := hex(6), hex(11)
		name := string(raw[off+110 : off+110+nameLen-1])
		off = (off + 110 + nameLen + 3) &^ 3
		d := string(raw[off : off+size])
		off = (off + size + 3) &^ 3
		if name == "TRAILER!!!" {
			break
		}
		seen[name] = len(order)
		order = append(order, name)
		data[name] = d
	}
	for _, f := range []string{"usr/lib/x86_64-linux-gnu/libx.so.1", "lib/y.so"} {
		i, ok := seen[f]
		if !ok || data[f] != "ELF?" {
			t.Fatalf("%s missing or wrong (%q); archive: %v", f, data[f], order)
		}
		for d := filepath.Dir(f); d != "."; d = filepath.Dir(d) {
			if j, ok := seen[d]; !ok || j > i {
				t.Errorf("directory %s missing or after %s; archive: %v", d, f, order)
			}
		}
	}
	if n := strings.Count("\n"+strings.Join(order, "\n")+"\n", "\nlib\n"); n != 1 {
		t.Errorf("directory lib made %d times; archive: %v", n, order)
	}
}
