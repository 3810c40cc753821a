package pcapshim

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/zcfabric/zc"
	"github.com/zcfabric/zc/ivshmem"
)

// A guest finds its regions as ivshmem PCI devices in sysfs (guest.Find,
// guest.Resolve). These tests build a fake sysfs tree ($ZC_SYSFS), as
// zc's resolve_linux_test.go does, whose devices' resource2 are real
// region files: the shim maps the very bytes the producer writes, with no
// host region of that id in $ZC_DIR.

// sysfsTree is a fake sysfs root.
type sysfsTree struct {
	t    *testing.T
	root string
}

// newSysfs makes an empty tree, readable by all: tcpdump reads it after
// it dropped to user tcpdump (-Z), as a real /sys is.
func newSysfs(t *testing.T) *sysfsTree {
	root, err := os.MkdirTemp("", "zcpcap-sysfs-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	return &sysfsTree{t: t, root: root}
}

// device adds PCI device addr with the given vendor and device ids; its
// resource2 is a symlink to bar unless bar is "". It returns the
// device's real directory (removing it unplugs the device).
func (s *sysfsTree) device(addr, vendor, device, bar string) string {
	t := s.t
	t.Helper()
	real := filepath.Join(s.root, "devices", "pci0000:00", addr)
	if err := os.MkdirAll(real, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, v := range map[string]string{"vendor": vendor + "\n", "device": device + "\n"} {
		if err := os.WriteFile(filepath.Join(real, name), []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if bar != "" {
		if err := os.Symlink(bar, filepath.Join(real, "resource2")); err != nil {
			t.Fatal(err)
		}
	}
	link := filepath.Join(s.root, "bus", "pci", "devices", addr)
	if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	return real
}

// ivshmem adds an ivshmem-plain device whose BAR2 is the region file bar.
func (s *sysfsTree) ivshmem(addr, bar string) string { return s.device(addr, "0x1af4", "0x1110", bar) }

// guestEnv is the environment of a "guest" process: no host regions
// (an empty $ZC_DIR) and the fake sysfs tree.
func (e *env) guestEnv(s *sysfsTree) *env {
	g := *e
	g.vars = append(append([]string{}, e.vars...), "ZC_DIR="+e.t.TempDir(), "ZC_SYSFS="+s.root)
	return &g
}

// newRegion creates cluster id in this process, its region file in the
// test's region directory, and closes it at the end of the test.
func (e *env) newRegion(id uint32) *zc.Cluster {
	c, err := zc.CreateCluster(zc.Config{ID: id, QueueLen: 64, Buffers: 256, Backing: zc.BackingShm, Path: filepath.Join(e.dir, "zc-"+strconv.FormatUint(uint64(id), 10))})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { c.Close() })
	return c
}

// listening starts c and waits until tcpdump says it listens; the rest of
// its stderr then goes to the returned buffer, complete once done is
// closed.
func listening(t *testing.T, c *exec.Cmd, what string) (log *bytes.Buffer, done chan struct{}) {
	t.Helper()
	stderr, err := c.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	log = &bytes.Buffer{}
	sc := bufio.NewScanner(stderr)
	ok := false
	for !ok && sc.Scan() {
		log.WriteString(sc.Text() + "\n")
		ok = strings.Contains(sc.Text(), "listening on "+what)
	}
	if !ok {
		c.Wait()
		t.Fatalf("tcpdump did not start on %s:\n%s", what, log)
	}
	done = make(chan struct{})
	go func() { io.Copy(log, stderr); close(done) }()
	return log, done
}

// endsGone waits for a tcpdump that should end on its own with an error
// saying its cluster is gone: an exit status, not a signal, not a hang.
func endsGone(t *testing.T, c *exec.Cmd, log *bytes.Buffer, done chan struct{}, want string) {
	t.Helper()
	exited := make(chan error, 1)
	go func() { <-done; exited <- c.Wait() }()
	var err error
	select {
	case err = <-exited:
	case <-time.After(30 * time.Second):
		c.Process.Kill()
		<-exited
		t.Fatalf("tcpdump still runs 30 s after its region went away:\n%s", log)
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("tcpdump after its region went away: %v, want an error exit\n%s", err, log)
	}
	if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		t.Fatalf("tcpdump was killed by %v, want an error exit:\n%s", ws.Signal(), log)
	}
	if !strings.Contains(log.String(), want) {
		t.Errorf("tcpdump's error does not say %q:\n%s", want, log)
	}
	// It closed the handle: the shim's counters line comes from pcap_close.
	if !statsLine.MatchString(log.String()) {
		t.Errorf("tcpdump did not close its capture:\n%s", log)
	}
}

// TestGuestDevice: with no host region of the cluster, the shim resolves
// zc:C@Q as a guest does, among several ivshmem devices (and a device
// that is not ivshmem, and an ivshmem device without BAR2): tcpdump -D
// lists the guest's queues, and tcpdump -c N -w reads exactly the N
// frames a zchost producer sends through the "BAR".
func TestGuestDevice(t *testing.T) {
	e := newEnv(t)
	const n = 5000
	a := e.startAgent(67, "-i", fmt.Sprintf("gen:len=80,count=%d", n), "-n", "1", "--wait-consumers", "20s", "--lossless")
	other := e.newRegion(68)
	s := newSysfs(t)
	s.device("0000:00:03.0", "0x8086", "0x1110", filepath.Join(e.dir, "zc-67")) // not ivshmem
	s.ivshmem("0000:00:04.0", other.File())
	s.ivshmem("0000:00:05.0", filepath.Join(e.dir, "zc-67"))
	s.ivshmem("0000:00:06.0", "") // BAR2 not assigned
	g := e.guestEnv(s)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	list, err := g.preloaded(ctx, "tcpdump", "-D").CombinedOutput()
	if err != nil {
		t.Fatalf("tcpdump -D: %v\n%s", err, list)
	}
	for _, q := range []string{"zc:67@0 (zcfabric cluster 67 queue 0, ivshmem device 0000:00:05.0)", "zc:68@0 (zcfabric cluster 68 queue 0, ivshmem device 0000:00:04.0)"} {
		if !strings.Contains(string(list), "."+q) {
			t.Errorf("tcpdump -D does not list %s:\n%s", q, list)
		}
	}
	res, err := g.preloaded(ctx, "tcpdump", "-i", "zc:69@0", "-c", "1").CombinedOutput()
	if err == nil || !strings.Contains(string(res), "no such cluster 69") || !strings.Contains(string(res), "no ivshmem device carries it among 3") {
		t.Errorf("tcpdump on a cluster no device carries: %v\n%s", err, res)
	}

	out := filepath.Join(t.TempDir(), "guest.pcap")
	res, err = g.preloaded(ctx, "tcpdump", "-i", "zc:67@0", "-c", strconv.Itoa(n), "-w", out).CombinedOutput()
	if err != nil {
		t.Fatalf("tcpdump: %v\n%s\nzchost:\n%s", err, res, a)
	}
	frames := readPcap(t, out)
	if len(frames) != n {
		t.Fatalf("%s holds %d frames, want %d", out, len(frames), n)
	}
	for i, f := range frames {
		seq, err := zc.CheckSynth(f)
		if err != nil || seq != uint64(i) || len(f) != 80 {
			t.Fatalf("frame %d: seq %d, %d bytes, %v (want seq %d, 80 bytes, intact)", i, seq, len(f), err, i)
		}
	}
	if st := shimStats(t, string(res)); st != [5]uint64{n, n, 0, 0, 0} {
		t.Errorf("shim statistics %v, want %d received and passed, nothing filtered, bad or dropped", st, n)
	}
	if log := a.wait(t); !strings.Contains(log, fmt.Sprintf("received_reported=%d", n)) {
		t.Errorf("zchost did not see %d packets consumed:\n%s", n, log)
	}
}

// TestGuestUnplug: a guest's tcpdump whose ivshmem device goes away
// while it reads ends with an error naming the cluster gone and exits
// (it closes its capture: the counters line, and its file holds what it
// read, intact and in order), neither hanging nor crashing; both ways an
// unplug shows: the device's sysfs directory vanishes (here while a
// zchost producer streams into the queue), and the stale mapping reads
// zeros (here while the queue is idle).
func TestGuestUnplug(t *testing.T) {
	e := newEnv(t)
	s := newSysfs(t)
	e.startAgent(71, "-i", "gen:len=64,count=100000000,rate=20000", "-n", "1")
	c2 := e.newRegion(72)
	dev1 := s.ivshmem("0000:00:04.0", filepath.Join(e.dir, "zc-71"))
	s.ivshmem("0000:00:05.0", c2.File())
	g := e.guestEnv(s)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	t.Run("sysfs", func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "unplugged.pcap")
		td := g.preloaded(ctx, "tcpdump", "-i", "zc:71@0", "-w", out)
		log, done := listening(t, td, "zc:71@0")
		time.Sleep(300 * time.Millisecond) // let it read some
		if err := os.RemoveAll(dev1); err != nil {
			t.Fatal(err)
		}
		endsGone(t, td, log, done, "cluster 71 gone (region unplugged: its ivshmem device left")
		frames := readPcap(t, out)
		if len(frames) == 0 {
			t.Fatalf("tcpdump read nothing before the unplug:\n%s", log)
		}
		prev := int64(-1)
		for i, f := range frames {
			seq, err := zc.CheckSynth(f)
			if err != nil || int64(seq) <= prev {
				t.Fatalf("frame %d: seq %d after %d: %v", i, seq, prev, err)
			}
			prev = int64(seq)
		}
		t.Logf("%d frames read before the unplug; tcpdump said:\n%s", len(frames), log)
	})
	t.Run("zeros", func(t *testing.T) {
		td := g.preloaded(ctx, "tcpdump", "-i", "zc:72@0", "-w", os.DevNull)
		log, done := listening(t, td, "zc:72@0")
		b := c2.Bytes()
		var saved [8]byte
		copy(saved[:], b)
		clear(b[:8]) // what an unplugged BAR reads
		defer copy(b, saved[:])
		endsGone(t, td, log, done, "cluster 72 gone (region unplugged or re-created)")
	})
}

// TestGuestDeadReaderReplaced: in a VM's own region (zc.Config.OneVM) a
// guest's tcpdump takes the consumer end over from a dead process of the
// same guest (this boot's tag and a gone pid, or another boot's tag), and
// is refused one a live process of this boot holds, one without a tag or
// from a nested pid namespace, and any in a region several VMs may map;
// run in a nested pid namespace itself (unshare), it judges nobody. The
// shim judges owners as zc does, with the same tag: a live pid under this
// boot's tag would be taken over if it computed another.
func TestGuestDeadReaderReplaced(t *testing.T) {
	needTool(t, "tcpdump", "tcpdump")
	id, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		t.Skipf("no boot id: %v", err)
	}
	mine := ivshmem.BootTag(strings.TrimSpace(string(id)))
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	deadPID, live := uint32(dead.Process.Pid), uint32(os.Getpid())
	e := newEnv(t)
	s := newSysfs(t)
	g := e.guestEnv(s)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for i, tc := range []struct {
		oneVM    bool
		pid, tag uint32
		nested   bool // tcpdump in a pid namespace of its own
		takes    bool
	}{
		{true, deadPID, mine, false, true},
		{true, live, mine%(ivshmem.TagNested-1) + 1, false, true},
		{true, live, mine, false, false},
		{true, deadPID, ivshmem.TagNone, false, false},
		{true, deadPID, ivshmem.TagNested, false, false},
		{true, deadPID, mine, true, false},
		{false, deadPID, mine, false, false},
	} {
		cid := uint32(73 + i)
		c, err := zc.CreateCluster(zc.Config{ID: cid, QueueLen: 64, Buffers: 256, Backing: zc.BackingShm, OneVM: tc.oneVM,
			Path: filepath.Join(e.dir, "zc-"+strconv.FormatUint(uint64(cid), 10))})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		s.ivshmem(fmt.Sprintf("0000:00:%02x.0", 4+i), c.File())
		p, err := c.Producer(0)
		if err != nil {
			t.Fatal(err)
		}
		pkts := make([]zc.Packet, 1)
		if n := p.Pool().Alloc(pkts); n != 1 {
			t.Fatal("no buffer")
		}
		pkts[0].Data = pkts[0].Data[:zc.SynthFrame(pkts[0].Data[:cap(pkts[0].Data)], 0, 64, 1)]
		if k, err := p.SendBurst(pkts); k != 1 {
			t.Fatalf("send: %v", err)
		}
		l, err := ivshmem.Parse(c.Bytes())
		if err != nil {
			t.Fatal(err)
		}
		holder := ivshmem.Owner{Side: ivshmem.SideGuest, PID: tc.pid, Tag: tc.tag}
		if _, err := l.Claim(c.Bytes(), 0, ivshmem.EndConsumer, holder, nil); err != nil {
			t.Fatal(err)
		}
		args := []string{"tcpdump", "-i", fmt.Sprintf("zc:%d@0", cid), "-c", "1", "-w", os.DevNull}
		if tc.nested {
			args = append([]string{"unshare", "--pid", "--fork", "--mount-proc"}, args...)
		}
		res, err := g.preloaded(ctx, args[0], args[1:]...).CombinedOutput()
		switch {
		case tc.nested && strings.Contains(string(res), "unshare:"):
			t.Logf("no nested pid namespace here: %s", res)
		case tc.takes && err != nil:
			t.Errorf("%+v (one VM %v): tcpdump did not take the end over: %v\n%s", holder, tc.oneVM, err, res)
		case !tc.takes && (err == nil || !strings.Contains(string(res), fmt.Sprintf("held by guest pid %d", tc.pid))):
			t.Errorf("%+v (one VM %v, nested %v): tcpdump was not refused: %v\n%s", holder, tc.oneVM, tc.nested, err, res)
		case !tc.takes && l.QueueOwner(c.Bytes(), 0, ivshmem.EndConsumer) != holder:
			t.Errorf("%+v: the refused tcpdump changed the owner word", holder)
		}
		p.Close()
	}
}
