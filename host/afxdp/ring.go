package afxdp

import (
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// ring is the user side of one of the four AF_XDP rings, mapped from the
// socket. The kernel and this process share the producer and consumer words;
// each side writes only its own word and caches the other's, re-reading it
// only when the cached value says the ring is empty (consumer) or full
// (producer).
//
// Ordering: a producer writes the entries, then publishes them with a Store
// to the producer word; the consumer Loads the producer word before reading
// the entries. A consumer reads the entries, then Stores the consumer word;
// the producer Loads it before overwriting those slots. Go's atomic Load and
// Store are sequentially consistent, at least the acquire/release pairs the
// kernel's smp_load_acquire/smp_store_release expect.
type ring struct {
	prod  *atomic.Uint32
	cons  *atomic.Uint32
	flags *atomic.Uint32
	mask  uint32
	size  uint32
	// cachedProd and cachedCons are this side's view: for a producer ring
	// cachedProd is our own producer index and cachedCons the kernel's
	// consumer index plus size (so cachedCons-cachedProd is free space);
	// for a consumer ring cachedCons is ours and cachedProd the kernel's.
	cachedProd uint32
	cachedCons uint32
	mem        []byte // the mapping, for munmap
}

// free returns how many entries a producer can write now, re-reading the
// kernel's consumer word only when fewer than want are known to be free.
func (r *ring) free(want uint32) uint32 {
	n := r.cachedCons - r.cachedProd
	if n >= want {
		return n
	}
	r.cachedCons = r.cons.Load() + r.size
	return r.cachedCons - r.cachedProd
}

// avail returns how many entries a consumer can read now, at most want,
// re-reading the kernel's producer word only when the cached view is empty.
func (r *ring) avail(want uint32) uint32 {
	n := r.cachedProd - r.cachedCons
	if n == 0 {
		r.cachedProd = r.prod.Load()
		n = r.cachedProd - r.cachedCons
	}
	return min(n, want)
}

// produce publishes n entries written at cachedProd..cachedProd+n-1.
func (r *ring) produce(n uint32) {
	r.cachedProd += n
	r.prod.Store(r.cachedProd)
}

// consume releases n entries read at cachedCons..cachedCons+n-1.
func (r *ring) consume(n uint32) {
	r.cachedCons += n
	r.cons.Store(r.cachedCons)
}

// needWakeup reports whether the kernel asked to be kicked (only set when
// the socket was bound with XDP_USE_NEED_WAKEUP).
func (r *ring) needWakeup() bool {
	return r.flags.Load()&unix.XDP_RING_NEED_WAKEUP != 0
}

// pending returns how many produced entries the kernel has not consumed.
func (r *ring) pending() uint32 { return r.cachedProd - r.cons.Load() }

// addrRing is the fill or completion ring: entries are UMEM addresses.
type addrRing struct {
	ring
	addrs []uint64
}

// descRing is the RX or TX ring: entries are descriptors.
type descRing struct {
	ring
	descs []unix.XDPDesc
}
