package main

import (
	"sync/atomic"
	"unsafe"
)

// word returns the 8-byte word at off of the shared memory.
func word(b []byte, off int) *atomic.Uint64 { return (*atomic.Uint64)(unsafe.Pointer(&b[off])) }
