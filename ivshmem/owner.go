package ivshmem

import "fmt"

// Owner words record who holds each end of a queue, so that a second
// producer or consumer is refused (the rings are single-producer,
// single-consumer). A word holds Side<<32 | pid, or 0 when free.

// Side says where an owner runs.
type Side uint32

// Sides of an owner.
const (
	SideHost  Side = 1
	SideGuest Side = 2
)

// End names one end of a queue.
type End int

// Ends of a queue.
const (
	EndProducer End = iota
	EndConsumer
)

// String names the end: "producer" or "consumer".
func (e End) String() string {
	if e == EndProducer {
		return "producer"
	}
	return "consumer"
}

// Owner is the decoded content of an owner word.
type Owner struct {
	Side Side
	PID  uint32
}

// Token encodes o as an owner word.
func (o Owner) Token() uint64 { return uint64(o.Side)<<32 | uint64(o.PID) }

func ownerOff(l *Layout, q uint32, e End) uint64 {
	off := l.QueueTable + uint64(q)*QueueDescSize + qOffProducer
	if e == EndConsumer {
		off = l.QueueTable + uint64(q)*QueueDescSize + qOffConsumer
	}
	return off
}

// QueueOwner returns the current owner of end e of queue q.
func (l *Layout) QueueOwner(b []byte, q uint32, e End) Owner {
	v := loadU64(b, ownerOff(l, q, e))
	return Owner{Side: Side(v >> 32), PID: uint32(v)}
}

// Claim takes end e of queue q for o. If the end is held, stale (a
// function that reports whether the holder is gone; nil means never) is
// asked, and a stale holder is replaced: replaced then says so. It
// returns ErrBusy otherwise.
func (l *Layout) Claim(b []byte, q uint32, e End, o Owner, stale func(Owner) bool) (replaced bool, err error) {
	if q >= uint32(len(l.Queues)) {
		return false, fmt.Errorf("%w: queue %d of %d", ErrConfig, q, len(l.Queues))
	}
	off := ownerOff(l, q, e)
	for range 8 {
		cur := loadU64(b, off)
		if cur != 0 {
			h := Owner{Side: Side(cur >> 32), PID: uint32(cur)}
			if stale == nil || !stale(h) {
				return false, fmt.Errorf("%w: %s of queue %d held by pid %d", ErrBusy, e, q, h.PID)
			}
		}
		if casU64(b, off, cur, o.Token()) {
			return cur != 0, nil
		}
	}
	return false, fmt.Errorf("%w: %s of queue %d: claim contended", ErrBusy, e, q)
}

// Unclaim frees end e of queue q if o holds it.
func (l *Layout) Unclaim(b []byte, q uint32, e End, o Owner) {
	if q < uint32(len(l.Queues)) {
		casU64(b, ownerOff(l, q, e), o.Token(), 0)
	}
}

// Handshake states, in the low two bits of a queue's handshake word; the
// rest is the consumer attach epoch. See the package doc.
const (
	HSGo        = 0 // the consumer reads (no recovery pending)
	HSWait      = 1 // a new consumer waits for the producer
	HSRecover   = 2 // the producer is taking back a dead consumer's buffers
	HSDone      = 3 // the producer finished; the consumer reads
	HSStateMask = 3 // the state bits of a handshake word
)

func hsOff(l *Layout, q uint32) uint64 { return l.QueueTable + uint64(q)*QueueDescSize + qOffHandshake }

// Handshake loads queue q's handshake word.
func (l *Layout) Handshake(b []byte, q uint32) uint32 { return loadU32(b, hsOff(l, q)) }

// SetHandshake stores queue q's handshake word.
func (l *Layout) SetHandshake(b []byte, q uint32, v uint32) { storeU32(b, hsOff(l, q), v) }

// CASHandshake swaps queue q's handshake word from old to new.
func (l *Layout) CASHandshake(b []byte, q uint32, old, new uint32) bool {
	return casU32(b, hsOff(l, q), old, new)
}
