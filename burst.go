package zc

import (
	"context"
	"fmt"

	"github.com/zcfabric/zc/ivshmem"
)

// Burst is a producer's burst written in place: Queue.Reserve takes up to
// MaxBurst buffers from the queue's pool into it, the caller writes each
// frame into Buf(i) and gives its length (SetLen) and, when it has any,
// its optional fields (SetMeta), then Queue.Commit sends them together.
//
// It is the producer's fast path: the same checks, loan accounting,
// counters and wake-ups as Alloc and SendBurst, without a Packet per
// frame to fill and read back (on this machine 1.05-1.15x the packets/s of
// Alloc+SendBurst across two CPUs: docs/PERFORMANCE.md). Its records live
// in process memory; nothing the consumer writes is read back from it. A
// Burst belongs to one goroutine and is reused from burst to burst (about
// 11 KiB: allocate it once).
type Burst struct {
	q       *Queue
	n       int
	size    uint32 // buffer size of q's region
	bufs    []byte // q's region's buffers
	hs      [MaxBurst]uint32
	descs   [MaxBurst]ivshmem.Desc // handle and length of each frame, copied into the ring as they are
	metaSet [MaxBurst / 64]uint64
	meta    [MaxBurst]Meta
}

// Meta is a packet's optional fields, carried in its buffer's metadata
// record (see Packet).
type Meta struct {
	Timestamp int64
	Hash      uint32
	Port      uint32
	Seq       uint32
}

// Len returns how many buffers the burst holds (what Reserve returned).
func (b *Burst) Len() int { return b.n }

// Buf returns the whole of buffer i of the burst (i < Len), to write a
// frame into from its start.
func (b *Burst) Buf(i int) []byte {
	_ = b.hs[:b.n][i] // i < Len
	h, size := uint64(b.hs[i]), uint64(b.size)
	return b.bufs[h*size : (h+1)*size : (h+1)*size]
}

// SetLen sets the length of frame i (i < Len): the first n bytes of
// Buf(i). It panics when n is negative or longer than the buffer, as
// slicing Buf(i) to n would.
func (b *Burst) SetLen(i, n int) {
	if uint(n) > uint(b.size) {
		b.badLen(i, n)
	}
	b.descs[:b.n][i].Len = uint32(n)
}

// badLen is SetLen's panic, out of line so that SetLen inlines.
//
//go:noinline
func (b *Burst) badLen(i, n int) {
	panic(fmt.Sprintf("zc: Burst.SetLen(%d, %d): buffers are %d bytes", i, n, b.size))
}

// SetMeta gives frame i (i < Len) optional fields: they go into its
// buffer's metadata record, which the consumer reads as the Packet's
// Timestamp, Hash, Port and Seq. A frame without SetMeta has none (zero).
func (b *Burst) SetMeta(i int, m Meta) {
	b.meta[:b.n][i] = m
	b.metaSet[i/64] |= 1 << (i % 64)
}

// Reserve takes up to n (at most MaxBurst) free buffers of the producer's
// pool into b, each with a place in the queue, and returns how many (0
// when all are in flight or the queue is full: ReserveWait waits).
// Frame lengths start at 0. A reservation b still held (not committed) is
// given back to the pool first.
func (q *Queue) Reserve(b *Burst, n int) (k int, err error) {
	old := guardOn()
	defer q.guardOff(old, "reserve", &err)
	b.release()
	p := q.Pool()
	if p == nil {
		return 0, fmt.Errorf("zc: reserve on %s: %w (no pool: a consumer, or fed by a worker)", q.Name(), ErrWrongEnd)
	}
	if q.err != nil || q.closed {
		return 0, q.check("reserve")
	}
	want := n
	n = q.room(min(n, MaxBurst))
	if n == 0 && want > 0 {
		// Full: look at the region now and then (a cluster its creator
		// closed is noticed here, as by an idle consumer).
		return 0, q.check("reserve")
	}
	k = p.Handles(b.hs[:n])
	if k == 0 && n > 0 {
		p.empty++
	}
	for i, h := range b.hs[:k] {
		b.descs[i] = ivshmem.Desc{Handle: h}
	}
	b.q, b.n, b.size, b.bufs = q, k, q.r.l.BufSize, q.r.bufs
	b.metaSet = [MaxBurst / 64]uint64{}
	return k, nil
}

// ReserveWait is Reserve that waits while every buffer is in flight or
// the queue is full, as AllocWait does (asleep until the consumer returns
// buffers), and returns how many it reserved: 0 only when ctx ends (with
// its error) or the queue fails.
func (q *Queue) ReserveWait(ctx context.Context, b *Burst, n int) (int, error) {
	var bo backoff
	for {
		k, err := q.Reserve(b, n)
		if k > 0 || err != nil || n <= 0 {
			return k, err
		}
		if err := q.waitBuffers(ctx, &bo, "reserve"); err != nil {
			return 0, err
		}
	}
}

// Commit sends the first k frames of b (k <= Len) and gives the other
// buffers back to the pool; b is empty afterwards. It returns how many
// went in: all k, unless the consumer broke the ring's protocol (the rest
// are then counted as drops of this queue).
func (q *Queue) Commit(b *Burst, k int) (sent int, err error) {
	old := guardOn()
	defer q.guardOff(old, "send", &err)
	if b.q != q {
		if b.n == 0 {
			return 0, nil
		}
		return 0, fmt.Errorf("zc: commit on %s: the burst was reserved on %s", q.Name(), b.q.Name())
	}
	k = min(max(k, 0), b.n)
	if q.err != nil || q.closed {
		b.release()
		return 0, q.check("send")
	}
	q.recoverIfAsked()
	// At most the queue's room: buffers sent with SendBurst since Reserve
	// count too (the return ring holds no more than the slots).
	m, err := q.out.Reserve(q.room(k))
	if err != nil {
		b.release()
		return 0, q.fail("send", err)
	}
	// The descriptors are copied in whole (wide stores: fewer of them
	// waiting behind the ring's lines, which the consumer holds), in (at
	// most) two runs of the ring's slots.
	descs, pos, mask := q.out.DescRing()
	i := int(pos & mask)
	if n := copy(descs[i:min(i+m, int(mask)+1)], b.descs[:m]); n < m {
		copy(descs, b.descs[n:m])
	}
	bytes := lend(b.descs[:m], q.lent)
	if b.metaSet != [MaxBurst / 64]uint64{} {
		// Frames with optional fields: their records, then the flag, before
		// the index is published.
		for i := range m {
			if b.metaSet[i/64]&(1<<(i%64)) != 0 {
				q.r.writeMetaFields(b.hs[i], &b.meta[i])
				q.out.DescAt(i).Flags = ivshmem.DescMeta
			}
		}
	}
	q.publish(m, bytes)
	if m < k {
		q.countDrops(k - m)
	}
	if m < b.n {
		// The sent buffers are the consumer's now; the rest go back.
		copy(b.hs[:], b.hs[m:b.n])
		b.n -= m
		b.release()
	}
	b.n = 0
	return m, nil
}

// lend marks the handles of ds lent in the bitmap lent and returns the
// frames' bytes. The loan word of the handles at hand is kept in a
// register (acc, word w) and stored back when a handle is in another
// word: setting bits in memory chained every handle's load to the
// previous one's store. The handles are the pool's: within lent.
func lend(ds []ivshmem.Desc, lent []uint64) (bytes uint64) {
	w, acc := uint32(0), lent[0]
	for i := range ds {
		h := ds[i].Handle
		bytes += uint64(ds[i].Len)
		if h/64 != w {
			lent[w] = acc
			w = h / 64
			acc = lent[w]
		}
		acc |= 1 << (h % 64)
	}
	lent[w] = acc
	return bytes
}

// release gives the buffers b still holds back to their pool.
func (b *Burst) release() {
	if b.n == 0 || b.q == nil {
		b.n = 0
		return
	}
	if p := b.q.Pool(); p != nil {
		p.FreeHandles(b.hs[:b.n])
	}
	b.n = 0
}
