package zc

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/zcfabric/zc/internal/cpuset"
	"github.com/zcfabric/zc/ivshmem"
	"golang.org/x/sys/unix"
)

// benchQueueLen is the queue length of the benchmarks (the default), and
// the capacity of the channel baseline.
const benchQueueLen = 4096

// benchBursts are the burst sizes every benchmark runs.
var benchBursts = []int{1, 8, 32}

// BenchmarkQueue moves b.N 64-byte packets through one queue between two
// goroutines pinned to CPU 0 (producer: Alloc, write, SendBurst) and CPU
// 1 (consumer: RecvBurst, read, Release), in bursts of 1, 8 and 32. The
// baseline, run beside each burst size, is a buffered chan uint32 of the
// same capacity moving the same count, one value per operation. Both
// consumers check every sequence number. pkts/s is b.N over the wall time
// of the whole transfer.
//
// meta-only is the queue with nobody touching the packet bytes: the
// sequence number travels in the metadata record (Packet.Seq), so the
// difference to queue is the cost of moving the packets' cache lines
// between the CPUs.
func BenchmarkQueue(b *testing.B) {
	for _, burst := range benchBursts {
		b.Run(strconv.Itoa(burst), func(b *testing.B) {
			b.Run("queue", func(b *testing.B) { benchQueue(b, burst, true) })
			b.Run("burst", func(b *testing.B) { benchQueueBurst(b, burst) })
			b.Run("meta-only", func(b *testing.B) { benchQueue(b, burst, false) })
			b.Run("bare", func(b *testing.B) { benchBare(b, burst) })
			b.Run("floor-producer", func(b *testing.B) { benchFloorProducer(b, burst) })
			b.Run("floor-consumer", func(b *testing.B) { benchFloorConsumer(b, burst) })
			b.Run("chan", benchChan)
		})
	}
}

// benchBare is the floor of this queue's shape on this machine: the same
// exchange as benchQueue (a 64-byte packet written by the producer and
// read by the consumer, its 16-byte descriptor through the data ring, its
// handle back through the return ring, buffers reused from a LIFO free
// list) over the same region's rings, with none of the queue's work
// around it: no loan or held bitmaps, no checks of what the peer wrote,
// no counters, no wake-up, no fault guard. What queue adds to it is the
// price of the queue's promises.
func benchBare(b *testing.B, burst int) {
	q := newBareQueue(b, 53)
	total := uint32(b.N)
	var cerr error
	cpuset.RunPair(b, "pkts/s", func() {
		bareProduce(q.r, q.out, q.ret, q.free, total, burst)
	}, func() {
		cerr = bareConsume(q.r, q.in, q.back, total, burst)
	})
	if cerr != nil {
		b.Fatal(cerr)
	}
}

// bareQueue is the floor's exchange over queue 0 of a new cluster: both
// ends of its rings, with no Queue on either, and a free list of as many
// buffers as the queue has slots.
type bareQueue struct {
	r         *region
	out, back *ivshmem.RingProducer
	in, ret   *ivshmem.RingConsumer
	free      []uint32
}

func newBareQueue(b *testing.B, id uint32) *bareQueue {
	c := newCluster(b, Config{ID: id, QueueLen: benchQueueLen})
	r, ql := c.r, c.r.l.Queues[0]
	q := &bareQueue{r: r, free: make([]uint32, 0, ql.Slots)}
	var errs [4]error
	q.out, errs[0] = ivshmem.NewDescProducer(r.b, ql.DataRing, ql.Slots)
	q.in, errs[1] = ivshmem.NewDescConsumer(r.b, ql.DataRing, ql.Slots)
	q.back, errs[2] = ivshmem.NewRingProducer(r.b, ql.RetRing, ql.Slots)
	q.ret, errs[3] = ivshmem.NewRingConsumer(r.b, ql.RetRing, ql.Slots)
	if err := errors.Join(errs[:]...); err != nil {
		b.Fatal(err)
	}
	for h := range ql.Slots {
		q.free = append(q.free, ql.Slots-1-h)
	}
	return q
}

// bareProduce is the floor's producer: total packets numbered in their
// first four bytes, in bursts, through out, buffers taken from free (a
// LIFO stack of at most the ring's size, so that the return ring always
// has room) and taken back from ret only when free runs short, as
// Pool.Alloc does.
func bareProduce(r *region, out *ivshmem.RingProducer, ret *ivshmem.RingConsumer, free []uint32, total uint32, burst int) {
	idle := 0
	for seq := uint32(0); seq < total; {
		if len(free) < burst {
			n, _ := ret.Ready(MaxBurst)
			for i := range n {
				free = append(free, ret.HandleAt(i))
			}
			ret.Consume(n)
		}
		k, _ := out.Reserve(min(burst, len(free), int(total-seq)))
		if k == 0 {
			cpuset.Spin(&idle)
			continue
		}
		for i := range k {
			h := free[len(free)-1-i]
			binary.LittleEndian.PutUint32(r.buffer(h), seq+uint32(i))
			*out.DescAt(i) = ivshmem.Desc{Handle: h, Len: 64}
		}
		free = free[:len(free)-k]
		out.Publish(k)
		seq += uint32(k)
	}
}

// bareConsume is the floor's consumer: it reads total packets from in,
// checks each number, and returns each handle through back.
func bareConsume(r *region, in *ivshmem.RingConsumer, back *ivshmem.RingProducer, total uint32, burst int) (err error) {
	idle := 0
	for next := uint32(0); next < total; {
		n, _ := in.Ready(burst)
		if n == 0 {
			cpuset.Spin(&idle)
			continue
		}
		back.Reserve(n) // the return ring has a slot for every buffer
		for i := range n {
			d := in.DescAt(i)
			if s := binary.LittleEndian.Uint32(r.buffer(d.Handle)[d.Off : d.Off+d.Len]); s != next && err == nil {
				err = fmt.Errorf("got packet %d, want %d", s, next)
			}
			next++
			back.SetHandle(i, d.Handle)
		}
		in.Consume(n)
		back.Publish(n)
	}
	return err
}

// benchFloorProducer is the floor's producer (bareProduce) in front of the
// queue's consumer (RecvBurst, read, Release): the most any producer can
// get out of this consumer. benchFloorConsumer is the queue's fast
// producer (Reserve/Commit) in front of the floor's consumer. Between
// them they say which end holds the queue back from its floor.
func benchFloorProducer(b *testing.B, burst int) {
	c := newCluster(b, Config{ID: 54, QueueLen: benchQueueLen})
	prod := mustQ(b)(c.Producer(0))
	cons := mustQ(b)(c.Consumer(0))
	free := make([]uint32, prod.Slots()) // no more than the return ring holds
	if n := prod.Pool().Handles(free); n != len(free) {
		b.Fatalf("pool gave %d of %d buffers", n, len(free))
	}
	total := uint32(b.N)
	var cerr error
	cpuset.RunPair(b, "pkts/s", func() {
		bareProduce(c.r, prod.out, prod.ret, free, total, burst)
	}, func() {
		cerr = consume64(cons, total, burst, true)
	})
	if cerr != nil {
		b.Fatal(cerr)
	}
}

func benchFloorConsumer(b *testing.B, burst int) {
	c := newCluster(b, Config{ID: 55, QueueLen: benchQueueLen})
	prod := mustQ(b)(c.Producer(0))
	cons := mustQ(b)(c.Consumer(0))
	total := uint32(b.N)
	var perr, cerr error
	var failed atomic.Bool
	cpuset.RunPair(b, "pkts/s", func() {
		perr = produce64Burst(prod, total, burst, failed.Load)
	}, func() {
		cerr = bareConsume(c.r, cons.in, cons.back, total, burst)
		failed.Store(cerr != nil)
	})
	if perr != nil || cerr != nil {
		b.Fatalf("producer: %v; consumer: %v", perr, cerr)
	}
}

// produce64 sends total 64-byte packets numbered 0..total-1 (little-endian
// in the first four bytes, or with !touch in Packet.Seq: the metadata
// record, which format v2 writes only for packets that carry such a field) in bursts,
// spinning while the queue is full. It gives up when stop reports true
// (checked while spinning).
func produce64(q *Queue, total uint32, burst int, touch bool, stop func() bool) error {
	pkts := make([]Packet, burst)
	idle := 0
	for seq := uint32(0); seq < total; {
		n, err := q.Alloc(pkts[:min(uint32(burst), total-seq)])
		if err != nil {
			return err
		}
		for i := range pkts[:n] {
			pkts[i].Data = pkts[i].Data[:64]
			if touch {
				binary.LittleEndian.PutUint32(pkts[i].Data, seq+uint32(i))
			} else {
				pkts[i].Seq = seq + uint32(i)
			}
		}
		for sent := 0; sent < n; {
			k, err := q.SendBurst(pkts[sent:n])
			if err != nil {
				return err
			}
			sent += k
			if k == 0 {
				cpuset.Spin(&idle)
				if idle&(1<<14-1) == 0 && stop() {
					return fmt.Errorf("stopped at packet %d", seq+uint32(sent))
				}
			}
		}
		if n == 0 {
			cpuset.Spin(&idle)
		}
		seq += uint32(n)
	}
	return nil
}

// produce64Burst is produce64 through the producer's fast path
// (Reserve, write in place, Commit), numbers in the packets' bytes.
func produce64Burst(q *Queue, total uint32, burst int, stop func() bool) error {
	var bu Burst
	idle := 0
	for seq := uint32(0); seq < total; {
		n, err := q.Reserve(&bu, min(burst, int(total-seq)))
		if err != nil {
			return err
		}
		if n == 0 {
			cpuset.Spin(&idle)
			if idle&(1<<14-1) == 0 && stop() {
				return fmt.Errorf("stopped at packet %d", seq)
			}
			continue
		}
		for i := range n {
			binary.LittleEndian.PutUint32(bu.Buf(i), seq+uint32(i))
			bu.SetLen(i, 64)
		}
		if k, err := q.Commit(&bu, n); err != nil || k != n {
			return fmt.Errorf("commit %d: %d, %v", n, k, err)
		}
		seq += uint32(n)
	}
	return nil
}

func benchQueue(b *testing.B, burst int, touch bool) {
	benchQueueWith(b, burst, touch, func(prod *Queue, total uint32, stop func() bool) error {
		return produce64(prod, total, burst, touch, stop)
	})
}

// benchQueueBurst is benchQueue with the producer on Reserve/Commit.
func benchQueueBurst(b *testing.B, burst int) {
	benchQueueWith(b, burst, true, func(prod *Queue, total uint32, stop func() bool) error {
		return produce64Burst(prod, total, burst, stop)
	})
}

func benchQueueWith(b *testing.B, burst int, touch bool, produce func(prod *Queue, total uint32, stop func() bool) error) {
	c := newCluster(b, Config{ID: 51, QueueLen: benchQueueLen})
	prod := mustQ(b)(c.Producer(0))
	cons := mustQ(b)(c.Consumer(0))
	total := uint32(b.N)
	var perr, cerr error
	var failed atomic.Bool // the consumer gave up: stop the producer
	cpuset.RunPair(b, "pkts/s", func() {
		perr = produce(prod, total, failed.Load)
	}, func() {
		cerr = consume64(cons, total, burst, touch)
		failed.Store(cerr != nil)
	})
	if perr != nil || cerr != nil {
		b.Fatalf("producer: %v; consumer: %v", perr, cerr)
	}
}

// consume64 receives total packets in bursts (RecvBurst, read, Release)
// and checks that they come numbered 0..total-1: in their first four
// bytes, or with !touch in Packet.Seq.
func consume64(cons *Queue, total uint32, burst int, touch bool) error {
	got := make([]Packet, burst)
	idle := 0
	for next := uint32(0); next < total; {
		n, err := cons.RecvBurst(got)
		if err != nil {
			return err
		}
		if n == 0 {
			cpuset.Spin(&idle)
			continue
		}
		for i := range got[:n] {
			s := got[i].Seq
			if touch {
				s = binary.LittleEndian.Uint32(got[i].Data)
			}
			if s != next {
				return fmt.Errorf("got packet %d, want %d", s, next)
			}
			next++
		}
		if err := cons.Release(got[:n]...); err != nil {
			return err
		}
	}
	return nil
}

func benchChan(b *testing.B) {
	ch := make(chan uint32, benchQueueLen)
	total := uint32(b.N)
	var cerr error
	cpuset.RunPair(b, "pkts/s", func() {
		for seq := range total {
			ch <- seq
		}
	}, func() {
		for next := range total {
			if s := <-ch; s != next && cerr == nil {
				cerr = fmt.Errorf("got %d, want %d", s, next)
			}
		}
	})
	if cerr != nil {
		b.Fatal(cerr)
	}
}

// BenchmarkTwoProc moves b.N 64-byte packets from this process to a child
// process (the test binary re-executed, see TestHelperProcess), producer
// pinned to CPU 0 here and consumer pinned to CPU 1 there, in bursts of
// 1, 8 and 32:
//
//   - queue:  through a cluster region on /dev/shm; the child attaches
//     zc:52@0 by name;
//   - socket: the baseline, the same records through a unix stream
//     socketpair, burst×64 bytes per write, read with io.ReadFull.
//
// Both children check every sequence number. The timer starts once the
// child is attached and stops when it has reported its count, so child
// start-up is excluded and the drain of the last packets included.
func BenchmarkTwoProc(b *testing.B) {
	for _, burst := range benchBursts {
		b.Run(strconv.Itoa(burst), func(b *testing.B) {
			b.Run("queue", func(b *testing.B) { benchTwoProcQueue(b, burst, false) })
			b.Run("burst", func(b *testing.B) { benchTwoProcQueue(b, burst, true) })
			b.Run("socket", func(b *testing.B) { benchTwoProcSocket(b, burst) })
		})
	}
}

func helperEnv(b *testing.B, burst int) []string {
	return []string{envCount + "=" + strconv.Itoa(b.N), envBurst + "=" + strconv.Itoa(burst), envCPU + "=1"}
}

// benchTwoProcQueue: the producer on Alloc/SendBurst, or with fast on
// Reserve/Commit.
func benchTwoProcQueue(b *testing.B, burst int, fast bool) {
	c := newCluster(b, Config{ID: 52, QueueLen: benchQueueLen})
	prod := mustQ(b)(c.Producer(0))
	ch := startChild(b, "count", append(helperEnv(b, burst), envQueue+"=zc:52@0"))
	if l := ch.line(b, time.Minute); l != "ready" {
		b.Fatalf("helper said %q", l)
	}
	b.ReportAllocs()
	b.ResetTimer()
	var err error
	cpuset.Pinned(0, func() {
		if fast {
			err = produce64Burst(prod, uint32(b.N), burst, ch.exited)
		} else {
			err = produce64(prod, uint32(b.N), burst, true, ch.exited)
		}
	})
	if err != nil {
		b.Fatalf("%v\nhelper stderr:\n%s", err, ch.stderr)
	}
	res := ch.result(b, time.Minute)
	b.StopTimer()
	if res.Packets != uint64(b.N) {
		b.Fatalf("child received %d of %d", res.Packets, b.N)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pkts/s")
}

func benchTwoProcSocket(b *testing.B, burst int) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		b.Skipf("socketpair: %v", err)
	}
	mine, theirs := os.NewFile(uintptr(fds[0]), "parent"), os.NewFile(uintptr(fds[1]), "child")
	defer mine.Close()
	ch := startChild(b, "socket", helperEnv(b, burst), theirs)
	theirs.Close()
	if l := ch.line(b, time.Minute); l != "ready" {
		b.Fatalf("helper said %q", l)
	}
	buf := make([]byte, 64*burst)
	b.ReportAllocs()
	b.ResetTimer()
	cpuset.Pinned(0, func() {
		total := uint32(b.N)
		for seq := uint32(0); seq < total && err == nil; {
			k := min(uint32(burst), total-seq)
			for i := range k {
				binary.LittleEndian.PutUint32(buf[64*i:], seq+i)
			}
			_, err = mine.Write(buf[:64*k])
			seq += k
		}
	})
	if err != nil {
		b.Fatalf("write: %v\nhelper stderr:\n%s", err, ch.stderr)
	}
	res := ch.result(b, time.Minute)
	b.StopTimer()
	if res.Packets != uint64(b.N) {
		b.Fatalf("child received %d of %d", res.Packets, b.N)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pkts/s")
}

// BenchmarkQueueOneThread: the whole packet path (alloc, write 64 bytes,
// send, receive, read, release) on one goroutine, bursts of 32: the CPU
// cost per packet without the cross-core traffic of BenchmarkQueue.
func BenchmarkQueueOneThread(b *testing.B) {
	c := newCluster(b, Config{ID: 44, Queues: 1, QueueLen: 256, Buffers: 512})
	prod, _ := c.Producer(0)
	cons, _ := c.Consumer(0)
	defer prod.Close()
	defer cons.Close()
	pkts, got := make([]Packet, 32), make([]Packet, 32)
	var sum byte
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		n, _ := prod.Alloc(pkts)
		for i := range pkts[:n] {
			d := pkts[i].Data[:64]
			d[0], d[63] = byte(i), byte(i)
			pkts[i].Data = d
		}
		s, _ := prod.SendBurst(pkts[:n])
		prod.Free(pkts[s:n])
		k, _ := cons.RecvBurst(got)
		for i := range got[:k] {
			sum += got[i].Data[0] + got[i].Data[len(got[i].Data)-1]
		}
		cons.Release(got[:k]...)
	}
	b.ReportMetric(float64(b.N)*32/b.Elapsed().Seconds(), "pkts/s")
	_ = sum
}

// BenchmarkEndOneThread is the CPU cost of each end of the queue without
// the cross-core traffic: on one goroutine, bursts of 32 64-byte packets
// go round the same exchange as BenchmarkQueue/32/bare, with
//
//   - bare:     the floor's producer step and consumer step;
//   - producer: the queue's fast producer (Reserve, write, Commit) and the
//     floor's consumer step;
//   - producer-packets: the same with the Packet path (Alloc, write,
//     SendBurst);
//   - consumer: the floor's producer step and the queue's consumer
//     (RecvBurst, read, Release).
//
// What producer and consumer take over bare is that end's own work.
// ns/op is per burst. Run it pinned (taskset -c 1): one CPU is steadier
// than two on a shared machine.
func BenchmarkEndOneThread(b *testing.B) {
	setup := func(b *testing.B, id uint32) (*Cluster, *Queue, *Queue) {
		c := newCluster(b, Config{ID: id, QueueLen: benchQueueLen})
		return c, mustQ(b)(c.Producer(0)), mustQ(b)(c.Consumer(0))
	}
	done := func(b *testing.B, seq, next uint32) {
		if next != seq {
			b.Fatalf("consumed %d of %d", next, seq)
		}
		b.ReportMetric(float64(b.N)*32/b.Elapsed().Seconds(), "pkts/s")
	}
	b.Run("bare", func(b *testing.B) {
		q := newBareQueue(b, 56)
		free := q.free
		b.ReportAllocs()
		b.ResetTimer()
		seq, next := uint32(0), uint32(0)
		for range b.N {
			free, seq = bareProduceStep(q.r, q.out, q.ret, free, seq)
			next = bareConsumeStep(q.r, q.in, q.back, next)
		}
		done(b, seq, next)
	})
	b.Run("producer", func(b *testing.B) {
		c, prod, cons := setup(b, 57)
		var bu Burst
		b.ReportAllocs()
		b.ResetTimer()
		seq, next := uint32(0), uint32(0)
		for range b.N {
			n, _ := prod.Reserve(&bu, 32)
			for i := range n {
				binary.LittleEndian.PutUint32(bu.Buf(i), seq+uint32(i))
				bu.SetLen(i, 64)
			}
			k, _ := prod.Commit(&bu, n)
			seq += uint32(k)
			next = bareConsumeStep(c.r, cons.in, cons.back, next)
		}
		done(b, seq, next)
	})
	b.Run("producer-packets", func(b *testing.B) {
		c, prod, cons := setup(b, 59)
		pkts := make([]Packet, 32)
		b.ReportAllocs()
		b.ResetTimer()
		seq, next := uint32(0), uint32(0)
		for range b.N {
			n, _ := prod.Alloc(pkts)
			for i := range pkts[:n] {
				pkts[i].Data = pkts[i].Data[:64]
				binary.LittleEndian.PutUint32(pkts[i].Data, seq+uint32(i))
			}
			k, _ := prod.SendBurst(pkts[:n])
			prod.Free(pkts[k:n])
			seq += uint32(k)
			next = bareConsumeStep(c.r, cons.in, cons.back, next)
		}
		done(b, seq, next)
	})
	b.Run("consumer", func(b *testing.B) {
		c, prod, cons := setup(b, 58)
		free := make([]uint32, prod.Slots())
		free = free[:prod.Pool().Handles(free)]
		got := make([]Packet, 32)
		b.ReportAllocs()
		b.ResetTimer()
		seq, next := uint32(0), uint32(0)
		for range b.N {
			free, seq = bareProduceStep(c.r, prod.out, prod.ret, free, seq)
			n, _ := cons.RecvBurst(got)
			for i := range got[:n] {
				if binary.LittleEndian.Uint32(got[i].Data) == next {
					next++
				}
			}
			cons.Release(got[:n]...)
		}
		done(b, seq, next)
	})
}

// bareProduceStep is one burst of 32 of the floor's producer (see
// bareProduce): it returns what is left of free and the next number.
func bareProduceStep(r *region, out *ivshmem.RingProducer, ret *ivshmem.RingConsumer, free []uint32, seq uint32) ([]uint32, uint32) {
	if len(free) < 32 {
		n, _ := ret.Ready(MaxBurst)
		for i := range n {
			free = append(free, ret.HandleAt(i))
		}
		ret.Consume(n)
	}
	k, _ := out.Reserve(32)
	for i := range k {
		h := free[len(free)-1-i]
		binary.LittleEndian.PutUint32(r.buffer(h), seq+uint32(i))
		*out.DescAt(i) = ivshmem.Desc{Handle: h, Len: 64}
	}
	out.Publish(k)
	return free[:len(free)-k], seq + uint32(k)
}

// bareConsumeStep is one burst of the floor's consumer (see
// bareConsume): it counts the packets numbered in order from next and
// returns the next number expected.
func bareConsumeStep(r *region, in *ivshmem.RingConsumer, back *ivshmem.RingProducer, next uint32) uint32 {
	n, _ := in.Ready(32)
	back.Reserve(n) // the return ring has a slot for every buffer
	for i := range n {
		d := in.DescAt(i)
		if binary.LittleEndian.Uint32(r.buffer(d.Handle)[d.Off:d.Off+d.Len]) == next {
			next++
		}
		back.SetHandle(i, d.Handle)
	}
	in.Consume(n)
	back.Publish(n)
	return next
}
