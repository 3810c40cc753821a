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
// Who may open the region, measured on QEMU 7.2 with QEMU as another user
// (-runas nobody):
//
//   - A region file QEMU opens itself must be open to QEMU's user. Region
//     files are 0600 (ivshmem), so AttachRegion gives the file to QEMU's uid
//     (keeping group and mode) unless QEMU runs as root, owns it, or is in its
//     group with rw. QEMU's user comes from the QMP socket: SO_PEERCRED names
//     the process, /proc/PID/status its filesystem ids ([VM.PeerCred]);
//     SO_PEERCRED's own ids are the socket creator's, uid 0 under -runas.
//   - A memfd needs no file at all. memory-backend-file opens mem-path with
//     plain open(2): "/dev/fdset/N" after add-fd fails ("can't open backing
//     store /dev/fdset/0 for guest RAM: No such file or directory"), the
//     agent's /proc/PID/fd/N is refused ("... Permission denied"), and so is
//     a getfd name (taken as a relative path). What works is add-fd with the
//     memfd over the QMP socket (SCM_RIGHTS), then mem-path=/proc/self/fd/N
//     with N the fd add-fd returned: QEMU reopens its own descriptor, which
//     a memfd (inode mode 0777) allows whatever QEMU's user. AttachRegion does
//     so for memfd regions and then remove-fd; QEMU keeps the memory backend's
//     own descriptor. The same path does not help a 0600 tmpfs file (the
//     reopen checks the inode: "Permission denied"). A memfd's seals
//     (F_SEAL_SHRINK|F_SEAL_GROW) bind QEMU too: it cannot truncate the
//     region under the agent, which a file owner can.
//   - QEMU closes a removed fd set only while the VM runs: after remove-fd on
//     a paused VM the set stays (query-fdsets lists it) until a remove-fd of
//     it while running. AttachRegion and Detach sweep such sets of theirs.
//
// The transport is the [github.com/digitalocean/go-qemu/qmp.Monitor]
// interface. [Dial] uses this package's own socket monitor, which keeps the
// QMP error class of a failed command in an [*Error] (go-qemu's SocketMonitor
// flattens it into a string) and has no 64 KiB limit on replies; [New] accepts
// any other Monitor, such as go-qemu's SocketMonitor or qmptest fakes.
// go-qemu's generated qmp/raw API predates ivshmem-plain's memdev property,
// so the few commands needed are built here by hand.
//
// # Doorbells
//
// [VM.AttachDoorbell] plugs an ivshmem-doorbell device rather than an
// ivshmem-plain one, so that the host can wake a guest reader that sleeps
// on an empty queue and the guest can wake a sleeping host consumer (a
// write to a BAR0 register). Its memory and eventfds come from the agent's
// ivshmem server (package host/doorbell), not from a memory backend:
//
//	chardev-add socket           id=<chr> path=<server socket> server=off
//	device_add  ivshmem-doorbell id=<dev> chardev=<chr> vectors=<n> [bus=<root port>]
//
// QEMU reads the region's descriptor from the server inside device_add.
// Unplug is device_del, DEVICE_DELETED, chardev-remove ([VM.DetachDoorbell];
// [VM.Detach] does the same for a doorbell [VM.Regions] listed). On QEMU 7.2
// the device interrupts its guest through MSI-X only, never INTx, so the
// guest cannot use uio_pci_generic: it binds the device to the in-tree
// vfio-pci driver (package guest), which needs an IOMMU group, i.e. a q35
// VM started with -device intel-iommu,intremap=on (under KVM also -machine
// kernel-irqchip=split). Without it the guest can ring the host but cannot
// be woken: it polls. An agent restart needs no re-plug: the new server
// takes QEMU's eventfds back (host/doorbell's Recover); if it cannot, the
// guest polls until the doorbell is plugged again.
package qmp
