package afpacket

import (
	"sync/atomic"
	"unsafe"
)

// statusWord returns the 4-byte status word at b[off:] for atomic access.
// The kernel aligns block and frame headers to at least 8 bytes (blocks on
// pages, TX frames on TPACKET_ALIGNMENT), so the word is 4-byte aligned.
func statusWord(b []byte, off int) *atomic.Uint32 {
	_ = b[off+3] // bounds check
	return (*atomic.Uint32)(unsafe.Pointer(&b[off]))
}
