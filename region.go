package zc

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"

	"github.com/zcfabric/zc/ivshmem"
)

// region is one mapped, validated cluster region shared by the queues a
// process attached to it. The layout is the validated copy: nothing in it
// is re-read from shared memory.
type region struct {
	m     *ivshmem.Mapping
	b     []byte
	l     ivshmem.Layout
	side  ivshmem.Side
	owner ivshmem.Owner

	mu    sync.Mutex
	refs  int
	onEnd func() // called when the last reference goes
}

func newRegion(m *ivshmem.Mapping, l ivshmem.Layout, side ivshmem.Side) *region {
	return &region{m: m, b: m.Bytes, l: l, side: side, refs: 1,
		owner: ivshmem.Owner{Side: side, PID: uint32(os.Getpid())}}
}

func (r *region) ref() { r.mu.Lock(); r.refs++; r.mu.Unlock() }

func (r *region) unref() error {
	r.mu.Lock()
	r.refs--
	last := r.refs == 0
	r.mu.Unlock()
	if !last {
		return nil
	}
	if r.onEnd != nil {
		r.onEnd()
	}
	return r.m.Close()
}

// buffer returns buffer h's bytes; h < NumBufs is checked by the caller.
func (r *region) buffer(h uint32) []byte { return r.l.Buffer(r.b, h) }

func (r *region) meta(h uint32) []byte { return r.l.Meta(r.b, h) }

// writeMeta records p in its buffer's metadata record.
func (r *region) writeMeta(p *Packet) {
	m := r.meta(p.handle)
	le := binary.LittleEndian
	le.PutUint32(m[ivshmem.MetaOffLen:], uint32(len(p.Data)))
	le.PutUint32(m[ivshmem.MetaOffOff:], p.off)
	le.PutUint64(m[ivshmem.MetaOffTime:], uint64(p.Timestamp))
	le.PutUint32(m[ivshmem.MetaOffHash:], p.Hash)
	le.PutUint32(m[ivshmem.MetaOffFlags:], p.Flags)
	le.PutUint32(m[ivshmem.MetaOffPort:], p.Port)
	le.PutUint32(m[ivshmem.MetaOffSeq:], p.Seq)
}

// readMeta fills p from buffer h's record, reading each field once and
// checking offset and length against the buffer size (the writer may be
// hostile). It reports false for a record that does not fit.
func (r *region) readMeta(h uint32, p *Packet) bool {
	m := r.meta(h)
	le := binary.LittleEndian
	n, off := le.Uint32(m[ivshmem.MetaOffLen:]), le.Uint32(m[ivshmem.MetaOffOff:])
	size := r.l.BufSize
	if off > size || n > size-off {
		return false
	}
	buf := r.buffer(h)
	p.Data = buf[off : off+n : size]
	p.off = off
	p.handle = h
	p.Timestamp = int64(le.Uint64(m[ivshmem.MetaOffTime:]))
	p.Hash = le.Uint32(m[ivshmem.MetaOffHash:])
	p.Flags = le.Uint32(m[ivshmem.MetaOffFlags:])
	p.Port = le.Uint32(m[ivshmem.MetaOffPort:])
	p.Seq = le.Uint32(m[ivshmem.MetaOffSeq:])
	return true
}

// claim takes one end of queue q for this process. A host-side holder
// whose process is gone (or any holder, with force) is replaced, and
// replaced says so.
func (r *region) claim(q uint32, e ivshmem.End, force bool) (replaced bool, err error) {
	stale := func(o ivshmem.Owner) bool {
		if force {
			return true
		}
		if o.Side != r.side || o.Side != ivshmem.SideHost {
			return false
		}
		err := syscall.Kill(int(o.PID), 0)
		return errors.Is(err, syscall.ESRCH)
	}
	replaced, err = r.l.Claim(r.b, q, e, r.owner, stale)
	if err != nil {
		return false, fmt.Errorf("zc: attach cluster %d queue %d as %s: %w", r.l.ClusterID, q, e, err)
	}
	return replaced, nil
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
