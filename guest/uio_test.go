package guest

import (
	"context"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/zcfabric/zc/internal/testgate"
	"golang.org/x/sys/unix"
)

// fakeDoorbell adds an ivshmem device with a BAR0 file (one page, peer id
// 7 in IVPosition) and a driver_override attribute to a fake sysfs tree,
// and returns it as Find does.
func fakeDoorbell(t *testing.T, root string) Device {
	t.Helper()
	dir := fakeDevice(t, root, "0000:00:04.0", "0x1af4", "0x1110", make([]byte, 1<<16))
	regs := make([]byte, os.Getpagesize())
	binary.LittleEndian.PutUint32(regs[RegIVPosition:], 7)
	if err := os.WriteFile(filepath.Join(dir, "resource0"), regs, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "driver_override"), []byte("(null)\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	devs, err := Find(root)
	if err != nil || len(devs) != 1 {
		t.Fatalf("Find = %v, %v; want the fake doorbell", devs, err)
	}
	return devs[0]
}

// TestDoorbellWithoutVFIO opens a doorbell in a guest without vfio-pci: it
// rings through BAR0 (one 32-bit store of peer<<16|vector at offset 12,
// seen in the file), reads its peer id from IVPosition, and says once,
// through Interrupts and Wait, that it cannot take interrupts and why.
func TestDoorbellWithoutVFIO(t *testing.T) {
	root := t.TempDir()
	d := fakeDoorbell(t, root)
	b, err := OpenDoorbell(d, DoorbellOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if got := b.IVPosition(); got != 7 {
		t.Errorf("IVPosition() = %d, want 7", got)
	}
	b.Ring(3, 5)
	regs, err := os.ReadFile(filepath.Join(d.Dir, "resource0"))
	if err != nil {
		t.Fatal(err)
	}
	if got := binary.LittleEndian.Uint32(regs[RegDoorbell:]); got != 3<<16|5 {
		t.Errorf("Doorbell register holds %#x after Ring(3, 5), want 0x30005", got)
	}
	if a := testing.AllocsPerRun(100, func() { b.Ring(0, 1) }); a != 0 {
		t.Errorf("Ring allocates %v times a call, want 0", a)
	}
	ierr := b.Interrupts()
	if !errors.Is(ierr, ErrNoInterrupts) || !strings.Contains(ierr.Error(), "not loaded") {
		t.Errorf("Interrupts() = %v, want ErrNoInterrupts saying vfio-pci is not loaded", ierr)
	}
	if _, err := b.Wait(context.Background()); !errors.Is(err, ErrNoInterrupts) {
		t.Errorf("Wait = %v, want ErrNoInterrupts at once", err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// TestDoorbellNoIOMMUGroup checks that with vfio-pci loaded but no IOMMU
// group (a VM without an IOMMU) the device's binding is left alone.
func TestDoorbellNoIOMMUGroup(t *testing.T) {
	root := t.TempDir()
	d := fakeDoorbell(t, root)
	if err := os.MkdirAll(filepath.Join(root, "bus", "pci", "drivers", DriverVFIO), 0o755); err != nil {
		t.Fatal(err)
	}
	b, err := OpenDoorbell(d, DoorbellOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if ierr := b.Interrupts(); !errors.Is(ierr, ErrNoInterrupts) || !strings.Contains(ierr.Error(), "IOMMU group") {
		t.Errorf("Interrupts() = %v, want ErrNoInterrupts naming the missing IOMMU group", ierr)
	}
	if got, _ := os.ReadFile(filepath.Join(d.Dir, "driver_override")); string(got) != "(null)\n" {
		t.Errorf("driver_override = %q, want it untouched", got)
	}
	// NoBind: a device not bound to vfio-pci has no interrupts either.
	nb, err := OpenDoorbell(d, DoorbellOptions{NoBind: true})
	if err != nil {
		t.Fatal(err)
	}
	defer nb.Close()
	if ierr := nb.Interrupts(); !errors.Is(ierr, ErrNoInterrupts) {
		t.Errorf("NoBind: Interrupts() = %v, want ErrNoInterrupts", ierr)
	}
}

// TestOpenDoorbellNoBAR0 checks that a device without resource0 is an
// error, not a Doorbell.
func TestOpenDoorbellNoBAR0(t *testing.T) {
	root := t.TempDir()
	fakeDevice(t, root, "0000:00:05.0", "0x1af4", "0x1110", make([]byte, 4096))
	devs, err := Find(root)
	if err != nil || len(devs) != 1 {
		t.Fatal(devs, err)
	}
	if _, err := OpenDoorbell(devs[0], DoorbellOptions{}); err == nil || !strings.Contains(err.Error(), "resource0") {
		t.Errorf("OpenDoorbell without resource0 = %v, want an error naming it", err)
	}
}

// TestSetBusMaster checks that the Bus Master bit is set in the config
// file's command register and the other bits are kept.
func TestSetBusMaster(t *testing.T) {
	dir := t.TempDir()
	cfg := make([]byte, 256)
	cfg[4] = 0x03 // I/O and memory space on
	cfg[5] = 0x04 // INTx disabled
	if err := os.WriteFile(filepath.Join(dir, "config"), cfg, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := setBusMaster(dir); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(filepath.Join(dir, "config"))
	if got[4] != 0x07 || got[5] != 0x04 {
		t.Errorf("command register %#02x %#02x, want 0x07 0x04", got[4], got[5])
	}
}

// TestEnsureNode creates a device node from a sysfs "dev" attribute, as
// OpenDoorbell does for /dev/vfio nodes missing from a /dev without
// devtmpfs, and leaves an existing node alone.
func TestEnsureNode(t *testing.T) {
	testgate.Root(t)
	dir := t.TempDir()
	attr := filepath.Join(dir, "dev")
	if err := os.WriteFile(attr, []byte("1:3\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	node := filepath.Join(dir, "vfio", "vfio")
	if err := ensureNode(node, attr); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat(node, &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFCHR || unix.Major(st.Rdev) != 1 || unix.Minor(st.Rdev) != 3 {
		t.Errorf("node mode %#o rdev %d:%d, want a char device 1:3", st.Mode, unix.Major(st.Rdev), unix.Minor(st.Rdev))
	}
	if err := ensureNode(node, filepath.Join(dir, "missing")); err != nil {
		t.Errorf("ensureNode on an existing node: %v", err)
	}
	if err := ensureNode(filepath.Join(dir, "other"), filepath.Join(dir, "missing")); err == nil {
		t.Error("ensureNode without node or attribute succeeded")
	}
}
