package ivshmem

import (
	"sync/atomic"
	"unsafe"
)

// The region is shared with other processes and guests, so its mutable
// words are read and written with atomics on naturally aligned addresses.
// Offsets passed here are constants or validated offsets, multiples of 4
// (8 for 64-bit words) from a page-aligned mapping.

func u32ptr(b []byte, off uint64) *uint32 {
	_ = b[off+3]
	return (*uint32)(unsafe.Pointer(&b[off]))
}

func u64ptr(b []byte, off uint64) *uint64 {
	_ = b[off+7]
	return (*uint64)(unsafe.Pointer(&b[off]))
}

func loadU32(b []byte, off uint64) uint32     { return atomic.LoadUint32(u32ptr(b, off)) }
func storeU32(b []byte, off uint64, v uint32) { atomic.StoreUint32(u32ptr(b, off), v) }
func loadU64(b []byte, off uint64) uint64     { return atomic.LoadUint64(u64ptr(b, off)) }

// u32slice views n 32-bit words at b[off:] (bounds checked by the slice
// expression).
func u32slice(b []byte, off uint64, n uint32) []uint32 {
	w := b[off : off+4*uint64(n)]
	return unsafe.Slice((*uint32)(unsafe.Pointer(&w[0])), n)
}

// descSlice views n descriptors at b[off:] (bounds checked by the slice
// expression; off is 16-byte aligned in a validated layout).
func descSlice(b []byte, off uint64, n uint32) []Desc {
	w := b[off : off+DescSize*uint64(n)]
	return unsafe.Slice((*Desc)(unsafe.Pointer(&w[0])), n)
}

// aligned reports whether b starts on an 8-byte boundary.
func aligned(b []byte) bool {
	return len(b) > 0 && uintptr(unsafe.Pointer(&b[0]))%8 == 0
}

func casU64(b []byte, off uint64, old, new uint64) bool {
	return atomic.CompareAndSwapUint64(u64ptr(b, off), old, new)
}

func casU32(b []byte, off uint64, old, new uint32) bool {
	return atomic.CompareAndSwapUint32(u32ptr(b, off), old, new)
}
