// Package doorbell is the agent's ivshmem server: it gives QEMU's
// ivshmem-doorbell device a region's memory and the eventfds through which
// a guest and the host wake each other, with no kernel module in the guest.
//
// # One server per region
//
// The protocol hands every client of a server the same memory, and a
// zcfabric VM gets a region of its own, so the agent runs one [Server] per
// VM region: its socket (e.g. <state_dir>/vm1.bell), the region's memfd
// ([Config.Memory]) and usually one client, that VM's QEMU. A second client
// appears only for a moment (a re-plug while the old device goes away) or
// by choice ([Config.Mesh]). The agent is itself a peer, the host peer, id
// [HostID] (0), with eventfds of its own; clients get ids from 1 up.
//
// # The protocol as implemented
//
// QEMU's docs/specs/ivshmem-spec.rst defines it. The connection is one-way:
// the server sends 8-byte little-endian signed numbers, some with one
// descriptor attached (SCM_RIGHTS). On connect a client gets, in order:
//
//	0                  the protocol version ([ProtocolVersion])
//	ID                 its peer id (1..65535), no descriptor
//	-1  + memory fd    the shared memory (the region)
//	0   + eventfd      × Vectors: the host peer's eventfds, vector 0..N-1;
//	                   the client rings the host by writing them
//	P   + eventfd      × Vectors, for each other client P (Mesh only)
//	ID  + eventfd      × Vectors: its own eventfds; a write on one becomes
//	                   an interrupt in its guest
//
// Later, with Mesh only: "P + eventfd" × Vectors when client P connects,
// "P" alone when it leaves. Without Mesh a client sees the host peer and
// itself only, so a guest can interrupt the host and nobody else (fault
// isolation: one guest cannot storm another with interrupts). Anything a
// client sends ends it (descriptors it sends are discarded by the kernel,
// unread).
//
// On the host side, [Server.Notify] writes a client's eventfd (QEMU raises
// the interrupt) and [Server.WaitHost] blocks on the host peer's eventfd
// for a vector, returning the rings counted since the last wait: a ring is
// never lost, it is counted. [Server.HostFD] exposes that eventfd for
// callers that poll many. Notify allocates nothing.
//
// # What QEMU 7.2 does, measured
//
//   - device_add reads the version, the id and the memory synchronously,
//     inside QEMU's main loop. If the connection is closed before QEMU has
//     read them, QEMU spins forever (main loop at 100% CPU, QMP
//     unanswered): it retries reads that return 0 on end-of-file, and once
//     its chardev noticed the hang-up (between chardev-add and device_add)
//     every read returns 0. So the server never hangs up on a client
//     first: one it will not serve (over [Config.MaxClients], ids
//     exhausted, memory of a size that is not a power of two, server
//     closing) gets [RefuseVersion] instead of the version, which fails
//     device_add cleanly, and the connection stays open until the client
//     hangs up or [RefuseLinger] passes. An agent that dies between
//     chardev-add and device_add still freezes that QEMU; the attach does
//     the two back to back.
//   - Ids only go up, never reused within a server's life, nor across
//     [Recover]: QEMU frees a departed peer's eventfd array and would write
//     into the freed memory if the same id connected again.
//   - The memory's size must be a power of two (it becomes BAR2; QEMU
//     aborts otherwise): checked at Listen and before each handshake.
//   - ivshmem-doorbell interrupts its guest through MSI-X only: QEMU 7.2 has
//     no msi=off (the legacy "ivshmem" device, which had it, is gone from
//     7.2's device list), the device's Interrupt Pin is 0 and INTx is never raised. So
//     uio_pci_generic, an INTx-only driver, binds but read() on /dev/uioN
//     fails at once with EIO. The module-free driver that takes MSI-X is
//     vfio-pci, which needs the device in an IOMMU group: a VM with a
//     virtual IOMMU (q35, -device intel-iommu,intremap=on; under KVM also
//     -machine kernel-irqchip=split), or a guest kernel with VFIO's
//     no-IOMMU mode (not Debian's). package guest does this
//     (guest.OpenDoorbell). A guest without it cannot be woken; it polls.
//   - QEMU drops a notification while the guest has MSI-X disabled, and an
//     MSI-X message is a memory write by the device, dropped while its Bus
//     Master bit is off (vfio-pci leaves that bit to its user).
//   - Ringing needs no driver at all: a guest maps BAR0 through sysfs's
//     resource0 and writes peer<<16|vector to the Doorbell register at
//     offset 12. BAR2 stays mappable through resource2 whichever driver is
//     bound.
//
// # Restarts (issue 9)
//
// The spec's trap: "There is no way for the clients to connect to a
// restarted server", and the device cannot tell its guest that the server
// is gone. The decision:
//
//  1. The doorbell is an add-on to the memory path, never a condition of
//     it: a guest that has no interrupts (guest.ErrNoInterrupts) polls,
//     and a guest that sleeps bounds its sleep, so a doorbell that stopped
//     ringing makes it slower, never stuck.
//  2. A restarted agent takes the doorbell over without a re-plug, using
//     what outlives it: QEMU keeps every eventfd it was given, the host
//     peer's included. The running agent saves [Server.State] (numbers
//     only: the eventfd-ids /proc/PID/fdinfo shows, QEMU's pid and start
//     time, the next id) in its state directory whenever a client
//     connects. The new agent calls [Recover], which finds those eventfds
//     among QEMU's descriptors and copies them with pidfd_getfd(2): the
//     guest's rings reach the new agent (those made while it was down are
//     counted, not lost) and its Notify reaches the guest, on the same
//     device. The recovered QEMU has no connection any more, which costs
//     nothing with one client per server; the new server listens again for
//     new clients, with ids after the saved ones. vmtest's TestDoorbell
//     does this against a real QEMU. It needs Linux with pidfd_getfd (5.6)
//     and eventfd-id in fdinfo, and ptrace access to QEMU (root or
//     CAP_SYS_PTRACE).
//  3. When Recover cannot take a VM over (no saved state, QEMU not
//     inspectable, an old kernel; it returns [ErrNotRecovered] for it), the
//     guest keeps its memory and device and goes on by polling (1) until
//     the agent re-plugs that VM's doorbell and region.
//
// Handing the listening socket and the connections to the successor
// through a keeper of descriptors (systemd's file descriptor store) was the
// alternative: it keeps the connections too, but ties the agent to systemd
// or a helper process, and the descriptors must be stored before the
// crash; 2 needs only numbers written to a file.
package doorbell
