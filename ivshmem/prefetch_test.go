package ivshmem

import (
	"bytes"
	"testing"
)

// TestPrefetchIsOnlyAHint: PrefetchNext over a ring's wrap, asked for more
// slots than are free, and PrefetchBuffers over handles far outside any
// mapping (up to a non-canonical address) neither fault nor change a byte
// of the ring or the buffers, nor the producer's index.
func TestPrefetchIsOnlyAHint(t *testing.T) {
	const slots = 16
	db := alignedCopy(make([]byte, DescRingBytes(slots)))
	dp, err := NewDescProducer(db, 0, slots)
	if err != nil {
		t.Fatal(err)
	}
	dc, _ := NewDescConsumer(db, 0, slots)
	rb, rp, rc := newRing(t, slots)
	// Move both rings' indexes near the end, with some slots in use.
	for range 13 {
		k, _ := dp.Reserve(1)
		*dp.DescAt(0) = Desc{Handle: 7, Len: 64}
		dp.Publish(k)
		rp.Enqueue([]uint32{7})
	}
	n, _ := dc.Ready(13)
	dc.Consume(n - 3)
	rc.Dequeue(make([]uint32, 10))
	before := [][]byte{bytes.Clone(db), bytes.Clone(rb)}
	pos := []uint32{dp.pos, rp.pos}
	for _, n := range []int{0, 1, 5, slots, 1000} {
		dp.PrefetchNext(n)
		rp.PrefetchNext(n)
	}
	bufs := make([]byte, 4*2048)
	PrefetchBuffers(bufs, 2048, []uint32{0, 3, 4, 1 << 20, 0xFFFFFFFF})
	PrefetchBuffers(bufs, 1<<31, []uint32{0xFFFFFFFF}) // base + about 2^63: not even a canonical address
	PrefetchBuffers(nil, 2048, []uint32{1})
	PrefetchBuffers(bufs, 2048, nil)
	if !bytes.Equal(before[0], db) || !bytes.Equal(before[1], rb) || dp.pos != pos[0] || rp.pos != pos[1] {
		t.Fatal("a prefetch changed a ring")
	}
	for _, c := range bufs {
		if c != 0 {
			t.Fatal("a prefetch changed a buffer")
		}
	}
}
