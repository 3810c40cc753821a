//go:build amd64

package ivshmem

// prefetchW asks the CPU for the lines of the n bytes at p (n > 0), to
// write them: PREFETCHW, a hint that never faults.
//
//go:noescape
func prefetchW(p *uint32, n int)

// PrefetchBuffers asks the CPU for the first line of buffer h of bufs
// (size bytes each), to write it, for each h in hs: a hint for a producer
// about to write frames into them. It never faults and reads nothing the
// caller sees, so hs may hold anything.
func PrefetchBuffers(bufs []byte, size uint32, hs []uint32) {
	if len(bufs) > 0 && len(hs) > 0 {
		prefetchBuffers(&bufs[0], uint64(size), &hs[0], len(hs))
	}
}

//go:noescape
func prefetchBuffers(base *byte, size uint64, hs *uint32, n int)
