package ivshmem

// Byte offsets and sizes of the region format, version 1. doc.go draws them;
// layout_test.go pins them. Every multi-byte field is little-endian.
const (
	// Magic is the first eight bytes of every region: "ZCFABRIC".
	Magic = "ZCFABRIC"
	// Version is the format version this package writes and accepts.
	Version = 1

	// HeaderSize is the size of the header page at offset 0.
	HeaderSize = 4096
	// QueueDescSize is the size of one entry of the queue table.
	QueueDescSize = 64
	// MetaSize is the size of one buffer's metadata record.
	MetaSize = 32
	// RingHeaderSize is the size of a ring's two index lines.
	RingHeaderSize = 256
	// LineSize separates data written by different parties (two x86 cache
	// lines, because the adjacent-line prefetcher moves them in pairs).
	LineSize = 128
	// PageSize aligns the buffer area so it can be an AF_XDP UMEM.
	PageSize = 4096

	// MaxQueues bounds the queue table.
	MaxQueues = 1024
	// MaxSlots bounds a ring (slots are a power of two).
	MaxSlots = 1 << 22
	// MinBufSize and MaxBufSize bound a buffer (a power of two).
	MinBufSize = 256
	MaxBufSize = 1 << 16
	// MaxBuffers bounds the buffer count.
	MaxBuffers = 1 << 24
	// MaxRegionSize bounds a region (64 GiB).
	MaxRegionSize = 1 << 36
)

// Header field offsets.
const (
	offMagic      = 0
	offVersion    = 8
	offHeaderSize = 12
	offRegionSize = 16
	offClusterID  = 24
	offFlags      = 28
	offGeneration = 32
	offNumQueues  = 40
	offQDescSize  = 44
	offQTable     = 48
	offBufSize    = 56
	offNumBufs    = 60
	offMetaSize   = 64
	offEngFirst   = 68
	offEngCount   = 72
	offMetaOff    = 80
	offBufOff     = 88
	offCreated    = 96
	offCreatorPID = 104
	offChecksum   = 108 // CRC-32C of bytes [0, 108)
	checksummed   = 108

	offState = 128 // mutable: StateReady, StateClosed
)

// Queue descriptor field offsets, relative to the descriptor.
const (
	qOffID        = 0
	qOffSlots     = 4
	qOffDataRing  = 8
	qOffRetRing   = 16
	qOffPoolFirst = 24
	qOffPoolCount = 28
	qOffFlags     = 32
	qOffProducer  = 40 // mutable owner word
	qOffConsumer  = 48 // mutable owner word
	qOffHandshake = 56 // mutable: consumer attach epoch<<2 | HS* state
)

// Ring field offsets, relative to the ring.
const (
	rOffProd     = 0   // producer index, u32
	rOffProdStat = 8   // three u64 counters owned by the ring's producer
	rOffCons     = 128 // consumer index, u32
	rOffConsStat = 136 // three u64 counters owned by the ring's consumer
	rOffSlots    = RingHeaderSize
)

// Buffer metadata field offsets, relative to the record (see doc.go):
// what region.go in package zc reads and writes.
const (
	MetaOffLen   = 0  // u32 packet length
	MetaOffOff   = 4  // u32 offset of the packet in its buffer
	MetaOffTime  = 8  // i64 timestamp, ns
	MetaOffHash  = 16 // u32 hash
	MetaOffFlags = 20 // u32 flags
	MetaOffPort  = 24 // u32 ingress port
	MetaOffSeq   = 28 // u32 sequence number
)

// Region states, in the mutable state word.
const (
	// StateReady: the creator finished initialising the region.
	StateReady = 1
	// StateClosed: the creator closed the region; attachers must stop.
	StateClosed = 2
)

// Header flags.
const (
	// FlagHugepages: the region lives on hugetlbfs.
	FlagHugepages = 1 << 0
	// FlagShared: a shared trust domain (several VMs on one region).
	FlagShared = 1 << 1
)

// RingBytes is the size of a ring of n slots: its header and n 32-bit
// slots, rounded up to LineSize.
func RingBytes(slots uint32) uint64 {
	return alignUp(RingHeaderSize+4*uint64(slots), LineSize)
}

func alignUp(v, a uint64) uint64 { return (v + a - 1) &^ (a - 1) }

func isPow2(v uint64) bool { return v != 0 && v&(v-1) == 0 }

// NextPow2 returns the smallest power of two >= v (v > 0).
func NextPow2(v uint64) uint64 {
	p := uint64(1)
	for p < v {
		p <<= 1
	}
	return p
}
