package vmtest

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"github.com/digitalocean/go-libvirt/socket/dialers"
	"github.com/zcfabric/zc/host/libvirt"
	"github.com/zcfabric/zc/internal/testgate"
	"golang.org/x/sys/unix"
)

// The libvirt tests run their own libvirtd, so that CI needs no service
// and the machine's configuration is left alone: the daemon runs in a
// private mount namespace in which temporary directories are bind-mounted
// over /etc/libvirt, /run/libvirt, /var/lib/libvirt and /var/log/libvirt
// (and vmtest's cache directory over /var/cache/libvirt, which keeps
// libvirt's probe of QEMU's capabilities, ~4 s), and its socket is in the
// temporary directory. The namespace is set up as libvirt-daemon-system
// (not installed: it pulls in systemd) would set up the host, so that QEMU
// runs as libvirt-qemu under libvirt's DAC driver:
//
//   - Debian's libvirt 9.0 resolves its default QEMU user, libvirt-qemu,
//     before it reads qemu.conf and refuses to start without it: the
//     namespace gets copies of /etc/passwd and /etc/group with that user,
//     in group kvm.
//   - /dev/kvm is root:root 0600 on the build machines. With QEMU's user
//     unable to open it, libvirt found its capability cache invalid on
//     every lookup ("KVM was enabled when probing, but it is not available
//     now") and re-probed QEMU about ten times: 44 s per domain start instead of
//     0.6 s. The namespace gets a /dev/kvm node root:kvm 0660, as Debian's
//     udev rules make it (the domain itself is TCG: type='qemu').
//   - qemu.conf: stdio_handler = "file" (no virtlogd).

// The uid and gid the namespace's libvirt-qemu user and kvm group get when
// the host has none (Debian's usual numbers).
const (
	libvirtQEMUUID = 64055
	libvirtKVMGID  = 64054
)

// qemuUser writes the namespace's passwd and group into dir: the host's,
// plus a libvirt-qemu user and group unless the host has them, and
// libvirt-qemu in group kvm (made if the host has none), as
// libvirt-daemon-system sets them up. It returns libvirt-qemu's uid and
// gid and kvm's gid.
func qemuUser(t *testing.T, dir string) (uid, gid, kvm int) {
	t.Helper()
	read := func(name string) []string {
		b, err := os.ReadFile("/etc/" + name)
		if err != nil {
			t.Skipf("requires /etc/%s: %v", name, err)
		}
		return strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	}
	find := func(lines []string, name string) (int, []string) {
		for i, l := range lines {
			if f := strings.Split(l, ":"); len(f) >= 4 && f[0] == name {
				return i, f
			}
		}
		return -1, nil
	}
	num := func(s string) int {
		n, err := strconv.Atoi(s)
		if err != nil {
			t.Fatalf("bad id %q in /etc/passwd or /etc/group", s)
		}
		return n
	}
	passwd, group := read("passwd"), read("group")
	uid, gid = libvirtQEMUUID, libvirtQEMUUID
	if _, f := find(passwd, "libvirt-qemu"); f != nil {
		uid, gid = num(f[2]), num(f[3])
	} else {
		passwd = append(passwd, fmt.Sprintf("libvirt-qemu:x:%d:%d:Libvirt Qemu:/nonexistent:/usr/sbin/nologin", uid, gid))
	}
	if i, _ := find(group, "libvirt-qemu"); i < 0 {
		group = append(group, fmt.Sprintf("libvirt-qemu:x:%d:", gid))
	}
	if i, f := find(group, "kvm"); f == nil {
		kvm = libvirtKVMGID
		group = append(group, fmt.Sprintf("kvm:x:%d:libvirt-qemu", kvm))
	} else {
		kvm = num(f[2])
		if !slices.Contains(strings.Split(f[3], ","), "libvirt-qemu") {
			group[i] = strings.TrimSuffix(group[i], ",")
			if f[3] != "" {
				group[i] += ","
			}
			group[i] += "libvirt-qemu"
		}
	}
	for name, lines := range map[string][]string{"passwd": passwd, "group": group} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return uid, gid, kvm
}

// libvirtd is a private libvirt daemon for one test.
type libvirtd struct {
	dir    string // its state, config and socket
	socket string
	log    string // debug log: QMP traffic and errors
	// qemuUID and qemuGID are the user and group QEMU runs as (libvirt's
	// DAC label).
	qemuUID, qemuGID int
}

// startLibvirtd starts a private libvirtd, or skips the test saying why it
// cannot. The daemon is stopped when the test ends.
func startLibvirtd(t *testing.T) *libvirtd {
	t.Helper()
	testgate.Short(t, "starts libvirtd and boots a QEMU guest")
	if os.Geteuid() != 0 {
		t.Skip("requires root: starts a private libvirtd in a mount namespace (sudo go test ./vmtest)")
	}
	bin, err := exec.LookPath("libvirtd")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/libvirtd"); serr != nil {
			t.Skip("requires libvirtd (apt-get install -y --no-install-recommends libvirt-daemon libvirt-daemon-driver-qemu)")
		}
		bin = "/usr/sbin/libvirtd"
	}
	if m, _ := filepath.Glob("/usr/lib*/*/libvirt/connection-driver/libvirt_driver_qemu.so"); len(m) == 0 {
		t.Skip("requires libvirt's QEMU driver (apt-get install -y --no-install-recommends libvirt-daemon-driver-qemu)")
	}
	if _, err := exec.LookPath("mount"); err != nil {
		t.Skip("requires mount(8) to set up libvirtd's private directories")
	}
	dir, err := os.MkdirTemp("", "zclv-")
	if err != nil {
		t.Fatal(err)
	}
	// QEMU must reach the kernel, initrd and console log kept here,
	// whichever user it runs as.
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	d := &libvirtd{dir: dir, socket: filepath.Join(dir, "sock", "libvirt-sock"), log: filepath.Join(dir, "libvirtd.log")}
	mounts := map[string]string{
		"/etc/libvirt": "etc", "/run/libvirt": "run", "/var/lib/libvirt": "lib",
		"/var/cache/libvirt": "cache", "/var/log/libvirt": "log",
	}
	var created []string // mount points made here, removed (when empty) at the end
	var script strings.Builder
	script.WriteString("set -e\n")
	// libvirt probes QEMU's capabilities on first use (~44 s under TCG
	// here) and caches them in /var/cache/libvirt/qemu/capabilities,
	// checked against QEMU's and libvirt's versions: keep that cache with
	// the vmtest kernel.
	capsCache := ""
	if c, err := CacheDir(); err == nil {
		capsCache = filepath.Join(c, "libvirt-cache")
	}
	for target, sub := range mounts {
		src := filepath.Join(dir, sub)
		if sub == "cache" && capsCache != "" {
			src = capsCache
		}
		if err := os.MkdirAll(src, 0o755); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(target); errors.Is(err, os.ErrNotExist) {
			created = append(created, target)
		}
		fmt.Fprintf(&script, "mkdir -p %s && mount --bind %s %s\n", target, src, target)
	}
	if err := os.MkdirAll(filepath.Join(dir, "sock"), 0o755); err != nil {
		t.Fatal(err)
	}
	uid, gid, kvmGID := qemuUser(t, dir)
	for _, f := range []string{"passwd", "group"} {
		fmt.Fprintf(&script, "mount --bind %s /etc/%s\n", filepath.Join(dir, f), f)
	}
	qemuConf := "stdio_handler = \"file\"\n"
	d.qemuUID, d.qemuGID = uid, gid
	if fi, err := os.Stat("/dev/kvm"); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
		// /dev/kvm as Debian has it: root:kvm 0660.
		node := filepath.Join(dir, "kvm")
		err := unix.Mknod(node, unix.S_IFCHR|0o660, int(fi.Sys().(*syscall.Stat_t).Rdev))
		if err == nil {
			err = os.Chown(node, 0, kvmGID)
		}
		if err == nil {
			err = os.Chmod(node, 0o660) // mknod's mode went through the umask
		}
		if err == nil {
			fmt.Fprintf(&script, "mount --bind %s /dev/kvm\n", node)
		} else {
			t.Logf("cannot make a kvm-group /dev/kvm (%v): QEMU runs as root", err)
			qemuConf = "user = \"root\"\ngroup = \"root\"\n" + qemuConf
			d.qemuUID, d.qemuGID = 0, 0
		}
	}
	conf := fmt.Sprintf("unix_sock_dir = %q\nlog_filters = \"1:qemu.qemu_monitor 3:*\"\nlog_outputs = \"1:file:%s\"\n", filepath.Dir(d.socket), d.log)
	if err := os.WriteFile(filepath.Join(dir, "libvirtd.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "etc", "qemu.conf"), []byte(qemuConf), 0o644); err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(&script, "exec %s --config %s --pid-file %s\n", bin, filepath.Join(dir, "libvirtd.conf"), filepath.Join(dir, "libvirtd.pid"))

	cmd := exec.Command("/bin/sh", "-c", script.String())
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS, Pdeathsig: syscall.SIGTERM}
	var stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Start(); err != nil {
		os.RemoveAll(dir)
		t.Skipf("cannot start libvirtd in a mount namespace: %v", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			logTail(t, d.log, 60)
		}
		os.RemoveAll(dir)
		for _, c := range created {
			_ = os.Remove(c) // only if still empty
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		if c, err := dialers.NewLocal(dialers.WithSocket(d.socket)).Dial(); err == nil {
			c.Close()
			break
		}
		select {
		case <-exited:
			logTail(t, d.log, 20)
			t.Skipf("libvirtd exited at start: %s", strings.TrimSpace(stderr.String()))
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			logTail(t, d.log, 20)
			t.Skipf("libvirtd did not open %s in 30s", d.socket)
		}
	}
	return d
}

// logTail logs the last n lines of a file.
func logTail(t *testing.T, path string, n int) {
	b, err := os.ReadFile(path)
	if err != nil {
		return
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	for _, l := range lines[max(0, len(lines)-n):] {
		t.Logf("libvirtd: %s", l)
	}
}

// connect opens a go-libvirt client to the daemon, closed when the test
// ends.
func (d *libvirtd) connect(t *testing.T) *golibvirt.Libvirt {
	t.Helper()
	l := golibvirt.NewWithDialer(dialers.NewLocal(dialers.WithSocket(d.socket)))
	if err := l.ConnectToURI(golibvirt.QEMUSystem); err != nil {
		t.Fatalf("connect to libvirtd at %s: %v", d.socket, err)
	}
	t.Cleanup(func() { l.Disconnect() })
	return l
}

// qmpSent returns the QMP commands the daemon logged sending, as JSON.
func (d *libvirtd) qmpSent() []string {
	b, _ := os.ReadFile(d.log)
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if _, msg, ok := strings.Cut(l, "QEMU_MONITOR_SEND_MSG: "); ok {
			if _, js, ok := strings.Cut(msg, "msg="); ok {
				out = append(out, strings.TrimSpace(strings.SplitN(js, " fd=", 2)[0]))
			}
		}
	}
	return out
}

// domainConf is what domainOptions change in a test domain.
type domainConf struct {
	q35IOMMU bool     // q35, intel-iommu with interrupt remapping, root ports
	modules  []string // kernel modules the guest loads
}

// domainOption changes the domain startDomain boots (default: pc).
type domainOption func(*domainConf)

// q35IOMMU boots the domain as the wake-up tests' QMP VMs: q35 with a
// virtual Intel IOMMU doing interrupt remapping (libvirt wants the split
// I/O APIC for that: <ioapic driver='qemu'/>), VFIOModules loaded, and
// two empty pcie-root-ports for hot-plug whose 64-bit prefetchable window
// is 64M (QEMU's pref64-reserve, which libvirt 9.0 has no attribute for:
// a -global on QEMU's command line).
func q35IOMMU() domainOption {
	return func(c *domainConf) {
		c.q35IOMMU = true
		c.modules = append(c.modules, VFIOModules...)
	}
}

// domainXML is a transient TCG domain booting the vmtest kernel and
// initramfs, its serial console written to console. ACPI must be on
// (libvirt passes -no-acpi otherwise, and PCI hot-plug on pc is ACPI's).
func domainXML(name, qemu, kernel, initrd, console string, opts ...domainOption) string {
	var c domainConf
	for _, o := range opts {
		o(&c)
	}
	machine, features, devices, qemuNS, qemuArgs, cmdline := "pc", "<acpi/>", "", "", "", ""
	if c.q35IOMMU {
		// no_timer_check: on a loaded host the kernel's check that the
		// timer interrupt comes through the remapped IO-APIC failed now
		// and then under TCG, and with interrupt remapping the kernel
		// panics on it ("timer doesn't work through Interrupt-remapped
		// IO-APIC").
		machine, features, cmdline = "q35", "<acpi/><ioapic driver='qemu'/>", " no_timer_check"
		devices = `
    <controller type='pci' index='0' model='pcie-root'/>
    <controller type='pci' model='pcie-root-port'/>
    <controller type='pci' model='pcie-root-port'/>
    <iommu model='intel'><driver intremap='on'/></iommu>`
		qemuNS = " xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'"
		qemuArgs = `
  <qemu:commandline><qemu:arg value='-global'/><qemu:arg value='pcie-root-port.pref64-reserve=64M'/></qemu:commandline>`
	}
	return fmt.Sprintf(`<domain type='qemu'%s>
  <name>%s</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='%s'>hvm</type>
    <kernel>%s</kernel>
    <initrd>%s</initrd>
    <cmdline>%s%s</cmdline>
  </os>
  <features>%s</features>
  <cpu mode='maximum'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>%s</emulator>
    <serial type='file'><source path='%s'/><target port='0'/></serial>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>%s
  </devices>%s
</domain>`, qemuNS, name, machine, kernel, initrd, defaultConfig().kernelCmdline(), cmdline, features, qemu, console, devices, qemuArgs)
}

// startDomain boots a transient libvirt domain running script in the
// vmtest initramfs and returns a VM whose console is the domain's serial
// log (for Expect and Result; Wait, Kill and Shutdown do not apply). The
// domain is destroyed when the test ends.
func startDomain(t *testing.T, d *libvirtd, l *golibvirt.Libvirt, name, script string, binaries map[string]string, opts ...domainOption) *VM {
	t.Helper()
	qemu := testgate.QEMU(t)
	bb, err := os.ReadFile(testgate.Busybox(t))
	if err != nil {
		t.Fatal(err)
	}
	k := GuestKernel(t)
	var c domainConf
	for _, o := range opts {
		o(&c)
	}
	mods, err := k.modulePaths(c.modules)
	if err != nil {
		t.Skipf("vmtest: requires kernel modules %v: %v", c.modules, err)
	}
	r := &initramfs{busybox: bb, binaries: map[string][]byte{}, modules: mods, script: script}
	for n, pkg := range binaries {
		r.binaries[n] = BuildGo(t, pkg)
	}
	img, err := r.build()
	if err != nil {
		t.Fatal(err)
	}
	// The kernel cache may be under /root, which QEMU's user cannot
	// traverse: give QEMU copies next to the daemon.
	kernel, initrd, console := filepath.Join(d.dir, "vmlinuz"), filepath.Join(d.dir, "initrd.gz"), filepath.Join(d.dir, name+".console")
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
	doc := domainXML(name, qemu, kernel, initrd, console, opts...)
	start := time.Now()
	dom, err := l.DomainCreateXML(doc, 0)
	t.Logf("libvirt created domain %s in %v", name, time.Since(start).Round(time.Millisecond))
	if err != nil {
		logTail(t, d.log, 20)
		t.Fatalf("create libvirt domain %s: %v", name, err)
	}
	t.Cleanup(func() {
		if err := l.DomainDestroy(dom); err != nil && !golibvirt.IsNotFound(err) {
			t.Logf("destroy domain %s: %v", name, err)
		}
	})
	vm := &VM{t: t, con: newConsole(), exited: make(chan struct{}), accel: "tcg", started: time.Now()}
	pr, pw := io.Pipe()
	stop := make(chan struct{})
	go tailFile(console, pw, stop)
	go vm.con.read(pr, func(s string) { t.Logf("%s: %s", name, s) })
	t.Cleanup(func() { close(stop) })
	return vm
}

// tailFile copies path to w as it grows until stop is closed.
func tailFile(path string, w *io.PipeWriter, stop <-chan struct{}) {
	defer w.Close()
	var f *os.File
	buf := make([]byte, 32<<10)
	for {
		if f == nil {
			f, _ = os.Open(path)
		}
		if f != nil {
			n, err := f.Read(buf)
			if n > 0 {
				if _, werr := w.Write(buf[:n]); werr != nil {
					f.Close()
					return
				}
				continue
			}
			if err != nil && err != io.EOF {
				f.Close()
				w.CloseWithError(err)
				return
			}
		}
		select {
		case <-stop:
			if f != nil {
				f.Close()
			}
			return
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// freeClusterID picks a random cluster id with no region in /dev/shm.
func freeClusterID(t *testing.T) uint32 {
	for range 100 {
		n, err := rand.Int(rand.Reader, big.NewInt(1<<20))
		if err != nil {
			t.Fatal(err)
		}
		id := uint32(1<<24 + n.Int64())
		if m, _ := filepath.Glob(fmt.Sprintf("%s/zc-%d*", libvirt.ShmDir, id)); len(m) == 0 {
			return id
		}
	}
	t.Fatal("no free cluster id")
	return 0
}

// TestLibvirtHostToGuest runs the fabric through a real libvirtd: a
// transient TCG domain boots the vmtest initramfs; zchost run --vm
// libvirt:DOMAIN@SOCKET creates the VM's region in /dev/shm and hot-plugs
// it as libvirt's own <shmem> device (model ivshmem-plain); the guest's
// zcount --verify counts exactly the N frames generated. The test then
// checks that libvirt lists the device (name, size, a fresh ua- alias)
// and sent QEMU the memory backend for the region file, that the file was
// given to QEMU's DAC user (libvirt-qemu), that zchost detach --qmp libvirt:... removes
// it (gone from the live XML when detach returns, and from the guest),
// and that zchost attach / detach --dev plug and unplug the cluster's own
// region again with another alias.
func TestLibvirtHostToGuest(t *testing.T) {
	const n = 20000
	d := startLibvirtd(t)
	l := d.connect(t)
	if v, err := l.ConnectGetLibVersion(); err == nil {
		t.Logf("libvirt %d.%d.%d", v/1000000, v/1000%1000, v%1000)
	}
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	name := "zcvmtest-" + hex.EncodeToString(rnd[:])
	id := freeClusterID(t)
	t.Cleanup(func() {
		m, _ := filepath.Glob(fmt.Sprintf("%s/zc-%d*", libvirt.ShmDir, id))
		for _, p := range m {
			os.Remove(p)
		}
	})
	vm := startDomain(t, d, l, name, fmt.Sprintf(`
zcguest wait -c %[1]d --timeout 90s --poll 5ms || exit 1
echo "ZCRESULT $(zcount -i zc:%[1]d@0 -n %[2]d --verify --json --interval 0)"
zcguest wait -c %[1]d --gone --timeout 60s --poll 5ms || exit 1
echo ZCGONE
zcguest wait -c %[1]d --timeout 60s --poll 5ms || exit 1
echo "ZCRESULT $(zcguest list --json)"
zcguest wait -c %[1]d --gone --timeout 60s --poll 5ms || exit 1
echo ZCGONE
sleep 1 # let libvirt see the eject before power-off`, id, n), map[string]string{"zcguest": zcguestPkg, "zcount": zcountPkg})

	bin := t.TempDir()
	h := &hostTools{dir: libvirt.ShmDir} // libvirt maps /dev/shm/NAME only
	h.zchost = filepath.Join(bin, "zchost")
	if err := os.WriteFile(h.zchost, BuildGo(t, zchostPkg), 0o755); err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t, 150*time.Second)
	target := fmt.Sprintf("libvirt:%s@%s", name, d.socket)
	zchost := h.start(t, h.zchost, "run", "-c", fmt.Sprint(id), "-i", fmt.Sprintf("gen:len=%d,count=%d", frameLen, n), "-n", "1",
		"--lossless", "--keep", "--backing", "shm", "--stats-interval", "0", "--vm", target)

	var s summary
	if _, err := vm.Result(ctx, &s); err != nil {
		t.Fatal(err)
	}
	s.check(t, "libvirt guest", n)

	// libvirt knows the device, under a fresh user alias.
	dom, err := libvirt.Dial(ctx, libvirt.Spec{Domain: name, Socket: d.socket})
	if err != nil {
		t.Fatal(err)
	}
	defer dom.Close()
	regions, err := dom.Regions(ctx)
	if err != nil {
		t.Fatal(err)
	}
	file := fmt.Sprintf("%s/zc-%d.vm1", libvirt.ShmDir, id)
	fi, err := os.Stat(file)
	if err != nil {
		t.Fatal(err)
	}
	if len(regions) != 1 || regions[0].Path != file || regions[0].Size != uint64(fi.Size()) || !strings.HasPrefix(regions[0].Alias, "ua-zc-") {
		t.Fatalf("domain XML lists shmem devices %+v, want one for %s (%d bytes) with a ua-zc- alias", regions, file, fi.Size())
	}
	first := regions[0]
	// libvirt does not relabel shmem files: host/libvirt gives the file
	// to QEMU's DAC user.
	if st := fi.Sys().(*syscall.Stat_t); int(st.Uid) != d.qemuUID || int(st.Gid) != d.qemuGID {
		t.Errorf("%s owned by %d:%d, want QEMU's DAC user %d:%d", file, st.Uid, st.Gid, d.qemuUID, d.qemuGID)
	}
	sentRE := regexp.MustCompile(`"execute":"object-add","arguments":\{"qom-type":"memory-backend-file","id":"` + regexp.QuoteMeta(first.MemID()) +
		`","mem-path":"` + regexp.QuoteMeta(file) + `","size":` + fmt.Sprint(fi.Size()) + `,"share":true\}`)
	devRE := regexp.MustCompile(`"execute":"device_add","arguments":\{"driver":"ivshmem-plain","id":"` + regexp.QuoteMeta(first.Alias) + `","memdev":"` + regexp.QuoteMeta(first.MemID()) + `"`)
	sent := strings.Join(d.qmpSent(), "\n")
	if !sentRE.MatchString(sent) || !devRE.MatchString(sent) {
		t.Errorf("libvirt's QMP to QEMU lacks object-add of %s and device_add ivshmem-plain %s:\n%s", file, first.Alias, sent)
	}

	// zchost detach through libvirt: gone from the live XML when it
	// returns, then from the guest.
	out := h.run(t, ctx, h.zchost, "detach", "--qmp", target, "-c", fmt.Sprint(id))
	var det struct{ Mem, Dev string }
	if err := json.Unmarshal([]byte(out), &det); err != nil || det.Dev != first.Alias || det.Mem != first.MemID() {
		t.Errorf("zchost detach printed %q (%v), want device %s, memory %s", out, err, first.Alias, first.MemID())
	}
	if regions, err := dom.Regions(ctx); err != nil || len(regions) != 0 {
		t.Errorf("after zchost detach the domain lists %+v (%v), want no shmem device", regions, err)
	}
	if _, err := vm.Expect(ctx, "ZCGONE"); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(d.qmpSent(), "\n"), `"execute":"object-del","arguments":{"id":"`+first.MemID()+`"}`) {
		t.Errorf("libvirt did not delete memory backend %s", first.MemID())
	}

	// zchost attach / detach --dev: the cluster's own region, a new alias.
	out = h.run(t, ctx, h.zchost, "attach", "--qmp", target, "-c", fmt.Sprint(id))
	var att struct {
		Dev, Mem, Path string
		Size           uint64
	}
	if err := json.Unmarshal([]byte(out), &att); err != nil || att.Dev == "" || att.Dev == first.Alias || att.Path != fmt.Sprintf("%s/zc-%d", libvirt.ShmDir, id) {
		t.Fatalf("zchost attach printed %q (%v), want a new alias for %s/zc-%d", out, err, libvirt.ShmDir, id)
	}
	var list []struct {
		Cluster *uint32 `json:"cluster"`
	}
	if _, err := vm.Result(ctx, &list); err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].Cluster == nil || *list[0].Cluster != id {
		t.Errorf("guest lists %+v after zchost attach, want cluster %d", list, id)
	}
	h.run(t, ctx, h.zchost, "detach", "--qmp", target, "--dev", att.Dev)
	if _, err := vm.Expect(ctx, "ZCGONE"); err != nil {
		t.Fatal(err)
	}
	if err := zchost.interrupt(ctx); err != nil {
		t.Errorf("zchost run: %v", err)
	}
	if _, err := vm.Expect(ctx, ExitMarker+" 0"); err != nil {
		t.Fatal(err)
	}
	// The guest powers off; on_poweroff destroys the transient domain.
	for {
		c, err := libvirt.Dial(ctx, libvirt.Spec{Domain: name, Socket: d.socket})
		if errors.Is(err, libvirt.ErrNoDomain) {
			break
		}
		if err == nil {
			c.Close()
		}
		if ctx.Err() != nil {
			t.Fatalf("domain %s still there after the guest powered off: %v", name, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
