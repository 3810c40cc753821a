package ivshmem

import (
	"testing"
	"unsafe"
)

func u64bytes(w []uint64) []byte {
	if len(w) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&w[0])), 8*len(w))
}

// TestRingSideSize checks that a ring end fills whole cache lines: the
// producer's and the consumer's ends of one queue, when one process holds
// both (two goroutines), are separate allocations of that size class, and
// a line shared between them would bounce between the CPUs every burst.
func TestRingSideSize(t *testing.T) {
	if n := unsafe.Sizeof(RingProducer{}); n%64 != 0 {
		t.Fatalf("RingProducer is %d bytes, not a multiple of 64: pad ringSide", n)
	}
}
