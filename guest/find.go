package guest

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// PCI ids of QEMU's ivshmem devices (ivshmem-plain and ivshmem-doorbell).
const (
	VendorID = 0x1af4
	DeviceID = 0x1110
)

// DefaultSysfs is the sysfs root used when a root argument is "".
const DefaultSysfs = "/sys"

// ErrNoBAR means a device's resource2 (BAR2) is missing or has size zero:
// the device is still being configured, or the firmware found no room for
// the BAR (on q35: a root port without enough pref64-reserve).
var ErrNoBAR = errors.New("ivshmem BAR2 not assigned")

// Device is one ivshmem PCI device seen in sysfs.
type Device struct {
	// Addr is the PCI address, e.g. "0000:00:04.0".
	Addr string
	// Dir is the device's sysfs directory, <root>/bus/pci/devices/<Addr>.
	Dir string
	// Size is the size of BAR2 (resource2) in bytes, 0 if not assigned.
	Size int64
}

// Find lists the ivshmem devices under root's bus/pci/devices, sorted by
// address. root "" means [DefaultSysfs]. Devices that vanish while Find
// reads them are left out.
func Find(root string) ([]Device, error) {
	if root == "" {
		root = DefaultSysfs
	}
	dir := filepath.Join(root, "bus", "pci", "devices")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("zc: list ivshmem devices under %s: %w", root, err)
	}
	var devs []Device
	for _, e := range entries {
		d := Device{Addr: e.Name(), Dir: filepath.Join(dir, e.Name())}
		if !hasID(d.Dir, "vendor", VendorID) || !hasID(d.Dir, "device", DeviceID) {
			continue
		}
		d.Size = barSize(d.Dir)
		devs = append(devs, d)
	}
	sort.Slice(devs, func(i, j int) bool { return devs[i].Addr < devs[j].Addr })
	return devs, nil
}

// hasID reports whether the sysfs attribute name in dir holds want, written
// the way sysfs does ("0x1af4").
func hasID(dir, name string, want uint64) bool {
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		return false
	}
	var got uint64
	if _, err := fmt.Sscanf(strings.TrimSpace(string(b)), "0x%x", &got); err != nil {
		return false
	}
	return got == want
}

// barSize returns the size of dir/resource2; sysfs gives resource files the
// size of their BAR.
func barSize(dir string) int64 {
	fi, err := os.Stat(filepath.Join(dir, "resource2"))
	if err != nil || !fi.Mode().IsRegular() {
		return 0
	}
	return fi.Size()
}

// Gone reports whether d's sysfs directory has vanished, as it does when the
// host unplugs the device.
func Gone(d Device) bool {
	_, err := os.Stat(d.Dir)
	return errors.Is(err, fs.ErrNotExist)
}
