package afxdp

import (
	"fmt"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// mapRing mmaps one ring of fd at page offset pgoff, laid out as off says
// with size entries of entSize bytes, and fills in r's shared words.
func mapRing(r *ring, fd int, pgoff int64, off unix.XDPRingOffset, size, entSize uint32) (unsafe.Pointer, error) {
	length := int(off.Desc) + int(size)*int(entSize)
	mem, err := unix.Mmap(fd, pgoff, length, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return nil, fmt.Errorf("mmap ring at %#x: %w", pgoff, err)
	}
	// The kernel places the words on their own cache lines, so 4-byte
	// alignment (required by sync/atomic) holds.
	r.mem = mem
	r.prod = (*atomic.Uint32)(unsafe.Pointer(&mem[off.Producer]))
	r.cons = (*atomic.Uint32)(unsafe.Pointer(&mem[off.Consumer]))
	r.flags = (*atomic.Uint32)(unsafe.Pointer(&mem[off.Flags]))
	r.size, r.mask = size, size-1
	return unsafe.Pointer(&mem[off.Desc]), nil
}

// mapAddrRing maps the fill or completion ring.
func mapAddrRing(r *addrRing, fd int, pgoff int64, off unix.XDPRingOffset, size uint32) error {
	p, err := mapRing(&r.ring, fd, pgoff, off, size, 8)
	if err != nil {
		return err
	}
	r.addrs = unsafe.Slice((*uint64)(p), size)
	return nil
}

// mapDescRing maps the RX or TX ring.
func mapDescRing(r *descRing, fd int, pgoff int64, off unix.XDPRingOffset, size uint32) error {
	p, err := mapRing(&r.ring, fd, pgoff, off, size, uint32(unsafe.Sizeof(unix.XDPDesc{})))
	if err != nil {
		return err
	}
	r.descs = unsafe.Slice((*unix.XDPDesc)(p), size)
	return nil
}
