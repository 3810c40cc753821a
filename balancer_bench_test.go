package zc

import (
	"context"
	"runtime"
	"testing"

	"github.com/zcfabric/zc/internal/cpuset"
)

// BenchmarkBalancer balances b.N 64-byte frames by IP pair over two
// queues: the producer (CPU 0) allocates from the engine pool, writes a
// frame and pushes bursts of 32 through a Balancer; the consumer (CPU 1)
// drains both queues and releases. The baseline in the same run hashes
// the same frames and sends their index over one of two buffered chan
// uint32. Both count every packet.
func BenchmarkBalancer(b *testing.B) {
	b.Run("balancer", benchBalancer)
	b.Run("chan", benchBalancerChan)
}

func benchBalancer(b *testing.B) {
	c := newCluster(b, Config{ID: 31, Queues: 2, QueueLen: benchQueueLen, Buffers: 2*benchQueueLen + 1024})
	must := mustQ(b)
	q0, q1 := must(c.Producer(0)), must(c.Producer(1))
	c0, c1 := must(c.Consumer(0)), must(c.Consumer(1))
	bal, err := NewBalancer([]*Queue{q0, q1}, ModeIPPair, nil, Wait)
	if err != nil {
		b.Fatal(err)
	}
	total := b.N
	cpuset.RunPair(b, "pkts/s", func() {
		pkts := make([]Packet, 32)
		for seq := 0; seq < total; {
			n := c.Pool().Alloc(pkts[:min(32, total-seq)])
			if n == 0 {
				runtime.Gosched()
				continue
			}
			for i := range pkts[:n] {
				pkts[i].Data = pkts[i].Data[:SynthFrame(pkts[i].Data, uint64(seq+i), 64, 256)]
			}
			if err := bal.Push(context.Background(), pkts[:n]); err != nil {
				b.Error(err)
				return
			}
			seq += n
		}
	}, func() {
		got := make([]Packet, 64)
		n, idle := 0, 0
		for n < total {
			k0, _ := c0.RecvBurst(got)
			c0.Release(got[:k0]...)
			k1, _ := c1.RecvBurst(got)
			c1.Release(got[:k1]...)
			n += k0 + k1
			if k0+k1 == 0 {
				if idle++; idle&127 == 0 {
					runtime.Gosched()
				}
			}
		}
	})
}

func benchBalancerChan(b *testing.B) {
	chs := [2]chan uint32{make(chan uint32, benchQueueLen), make(chan uint32, benchQueueLen)}
	total := b.N
	frame := make([]byte, 64)
	cpuset.RunPair(b, "pkts/s", func() {
		for seq := 0; seq < total; seq++ {
			p := Packet{Data: frame[:SynthFrame(frame, uint64(seq), 64, 256)]}
			chs[HashIPPair(&p)%2] <- uint32(seq)
		}
		close(chs[0])
		close(chs[1])
	}, func() {
		n := 0
		a, c := chs[0], chs[1]
		for a != nil || c != nil {
			select {
			case _, ok := <-a:
				if !ok {
					a = nil
					continue
				}
				n++
			case _, ok := <-c:
				if !ok {
					c = nil
					continue
				}
				n++
			}
		}
		if n != total {
			b.Errorf("chan got %d of %d", n, total)
		}
	})
}
