package ivshmem

import "fmt"

// Owner words record who holds each end of a queue, so that a second
// producer or consumer is refused (the rings are single-producer,
// single-consumer). A word holds Side<<32 | Tag<<22 | pid, or 0 when
// free. The tag says where the pid means something: for a guest owner,
// which boot of its kernel it ran in (BootTag), or that it ran in a
// nested pid namespace (TagNested); for a host owner, which nested pid
// namespace it ran in (NSTag), or TagNone for the initial one. With it a
// process can tell a claim left by a dead process (or by an earlier boot,
// or by a container that is gone) from a live one (ivshmem/doc.go,
// Ownership). Readers from before the tag see a larger pid there, nothing
// else: the side is unchanged.

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

// Owner tags besides boot tags and namespace tags (1..TagNested-1), in
// the 10 bits above the pid.
const (
	// TagNone: no tag. A host owner in the initial pid namespace, a
	// binary from before tags, or a guest process that could not read
	// its boot id. A guest owner without a tag is never judged.
	TagNone = 0
	// TagNested: a guest process outside its kernel's initial pid
	// namespace (a container in the guest), or a host process in a
	// nested namespace whose number does not fit a tag. Never judged:
	// its pid means nothing to the others.
	TagNested = 1<<(32-PIDBits) - 1
)

// Owner is the decoded content of an owner word.
type Owner struct {
	Side Side
	PID  uint32 // below 1<<PIDBits
	Tag  uint32 // TagNone, TagNested, a guest's BootTag or a host NSTag
}

// Token encodes o as an owner word.
func (o Owner) Token() uint64 {
	return uint64(o.Side)<<32 | uint64(o.Tag&TagNested)<<PIDBits | uint64(o.PID&(1<<PIDBits-1))
}

// String names the owner for messages: "pid 812" or "guest pid 812".
func (o Owner) String() string {
	if o.Side == SideGuest {
		return fmt.Sprintf("guest pid %d", o.PID)
	}
	return fmt.Sprintf("pid %d", o.PID)
}

func decodeOwner(v uint64) Owner {
	return Owner{Side: Side(v >> 32), PID: uint32(v) & (1<<PIDBits - 1), Tag: uint32(v) >> PIDBits}
}

// BootTag returns the boot tag of a kernel whose boot id
// (/proc/sys/kernel/random/boot_id, trimmed) is id: 1..TagNested-1, or
// TagNone for an empty id. It is FNV-1a (32-bit) of the id, folded: two
// boots share a tag with a chance of 1 in 1022. pcapshim computes the
// same.
func BootTag(id string) uint32 {
	if id == "" {
		return TagNone
	}
	h := uint32(2166136261)
	for i := 0; i < len(id); i++ {
		h ^= uint32(id[i])
		h *= 16777619
	}
	return 1 + h%(TagNested-1)
}

// GuestOwnerGone says what a guest process tagged mine (its BootTag) can
// tell of guest owner o in a region only its VM maps (FlagOneVM): known
// is false when it cannot judge (either tag is TagNone or TagNested);
// else gone is true for another boot's claim, or for one of this boot
// whose pid alive says is not running. The caller must run in its
// kernel's initial pid namespace, as mine says.
func GuestOwnerGone(mine uint32, o Owner, alive func(pid uint32) bool) (known, gone bool) {
	if !GuestTagsJudged(mine, o.Tag) {
		return false, false
	}
	if o.Tag != mine {
		return true, true
	}
	return true, !alive(o.PID)
}

// GuestTagsJudged reports whether a guest process tagged mine can judge a
// guest owner tagged tag at all: both carry a boot tag (GuestOwnerGone).
func GuestTagsJudged(mine, tag uint32) bool {
	return mine != TagNone && mine != TagNested && tag != TagNone && tag != TagNested
}

// nsFirst is the first inode number Linux gives namespaces (nsfs inodes
// come from the kernel's proc inode allocator, PROC_DYNAMIC_FIRST, the
// smallest free number first; the initial pid namespace has a fixed one
// below it).
const nsFirst = 0xF0000000

// NSTag returns the tag of a host process in the pid namespace whose
// inode number is ino (as /proc/self/ns/pid says "pid:[ino]"): one more
// than its number among namespaces, 1..TagNested-1, or TagNested when it
// does not fit. Two live namespaces never share a number; a number is
// reused only once its namespace is gone, and with it all its processes.
func NSTag(ino uint64) uint32 {
	if ino < nsFirst || ino-nsFirst >= TagNested-1 {
		return TagNested
	}
	return uint32(ino-nsFirst) + 1
}

// NSInode returns the inode number of the pid namespace NSTag(ino) ==
// tag names (tag in 1..TagNested-1).
func NSInode(tag uint32) uint64 { return nsFirst + uint64(tag) - 1 }

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
