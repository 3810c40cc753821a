package ivshmem

import (
	"fmt"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/zcfabric/zc/internal/cpuset"
)

// benchSlots is the ring size of the benchmarks: the zc default queue
// length, and the buffered channel's capacity in the baseline.
const benchSlots = 4096

// BenchmarkRing moves b.N sequence-numbered handles through one ring
// between two goroutines pinned to CPU 0 (producer) and CPU 1 (consumer),
// in bursts of 1, 8 and 32. Each burst size has three sub-benchmarks run
// side by side, so their ratios are taken on the same machine state:
//
//   - ring:   the real RingProducer/RingConsumer (index published with
//     storeRelease: a plain MOV on amd64 without -race);
//   - seqcst: the same algorithm with the index published by
//     atomic.StoreUint32 (XCHG on amd64), the alternative to the release
//     store;
//   - chan:   a buffered chan uint32 of the same capacity moving the same
//     count, one handle per operation (a channel has no burst).
//
// The consumer checks every handle is the next sequence number. The
// metric handles/s is b.N over the wall time of the whole transfer.
func BenchmarkRing(b *testing.B) {
	b.Logf("release store: %s; CPUs allowed: %v", ReleaseStore, cpuset.Allowed())
	for _, burst := range []int{1, 8, 32} {
		b.Run(strconv.Itoa(burst), func(b *testing.B) {
			b.Run("ring", func(b *testing.B) {
				benchRing(b, burst, (*RingProducer).Enqueue, (*RingConsumer).Dequeue)
			})
			b.Run("seqcst", func(b *testing.B) {
				benchRing(b, burst, enqueueSeqCst, dequeueSeqCst)
			})
			b.Run("chan", func(b *testing.B) { benchChan(b) })
		})
	}
}

func benchRing(b *testing.B, burst int,
	enqueue func(*RingProducer, []uint32) (int, error),
	dequeue func(*RingConsumer, []uint32) (int, error)) {
	mem := alignedCopy(make([]byte, RingBytes(benchSlots)))
	p, err := NewRingProducer(mem, 0, benchSlots)
	if err != nil {
		b.Fatal(err)
	}
	c, err := NewRingConsumer(mem, 0, benchSlots)
	if err != nil {
		b.Fatal(err)
	}
	total := uint32(b.N)
	var perr, cerr error
	cpuset.RunPair(b, "handles/s", func() {
		hs := make([]uint32, burst)
		idle := 0
		for seq := uint32(0); seq < total; {
			k := min(uint32(burst), total-seq)
			for i := range k {
				hs[i] = seq + i
			}
			n, err := enqueue(p, hs[:k])
			if err != nil {
				perr = err
				return
			}
			if n == 0 {
				cpuset.Spin(&idle)
			}
			seq += uint32(n)
		}
	}, func() {
		hs := make([]uint32, burst)
		idle := 0
		for next := uint32(0); next < total; {
			n, err := dequeue(c, hs)
			if err != nil {
				cerr = err
				return
			}
			if n == 0 {
				cpuset.Spin(&idle)
			}
			for _, h := range hs[:n] {
				if h != next {
					cerr = fmt.Errorf("got handle %d, want %d", h, next)
					return
				}
				next++
			}
		}
	})
	if perr != nil || cerr != nil {
		b.Fatalf("producer: %v, consumer: %v", perr, cerr)
	}
}

func benchChan(b *testing.B) {
	ch := make(chan uint32, benchSlots)
	total := uint32(b.N)
	var cerr error
	cpuset.RunPair(b, "handles/s", func() {
		for seq := range total {
			ch <- seq
		}
	}, func() {
		for next := range total {
			if h := <-ch; h != next {
				cerr = fmt.Errorf("got %d, want %d", h, next)
				// Keep draining so the producer can finish.
			}
		}
	})
	if cerr != nil {
		b.Fatal(cerr)
	}
}

// enqueueSeqCst is RingProducer.Enqueue (ring.go) with the producer index
// published by atomic.StoreUint32 instead of storeRelease, for the
// comparison only. Keep it in step with ring.go.
func enqueueSeqCst(p *RingProducer, hs []uint32) (int, error) {
	free := p.cached + p.size - p.pos
	if uint32(len(hs)) > free {
		f, err := p.Free()
		if err != nil {
			return 0, err
		}
		free = f
	}
	n := min(uint32(len(hs)), free)
	if n == 0 {
		return 0, nil
	}
	i := p.pos & p.mask
	k := copy(p.slots[i:], hs[:n])
	copy(p.slots, hs[k:n])
	p.pos += n
	atomic.StoreUint32(p.mine, p.pos)
	return int(n), nil
}

// dequeueSeqCst is RingConsumer.Dequeue with atomic.StoreUint32.
func dequeueSeqCst(c *RingConsumer, hs []uint32) (int, error) {
	avail := c.cached - c.pos
	if uint32(len(hs)) > avail {
		a, err := c.Len()
		if err != nil {
			return 0, err
		}
		avail = a
	}
	n := min(uint32(len(hs)), avail)
	if n == 0 {
		return 0, nil
	}
	i := c.pos & c.mask
	k := copy(hs[:n], c.slots[i:])
	copy(hs[k:n], c.slots)
	c.pos += n
	atomic.StoreUint32(c.mine, c.pos)
	return int(n), nil
}
