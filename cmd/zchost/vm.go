package main

import (
	"context"
	"fmt"

	"github.com/hashicorp/go-hclog"
	"github.com/zcfabric/zc"
	"github.com/zcfabric/zc/host/qmp"
)

// exportVM hot-plugs cluster c into the running VM whose QMP socket is
// qmpPath, and returns the function that unplugs it.
func exportVM(ctx context.Context, log hclog.Logger, qmpPath string, c *zc.Cluster) (func(context.Context) error, error) {
	vm, err := qmp.Dial(ctx, qmpPath)
	if err != nil {
		return nil, fmt.Errorf("export cluster %d to vm %s: %w", c.ID(), qmpPath, err)
	}
	bus := "" // pc machines plug on the default bus
	if pcie, err := vm.PCIe(ctx); err != nil || pcie {
		if bus, err = vm.FreeRootPort(ctx, c.Size()); err != nil {
			vm.Close()
			return nil, fmt.Errorf("export cluster %d to vm %s: %w", c.ID(), qmpPath, err)
		}
	}
	a, err := vm.AttachRegion(ctx, qmp.AttachSpec{Path: c.File(), Size: c.Size(), Bus: bus})
	if err != nil {
		vm.Close()
		return nil, fmt.Errorf("export cluster %d to vm %s: %w", c.ID(), qmpPath, err)
	}
	log.Info("exported to vm", "vm", qmpPath, "device", a.DevID, "memdev", a.MemID, "bus", a.Bus)
	return func(ctx context.Context) error {
		defer vm.Close()
		return vm.Detach(ctx, a)
	}, nil
}
