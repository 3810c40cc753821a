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
// asked, and a stale holder is replaced. It returns ErrBusy otherwise.
func (l *Layout) Claim(b []byte, q uint32, e End, o Owner, stale func(Owner) bool) error {
	if q >= uint32(len(l.Queues)) {
		return fmt.Errorf("%w: queue %d of %d", ErrConfig, q, len(l.Queues))
	}
	off := ownerOff(l, q, e)
	for range 8 {
		cur := loadU64(b, off)
		if cur != 0 {
			h := Owner{Side: Side(cur >> 32), PID: uint32(cur)}
			if h == o || stale == nil || !stale(h) {
				return fmt.Errorf("%w: %s of queue %d held by pid %d", ErrBusy, e, q, h.PID)
			}
		}
		if casU64(b, off, cur, o.Token()) {
			return nil
		}
	}
	return fmt.Errorf("%w: %s of queue %d: claim contended", ErrBusy, e, q)
}

// Unclaim frees end e of queue q if o holds it.
func (l *Layout) Unclaim(b []byte, q uint32, e End, o Owner) {
	if q < uint32(len(l.Queues)) {
		casU64(b, ownerOff(l, q, e), o.Token(), 0)
	}
}
