package qmp

import (
	"context"
	"errors"
	"fmt"
	"math/bits"
	"os"
	"strings"
	"time"
)

// AttachSpec says which region file to hot-plug and how.
type AttachSpec struct {
	// Path is the region's backing file on the host, e.g. /dev/shm/zc-99,
	// a file on hugetlbfs, or a memfd as /proc/PID/fd/N. A memfd is handed
	// to QEMU as a descriptor over the QMP socket (see [VM.AttachRegion]);
	// any other file QEMU opens by this path, so it must be reachable from
	// QEMU's mount namespace.
	Path string
	// Size is the region size in bytes, a power of two. Zero means the
	// file's current size.
	Size uint64
	// Bus is the qdev id of the bus to plug into, e.g. the id of a
	// pcie-root-port. Empty means: the default bus on pc (i440fx), a free
	// pcie-root-port on q35.
	Bus string
	// Name labels the QEMU object and device ids (e.g. "c99"); optional.
	Name string
}

// Attachment is a region plugged into a VM: what [VM.Detach] needs to
// remove it. It is an ivshmem-plain device with its memory backend, or, as
// [VM.Regions] lists them, an ivshmem-doorbell device with its chardev
// (ChardevID set, MemID and Path empty; see [VM.AttachDoorbell]).
type Attachment struct {
	// MemID is the id of the memory-backend-file object.
	MemID string
	// DevID is the id of the ivshmem-plain or ivshmem-doorbell device.
	DevID string
	// ChardevID is, for an ivshmem-doorbell device only, the id of the
	// socket chardev connected to its ivshmem server.
	ChardevID string
	// Bus is the bus the device was plugged into ("" for the default).
	Bus string
	// Path and Size are the region file and its size.
	Path string
	Size uint64
	// ByFD is true when QEMU got the region as a file descriptor over the
	// QMP socket (a memfd) rather than by Path. Its memory backend's
	// mem-path is then /proc/self/fd/N, which is what [VM.Regions] shows.
	ByFD bool
}

// DefaultDetachTimeout bounds the wait for DEVICE_DELETED when Detach's
// context has no deadline. The ACPI unplug of an idle guest takes ~65 ms
// under TCG.
const DefaultDetachTimeout = 10 * time.Second

// AttachRegion hot-plugs the region file as an ivshmem-plain device: it adds
// a shared memory-backend-file object and an ivshmem-plain device using it,
// both with fresh ids. On q35 without spec.Bus it picks a free
// pcie-root-port (see [VM.FreeRootPort]). If device_add fails, the memory
// object is removed again.
//
// Over a unix QMP socket ([Dial]) QEMU gets only what it needs: a memfd
// region goes to it as a descriptor (add-fd with SCM_RIGHTS, then
// mem-path=/proc/self/fd/N in QEMU, then remove-fd), so it needs no file
// name and no permission; a region file that QEMU's user could not open
// (QEMU is not root, not its owner, and not in its group with group
// read-write; see [VM.PeerCred]) is given to QEMU's uid first, keeping its
// group and mode.
func (vm *VM) AttachRegion(ctx context.Context, spec AttachSpec) (Attachment, error) {
	a, err := vm.attach(ctx, spec)
	if err != nil {
		return Attachment{}, fmt.Errorf("zc: attach region %s to vm %s: %w", spec.Path, vm.name, err)
	}
	return a, nil
}

func (vm *VM) attach(ctx context.Context, spec AttachSpec) (Attachment, error) {
	size := spec.Size
	if size == 0 {
		fi, err := os.Stat(spec.Path)
		if err != nil {
			return Attachment{}, err
		}
		size = uint64(fi.Size())
	}
	if size == 0 || bits.OnesCount64(size) != 1 {
		return Attachment{}, fmt.Errorf("%w: %d bytes", ErrBadSize, size)
	}
	vm.attachMu.Lock()
	defer vm.attachMu.Unlock()
	bus := spec.Bus
	if bus == "" {
		pcie, err := vm.isPCIe(ctx)
		if err != nil {
			return Attachment{}, err
		}
		if pcie {
			if bus, err = vm.FreeRootPort(ctx, size); err != nil {
				return Attachment{}, err
			}
		}
	}
	mem, dev := newIDs(spec.Name)
	o, err := vm.offer(ctx, spec.Path, mem)
	if err != nil {
		return Attachment{}, err
	}
	err = vm.execute(ctx, "object-add", map[string]any{
		"qom-type": "memory-backend-file",
		"id":       mem,
		"mem-path": o.memPath,
		"size":     size,
		"share":    true,
	}, nil)
	if o.byFD {
		// The backend holds its own descriptor now (or failed); close the
		// one add-fd left in QEMU. After a successful object-add a failure
		// here leaks one descriptor in QEMU and nothing else.
		if rerr := vm.removeFD(context.WithoutCancel(ctx), o.fdset); rerr != nil && err != nil {
			err = errors.Join(err, rerr)
		}
	}
	if err != nil {
		return Attachment{}, errors.Join(fmt.Errorf("add memory backend %s: %w", mem, err), o.note)
	}
	testPauseAfterObjectAdd()
	args := map[string]any{"driver": "ivshmem-plain", "id": dev, "memdev": mem}
	if bus != "" {
		args["bus"] = bus
	}
	if err := vm.execute(ctx, "device_add", args, nil); err != nil {
		err = fmt.Errorf("add device %s: %w", dev, err)
		if derr := vm.execute(context.WithoutCancel(ctx), "object-del", map[string]any{"id": mem}, nil); derr != nil {
			err = errors.Join(err, fmt.Errorf("remove memory backend %s: %w", mem, derr))
		}
		return Attachment{}, err
	}
	return Attachment{MemID: mem, DevID: dev, Bus: bus, Path: spec.Path, Size: size, ByFD: o.byFD}, nil
}

// Detach unplugs an attachment: device_del, then a wait for QEMU's
// DEVICE_DELETED event for the device (the guest must acknowledge the ACPI
// eject), then object-del of the memory backend. The wait ends with
// [ErrDetachTimeout] at ctx's deadline, or after [DefaultDetachTimeout] when
// ctx has none; the attachment then stays and Detach may be retried. A
// device that is already gone ([ErrDeviceNotFound]) counts as unplugged.
// A doorbell device (ChardevID set) goes as [VM.DetachDoorbell] removes it:
// chardev-remove instead of object-del.
func (vm *VM) Detach(ctx context.Context, a Attachment) error {
	if a.ChardevID != "" {
		if err := vm.detachDoorbell(ctx, DoorbellAttachment{ChardevID: a.ChardevID, DevID: a.DevID, Bus: a.Bus}); err != nil {
			return fmt.Errorf("zc: detach doorbell %s (chardev %s) from vm %s: %w", a.DevID, a.ChardevID, vm.name, err)
		}
		return nil
	}
	if err := vm.detach(ctx, a); err != nil {
		return fmt.Errorf("zc: detach region %s (%s) from vm %s: %w", a.Path, a.DevID, vm.name, err)
	}
	return nil
}

func (vm *VM) detach(ctx context.Context, a Attachment) error {
	ctx, cancel := detachDeadline(ctx)
	defer cancel()
	if _, err := vm.unplug(ctx, a.DevID); err != nil {
		return err
	}
	if err := vm.execute(ctx, "object-del", map[string]any{"id": a.MemID}, nil); err != nil {
		return fmt.Errorf("remove memory backend %s: %w", a.MemID, err)
	}
	if a.ByFD {
		vm.attachMu.Lock()
		vm.sweepFDs(ctx)
		vm.attachMu.Unlock()
	}
	return nil
}

// detachDeadline gives ctx DefaultDetachTimeout unless it has a deadline.
func detachDeadline(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, DefaultDetachTimeout)
}

// unplug sends device_del for dev and waits for DEVICE_DELETED. A device
// already gone (a retried detach after a timeout) counts as unplugged,
// and gone says so.
func (vm *VM) unplug(ctx context.Context, dev string) (gone bool, err error) {
	deleted, unregister := vm.expectDeleted(dev)
	defer unregister()
	err = vm.execute(ctx, "device_del", map[string]any{"id": dev}, nil)
	switch {
	case err == nil, isUnplugPending(err):
		return false, vm.waitDeleted(ctx, deleted)
	case errors.Is(err, ErrDeviceNotFound):
		return true, nil
	}
	return false, err
}

// isUnplugPending reports QEMU's refusal of a second device_del while the
// first is still waiting for the guest.
func isUnplugPending(err error) bool {
	var qe *Error
	return errors.As(err, &qe) && qe.Class == "GenericError" && strings.Contains(qe.Desc, "in the process of unplug")
}

func (vm *VM) waitDeleted(ctx context.Context, deleted <-chan struct{}) error {
	select {
	case <-deleted:
		return nil
	case <-vm.evDone:
		return fmt.Errorf("waiting for DEVICE_DELETED: %w", ErrClosed)
	case <-ctx.Done():
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return ErrDetachTimeout
		}
		return ctx.Err()
	}
}

// testPauseAfterObjectAdd is a test hook, for the vmtest that kills an
// agent between object-add and device_add (TestDaemonOrphanMemdev): when
// the environment variable ZC_TEST_PAUSE_AFTER_OBJECT_ADD names a file,
// it creates that file and sleeps 60 s, leaving a memory backend that no
// device uses yet. Nothing sets the variable outside that test.
func testPauseAfterObjectAdd() {
	p := os.Getenv("ZC_TEST_PAUSE_AFTER_OBJECT_ADD")
	if p == "" {
		return
	}
	if f, err := os.Create(p); err == nil {
		f.Close()
	}
	time.Sleep(60 * time.Second)
}
