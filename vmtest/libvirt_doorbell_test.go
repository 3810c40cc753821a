package vmtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/zcfabric/zc/host/libvirt"
)

// TestLibvirtDoorbell: zchost run --doorbell --vm libvirt:DOMAIN@SOCKET
// hot-plugs the VM's region into a libvirt domain (q35, intel-iommu with
// interrupt remapping, as the QMP wake-up tests boot) as libvirt's own
// <shmem> of model ivshmem-doorbell whose <server path> is the agent's
// ivshmem server. The region is in a private directory under ZC_DIR, not
// directly in /dev/shm: QEMU gets its memory from the server, not by path.
// The test checks that libvirt lists the device (server socket, a ua-zc-
// alias) and sent QEMU chardev-add + device_add ivshmem-doorbell, that the
// socket belongs to QEMU's DAC user, that the guest's zcount sleeps on the
// doorbell (it says so; QEMU's CPU over 3 idle seconds is logged), counts
// a burst sent later exactly, and that a second zcount, asleep when the
// agent stops, ends with "went away" when the device is unplugged through
// libvirt, which then lists no shmem device.
func TestLibvirtDoorbell(t *testing.T) {
	const n = 2000
	d := startLibvirtd(t)
	l := d.connect(t)
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	name := "zcvmtest-" + hex.EncodeToString(rnd[:])
	id := freeClusterID(t)
	t.Cleanup(func() {
		if t.Failed() { // QEMU's command line and errors
			if b, err := os.ReadFile(filepath.Join(d.dir, "log", "qemu", name+".log")); err == nil {
				t.Logf("QEMU log:\n%s", b)
			}
		}
	})
	vm := startDomain(t, d, l, name, fmt.Sprintf(`
zcguest wait -c %[1]d --timeout 120s --poll 5ms || exit 1
echo "ZCRESULT $(zcount -i zc:%[1]d@0 -n %[2]d --verify --json --interval 0)"
echo "ZCRESULT $(zcount -i zc:%[1]d@0 --json --interval 0)"
sleep 1 # let libvirt see the eject before power-off`, id, n),
		map[string]string{"zcguest": zcguestPkg, "zcount": zcountPkg}, q35IOMMU())

	h := newHostTools(t) // ZC_DIR is a 0700 directory under /dev/shm
	ctx := testCtx(t, 240*time.Second)
	target := fmt.Sprintf("libvirt:%s@%s", name, d.socket)
	agent := h.start(t, h.zchost, "run", "-c", fmt.Sprint(id), "-i", fmt.Sprintf("gen:len=%d,count=%d,after=6s", frameLen, n),
		"-n", "1", "--keep", "--backing", "shm", "--stats-interval", "0", "--wait-consumers", "150s", "--doorbell", "--vm", target)

	agent.awaitLog(t, ctx, "sources started", "zchost run")

	// libvirt knows the device: a doorbell <shmem> served by the agent.
	dom, err := libvirt.Dial(ctx, libvirt.Spec{Domain: name, Socket: d.socket})
	if err != nil {
		t.Fatal(err)
	}
	defer dom.Close()
	regions, err := dom.Regions(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(regions) != 1 || regions[0].Server == "" || regions[0].Vectors != 1 || !strings.HasPrefix(regions[0].Alias, "ua-zc-c") ||
		regions[0].Name != fmt.Sprintf("zc-%d.vm1", id) {
		t.Fatalf("domain XML lists shmem devices %+v, want one ivshmem-doorbell device for zc-%d.vm1 with a server and a ua-zc- alias", regions, id)
	}
	bell := regions[0]
	t.Logf("doorbell device %s, server %s", bell.Alias, bell.Server)
	if fi, err := os.Stat(bell.Server); err != nil {
		t.Errorf("server socket: %v", err)
	} else if st := fi.Sys().(*syscall.Stat_t); int(st.Uid) != d.qemuUID || int(st.Gid) != d.qemuGID {
		t.Errorf("server socket %s owned by %d:%d, want QEMU's DAC user %d:%d", bell.Server, st.Uid, st.Gid, d.qemuUID, d.qemuGID)
	}
	sent := strings.Join(d.qmpSent(), "\n")
	chrRE := regexp.MustCompile(`"execute":"chardev-add","arguments":\{"id":"` + regexp.QuoteMeta(bell.ChardevID()) + `".*` + regexp.QuoteMeta(bell.Server))
	devRE := regexp.MustCompile(`"execute":"device_add","arguments":\{"driver":"ivshmem-doorbell","id":"` + regexp.QuoteMeta(bell.Alias) +
		`","chardev":"` + regexp.QuoteMeta(bell.ChardevID()) + `"`)
	if !chrRE.MatchString(sent) || !devRE.MatchString(sent) {
		t.Errorf("libvirt's QMP to QEMU lacks chardev-add %s and device_add ivshmem-doorbell %s:\n%s", bell.ChardevID(), bell.Alias, sent)
	}

	// The guest's reader is attached and idle for six seconds: log
	// QEMU's CPU over three of them (TestGuestSleepsOnDoorbell compares
	// with polling).
	if pid, err := d.qemuPID(name); err != nil {
		t.Logf("QEMU's pid: %v", err)
	} else {
		time.Sleep(1500 * time.Millisecond) // past the reader's polls and naps
		cpu0, err0 := ProcCPUTime(pid)
		time.Sleep(3 * time.Second)
		cpu1, err1 := ProcCPUTime(pid)
		if err0 == nil && err1 == nil {
			t.Logf("QEMU CPU while the guest's zcount waited on the doorbell: %v in 3 s (%.1f%% of a CPU)", cpu1-cpu0, 100*(cpu1-cpu0).Seconds()/3)
		}
	}

	if _, err := vm.Expect(ctx, "idle waits: doorbell"); err != nil { // zcount says it before its result
		t.Fatalf("the guest's zcount did not say it waits on the doorbell: %v", err)
	}
	var s summary
	if _, err := vm.Result(ctx, &s); err != nil {
		t.Fatal(err)
	}
	s.check(t, "libvirt guest woken by the doorbell", n)

	// Unplug while the second reader sleeps: the agent detaches through
	// libvirt, which removes the device and its chardev.
	time.Sleep(2 * time.Second) // the second zcount attaches and sleeps
	agent.stop(t, ctx)
	expectGone(t, ctx, vm, "the sleeping reader after the unplug")
	if regions, err := dom.Regions(ctx); err != nil || len(regions) != 0 {
		t.Errorf("after zchost run stopped the domain lists %+v (%v), want no shmem device", regions, err)
	}
	if !strings.Contains(strings.Join(d.qmpSent(), "\n"), `"execute":"chardev-remove","arguments":{"id":"`+bell.ChardevID()+`"}`) {
		t.Errorf("libvirt did not remove chardev %s", bell.ChardevID())
	}
	if _, err := os.Stat(bell.Server); err == nil {
		t.Errorf("server socket %s still there after zchost run stopped", bell.Server)
	}
	if _, err := vm.Expect(ctx, ExitMarker+" 0"); err != nil {
		t.Fatal(err)
	}
}

// qemuPID returns the pid of the QEMU process of domain name, from the
// pid file libvirt keeps in its run directory.
func (d *libvirtd) qemuPID(name string) (int, error) {
	b, err := os.ReadFile(filepath.Join(d.dir, "run", "qemu", name+".pid"))
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// TestLibvirtDoorbellDaemon: a zchost daemon exports a cluster with
// doorbell = true to a running libvirt domain (q35, intel-iommu). The
// guest's zcount waits on the doorbell and counts N frames exactly. The
// daemon is then killed (SIGKILL) while a second guest zcount reads, and
// started again: it adopts the region, but the doorbell device of its
// predecessor cannot be taken over (its ivshmem server died with it), so
// it is unplugged (the reader ends with "went away", the predecessor's
// socket folder is removed) and a fresh one with another alias and server
// is plugged, which the guest reads exactly again. SIGTERM at the end
// unplugs it under a sleeping reader: the domain lists no shmem device.
func TestLibvirtDoorbellDaemon(t *testing.T) {
	const n = 2000
	d := startLibvirtd(t)
	l := d.connect(t)
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	name := "zcvmtest-" + hex.EncodeToString(rnd[:])
	id := freeClusterID(t)
	// A reader that meets the old device on its way out fails: try again.
	// After the restart the reader takes the queue over (--force): the
	// adopted region still names the reader that died with the
	// predecessor's device as its consumer, and a guest-side holder is
	// never taken for stale (the agent does not clear it yet).
	vm := startDomain(t, d, l, name, fmt.Sprintf(`
count() {
	for i in 1 2 3 4 5; do
		zcguest wait -c %[1]d --timeout 120s --poll 5ms || exit 1
		out=$(zcount -i zc:%[1]d@0 -n %[2]d --verify --json --interval 0 $1)
		case "$out" in ''|*'"error"'*) echo "retry: $out"; sleep 1 ;; *) break ;; esac
	done
	echo "ZCRESULT $out"
}
count
echo "ZCRESULT $(zcount -i zc:%[1]d@0 --json --interval 0)"
count --force
echo "ZCRESULT $(zcount -i zc:%[1]d@0 --json --interval 0)"
sleep 1 # let libvirt see the eject before power-off`, id, n),
		map[string]string{"zcguest": zcguestPkg, "zcount": zcountPkg}, q35IOMMU())

	h := newHostTools(t) // ZC_DIR is a 0700 directory under /dev/shm
	ctx := testCtx(t, 5*time.Minute)
	target := fmt.Sprintf("libvirt:%s@%s", name, d.socket)
	r := newDaemonRig(t, h)
	r.write(t, r.head()+fmt.Sprintf(`
[[cluster]]
id = %d
queues = 1
sources = ["gen:len=%d,count=1e9,rate=2000"]
queue_len = 1024
backing = "shm"
doorbell = true
vm_recover = "0"

[[cluster.export]]
vm = %q
`, id, frameLen, target))
	dom, err := libvirt.Dial(ctx, libvirt.Spec{Domain: name, Socket: d.socket})
	if err != nil {
		t.Fatal(err)
	}
	defer dom.Close()
	// bellDevice returns the domain's one shmem device, which must be a
	// doorbell device.
	bellDevice := func(when string) libvirt.Attachment {
		t.Helper()
		regions, err := dom.Regions(ctx)
		if err != nil || len(regions) != 1 || regions[0].Server == "" || !strings.HasPrefix(regions[0].Alias, fmt.Sprintf("ua-zc-c%d-", id)) {
			t.Fatalf("%s: the domain lists shmem devices %+v (%v), want one doorbell device ua-zc-c%d-...", when, regions, err, id)
		}
		return regions[0]
	}
	// counted checks that a guest zcount waited on the doorbell and
	// counted n frames exactly.
	counted := func(when string) {
		t.Helper()
		if _, err := vm.Expect(ctx, "idle waits: doorbell"); err != nil { // zcount says it before its result
			t.Fatalf("%s: the guest's zcount did not say it waits on the doorbell: %v", when, err)
		}
		var s summary
		if _, err := vm.Result(ctx, &s); err != nil {
			t.Fatal(err)
		}
		s.check(t, when+": guest", n)
	}
	// readerGone stops the daemon with sig (and starts it again when
	// restart is set) while a guest zcount reads, and checks that the
	// reader ends with "went away".
	readerGone := func(when string, sig syscall.Signal, restart bool) {
		t.Helper()
		if _, err := vm.Expect(ctx, "idle waits: doorbell"); err != nil {
			t.Fatalf("%s: the guest's second zcount did not start: %v", when, err)
		}
		time.Sleep(time.Second) // it reads
		if err := r.d.cmd.Process.Signal(sig); err != nil {
			t.Fatal(err)
		}
		wctx, cancel := context.WithTimeout(ctx, time.Minute) // a hang bound
		defer cancel()
		if _, err := r.d.wait(wctx); err != nil && sig != syscall.SIGKILL {
			t.Errorf("%s: zchost daemon after %v: %v", when, sig, err)
		}
		if restart {
			r.start(t, ctx, true)
		}
		var gone summary
		if _, err := vm.Result(ctx, &gone); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(gone.Error, "went away") {
			t.Errorf("%s: the guest's reader: %+v, want the error \"the queue went away\"", when, gone)
		}
	}

	r.start(t, ctx, true)
	counted("first daemon")
	first := bellDevice("first daemon")
	readerGone("SIGKILL and restart", syscall.SIGKILL, true)
	counted("restarted daemon")
	second := bellDevice("restarted daemon")
	if second.Alias == first.Alias || second.Server == first.Server {
		t.Errorf("after the restart the device is %+v, want a fresh one (not %s, %s)", second, first.Alias, first.Server)
	}
	log := r.d.stderrText()
	if !strings.Contains(log, "vm region adopted") || !strings.Contains(log, "unplugging the predecessor's doorbell device") {
		t.Errorf("the restarted daemon did not adopt the region and unplug the predecessor's doorbell device:\n%s", log)
	}
	if _, err := os.Stat(filepath.Dir(first.Server)); err == nil {
		t.Errorf("the predecessor's socket folder %s is still there", filepath.Dir(first.Server))
	}
	readerGone("SIGTERM", syscall.SIGTERM, false)
	if regions, err := dom.Regions(ctx); err != nil || len(regions) != 0 {
		t.Errorf("after SIGTERM the domain lists %+v (%v), want no shmem device", regions, err)
	}
	if _, err := vm.Expect(ctx, ExitMarker+" 0"); err != nil {
		t.Fatal(err)
	}
}
