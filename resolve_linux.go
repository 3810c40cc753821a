package zc

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/zcfabric/zc/guest"
	"github.com/zcfabric/zc/ivshmem"
)

// In a KVM guest, Open and Inspect find a cluster's region as an ivshmem
// device (see the guest package) when there is no host region of that id,
// so the same binary runs on either side. The sysfs root is $ZC_SYSFS, else
// /sys.
func init() {
	RegisterResolver(resolveGuest)
	openBell = openGuestBell
}

// openGuestBell opens the doorbell of the ivshmem device whose BAR2 is
// path (sysfs .../resource2): only an ivshmem-doorbell device has one (its
// MSI-X table is BAR1: resource1). It rings the host in any guest; it
// waits for the host's interrupts only where the guest can take them
// (guest.Doorbell): noIntr says why not.
func openGuestBell(path string) (b bellDevice, noIntr error) {
	dir := filepath.Dir(path)
	if _, err := os.Stat(filepath.Join(dir, "resource1")); err != nil {
		return nil, errors.New("an ivshmem-plain device: no doorbell")
	}
	devs, err := guest.Find(guest.SysfsRoot())
	if err != nil {
		return nil, err
	}
	for _, d := range devs {
		if d.Dir != dir && filepath.Join(guest.SysfsRoot(), "bus", "pci", "devices", d.Addr) != dir {
			continue
		}
		db, err := guest.OpenDoorbell(d, guest.DoorbellOptions{})
		if err != nil {
			return nil, err
		}
		return db, db.Interrupts()
	}
	return nil, fmt.Errorf("no ivshmem device at %s", dir)
}

func resolveGuest(id uint32) (*ivshmem.Mapping, ivshmem.Side, error) {
	m, side, err := guest.Resolve(id)
	if errors.Is(err, guest.ErrNotFound) {
		return nil, 0, fmt.Errorf("%w: %w", ErrNotFound, err)
	}
	return m, side, err
}
