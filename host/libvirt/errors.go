package libvirt

import (
	"errors"

	golibvirt "github.com/digitalocean/go-libvirt"
)

// Sentinel errors callers branch on.
var (
	// ErrBadSpec means a VM name is not of the form libvirt:DOMAIN or
	// libvirt:DOMAIN@TARGET (see [ParseSpec]).
	ErrBadSpec = errors.New("bad libvirt domain name")
	// ErrNoDomain means libvirt knows no domain of that name (libvirt's
	// VIR_ERR_NO_DOMAIN).
	ErrNoDomain = errors.New("no such libvirt domain")
	// ErrNotDevShm means the region file is not directly in /dev/shm:
	// libvirt's <shmem name='N'> always maps /dev/shm/N, so a region on
	// hugetlbfs, a memfd, or under a ZC_DIR other than /dev/shm cannot be
	// given to a libvirt domain.
	ErrNotDevShm = errors.New("libvirt maps only files directly in /dev/shm")
	// ErrBadSize means the region size is not a power of two of at least 1
	// MiB, or does not match the file. QEMU 7.2 aborts (an assertion in
	// pci_register_bar) on a BAR that is not a power of two, and libvirt 9.0
	// does not check this on hot-plug, so it is checked here.
	ErrBadSize = errors.New("bad region size for an ivshmem BAR")
	// ErrNoRegion means the region file does not exist. QEMU would create
	// an empty one of libvirt's default size (4 MiB) instead of failing.
	ErrNoRegion = errors.New("region file not found")
	// ErrDetachTimeout means the device was still in the domain's live XML
	// when the wait ended, usually because the guest ignored the ACPI eject
	// request. libvirt keeps the removal pending; Detach may be called
	// again.
	ErrDetachTimeout = errors.New("timed out waiting for libvirt to remove the device")
)

// isNoDomain reports libvirt's VIR_ERR_NO_DOMAIN.
func isNoDomain(err error) bool {
	var e golibvirt.Error
	return errors.As(err, &e) && e.Code == uint32(golibvirt.ErrNoDomain)
}
