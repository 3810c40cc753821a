//go:build !amd64

package ivshmem

// prefetchW is a hint that does nothing outside amd64.
func prefetchW(p *uint32, n int) {}

// PrefetchBuffers is a hint that does nothing outside amd64.
func PrefetchBuffers(bufs []byte, size uint32, hs []uint32) {}
