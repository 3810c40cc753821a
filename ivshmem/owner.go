package ivshmem

import "fmt"

// Owner words record who holds each end of a queue, so that a second
// producer or consumer is refused (the rings are single-producer,
// single-consumer). A word holds Side<<32 | Boot<<22 | pid, or 0 when
// free. Boot is 0 for a host owner; a guest owner's is its boot's tag
// (BootTag), so that a process of the same guest can tell a claim left by
// one of its own dead processes (or by an earlier boot) from a live one.
// Readers from before the boot tag see a larger pid there, nothing else:
// the side is unchanged.

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

// PIDBits is how many low bits of an owner word hold the pid: Linux pids
// stay below 1<<22 (PID_MAX_LIMIT).
const PIDBits = 22

// MaxBootTag is the largest boot tag (10 bits above the pid).
const MaxBootTag = 1<<(32-PIDBits) - 1

// Owner is the decoded content of an owner word.
type Owner struct {
	Side Side
	PID  uint32 // below 1<<PIDBits
	Boot uint32 // a guest's BootTag; 0 for a host owner or unknown
}

// Token encodes o as an owner word.
func (o Owner) Token() uint64 {
	return uint64(o.Side)<<32 | uint64(o.Boot&MaxBootTag)<<PIDBits | uint64(o.PID&(1<<PIDBits-1))
}

// String names the owner for messages: "pid 812" or "guest pid 812".
func (o Owner) String() string {
	if o.Side == SideGuest {
		return fmt.Sprintf("guest pid %d", o.PID)
	}
	return fmt.Sprintf("pid %d", o.PID)
}

func decodeOwner(v uint64) Owner {
	return Owner{Side: Side(v >> 32), PID: uint32(v) & (1<<PIDBits - 1), Boot: uint32(v) >> PIDBits}
}

// BootTag returns the boot tag of a kernel whose boot id
// (/proc/sys/kernel/random/boot_id, trimmed) is id: 1..MaxBootTag, or 0
// for an empty id. It is FNV-1a (32-bit) of the id, folded: two boots
// share a tag with a chance of 1 in 1023. pcapshim computes the same.
func BootTag(id string) uint32 {
	if id == "" {
		return 0
	}
	h := uint32(2166136261)
	for i := 0; i < len(id); i++ {
		h ^= uint32(id[i])
		h *= 16777619
	}
	return 1 + h%MaxBootTag
}

func ownerOff(l *Layout, q uint32, e End) uint64 {
	off := l.QueueTable + uint64(q)*QueueDescSize + qOffProducer
	if e == EndConsumer {
		off = l.QueueTable + uint64(q)*QueueDescSize + qOffConsumer
	}
	return off
}

// QueueOwner returns the current owner of end e of queue q.
func (l *Layout) QueueOwner(b []byte, q uint32, e End) Owner {
	return decodeOwner(loadU64(b, ownerOff(l, q, e)))
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
			h := decodeOwner(cur)
			if stale == nil || !stale(h) {
				return false, fmt.Errorf("%w: %s of queue %d held by %s", ErrBusy, e, q, h)
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
