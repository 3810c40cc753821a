package ivshmem

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
)

func bad(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrBadRegion}, args...)...)
}

// Parse validates the region in b and returns its geometry. It reads every
// field once, checks it against the size of b and the limits of this
// package, and never reads outside b: b may be a region written by an
// untrusted guest. A region whose bytes are all zero at the magic (an
// unplugged BAR, a file not yet initialised) returns ErrClosed.
func Parse(b []byte) (Layout, error) {
	if len(b) < HeaderSize {
		return Layout{}, bad("%d bytes, smaller than the %d-byte header", len(b), HeaderSize)
	}
	le := binary.LittleEndian
	if string(b[offMagic:offMagic+8]) != Magic {
		if le.Uint64(b[offMagic:]) == 0 {
			return Layout{}, fmt.Errorf("%w: magic is zero", ErrClosed)
		}
		return Layout{}, bad("magic %q, want %q", b[offMagic:offMagic+8], Magic)
	}
	if v := le.Uint32(b[offVersion:]); v != Version {
		return Layout{}, fmt.Errorf("%w: region format version %d, this binary reads version %d (host and guest binaries must read the same format version: see the README, \"Format versions\")", ErrVersion, v, Version)
	}
	if sum, want := crc32.Checksum(b[:checksummed], castagnoli), le.Uint32(b[offChecksum:]); sum != want {
		return Layout{}, bad("header checksum %#08x, computed %#08x", want, sum)
	}
	if hs := le.Uint32(b[offHeaderSize:]); hs != HeaderSize {
		return Layout{}, bad("header size %d, want %d", hs, HeaderSize)
	}
	if ds := le.Uint32(b[offQDescSize:]); ds != QueueDescSize {
		return Layout{}, bad("queue descriptor size %d, want %d", ds, QueueDescSize)
	}
	if ms := le.Uint32(b[offMetaSize:]); ms != MetaSize {
		return Layout{}, bad("metadata size %d, want %d", ms, MetaSize)
	}
	l := Layout{
		RegionSize:  le.Uint64(b[offRegionSize:]),
		ClusterID:   le.Uint32(b[offClusterID:]),
		Flags:       le.Uint32(b[offFlags:]),
		Generation:  le.Uint64(b[offGeneration:]),
		QueueTable:  le.Uint64(b[offQTable:]),
		BufSize:     le.Uint32(b[offBufSize:]),
		NumBufs:     le.Uint32(b[offNumBufs:]),
		MetaOff:     le.Uint64(b[offMetaOff:]),
		BufOff:      le.Uint64(b[offBufOff:]),
		EngineFirst: le.Uint32(b[offEngFirst:]),
		EngineCount: le.Uint32(b[offEngCount:]),
		Created:     int64(le.Uint64(b[offCreated:])),
		CreatorPID:  le.Uint32(b[offCreatorPID:]),
	}
	nq := le.Uint32(b[offNumQueues:])
	size := uint64(len(b))
	switch {
	case l.RegionSize != size:
		return Layout{}, bad("region size %d, mapped %d", l.RegionSize, size)
	case nq == 0 || nq > MaxQueues:
		return Layout{}, bad("%d queues", nq)
	case !isPow2(uint64(l.BufSize)) || l.BufSize < MinBufSize || l.BufSize > MaxBufSize:
		return Layout{}, bad("buffer size %d", l.BufSize)
	case l.NumBufs == 0 || l.NumBufs > MaxBuffers:
		return Layout{}, bad("%d buffers", l.NumBufs)
	case l.QueueTable < HeaderSize || l.QueueTable%LineSize != 0:
		return Layout{}, bad("queue table at %d", l.QueueTable)
	case uint64(l.EngineFirst)+uint64(l.EngineCount) > uint64(l.NumBufs):
		return Layout{}, bad("engine pool [%d,+%d) beyond %d buffers", l.EngineFirst, l.EngineCount, l.NumBufs)
	}
	// Sizes are bounded above, so these products cannot overflow uint64.
	tableEnd := l.QueueTable + uint64(nq)*QueueDescSize
	metaEnd := l.MetaOff + uint64(l.NumBufs)*MetaSize
	bufEnd := l.BufOff + uint64(l.NumBufs)*uint64(l.BufSize)
	switch {
	case l.MetaOff > size || l.BufOff > size || tableEnd > size:
		return Layout{}, bad("offsets beyond the region")
	case l.MetaOff%8 != 0 || l.MetaOff < tableEnd || metaEnd > size:
		return Layout{}, bad("metadata [%d,%d) outside the region or overlapping the queue table", l.MetaOff, metaEnd)
	case l.BufOff%PageSize != 0 || l.BufOff < metaEnd || bufEnd > size:
		return Layout{}, bad("buffers [%d,%d) misaligned, outside the region or overlapping metadata", l.BufOff, bufEnd)
	}
	l.Queues = make([]QueueLayout, nq)
	for i := range l.Queues {
		d := b[l.QueueTable+uint64(i)*QueueDescSize:]
		q := QueueLayout{
			ID:        le.Uint32(d[qOffID:]),
			Slots:     le.Uint32(d[qOffSlots:]),
			DataRing:  le.Uint64(d[qOffDataRing:]),
			RetRing:   le.Uint64(d[qOffRetRing:]),
			PoolFirst: le.Uint32(d[qOffPoolFirst:]),
			PoolCount: le.Uint32(d[qOffPoolCount:]),
			Flags:     le.Uint32(d[qOffFlags:]),
		}
		if q.ID != uint32(i) {
			return Layout{}, bad("queue %d has id %d", i, q.ID)
		}
		if !isPow2(uint64(q.Slots)) || q.Slots < 2 || q.Slots > MaxSlots {
			return Layout{}, bad("queue %d: %d slots", i, q.Slots)
		}
		db, rb := DescRingBytes(q.Slots), RingBytes(q.Slots)
		for _, r := range [2]struct{ off, size uint64 }{{q.DataRing, db}, {q.RetRing, rb}} {
			if r.off%LineSize != 0 || r.off < tableEnd || r.off > l.MetaOff || r.size > l.MetaOff-r.off {
				return Layout{}, bad("queue %d: ring at %d (+%d) outside the ring area", i, r.off, r.size)
			}
		}
		if q.DataRing < q.RetRing+rb && q.RetRing < q.DataRing+db {
			return Layout{}, bad("queue %d: data and return rings overlap", i)
		}
		if uint64(q.PoolFirst)+uint64(q.PoolCount) > uint64(l.NumBufs) {
			return Layout{}, bad("queue %d: pool [%d,+%d) beyond %d buffers", i, q.PoolFirst, q.PoolCount, l.NumBufs)
		}
		l.Queues[i] = q
	}
	return l, nil
}

// HeaderChecksum reads the header's CRC-32C word as the region holds it
// now: a fingerprint of its immutable fields. Whoever created the region
// keeps the value it wrote; a different one means the header was
// rewritten (and re-signed, if it still parses). b must hold a header.
func HeaderChecksum(b []byte) uint32 { return binary.LittleEndian.Uint32(b[offChecksum:]) }

// State reads the region's mutable state word (StateReady, StateClosed, or
// 0 while the creator initialises it). b must hold at least a header.
func State(b []byte) uint32 { return loadU32(b, offState) }

// Publish marks the region ready: attachers accept it from now on.
func Publish(b []byte) { storeU32(b, offState, StateReady) }

// MarkClosed marks the region closed: attachers stop with ErrClosed.
func MarkClosed(b []byte) { storeU32(b, offState, StateClosed) }

// Check reports whether the region in b is still the incarnation l: its
// magic and generation unchanged and its state ready. It costs two loads;
// consumers call it when a queue is empty.
func (l *Layout) Check(b []byte) error {
	if uint64(len(b)) < HeaderSize {
		return ErrGone
	}
	if binary.LittleEndian.Uint64(b[offMagic:]) != magicWord || loadU64(b, offGeneration) != l.Generation {
		return fmt.Errorf("cluster %d: %w", l.ClusterID, ErrGone)
	}
	if s := State(b); s != StateReady {
		return fmt.Errorf("%w: cluster %d closed by its creator", ErrClosed, l.ClusterID)
	}
	return nil
}

var magicWord = binary.LittleEndian.Uint64([]byte(Magic))
