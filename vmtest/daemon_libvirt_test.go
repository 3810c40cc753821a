package vmtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"github.com/digitalocean/go-libvirt/socket/dialers"
	"github.com/zcfabric/zc/host/agent"
	"github.com/zcfabric/zc/host/libvirt"
	"github.com/zcfabric/zc/internal/testgate"
)

// defineDomain defines (without starting) a persistent libvirt domain
// running script in the vmtest initramfs, and returns it with a VM whose
// console is the domain's serial log across all its boots (appended to,
// so that Expect and Result read each boot's lines after the last's).
// The domain is destroyed and undefined when the test ends.
func defineDomain(t *testing.T, d *libvirtd, l *golibvirt.Libvirt, name, script string, binaries map[string]string) (golibvirt.Domain, *VM) {
	t.Helper()
	qemu := testgate.QEMU(t)
	bb, err := os.ReadFile(testgate.Busybox(t))
	if err != nil {
		t.Fatal(err)
	}
	k := GuestKernel(t)
	r := &initramfs{busybox: bb, binaries: map[string][]byte{}, script: script}
	for n, pkg := range binaries {
		r.binaries[n] = BuildGo(t, pkg)
	}
	img, err := r.build()
	if err != nil {
		t.Fatal(err)
	}
	// Copies QEMU's user can read (the kernel cache may be under /root).
	kernel, initrd, console := filepath.Join(d.dir, "vmlinuz"), filepath.Join(d.dir, name+".initrd.gz"), filepath.Join(d.dir, name+".console")
	kb, err := os.ReadFile(k.Vmlinuz)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(kernel, kb, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(initrd, img, 0o644); err != nil {
		t.Fatal(err)
	}
	doc := domainXML(name, qemu, kernel, initrd, console)
	src := fmt.Sprintf("<source path='%s'/>", console)
	if !strings.Contains(doc, src) {
		t.Fatalf("domain XML has no %s", src)
	}
	doc = strings.Replace(doc, src, fmt.Sprintf("<source path='%s' append='on'/>", console), 1)
	dom, err := l.DomainDefineXML(doc)
	if err != nil {
		logTail(t, d.log, 20)
		t.Fatalf("define libvirt domain %s: %v", name, err)
	}
	t.Cleanup(func() {
		// A connection of its own: the test's may have been dropped
		// meanwhile (libvirtd's keepalive).
		c := golibvirt.NewWithDialer(dialers.NewLocal(dialers.WithSocket(d.socket)))
		if err := c.ConnectToURI(golibvirt.QEMUSystem); err != nil {
			t.Logf("remove domain %s: connect to libvirtd: %v", name, err)
			return
		}
		defer c.Disconnect()
		if err := c.DomainDestroy(dom); err != nil && !golibvirt.IsNotFound(err) && !isNotRunning(err) {
			t.Logf("destroy domain %s: %v", name, err)
		}
		if err := c.DomainUndefine(dom); err != nil && !golibvirt.IsNotFound(err) {
			t.Logf("undefine domain %s: %v", name, err)
		}
	})
	vm := &VM{t: t, con: newConsole(), exited: make(chan struct{}), accel: "tcg", started: time.Now()}
	pr, pw := io.Pipe()
	stop := make(chan struct{})
	go tailFile(console, pw, stop)
	go vm.con.read(pr, func(s string) { t.Logf("%s: %s", name, s) })
	t.Cleanup(func() { close(stop) })
	return dom, vm
}

// isNotRunning reports a libvirt error about a domain that is not running
// (destroying one that is shut off).
func isNotRunning(err error) bool {
	var e golibvirt.Error
	return errors.As(err, &e) && e.Code == uint32(golibvirt.ErrOperationInvalid)
}

// TestDaemonLibvirtLifecycle: a zchost daemon exports a cluster to
// libvirt:DOMAIN@SOCKET, a domain that is defined but not running when the
// daemon starts. zchost status shows the export waiting and no region is
// made for it. The domain is started: the daemon, following libvirt's
// lifecycle events, makes the VM's region and plugs it on its own, and the
// guest finds the device and reads the queue with zcount --verify. The
// domain is destroyed: the daemon frees its region (the file is gone) and
// the export waits again. Started again, it is plugged again and the guest
// (booted afresh) reads again. SIGTERM then stops the daemon, removing
// the cluster's files.
func TestDaemonLibvirtLifecycle(t *testing.T) {
	const n = 2000 // frames the guest counts at each boot
	d := startLibvirtd(t)
	l := d.connect(t)
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	name := "zcdaemon-" + hex.EncodeToString(rnd[:])
	id := freeClusterID(t)
	t.Cleanup(func() {
		m, _ := filepath.Glob(fmt.Sprintf("%s/zc-%d*", libvirt.ShmDir, id))
		for _, p := range m {
			os.Remove(p)
		}
	})
	dom, vm := defineDomain(t, d, l, name, fmt.Sprintf(`
zcguest wait -c %[1]d --timeout 600s --poll 5ms || exit 1
echo "ZCRESULT $(zcount -i zc:%[1]d@0 -n %[2]d --verify --json --interval 0)"
echo "ZCRESULT $(zcguest list --json)"
while true; do sleep 1; done`, id, n), map[string]string{"zcguest": zcguestPkg, "zcount": zcountPkg})

	h := newHostTools(t)
	h.dir = libvirt.ShmDir // libvirt maps /dev/shm/NAME only
	ctx := testCtx(t, 15*time.Minute)
	target := fmt.Sprintf("libvirt:%s@%s", name, d.socket)
	region := filepath.Join(libvirt.ShmDir, fmt.Sprintf("zc-%d.vm1", id))
	r := newDaemonRig(t, h)
	r.write(t, r.head()+fmt.Sprintf(`
[[cluster]]
id = %d
queues = 1
sources = ["gen:len=%d,count=1e9,rate=2000"]
queue_len = 1024
backing = "shm"
vm_recover = "0"

[[cluster.export]]
vm = %q
`, id, frameLen, target))
	r.start(t, ctx, true)

	// export returns the daemon's one export, failing t unless the
	// status holds exactly that.
	export := func(when string) agent.StateExport {
		t.Helper()
		st := r.status(t, ctx)
		if len(st) != 1 || st[0].Cluster != id || len(st[0].VMs) != 1 || st[0].VMs[0].VM != target {
			t.Fatalf("%s: zchost status %+v, want cluster %d exporting to %s", when, st, id, target)
		}
		return st[0].VMs[0]
	}
	// waiting waits for the status to show the export waiting (a
	// released export waits again once its region is gone) and checks
	// that its region is not there.
	waiting := func(when string) {
		t.Helper()
		for {
			st := r.status(t, ctx)
			if len(st) == 1 && len(st[0].VMs) == 1 && st[0].VMs[0].Waiting {
				if e := st[0].VMs[0]; e.VM != target || e.Plugged {
					t.Errorf("%s: zchost status shows %+v, want %s waiting, not plugged", when, e, target)
				}
				break
			}
			select {
			case <-ctx.Done():
				t.Fatalf("%s: zchost status %+v, want the export to %s waiting: %v", when, st, target, ctx.Err())
			case <-time.After(100 * time.Millisecond):
			}
		}
		if _, err := os.Stat(region); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: region %s is there (%v), want none while the domain is not running", when, region, err)
		}
	}
	waiting("domain defined, not started")
	out := h.run(t, ctx, h.zchost, "status", "--control", r.control)
	if !strings.Contains(out, "waiting for the VM") {
		t.Errorf("zchost status says %q, want the export waiting for the VM", out)
	}

	for boot := 1; boot <= 2; boot++ {
		when := fmt.Sprintf("boot %d", boot)
		start := time.Now()
		if err := l.DomainCreate(dom); err != nil {
			logTail(t, d.log, 20)
			t.Fatalf("%s: start domain %s: %v", when, name, err)
		}
		var s summary
		bctx, cancel := context.WithTimeout(ctx, 5*time.Minute) // a hang bound
		_, err := vm.Result(bctx, &s)
		cancel()
		if err != nil {
			if ctx.Err() == nil && strings.Count(r.d.stderrText(), "vm appeared; exported") < boot {
				// Never plugged: the daemon's goroutines (SIGQUIT) go to the log.
				r.d.cmd.Process.Signal(syscall.SIGQUIT)
				select {
				case <-r.d.done:
				case <-time.After(5 * time.Second):
				}
			}
			t.Fatalf("%s: %v", when, err)
		}
		s.check(t, when+": guest", n)
		var list []struct {
			Cluster *uint32 `json:"cluster"`
		}
		if _, err := vm.Result(ctx, &list); err != nil {
			t.Fatalf("%s: %v", when, err)
		}
		if len(list) != 1 || list[0].Cluster == nil || *list[0].Cluster != id {
			t.Errorf("%s: the guest lists %+v, want one device of cluster %d", when, list, id)
		}
		t.Logf("%s: the guest read %d frames %v after the domain was started", when, n, time.Since(start).Round(time.Millisecond))
		if e := export(when); e.Waiting || !e.Plugged || e.Region != region {
			t.Errorf("%s: zchost status shows %+v, want %s plugged", when, e, region)
		}
		c, err := libvirt.Dial(ctx, libvirt.Spec{Domain: name, Socket: d.socket})
		if err != nil {
			t.Fatal(err)
		}
		regions, err := c.Regions(ctx)
		c.Close()
		if err != nil || len(regions) != 1 || regions[0].Path != region {
			t.Errorf("%s: the domain lists shmem devices %+v (%v), want one for %s", when, regions, err, region)
		}
		if t.Failed() {
			t.FailNow()
		}

		// Destroyed: the daemon frees the region and waits again.
		if err := l.DomainDestroy(dom); err != nil {
			t.Fatalf("%s: destroy domain %s: %v", when, name, err)
		}
		for {
			if _, err := os.Stat(region); errors.Is(err, os.ErrNotExist) {
				break
			}
			select {
			case <-r.d.done:
				t.Fatalf("%s: the daemon exited: %v", when, r.d.err)
			case <-ctx.Done():
				t.Fatalf("%s: region %s still there after the domain was destroyed: %v", when, region, ctx.Err())
			case <-time.After(50 * time.Millisecond):
			}
		}
		waiting(when + ", destroyed")
	}
	log := r.d.stderrText()
	if got := strings.Count(log, "vm appeared; exported"); got != 2 {
		t.Errorf("the daemon logged %d plugs on a domain start, want 2", got)
	}

	// SIGTERM: the daemon removes the cluster's files.
	if err := r.d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if _, err := r.d.wait(wctx); err != nil {
		t.Errorf("zchost daemon after SIGTERM: %v", err)
	}
	if m, _ := filepath.Glob(fmt.Sprintf("%s/zc-%d*", libvirt.ShmDir, id)); len(m) != 0 {
		t.Errorf("after SIGTERM the cluster's files remain: %v", m)
	}
}
