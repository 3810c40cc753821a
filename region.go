package zc

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/zcfabric/zc/ivshmem"
)

// region is one mapped, validated cluster region shared by the queues a
// process attached to it. The layout is the validated copy: nothing in it
// is re-read from shared memory.
type region struct {
	m     *ivshmem.Mapping
	b     []byte
	l     ivshmem.Layout
	bufs  []byte // l.BufferArea(b): buffer h is bufs[h*BufSize:][:BufSize]
	side  ivshmem.Side
	owner ivshmem.Owner

	mu    sync.Mutex
	refs  int
	ended bool   // the last reference went: unmapped, no queue attaches again
	onEnd func() // called when the last reference goes

	// ringGuest wakes the guests asleep on their ivshmem doorbells: the
	// functions this process's doorbell servers registered
	// (Cluster.OnGuestWake), one per export; nil when it serves none.
	// prods are the rings this process's host ends produce: their
	// rings word says whether ringGuest is set (setRings). Both under mu.
	ringGuest atomic.Pointer[[]func()]
	ringers   []*func()
	prods     map[*ivshmem.RingProducer]struct{}
	// waker answers guests that ring this process's doorbell servers
	// (Cluster.WakeDoorbellSleepers), under wakerMu.
	wakerMu sync.Mutex
	waker   *ivshmem.DoorbellWaker
	// bell is a guest's doorbell, opened on first use (bellOnce); bellErr
	// says why it cannot wait for interrupts (nil bell: why there is none).
	bellOnce sync.Once
	bell     bellDevice
	bellErr  error
}

// bellDevice is a guest's ivshmem doorbell (guest.Doorbell): it waits for
// the host's interrupt and rings the host.
type bellDevice interface {
	Wait(ctx context.Context) (uint64, error)
	Ring(peer, vector uint16)
	Close() error
}

func newRegion(m *ivshmem.Mapping, l ivshmem.Layout, side ivshmem.Side) *region {
	o := ivshmem.Owner{Side: side, PID: uint32(os.Getpid()), Tag: ownerTag(side)}
	return &region{m: m, b: m.Bytes, l: l, bufs: l.BufferArea(m.Bytes), side: side, refs: 1, owner: o}
}

// initPIDNS is the kernel's initial pid namespace, as /proc/self/ns/pid
// names it (PROC_PID_INIT_INO, fixed since Linux 3.8).
const initPIDNS = "pid:[4026531836]"

// procPlace is where this process runs, for its owner tags.
type procPlace struct {
	initNS bool   // in its kernel's initial pid namespace
	nsIno  uint64 // else its pid namespace's inode number (0: unknown)
	boot   uint32 // its kernel's boot tag (ivshmem.BootTag), or TagNone
}

var place = sync.OnceValue(func() procPlace {
	var p procPlace
	ns, err := os.Readlink("/proc/self/ns/pid")
	p.initNS = err == nil && ns == initPIDNS
	if err == nil && !p.initNS {
		fmt.Sscanf(ns, "pid:[%d]", &p.nsIno)
	}
	if b, err := os.ReadFile("/proc/sys/kernel/random/boot_id"); err == nil {
		p.boot = ivshmem.BootTag(strings.TrimSpace(string(b)))
	}
	return p
})

// ownerTag is the tag of this process's claims on side (ivshmem.Owner): on
// the host, TagNone in the initial pid namespace, else its namespace's
// NSTag; in a guest, its kernel's boot tag (TagNone when its boot id
// cannot be read), TagNested outside the initial pid namespace.
func ownerTag(side ivshmem.Side) uint32 {
	p := place()
	switch {
	case side == ivshmem.SideHost && p.initNS:
		return ivshmem.TagNone
	case side == ivshmem.SideHost && p.nsIno != 0:
		return ivshmem.NSTag(p.nsIno)
	case !p.initNS:
		return ivshmem.TagNested
	}
	return p.boot
}

// ref takes a reference to the mapping for a queue attached to it; false
// once the last reference went and the region is unmapped (or going).
func (r *region) ref() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ended {
		return false
	}
	r.refs++
	return true
}

func (r *region) unref() error {
	r.mu.Lock()
	r.refs--
	last := r.refs == 0
	if last {
		r.ended = true
	}
	r.mu.Unlock()
	if !last {
		return nil
	}
	if r.onEnd != nil {
		r.onEnd()
	}
	if r.bell != nil {
		r.bell.Close()
	}
	return r.m.Close()
}

// buffer returns buffer h's bytes; h < NumBufs is checked by the caller.
func (r *region) buffer(h uint32) []byte {
	off := uint64(h) * uint64(r.l.BufSize)
	return r.bufs[off : off+uint64(r.l.BufSize) : off+uint64(r.l.BufSize)]
}

func (r *region) meta(h uint32) []byte { return r.l.Meta(r.b, h) }

// hasMeta reports whether p carries optional fields, which travel in its
// buffer's metadata record (length, offset and flags are in the ring's
// descriptor).
func hasMeta(p *Packet) bool { return p.Timestamp != 0 || p.Hash != 0 || p.Port != 0 || p.Seq != 0 }

// writeMeta records p's optional fields in its buffer's metadata record,
// when it has any.
func (r *region) writeMeta(p *Packet) {
	if !hasMeta(p) {
		return
	}
	r.writeMetaFields(p.handle, &Meta{Timestamp: p.Timestamp, Hash: p.Hash, Port: p.Port, Seq: p.Seq})
}

// writeMetaFields writes buffer h's metadata record.
func (r *region) writeMetaFields(h uint32, f *Meta) {
	m := r.meta(h)
	le := binary.LittleEndian
	le.PutUint64(m[ivshmem.MetaOffTime:], uint64(f.Timestamp))
	le.PutUint32(m[ivshmem.MetaOffHash:], f.Hash)
	le.PutUint32(m[ivshmem.MetaOffPort:], f.Port)
	le.PutUint32(m[ivshmem.MetaOffSeq:], f.Seq)
}

// readMeta fills p's optional fields from buffer h's metadata record.
func (r *region) readMeta(h uint32, p *Packet) {
	m := r.meta(h)
	le := binary.LittleEndian
	p.Timestamp = int64(le.Uint64(m[ivshmem.MetaOffTime:]))
	p.Hash = le.Uint32(m[ivshmem.MetaOffHash:])
	p.Port = le.Uint32(m[ivshmem.MetaOffPort:])
	p.Seq = le.Uint32(m[ivshmem.MetaOffSeq:])
}

// claim takes one end of queue q for this process. A holder this process
// can tell is gone (stale), or any holder with force, is replaced, and
// replaced says so.
func (r *region) claim(q uint32, e ivshmem.End, force bool) (replaced bool, err error) {
	stale := func(o ivshmem.Owner) bool { return force || r.stale(o) }
	replaced, err = r.l.Claim(r.b, q, e, r.owner, stale)
	if err != nil {
		if o := r.l.QueueOwner(r.b, q, e); errors.Is(err, ErrBusy) && !force && o.Side != 0 && !r.canJudge(o) {
			err = fmt.Errorf("%w (%s; if it is gone, attaching with force, zcount --force, takes the end over)", err, r.cannotJudge(o))
		}
		return false, fmt.Errorf("zc: attach cluster %d queue %d as %s: %w", r.l.ClusterID, q, e, err)
	}
	return replaced, nil
}

// stale reports whether owner o of a queue end is gone, as far as this
// process can tell (ivshmem/doc.go, Ownership): a host process judges
// host owners of its own pid namespace by their pid, and from the
// initial namespace those of any tagged namespace (gone with its
// namespace, or when no process there has that pid); a guest process
// judges the owners of its own kernel in a region only its VM maps
// (ivshmem.GuestOwnerGone).
func (r *region) stale(o ivshmem.Owner) bool {
	switch {
	case !r.canJudge(o):
		return false
	case r.side == ivshmem.SideGuest:
		_, gone := ivshmem.GuestOwnerGone(r.owner.Tag, o, processAlive)
		return gone
	case o.Tag == r.owner.Tag:
		return !processAlive(o.PID)
	}
	return !nestedAlive(ivshmem.NSInode(o.Tag), o.PID)
}

// canJudge reports whether this process can tell if owner o is alive.
func (r *region) canJudge(o ivshmem.Owner) bool {
	switch {
	case o.Side != r.side:
		return false
	case r.side == ivshmem.SideHost:
		// Same namespace, or the initial one, which sees every other.
		return o.Tag != ivshmem.TagNested && (o.Tag == r.owner.Tag || r.owner.Tag == ivshmem.TagNone)
	case r.l.Flags&ivshmem.FlagOneVM == 0:
		return false
	}
	return ivshmem.GuestTagsJudged(r.owner.Tag, o.Tag)
}

// cannotJudge says why owner o, refused by canJudge, cannot be judged.
func (r *region) cannotJudge(o ivshmem.Owner) string {
	switch {
	case o.Side == ivshmem.SideGuest && r.side == ivshmem.SideHost:
		return "a process in a guest: the host cannot see whether it runs"
	case o.Side == ivshmem.SideHost && r.side == ivshmem.SideGuest:
		return "a host process: a guest cannot see whether it runs"
	case o.Side != ivshmem.SideGuest && o.Side != ivshmem.SideHost:
		return fmt.Sprintf("an owner of unknown side %d", o.Side)
	case o.Side == ivshmem.SideHost && r.owner.Tag != ivshmem.TagNone:
		return "this process runs in a container (a pid namespace of its own), that process outside it: it cannot tell whether it runs"
	case o.Side == ivshmem.SideHost:
		return "it runs in a container whose pid namespace has no tag: this process cannot tell whether it runs"
	case r.owner.Tag == ivshmem.TagNested:
		return "this process runs in a container of the guest (a nested pid namespace): it cannot tell whether that process runs"
	case r.l.Flags&ivshmem.FlagOneVM == 0:
		return "other VMs may map this region too: this guest cannot tell whether that process runs"
	case r.owner.Tag == ivshmem.TagNone:
		return "this guest's boot id cannot be read: this process cannot tell whether that process runs"
	case o.Tag == ivshmem.TagNested:
		return "it runs in a container of the guest (a nested pid namespace): its pid means nothing here"
	default:
		return "it carries no boot tag (a zcfabric binary from before tags): this process cannot tell whether it runs"
	}
}

func (r *region) unclaim(q uint32, e ivshmem.End) { r.l.Unclaim(r.b, q, e, r.owner) }

// openRegion maps and validates the host region of cluster id.
func openRegion(id uint32) (*region, error) {
	path := RegionPath(id)
	m, err := ivshmem.Map(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("zc: attach cluster %d: %w (no %s; is zchost running with -c %d?)", id, ErrNotFound, path, id)
		}
		return nil, fmt.Errorf("zc: attach cluster %d: %w", id, err)
	}
	r, err := validate(m, id, ivshmem.SideHost)
	if err != nil {
		m.Close()
		return nil, err
	}
	return r, nil
}

// validate parses a mapped region and checks it is cluster id, ready.
func validate(m *ivshmem.Mapping, id uint32, side ivshmem.Side) (*region, error) {
	var l ivshmem.Layout
	var err error
	if ferr := protect(func() { l, err = ivshmem.Parse(m.Bytes) }); ferr != nil {
		err = ferr
	}
	if err != nil {
		return nil, fmt.Errorf("zc: attach cluster %d (%s): %w", id, m.Path, err)
	}
	if l.ClusterID != id {
		return nil, fmt.Errorf("zc: attach cluster %d (%s): %w: region is cluster %d", id, m.Path, ErrBadRegion, l.ClusterID)
	}
	if ferr := protect(func() { err = l.Check(m.Bytes) }); ferr != nil {
		err = ferr
	}
	if err != nil {
		return nil, fmt.Errorf("zc: attach cluster %d (%s): %w", id, m.Path, err)
	}
	return newRegion(m, l, side), nil
}
