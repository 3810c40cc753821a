// Package qmp hot-plugs zcfabric regions into running QEMU/KVM guests over
// the QEMU Machine Protocol.
//
// A region file (in /dev/shm, a memfd path or a hugetlbfs file) becomes BAR2
// of an ivshmem-plain PCI device in the guest in two QMP steps:
//
//	object-add  memory-backend-file  id=<mem> mem-path=<file> size=<n> share=true
//	device_add  ivshmem-plain        id=<dev> memdev=<mem> [bus=<root port>]
//
// and goes away in three:
//
//	device_del <dev>, wait for the DEVICE_DELETED event naming <dev>, object-del <mem>
//
// Lifecycle pitfalls, all measured on QEMU 7.2:
//
//   - Object ids are never reused. object-add with an id that object-del just
//     freed aborts QEMU 7.2 ("RAMBlock ... already registered"), so every
//     attachment gets fresh ids made of a prefix, the process id, a counter
//     and random bits (see [VM.AttachRegion]).
//   - The guest's sysfs entry disappears slightly before QEMU finishes the
//     unplug: object-del (and powering the guest off) must wait for
//     DEVICE_DELETED, which [VM.Detach] does.
//   - The region size must be a power of two (it becomes a PCI BAR).
//   - On q35 the device needs a free pcie-root-port whose pref64-reserve is at
//     least the region size; without it BAR2 is never assigned. AttachRegion
//     finds one, or fails with [ErrNoRootPort] telling what to add to the VM's
//     command line.
//
// The transport is the [github.com/digitalocean/go-qemu/qmp.Monitor]
// interface. [Dial] uses this package's own socket monitor, which keeps the
// QMP error class of a failed command in an [*Error] (go-qemu's SocketMonitor
// flattens it into a string) and has no 64 KiB limit on replies; [New] accepts
// any other Monitor, such as go-qemu's SocketMonitor or qmptest fakes.
// go-qemu's generated qmp/raw API predates ivshmem-plain's memdev property,
// so the few commands needed are built here by hand.
package qmp
