package guest

import (
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// This file holds what the doorbell needs unsafe for: single 32-bit MMIO
// accesses to BAR0, and the VFIO ioctls that take pointers to structs.

// store32 writes v to the 32-bit register at off of an MMIO mapping in one
// 4-byte store (QEMU's ivshmem registers take 4-byte accesses only; a
// byte-wise write would ring four times).
func store32(b []byte, off int, v uint32) {
	_ = b[off+3]
	atomic.StoreUint32((*uint32)(unsafe.Pointer(&b[off])), v)
}

// load32 reads the 32-bit register at off of an MMIO mapping in one load.
func load32(b []byte, off int) uint32 {
	_ = b[off+3]
	return atomic.LoadUint32((*uint32)(unsafe.Pointer(&b[off])))
}

// VFIO ioctl numbers: _IO(VFIO_TYPE ';', VFIO_BASE 100 + n), from
// include/uapi/linux/vfio.h. _IO encodes no size or direction.
const (
	vfioGetAPIVersion    = 0x3b00 + 100
	vfioCheckExtension   = 0x3b00 + 101
	vfioSetIOMMU         = 0x3b00 + 102
	vfioGroupGetStatus   = 0x3b00 + 103
	vfioGroupSetContainr = 0x3b00 + 104
	vfioGroupGetDeviceFD = 0x3b00 + 106
	vfioDeviceGetIRQInfo = 0x3b00 + 109
	vfioDeviceSetIRQs    = 0x3b00 + 110
)

// ioctlPtr calls ioctl(fd, req, p) and returns its result.
func ioctlPtr(fd int, req uintptr, p unsafe.Pointer) (int, error) {
	r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(p))
	if errno != 0 {
		return int(r), errno
	}
	return int(r), nil
}

// ioctlVal calls ioctl(fd, req, v) with a plain integer argument.
func ioctlVal(fd int, req, v uintptr) (int, error) {
	r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, v)
	if errno != 0 {
		return int(r), errno
	}
	return int(r), nil
}

// vfioGroupStatus returns struct vfio_group_status's flags.
func vfioGroupStatusFlags(group int) (uint32, error) {
	st := struct{ argsz, flags uint32 }{argsz: 8}
	_, err := ioctlPtr(group, vfioGroupGetStatus, unsafe.Pointer(&st))
	return st.flags, err
}

// vfioSetContainer attaches group to container.
func vfioSetContainer(group, container int) error {
	fd := int32(container)
	_, err := ioctlPtr(group, vfioGroupSetContainr, unsafe.Pointer(&fd))
	return err
}

// vfioDeviceFD opens the device called name (its PCI address) in group.
func vfioDeviceFD(group int, name string) (int, error) {
	p, err := unix.BytePtrFromString(name)
	if err != nil {
		return -1, err
	}
	return ioctlPtr(group, vfioGroupGetDeviceFD, unsafe.Pointer(p))
}

// vfioIRQInfo returns the flags and count of the device's IRQ index.
func vfioIRQInfo(dev int, index uint32) (flags, count uint32, err error) {
	info := struct{ argsz, flags, index, count uint32 }{argsz: 16, index: index}
	_, err = ioctlPtr(dev, vfioDeviceGetIRQInfo, unsafe.Pointer(&info))
	return info.flags, info.count, err
}

// vfioSetIRQs sends struct vfio_irq_set for index with fds as its eventfd
// data (one per vector from 0), or with no data when fds is empty.
func vfioSetIRQs(dev int, index, flags uint32, fds []int32) error {
	const head = 20 // argsz, flags, index, start, count: five u32
	buf := make([]uint32, head/4+len(fds))
	buf[0] = uint32(head + 4*len(fds))
	buf[1] = flags
	buf[2] = index
	buf[3] = 0
	buf[4] = uint32(len(fds))
	for i, fd := range fds {
		buf[head/4+i] = uint32(fd)
	}
	_, err := ioctlPtr(dev, vfioDeviceSetIRQs, unsafe.Pointer(&buf[0]))
	return err
}
