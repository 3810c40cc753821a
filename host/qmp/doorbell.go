package qmp

import (
	"context"
	"errors"
	"fmt"
	"math/bits"
	"strings"
)

// DoorbellSpec says which ivshmem server to hot-plug a doorbell device for.
type DoorbellSpec struct {
	// Socket is the unix socket of the ivshmem server (see package
	// host/doorbell); QEMU connects to it as a client and must be allowed
	// to (write permission on the socket file for QEMU's user).
	Socket string
	// Size is the size of the server's shared memory, a power of two. It
	// is used to pick a pcie-root-port with enough pref64-reserve on q35;
	// QEMU itself takes the size from the memory's descriptor.
	Size uint64
	// Vectors is the device's number of interrupt vectors; give the
	// server's (0 means 1).
	Vectors int
	// Bus is the qdev id of the bus to plug into, as in [AttachSpec].
	Bus string
	// Name labels the QEMU ids (e.g. "c99"); optional.
	Name string
}

// DoorbellAttachment is an ivshmem-doorbell device plugged into a VM: what
// [VM.DetachDoorbell] needs to remove it.
type DoorbellAttachment struct {
	// ChardevID is the id of the socket chardev connected to the server.
	ChardevID string
	// DevID is the id of the ivshmem-doorbell device.
	DevID string
	// Bus is the bus the device was plugged into ("" for the default).
	Bus string
	// Socket is the server's socket path.
	Socket string
	// Vectors is the device's number of vectors.
	Vectors int
}

// AttachDoorbell hot-plugs an ivshmem-doorbell device whose memory and
// interrupts come from the ivshmem server at spec.Socket, in two QMP steps:
//
//	chardev-add socket  id=<chr> path=<Socket> server=off   (QEMU connects)
//	device_add  ivshmem-doorbell id=<dev> chardev=<chr> vectors=<n> [bus=<root port>]
//
// QEMU reads the server's setup messages (protocol version, its peer id,
// the shared memory's descriptor) synchronously inside device_add, so the
// server must be serving. There is no memory-backend: the memory is the
// descriptor the server sends. The device interrupts its guest through
// MSI-X only (QEMU 7.2's ivshmem-doorbell has no msi=off, and no INTx).
// Both ids are fresh. If device_add fails, the chardev is removed again.
func (vm *VM) AttachDoorbell(ctx context.Context, spec DoorbellSpec) (DoorbellAttachment, error) {
	a, err := vm.attachDoorbell(ctx, spec)
	if err != nil {
		return DoorbellAttachment{}, fmt.Errorf("zc: attach doorbell %s to vm %s: %w", spec.Socket, vm.name, err)
	}
	return a, nil
}

func (vm *VM) attachDoorbell(ctx context.Context, spec DoorbellSpec) (DoorbellAttachment, error) {
	if spec.Size == 0 || bits.OnesCount64(spec.Size) != 1 {
		return DoorbellAttachment{}, fmt.Errorf("%w: %d bytes", ErrBadSize, spec.Size)
	}
	vectors := spec.Vectors
	if vectors <= 0 {
		vectors = 1
	}
	vm.attachMu.Lock()
	defer vm.attachMu.Unlock()
	bus := spec.Bus
	if bus == "" {
		pcie, err := vm.isPCIe(ctx)
		if err != nil {
			return DoorbellAttachment{}, err
		}
		if pcie {
			if bus, err = vm.FreeRootPort(ctx, spec.Size); err != nil {
				return DoorbellAttachment{}, err
			}
		}
	}
	_, dev := newIDs(spec.Name)
	chr := "zcbell-" + strings.TrimPrefix(dev, "zcdev-")
	err := vm.execute(ctx, "chardev-add", map[string]any{
		"id": chr,
		"backend": map[string]any{"type": "socket", "data": map[string]any{
			"addr":   map[string]any{"type": "unix", "data": map[string]any{"path": spec.Socket}},
			"server": false,
		}},
	}, nil)
	if err != nil {
		return DoorbellAttachment{}, fmt.Errorf("add chardev %s for %s: %w", chr, spec.Socket, err)
	}
	args := map[string]any{"driver": "ivshmem-doorbell", "id": dev, "chardev": chr, "vectors": vectors}
	if bus != "" {
		args["bus"] = bus
	}
	if err := vm.execute(ctx, "device_add", args, nil); err != nil {
		err = fmt.Errorf("add device %s: %w", dev, err)
		if rerr := vm.execute(context.WithoutCancel(ctx), "chardev-remove", map[string]any{"id": chr}, nil); rerr != nil {
			err = errors.Join(err, fmt.Errorf("remove chardev %s: %w", chr, rerr))
		}
		return DoorbellAttachment{}, err
	}
	return DoorbellAttachment{ChardevID: chr, DevID: dev, Bus: bus, Socket: spec.Socket, Vectors: vectors}, nil
}

// DetachDoorbell unplugs a doorbell device: device_del, a wait for
// DEVICE_DELETED (the guest must release the device; see [VM.Detach] for
// the timeout rules), then chardev-remove, which closes QEMU's connection:
// the server sees the client leave. A device already gone counts as
// unplugged.
func (vm *VM) DetachDoorbell(ctx context.Context, a DoorbellAttachment) error {
	if err := vm.detachDoorbell(ctx, a); err != nil {
		return fmt.Errorf("zc: detach doorbell %s (%s) from vm %s: %w", a.Socket, a.DevID, vm.name, err)
	}
	return nil
}

func (vm *VM) detachDoorbell(ctx context.Context, a DoorbellAttachment) error {
	ctx, cancel := detachDeadline(ctx)
	defer cancel()
	gone, err := vm.unplug(ctx, a.DevID)
	if err != nil {
		return err
	}
	if err := vm.execute(ctx, "chardev-remove", map[string]any{"id": a.ChardevID}, nil); err != nil {
		if gone && isChardevNotFound(err) {
			return nil
		}
		return fmt.Errorf("remove chardev %s: %w", a.ChardevID, err)
	}
	return nil
}

// isChardevNotFound reports QEMU's answer to chardev-remove of an id it
// does not know ("Chardev 'ID' not found", class GenericError).
func isChardevNotFound(err error) bool {
	var qe *Error
	return errors.As(err, &qe) && qe.Class == "GenericError" && strings.Contains(qe.Desc, "not found")
}
