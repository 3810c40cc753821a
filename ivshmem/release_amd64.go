//go:build amd64 && !race

package ivshmem

// storeRelease publishes v at p with release semantics. On amd64 (TSO) a
// plain MOV is a release store; Go's atomic.StoreUint32 compiles to XCHG, a
// full barrier that costs about 2x in a ring (measured, see
// docs/PERFORMANCE.md). The function is written in assembly so the compiler
// cannot move the stores before it past it, nor elide it.
//
//go:noescape
func storeRelease(p *uint32, v uint32)

// ReleaseStore names the store implementation in use, for benchmarks.
const ReleaseStore = "amd64 MOV"

// storeRelease64 is storeRelease for a 64-bit word (8-byte aligned).
//
//go:noescape
func storeRelease64(p *uint64, v uint64)
