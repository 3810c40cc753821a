package guest

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// VFIO constants from include/uapi/linux/vfio.h.
const (
	vfioAPIVersion    = 0
	vfioType1v2IOMMU  = 3
	vfioNoIOMMU       = 8
	vfioGroupViable   = 1 << 0
	vfioIRQDataEvent  = 1 << 2
	vfioIRQActTrigger = 1 << 5
	vfioPCIMSIXIndex  = 2
	vfioPCIReqIndex   = 4
)

// vfio is a device opened through VFIO for its interrupts only: the MSI-X
// vectors and the device request (unplug) go to eventfds. Its BARs are not
// touched through VFIO (they stay mapped through sysfs).
type vfio struct {
	container, group, dev int
	irqs                  []*os.File // eventfd per MSI-X vector
	req                   *os.File   // eventfd for the device request
	once                  sync.Once
}

// openVFIO binds d to vfio-pci (if bind) and arms its MSI-X vectors and
// device request. Errors that mean "this guest cannot do it" wrap
// ErrNoInterrupts.
func openVFIO(d Device, devDir string, bind bool) (*vfio, error) {
	if bind {
		if err := bindVFIO(d); err != nil {
			if !errors.Is(err, ErrNoInterrupts) {
				err = fmt.Errorf("%w: bind %s: %v", ErrNoInterrupts, DriverVFIO, err)
			}
			return nil, err
		}
	} else if drv := driverOf(d.Dir); drv != DriverVFIO {
		return nil, fmt.Errorf("%w: device bound to %q, not %s", ErrNoInterrupts, drv, DriverVFIO)
	}
	l, err := os.Readlink(filepath.Join(d.Dir, "iommu_group"))
	if err != nil {
		return nil, fmt.Errorf("%w: device has no IOMMU group: %v", ErrNoInterrupts, err)
	}
	group := filepath.Base(l)
	root := sysfsRoot(d.Dir)
	v := &vfio{container: -1, group: -1, dev: -1}
	fail := func(err error) (*vfio, error) {
		v.close()
		return nil, err
	}
	iommu := uintptr(vfioType1v2IOMMU)
	// In no-IOMMU mode the group node is /dev/vfio/noiommu-N.
	groupPath := filepath.Join(devDir, "vfio", group)
	classDir := filepath.Join(root, "class", "vfio", group)
	if _, err := os.Stat(filepath.Join(root, "class", "vfio", "noiommu-"+group)); err == nil {
		groupPath = filepath.Join(devDir, "vfio", "noiommu-"+group)
		classDir = filepath.Join(root, "class", "vfio", "noiommu-"+group)
		iommu = vfioNoIOMMU
	}
	ctl := filepath.Join(devDir, "vfio", "vfio")
	if err := ensureNode(ctl, filepath.Join(root, "class", "misc", "vfio", "dev")); err != nil {
		return fail(fmt.Errorf("%w: %v", ErrNoInterrupts, err))
	}
	if err := ensureNode(groupPath, filepath.Join(classDir, "dev")); err != nil {
		return fail(fmt.Errorf("%w: %v", ErrNoInterrupts, err))
	}
	if v.container, err = unix.Open(ctl, unix.O_RDWR|unix.O_CLOEXEC, 0); err != nil {
		return fail(fmt.Errorf("open %s: %w", ctl, err))
	}
	if ver, err := ioctlVal(v.container, vfioGetAPIVersion, 0); err != nil || ver != vfioAPIVersion {
		return fail(fmt.Errorf("%w: VFIO API version %d (%v), want %d", ErrNoInterrupts, ver, err, vfioAPIVersion))
	}
	if ok, err := ioctlVal(v.container, vfioCheckExtension, iommu); err != nil || ok != 1 {
		return fail(fmt.Errorf("%w: VFIO IOMMU type %d not supported (load vfio_iommu_type1): %v", ErrNoInterrupts, iommu, err))
	}
	if v.group, err = unix.Open(groupPath, unix.O_RDWR|unix.O_CLOEXEC, 0); err != nil {
		return fail(fmt.Errorf("open %s: %w", groupPath, err))
	}
	flags, err := vfioGroupStatusFlags(v.group)
	if err != nil {
		return fail(fmt.Errorf("status of %s: %w", groupPath, err))
	}
	if flags&vfioGroupViable == 0 {
		return fail(fmt.Errorf("%w: IOMMU group %s is not viable (another device of the group is bound to a host driver)", ErrNoInterrupts, group))
	}
	if err := vfioSetContainer(v.group, v.container); err != nil {
		return fail(fmt.Errorf("attach %s to the VFIO container: %w", groupPath, err))
	}
	if _, err := ioctlVal(v.container, vfioSetIOMMU, iommu); err != nil {
		return fail(fmt.Errorf("%w: set VFIO IOMMU type %d: %v", ErrNoInterrupts, iommu, err))
	}
	disableReset(d.Dir)
	if v.dev, err = vfioDeviceFD(v.group, d.Addr); err != nil {
		return fail(fmt.Errorf("open VFIO device %s: %w", d.Addr, err))
	}
	if err := v.arm(d); err != nil {
		return fail(err)
	}
	return v, nil
}

// arm routes the device's MSI-X vectors (at most 64) and its device
// request to fresh eventfds of this process, in place of any armed before
// (by the process that held the device until now, when this one took it
// over with the descriptors it was given: share.go).
func (v *vfio) arm(d Device) error {
	_, n, err := vfioIRQInfo(v.dev, vfioPCIMSIXIndex)
	if err != nil || n == 0 {
		return fmt.Errorf("%w: device has no MSI-X vectors (%v); is it an ivshmem-plain device?", ErrNoInterrupts, err)
	}
	if n > 64 {
		n = 64 // Wait reports vectors as bits of a uint64
	}
	fds := make([]int32, n)
	for i := range fds {
		f, fd, err := newEventfd("vfio-msix")
		if err != nil {
			return err
		}
		v.irqs = append(v.irqs, f)
		fds[i] = int32(fd)
	}
	if err := vfioSetIRQs(v.dev, vfioPCIMSIXIndex, vfioIRQDataEvent|vfioIRQActTrigger, fds); err != nil {
		return fmt.Errorf("arm %d MSI-X vectors: %w", n, err)
	}
	if err := setBusMaster(d.Dir); err != nil {
		return err
	}
	var reqFD int
	if v.req, reqFD, err = newEventfd("vfio-req"); err != nil {
		return err
	}
	if err := vfioSetIRQs(v.dev, vfioPCIReqIndex, vfioIRQDataEvent|vfioIRQActTrigger, []int32{int32(reqFD)}); err != nil {
		return fmt.Errorf("arm the device request: %w", err)
	}
	return nil
}

// fds returns the descriptors that keep the device open (device, group,
// container), to pass to another process.
func (v *vfio) fds() []int { return []int{v.dev, v.group, v.container} }

// disableReset turns off the resets of the device at dir. vfio-pci resets
// a device when a process opens it and when it releases it (a secondary
// bus reset, for ivshmem behind a PCIe root port), and a reset turns the
// device's BARs off for a moment: every other process of the guest that
// maps BAR2 reads zeros meanwhile and takes its region for unplugged. With
// the doorbell's interrupts passed from process to process (share.go), a
// process opens the device while others read their queues. Nothing here
// needs a reset: it writes an empty list to the device's reset_method
// (Linux >= 5.15; an older kernel has no such file and keeps resetting).
// It writes only when the list is not empty already: the kernel logs each
// write.
func disableReset(dir string) {
	path := filepath.Join(dir, "reset_method")
	if b, err := os.ReadFile(path); err != nil || len(strings.TrimSpace(string(b))) == 0 {
		return
	}
	_ = writeAttr(path, "\n")
}

// close releases the device (which disables its interrupts and lets an
// unplug complete), the group and the container. Safe to call twice.
func (v *vfio) close() {
	v.once.Do(func() {
		for _, fd := range []int{v.dev, v.group, v.container} {
			if fd >= 0 {
				unix.Close(fd)
			}
		}
		// Closing the files wakes their readers (os.ErrClosed).
		for _, f := range v.irqs {
			f.Close()
		}
		if v.req != nil {
			v.req.Close()
		}
	})
}

// newEventfd returns a non-blocking eventfd as a file the runtime poller
// watches, and its descriptor. Use the descriptor, never the file's Fd
// method, which would put it in blocking mode.
func newEventfd(name string) (*os.File, int, error) {
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, -1, fmt.Errorf("create eventfd: %w", err)
	}
	return os.NewFile(uintptr(fd), name), fd, nil
}
