//go:build !amd64 || race

package ivshmem

import "sync/atomic"

// storeRelease publishes v at p. Outside amd64, and under the race
// detector (which must see the synchronisation), it is a sequentially
// consistent atomic store.
func storeRelease(p *uint32, v uint32) { atomic.StoreUint32(p, v) }

// ReleaseStore names the store implementation in use, for benchmarks.
const ReleaseStore = "sync/atomic"

// storeRelease64 is storeRelease for a 64-bit word.
func storeRelease64(p *uint64, v uint64) { atomic.StoreUint64(p, v) }
