package testgate

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
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

// KVM reports whether QEMU can run guests with -accel kvm here, fast. It
// first asks /dev/kvm for a VM with one vCPU, then boots QEMU's firmware
// under KVM (see [QEMU] for which binary) with each CPU model of [KVMCPU]'s
// list and times it to its "Booting from" message on the debug console.
// Firmware that takes longer than [KVMProbeLimit] means KVM is emulated too
// slowly to beat TCG (measured on the build machines: nested KVM took ~4 s
// where TCG took ~0.1 s, and a Linux guest made no progress in 90 s). The
// probe runs once per process.
func KVM() bool {
	_, ok := kvmOnce()
	return ok
}

// KVMProbeLimit is how long QEMU's firmware may take to boot under KVM for
// [KVM] to call KVM usable.
const KVMProbeLimit = 1500 * time.Millisecond

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
		if qemuBootsKVM(bin, cpu) {
			return cpu, true
		}
	}
	return "", false
}

// qemuBootsKVM boots SeaBIOS with no disks under KVM and reports whether it
// reached "Booting from" (printed on the 0x402 debug port) within
// KVMProbeLimit.
func qemuBootsKVM(bin, cpu string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), KVMProbeLimit)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "-accel", "kvm", "-machine", "pc", "-cpu", cpu,
		"-m", "64M", "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-debugcon", "stdio", "-global", "isa-debugcon.iobase=0x402")
	out, err := cmd.StdoutPipe()
	if err != nil {
		return false
	}
	if err := cmd.Start(); err != nil {
		return false
	}
	defer cmd.Wait()
	defer cmd.Process.Kill()
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if bytes.Contains(sc.Bytes(), []byte("Booting from")) {
			return true
		}
	}
	return false
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
