package afxdp

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// umemAddr returns the address of the first byte of umem.
func umemAddr(umem []byte) uintptr { return uintptr(unsafe.Pointer(unsafe.SliceData(umem))) }

// registerUMEM issues XDP_UMEM_REG for umem, split in frameSize chunks.
func registerUMEM(fd int, umem []byte, frameSize, headroom uint32) error {
	reg := unix.XDPUmemReg{
		Addr:     uint64(umemAddr(umem)),
		Len:      uint64(len(umem)),
		Size:     frameSize,
		Headroom: headroom,
	}
	// The 32-byte struct (with tx_metadata_len, kernel 6.8) is the same
	// size as the padded 5.x one; the extra word is zero.
	return setsockopt(fd, unix.SOL_XDP, unix.XDP_UMEM_REG, unsafe.Pointer(&reg), unsafe.Sizeof(reg))
}

// mmapOffsets reads XDP_MMAP_OFFSETS.
func mmapOffsets(fd int) (unix.XDPMmapOffsets, error) {
	var off unix.XDPMmapOffsets
	n := uint32(unsafe.Sizeof(off))
	err := getsockopt(fd, unix.SOL_XDP, unix.XDP_MMAP_OFFSETS, unsafe.Pointer(&off), &n)
	if err == nil && n != uint32(unsafe.Sizeof(off)) {
		// Kernels before 5.4 had no flags word: need_wakeup unusable.
		err = unix.EOPNOTSUPP
	}
	return off, err
}

// statistics reads XDP_STATISTICS; kernels before 5.9 fill only the first
// three counters.
func statistics(fd int) (unix.XDPStatistics, error) {
	var st unix.XDPStatistics
	n := uint32(unsafe.Sizeof(st))
	err := getsockopt(fd, unix.SOL_XDP, unix.XDP_STATISTICS, unsafe.Pointer(&st), &n)
	return st, err
}

func setsockopt(fd, level, opt int, p unsafe.Pointer, n uintptr) error {
	_, _, e := unix.Syscall6(unix.SYS_SETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt), uintptr(p), n, 0)
	if e != 0 {
		return e
	}
	return nil
}

func getsockopt(fd, level, opt int, p unsafe.Pointer, n *uint32) error {
	_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt), uintptr(p), uintptr(unsafe.Pointer(n)), 0)
	if e != 0 {
		return e
	}
	return nil
}
