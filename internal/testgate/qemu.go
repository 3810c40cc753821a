package testgate

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// QEMUBinary is the QEMU system emulator the VM tests run; the environment
// variable VMTEST_QEMU overrides it with a name or a path.
const QEMUBinary = "qemu-system-x86_64"

// QEMU skips the test unless a QEMU x86_64 system emulator can be found, and
// returns its path. VMTEST_QEMU, when set, names the binary to use instead of
// qemu-system-x86_64 from $PATH.
func QEMU(t testing.TB) string {
	t.Helper()
	name := os.Getenv("VMTEST_QEMU")
	if name == "" {
		name = QEMUBinary
	}
	path, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("requires QEMU: %s not found (apt-get install -y --no-install-recommends qemu-system-x86, or set VMTEST_QEMU to the binary)", name)
	}
	return path
}

// Busybox skips the test unless a statically linked busybox is installed, and
// returns its path. VMTEST_BUSYBOX, when set, names the binary to use.
func Busybox(t testing.TB) string {
	t.Helper()
	candidates := []string{os.Getenv("VMTEST_BUSYBOX"), "/bin/busybox", "/usr/bin/busybox"}
	for _, c := range candidates {
		if c == "" {
			continue
		}
		if fi, err := os.Stat(c); err == nil && fi.Mode().IsRegular() {
			return c
		}
	}
	t.Skip("requires a static busybox: none at /bin/busybox (apt-get install -y --no-install-recommends busybox-static, or set VMTEST_BUSYBOX)")
	return ""
}

var kvmOnce = sync.OnceValues(probeKVM)

// KVM reports whether QEMU can run guests with -accel kvm here. It first
// asks /dev/kvm for a VM with one vCPU, then starts QEMU (see [QEMU] for
// which binary) with each CPU model of [KVMCPU]'s list until one runs a
// paused machine to "running". The probe runs once per process. A /dev/kvm
// that exists but cannot run QEMU (a stub device, nested virtualisation that
// rejects an MSR) reports false.
func KVM() bool {
	_, ok := kvmOnce()
	return ok
}

// KVMCPU returns the -cpu value that worked under KVM: "host", or
// "host,-arch-capabilities" where nested KVM refuses MSR 0x10a (measured: a
// QEMU 7.2 assertion failure with plain "host" on the build machines).
func KVMCPU() (string, bool) { return kvmOnce() }

func probeKVM() (string, bool) {
	if !kvmDevice() {
		return "", false
	}
	name := os.Getenv("VMTEST_QEMU")
	if name == "" {
		name = QEMUBinary
	}
	bin, err := exec.LookPath(name)
	if err != nil {
		return "", false
	}
	for _, cpu := range []string{"host", "host,-arch-capabilities"} {
		if qemuRunsKVM(bin, cpu) {
			return cpu, true
		}
	}
	return "", false
}

// qemuRunsKVM starts a paused KVM machine, resumes it over QMP on stdio and
// checks that it reports running before it quits.
func qemuRunsKVM(bin, cpu string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "-accel", "kvm", "-machine", "pc", "-cpu", cpu,
		"-m", "64M", "-nodefaults", "-no-user-config", "-display", "none", "-S", "-qmp", "stdio")
	cmd.Stdin = strings.NewReader(`{"execute":"qmp_capabilities"}` + "\n" +
		`{"execute":"cont"}` + "\n" + `{"execute":"query-status"}` + "\n" + `{"execute":"quit"}` + "\n")
	out, err := cmd.CombinedOutput()
	return err == nil && bytes.Contains(out, []byte(`"running": true`))
}

// KVM ioctl numbers from <linux/kvm.h>: _IO(KVMIO, n) with KVMIO = 0xAE.
const (
	kvmGetAPIVersion = 0xAE00
	kvmCreateVM      = 0xAE01
	kvmCreateVCPU    = 0xAE41
	kvmAPIVersion    = 12
)

func kvmDevice() bool {
	fd, err := unix.Open("/dev/kvm", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	if v, err := unix.IoctlRetInt(fd, kvmGetAPIVersion); err != nil || v != kvmAPIVersion {
		return false
	}
	vm, err := unix.IoctlRetInt(fd, kvmCreateVM)
	if err != nil {
		return false
	}
	defer unix.Close(vm)
	vcpu, err := unix.IoctlRetInt(vm, kvmCreateVCPU)
	if err != nil {
		return false
	}
	unix.Close(vcpu)
	return true
}

// NeedKVM skips the test unless /dev/kvm is usable.
func NeedKVM(t testing.TB) {
	t.Helper()
	if !KVM() {
		t.Skip("requires a usable /dev/kvm (load kvm_intel or kvm_amd, enable nested virtualisation, or run on bare metal)")
	}
}
