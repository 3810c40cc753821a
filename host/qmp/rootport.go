package qmp

import (
	"context"
	"fmt"
	"math"
	"sort"
	"strings"
)

// PCI ids of the root ports a region can be hot-plugged behind.
var rootPortIDs = []struct{ vendor, device int }{
	{0x1b36, 0x000c}, // QEMU pcie-root-port
	{0x8086, 0x3420}, // ioh3420
}

// pciBus and pciDevice are the parts of query-pci's reply used here.
type pciBus struct {
	Bus     int         `json:"bus"`
	Devices []pciDevice `json:"devices"`
}

type pciDevice struct {
	QdevID string `json:"qdev_id"`
	ID     struct {
		Vendor int `json:"vendor"`
		Device int `json:"device"`
	} `json:"id"`
	Bridge *struct {
		Bus struct {
			Prefetchable *struct {
				Base  uint64 `json:"base"`
				Limit uint64 `json:"limit"`
			} `json:"prefetchable_range"`
		} `json:"bus"`
		Devices []pciDevice `json:"devices"`
	} `json:"pci_bridge"`
}

func (d pciDevice) isRootPort() bool {
	for _, id := range rootPortIDs {
		if d.ID.Vendor == id.vendor && d.ID.Device == id.device {
			return true
		}
	}
	return false
}

// isPCIe reports whether the VM's machine type has a PCIe root complex
// (q35), where ivshmem devices must go behind a root port.
func (vm *VM) isPCIe(ctx context.Context) (bool, error) {
	var typ string
	if err := vm.execute(ctx, "qom-get", map[string]any{"path": "/machine", "property": "type"}, &typ); err != nil {
		return false, fmt.Errorf("find machine type: %w", err)
	}
	return strings.Contains(typ, "q35"), nil
}

// FreeRootPort returns the id of a pcie-root-port with nothing plugged
// behind it whose pref64-reserve is at least size bytes, trying ports in id
// order. Without that reservation the firmware leaves no room for the
// region's 64-bit BAR and the guest never sees resource2. If there is none,
// the error wraps [ErrNoRootPort] and says which -device option to add to
// the VM's command line.
func (vm *VM) FreeRootPort(ctx context.Context, size uint64) (string, error) {
	var buses []pciBus
	if err := vm.execute(ctx, "query-pci", nil, &buses); err != nil {
		return "", fmt.Errorf("find free pcie-root-port: %w", err)
	}
	var free []string
	var walk func([]pciDevice)
	walk = func(devs []pciDevice) {
		for _, d := range devs {
			if d.Bridge == nil {
				continue
			}
			walk(d.Bridge.Devices)
			if d.isRootPort() && d.QdevID != "" && len(d.Bridge.Devices) == 0 {
				free = append(free, d.QdevID)
			}
		}
	}
	for _, b := range buses {
		walk(b.Devices)
	}
	sort.Strings(free)
	for _, id := range free {
		var reserve uint64
		err := vm.execute(ctx, "qom-get", map[string]any{"path": "/machine/peripheral/" + id, "property": "pref64-reserve"}, &reserve)
		if err == nil && reserve != math.MaxUint64 && reserve >= size {
			return id, nil
		}
	}
	return "", fmt.Errorf("%w with pref64-reserve >= %s (%d free without enough reserve): start the VM with -device pcie-root-port,id=zcrp1,slot=1,pref64-reserve=%s (unique id and slot per port, one port per region)",
		ErrNoRootPort, sizeString(size), len(free), sizeString(size))
}

// sizeString writes a size the way QEMU options take it: 64M, 1G, 4096.
func sizeString(n uint64) string {
	for _, u := range []struct {
		suffix string
		shift  uint
	}{{"T", 40}, {"G", 30}, {"M", 20}, {"K", 10}} {
		if n >= 1<<u.shift && n%(1<<u.shift) == 0 {
			return fmt.Sprintf("%d%s", n>>u.shift, u.suffix)
		}
	}
	return fmt.Sprintf("%d", n)
}
