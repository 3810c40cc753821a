// Package guest finds zcfabric regions from inside a KVM/QEMU guest, with no
// kernel module.
//
// The host hot-plugs a region as an ivshmem-plain PCI device (vendor 0x1af4,
// device 0x1110); its BAR2 is the region's bytes. [Find] lists such devices
// under a sysfs root, [Device.Map] maps BAR2 through sysfs's resource2 file
// (open O_RDWR|O_SYNC, mmap MAP_SHARED), and [Wait] blocks until a device a
// caller wants appears, for guests that start before the host plugs their
// region.
//
// Lifecycle pitfalls:
//
//   - A device appears in sysfs before its BAR is assigned; Wait only
//     returns devices whose resource2 exists with a non-zero size.
//   - After the host unplugs a device that is still mapped, the mapping
//     keeps working but reads zeros: it does not fault. Users must notice
//     (the header magic turns to zeros, [Gone] reports true, or the control
//     channel says so) and stop reading.
//
// The sysfs root is a parameter ("" means /sys) so tests can point it at a
// fake tree of regular files, which Map maps like the real thing.
//
// # Doorbell
//
// A region may come as an ivshmem-doorbell device instead (same PCI ids),
// whose memory and eventfds the host agent's ivshmem server hands QEMU
// (package host/doorbell). It is there so that a reader that found its
// queue empty can sleep rather than poll, woken by the host, and so that
// the guest can wake a sleeping host consumer. [OpenDoorbell] maps BAR0
// through sysfs's resource0 (no driver needed): [Doorbell.Ring] writes its
// Doorbell register to interrupt the host. [Doorbell.Wait] sleeps until
// the device interrupts the guest. QEMU 7.2's ivshmem-doorbell interrupts
// through MSI-X only (no INTx), so uio_pci_generic, an INTx-only driver,
// cannot take it; OpenDoorbell binds the device to the in-tree vfio-pci
// driver instead, which takes only devices in an IOMMU group: the VM must
// be q35 with -device intel-iommu,intremap=on (under KVM also -machine
// kernel-irqchip=split), with the VFIO modules loaded in the guest (or
// the guest kernel has VFIO's no-IOMMU mode, which Debian's lack).
// Otherwise Wait returns [ErrNoInterrupts] at once, saying why (as
// [Doorbell.Interrupts] does), and the caller polls the queue as with
// ivshmem-plain; Ring still works. BAR2 is mapped with [Device.Map]
// whichever driver is bound.
//
// VFIO lets one process at a time hold a device, and a guest often runs a
// reader per queue. The first process to open the doorbell holds its
// interrupts and passes each one on to the guest's other processes that
// open it, over an abstract unix socket named after the device (an
// eventfd each, sent with SCM_RIGHTS; share.go), together with its VFIO
// descriptors, which they keep; when it closes the doorbell or exits, one
// of them takes the interrupts over with those descriptors and the others
// follow it. So every reader of the device sleeps, and each interrupt
// wakes each of them once (they look at their own queues). The device
// stays open while any process of the guest uses it: when its last holder
// closes it, vfio-pci disables it (memory decoding off) and, its function
// resets being off, tries a reset of the bus below its port, which turns
// BAR2 off for a while (long enough for a process polling it in a one-vCPU
// guest to see it) under the other readers, who would take their regions for
// unplugged. Before it first opens the device, a process turns the
// device's function resets off (its reset_method), which vfio-pci would
// do on each open and close. The libpcap shim subscribes too and keeps
// the descriptors; holding the device alone, it lends them to the next
// reader of this package that opens the doorbell, which takes the
// interrupts over with them (share.go).
//
// An unplug ends a blocked Wait with [ErrDoorbellGone]. A restart of the
// host agent changes nothing here: the new agent takes QEMU's eventfds back
// (host/doorbell's Recover), and the same device and Doorbell go on
// working. Where it cannot, interrupts just stop coming until the agent
// re-plugs the device, so a reader bounds each [Doorbell.Wait] (its ctx)
// and then looks at the queue again.
package guest
