package qmp

import "context"

// PCIe reports whether the VM's machine is PCI Express (q35), where a
// region must be plugged behind a free pcie-root-port (FreeRootPort).
func (vm *VM) PCIe(ctx context.Context) (bool, error) { return vm.isPCIe(ctx) }
