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
package guest
