// Package libvirt hot-plugs zcfabric regions into running libvirt-managed
// domains, through libvirt itself, so that libvirt knows the device: it is
// listed in the domain's live XML (virsh dumpxml) and removed by libvirt's
// own unplug, which also deletes QEMU's memory backend.
//
// A VM is named "libvirt:DOMAIN", "libvirt:DOMAIN@/path/to/libvirt-sock" or
// "libvirt:DOMAIN@URI" ([ParseSpec]); the default socket is
// /var/run/libvirt/libvirt-sock. The client is the pure-Go
// github.com/digitalocean/go-libvirt RPC client (no cgo: zchost stays a
// static binary).
//
// A region /dev/shm/NAME of SIZE bytes is attached ([Domain.AttachRegion])
// with virDomainAttachDeviceFlags(VIR_DOMAIN_AFFECT_LIVE) of
//
//	<shmem name='NAME'><model type='ivshmem-plain'/><size unit='B'>SIZE</size><alias name='ua-zc-...'/></shmem>
//
// and detached ([Domain.Detach]) with virDomainDetachDeviceAlias(live) of
// that alias, after which the live XML is polled until libvirt has dropped
// the device. What libvirt 9.0.0 (Debian 12) does with QEMU 7.2, measured:
//
//   - It sends exactly the QMP that host/qmp sends: object-add
//     memory-backend-file id=shmmem-ALIAS mem-path=/dev/shm/NAME size=SIZE
//     share=true, then device_add ivshmem-plain id=ALIAS memdev=shmmem-ALIAS
//     bus=pci.0 addr=SLOT; on detach device_del ALIAS, and on QEMU's
//     DEVICE_DELETED object-del shmmem-ALIAS. The region file is left in
//     place.
//   - The memory path is always /dev/shm/NAME: a region elsewhere (ZC_DIR
//     other than /dev/shm, hugetlbfs, a memfd) cannot be given through
//     libvirt ([ErrNotDevShm]).
//   - It checks neither that the file exists nor its size on hot-plug. A
//     missing file is created by QEMU (libvirt's default size is 4 MiB), a
//     size above the file's fails in QEMU ("backing store size ... does not
//     match"), a smaller one is accepted and shows the guest a truncated
//     region, and a size that is not a power of two makes QEMU 7.2 abort
//     (pci_register_bar assertion): the domain is gone. So this package
//     requires an existing file whose size is the attachment's and a power
//     of two of at least 1 MiB ([ErrNoRegion], [ErrBadSize]).
//   - Without a user alias libvirt names devices shmem0, shmem1, ... and
//     reuses a name (and so the memory-backend id) after an unplug; QEMU 7.2
//     has aborted on reused backend ids (see host/qmp), so every attachment
//     gets a fresh "ua-" alias made of the label, the process id, a counter
//     and random bits.
//   - virDomainDetachDeviceFlags with the same <shmem> XML matches on name,
//     model and size only, not the alias: with two devices on the same
//     region it removed the other one. Hence detach by alias.
//     virDomainDetachDeviceAlias returns once device_del is sent; the guest
//     acknowledges the ACPI eject (tens of ms under TCG), libvirt then removes
//     the device, which Detach waits for ([ErrDetachTimeout]).
//   - Security labels: libvirt's DAC driver gives the kernel, initrd and
//     serial log of a domain to QEMU's user (libvirt-qemu on Debian), but not
//     the shmem file: a root-owned 0640 region made object-add fail with
//     "Permission denied". AttachRegion therefore gives the file to the
//     user and group of the domain's DAC label (<seclabel model='dac'>
//     <label>+UID:+GID</label>) when that is not root. SELinux and AppArmor
//     labelling were not measured (neither is active on the build machines).
//   - The domain needs ACPI (<features><acpi/></features>) for PCI hot-plug
//     on the pc machine: without it libvirt starts QEMU with -no-acpi.
//
// A region with interrupts is attached ([Domain.AttachDoorbell]) as
//
//	<shmem name='NAME'><model type='ivshmem-doorbell'/><server path='SOCKET'/><msi vectors='1' ioeventfd='on'/><alias name='ua-zc-...'/></shmem>
//
// where SOCKET is an ivshmem server's (host/doorbell) socket. Measured on
// libvirt 9.0.0 with QEMU 7.2:
//
//   - libvirt sends chardev-add socket id=charALIAS path=SOCKET
//     server=false, then device_add ivshmem-doorbell id=ALIAS
//     chardev=charALIAS vectors=1 ioeventfd=true; on detach, after
//     DEVICE_DELETED, chardev-remove charALIAS. There is no memory
//     backend: QEMU maps the descriptor the server sends, so the region
//     need not be in /dev/shm, and NAME only labels the device.
//   - A <size> is refused ("shmem model 'ivshmem-doorbell' does not
//     support size setting"); [Domain.Regions] lists a doorbell device
//     with Size 0 and Server set.
//   - The socket is not relabelled: a root-owned 0600 socket made
//     chardev-add fail with "Permission denied" for libvirt-qemu. The
//     socket is given to the DAC user, as region files are; its folder
//     must let that user through ([Domain.QEMUOwner]).
//   - On q35 libvirt gives a <shmem> no hot-pluggable slot by itself ("No
//     more available PCI slots": it is a conventional PCI device and
//     there is no PCI bridge); an explicit address on an empty
//     pcie-root-port is accepted, so AttachDoorbell picks one. Guests take
//     the doorbell's MSI-X through vfio-pci, which needs q35 with an
//     intel-iommu doing interrupt remapping (<iommu model='intel'><driver
//     intremap='on'/></iommu> and <ioapic driver='qemu'/>).
//
// The daemon must run on the host that holds the region file: libvirt
// names a path, it does not carry memory. A URI that reaches another host
// (qemu+tcp://, qemu+ssh://) connects, but the region must be there under
// the same name.
package libvirt
