package ivshmem

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
)

// Config describes a region to create.
type Config struct {
	ClusterID uint32
	// Queues is the number of queues (1..MaxQueues).
	Queues uint32
	// Slots is the number of slots of each ring (a power of two).
	Slots uint32
	// BufSize is the size of one packet buffer (a power of two).
	BufSize uint32
	// Buffers is the size of the creator's engine pool.
	Buffers uint32
	// QueueBuffers is the number of buffers each queue owns for a producer
	// that attaches from outside (another process, a guest); 0 for none.
	QueueBuffers uint32
	// Flags are header flags (FlagHugepages, FlagShared).
	Flags uint32
	// MinSize is the smallest region size to round up to (hugepage size).
	MinSize uint64
	// Generation distinguishes this incarnation from earlier ones.
	Generation uint64
	// Created is the creation time in Unix nanoseconds; CreatorPID the pid.
	Created    int64
	CreatorPID uint32
}

// QueueLayout is one validated entry of the queue table.
type QueueLayout struct {
	ID        uint32
	Slots     uint32
	DataRing  uint64 // offset of the producer-to-consumer ring
	RetRing   uint64 // offset of the consumer-to-producer return ring
	PoolFirst uint32 // first buffer of the queue's own pool
	PoolCount uint32 // buffers in the queue's own pool
	Flags     uint32
}

// Layout is a region's validated geometry. It is a copy: the host never
// re-reads these values from shared memory after validation.
type Layout struct {
	RegionSize  uint64
	ClusterID   uint32
	Flags       uint32
	Generation  uint64
	QueueTable  uint64
	BufSize     uint32
	NumBufs     uint32
	MetaOff     uint64
	BufOff      uint64
	EngineFirst uint32
	EngineCount uint32
	Created     int64
	CreatorPID  uint32
	Queues      []QueueLayout
}

// Plan computes the layout of a region for cfg. The region size is the
// smallest power of two that holds everything (ivshmem BARs are powers of
// two), and at least cfg.MinSize.
func Plan(cfg Config) (Layout, error) {
	switch {
	case cfg.Queues == 0 || cfg.Queues > MaxQueues:
		return Layout{}, fmt.Errorf("%w: %d queues (want 1..%d)", ErrConfig, cfg.Queues, MaxQueues)
	case !isPow2(uint64(cfg.Slots)) || cfg.Slots < 2 || cfg.Slots > MaxSlots:
		return Layout{}, fmt.Errorf("%w: %d ring slots (want a power of two in 2..%d)", ErrConfig, cfg.Slots, MaxSlots)
	case !isPow2(uint64(cfg.BufSize)) || cfg.BufSize < MinBufSize || cfg.BufSize > MaxBufSize:
		return Layout{}, fmt.Errorf("%w: buffer size %d (want a power of two in %d..%d)", ErrConfig, cfg.BufSize, MinBufSize, MaxBufSize)
	}
	total := uint64(cfg.Buffers) + uint64(cfg.Queues)*uint64(cfg.QueueBuffers)
	if total == 0 || total > MaxBuffers {
		return Layout{}, fmt.Errorf("%w: %d buffers in all (want 1..%d)", ErrConfig, total, MaxBuffers)
	}
	l := Layout{
		ClusterID:   cfg.ClusterID,
		Flags:       cfg.Flags,
		Generation:  cfg.Generation,
		QueueTable:  HeaderSize,
		BufSize:     cfg.BufSize,
		NumBufs:     uint32(total),
		EngineFirst: 0,
		EngineCount: cfg.Buffers,
		Created:     cfg.Created,
		CreatorPID:  cfg.CreatorPID,
		Queues:      make([]QueueLayout, cfg.Queues),
	}
	off := alignUp(HeaderSize+uint64(cfg.Queues)*QueueDescSize, LineSize)
	db, rb := DescRingBytes(cfg.Slots), RingBytes(cfg.Slots)
	for i := range l.Queues {
		l.Queues[i] = QueueLayout{
			ID:        uint32(i),
			Slots:     cfg.Slots,
			DataRing:  off,
			RetRing:   off + db,
			PoolFirst: cfg.Buffers + uint32(i)*cfg.QueueBuffers,
			PoolCount: cfg.QueueBuffers,
		}
		off += db + rb
	}
	l.MetaOff = off
	l.BufOff = alignUp(off+total*MetaSize, PageSize)
	end := l.BufOff + total*uint64(cfg.BufSize)
	size := NextPow2(end)
	if size < cfg.MinSize {
		size = NextPow2(cfg.MinSize)
	}
	if size == 0 {
		return Layout{}, fmt.Errorf("%w: region of at least %d bytes exceeds %d", ErrConfig, max(end, cfg.MinSize), uint64(MaxRegionSize))
	}
	if size > MaxRegionSize {
		return Layout{}, fmt.Errorf("%w: region of %d bytes exceeds %d", ErrConfig, size, uint64(MaxRegionSize))
	}
	l.RegionSize = size
	return l, nil
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Write initialises b (len(b) == l.RegionSize, zeroed) with the header,
// the queue table and empty rings. The state word is left at zero: the
// creator publishes the region with Publish once it is ready.
func (l *Layout) Write(b []byte) error {
	if uint64(len(b)) != l.RegionSize {
		return fmt.Errorf("%w: write layout of %d bytes into %d", ErrConfig, l.RegionSize, len(b))
	}
	l.writeHeader(b)
	le := binary.LittleEndian
	for i, q := range l.Queues {
		d := b[l.QueueTable+uint64(i)*QueueDescSize:]
		le.PutUint32(d[qOffID:], q.ID)
		le.PutUint32(d[qOffSlots:], q.Slots)
		le.PutUint64(d[qOffDataRing:], q.DataRing)
		le.PutUint64(d[qOffRetRing:], q.RetRing)
		le.PutUint32(d[qOffPoolFirst:], q.PoolFirst)
		le.PutUint32(d[qOffPoolCount:], q.PoolCount)
		le.PutUint32(d[qOffFlags:], q.Flags)
	}
	return nil
}

// writeHeader writes l's header fields into b and signs them.
func (l *Layout) writeHeader(b []byte) {
	le := binary.LittleEndian
	copy(b[offMagic:], Magic)
	le.PutUint32(b[offVersion:], Version)
	le.PutUint32(b[offHeaderSize:], HeaderSize)
	le.PutUint64(b[offRegionSize:], l.RegionSize)
	le.PutUint32(b[offClusterID:], l.ClusterID)
	le.PutUint32(b[offFlags:], l.Flags)
	le.PutUint64(b[offGeneration:], l.Generation)
	le.PutUint32(b[offNumQueues:], uint32(len(l.Queues)))
	le.PutUint32(b[offQDescSize:], QueueDescSize)
	le.PutUint64(b[offQTable:], l.QueueTable)
	le.PutUint32(b[offBufSize:], l.BufSize)
	le.PutUint32(b[offNumBufs:], l.NumBufs)
	le.PutUint32(b[offMetaSize:], MetaSize)
	le.PutUint32(b[offEngFirst:], l.EngineFirst)
	le.PutUint32(b[offEngCount:], l.EngineCount)
	le.PutUint64(b[offMetaOff:], l.MetaOff)
	le.PutUint64(b[offBufOff:], l.BufOff)
	le.PutUint64(b[offCreated:], uint64(l.Created))
	le.PutUint32(b[offCreatorPID:], l.CreatorPID)
	le.PutUint32(b[offChecksum:], crc32.Checksum(b[:checksummed], castagnoli))
}

// Retake makes this process the creator of the region in b, which holds
// l already (a successor of a creator that is gone adopts its region):
// the header is written again from l with pid as its creator and signed.
// Nothing else changes: rings, counters, buffers and the state word stay,
// and so do the readers attached to the region. b must hold l.RegionSize
// bytes.
func (l *Layout) Retake(b []byte, pid uint32) error {
	if uint64(len(b)) != l.RegionSize {
		return fmt.Errorf("%w: retake layout of %d bytes in %d", ErrConfig, l.RegionSize, len(b))
	}
	l.CreatorPID = pid
	l.writeHeader(b)
	return nil
}

// Buffer returns the bytes of buffer h (h < NumBufs, checked by the caller).
func (l *Layout) Buffer(b []byte, h uint32) []byte {
	off := l.BufOff + uint64(h)*uint64(l.BufSize)
	return b[off : off+uint64(l.BufSize) : off+uint64(l.BufSize)]
}

// Meta returns the metadata record of buffer h (h < NumBufs).
func (l *Layout) Meta(b []byte, h uint32) []byte {
	off := l.MetaOff + uint64(h)*MetaSize
	return b[off : off+MetaSize : off+MetaSize]
}

// BufferArea returns the page-aligned area holding every buffer: the AF_XDP
// UMEM when a capture engine writes straight into the region.
func (l *Layout) BufferArea(b []byte) []byte {
	end := l.BufOff + uint64(l.NumBufs)*uint64(l.BufSize)
	return b[l.BufOff:end:end]
}

func crc32Checksum(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }
