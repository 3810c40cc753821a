package ivshmem

// Byte offsets and sizes of the region format, version 2. doc.go draws them;
// layout_test.go pins them. Every multi-byte field is little-endian.
const (
	// Magic is the first eight bytes of every region: "ZCFABRIC".
	Magic = "ZCFABRIC"
	// Version is the format version this package writes and accepts.
	// Version 1 (zcfabric before the wake-up protocol) had 4-byte data
	// ring slots, no wake-up words and a metadata record for every packet.
	Version = 2

	// HeaderSize is the size of the header page at offset 0.
	HeaderSize = 4096
	// QueueDescSize is the size of one entry of the queue table.
	QueueDescSize = 64
	// MetaSize is the size of one buffer's metadata record.
	MetaSize = 32
	// RingHeaderSize is the size of a ring's header: the producer's
	// line, the consumer's line and the wake-up line.
	RingHeaderSize = 384
	// DescSize is the size of a data ring slot: a packet descriptor.
	DescSize = 16
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
	rOffRings    = 4   // the producer answers WakeDoorbell by ringing: 1, else 0
	rOffProdStat = 8   // three u64 counters owned by the ring's producer
	rOffCons     = 128 // consumer index, u32
	rOffConsStat = 136 // three u64 counters owned by the ring's consumer
	rOffWake     = 256 // the ring's consumer is asleep: Wake* code, u32
	rOffSlots    = RingHeaderSize
)

// Wake-up codes: what the consumer of a ring writes in its wake word
// before it sleeps, telling the producer whether and how to wake it.
const (
	// WakeNone: the consumer polls; the producer does nothing.
	WakeNone = 0
	// WakeFutex: a host process sleeps in futex(2) on the ring's producer
	// index word; the producer wakes it with FUTEX_WAKE.
	WakeFutex = 1
	// WakeDoorbell: the consumer sleeps on the ivshmem doorbell: a guest
	// on its interrupt (the host rings it through its ivshmem server), the
	// agent on its server's host eventfd (the guest rings peer 0).
	WakeDoorbell = 2

	// wakeCode masks the code in a wake word (the rest: the sleep number).
	wakeCode = 3
)

// Desc is a data ring slot: a packet in buffer Handle, Len bytes at Off.
// Flags bit 31 (DescMeta) says the buffer's metadata record holds the
// optional fields (timestamp, hash, port, sequence); the other bits are
// the application's.
type Desc struct {
	Handle, Len, Off, Flags uint32
}

// DescMeta marks a descriptor whose buffer's metadata record is valid.
const DescMeta = 1 << 31

// Buffer metadata field offsets, relative to the record (see doc.go):
// what region.go in package zc reads and writes. The record is written
// only for packets whose descriptor has DescMeta; length, offset and flags
// travel in the descriptor.
const (
	MetaOffTime = 0  // i64 timestamp, ns
	MetaOffHash = 8  // u32 hash
	MetaOffPort = 12 // u32 ingress port
	MetaOffSeq  = 16 // u32 sequence number
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
	// FlagOneVM: a VM's own region, plugged into that VM only (never
	// into two at once): every guest-side owner word in it is that VM's,
	// so a guest process may take over an end that a dead process of the
	// same guest left claimed (see Owner). Readers that predate it
	// ignore it.
	FlagOneVM = 1 << 2
)

// RingBytes is the size of a return ring of n slots: its header and n
// 32-bit handles, rounded up to LineSize.
func RingBytes(slots uint32) uint64 {
	return alignUp(RingHeaderSize+4*uint64(slots), LineSize)
}

// DescRingBytes is the size of a data ring of n slots: its header and n
// 16-byte descriptors, rounded up to LineSize.
func DescRingBytes(slots uint32) uint64 {
	return alignUp(RingHeaderSize+DescSize*uint64(slots), LineSize)
}

func alignUp(v, a uint64) uint64 { return (v + a - 1) &^ (a - 1) }

func isPow2(v uint64) bool { return v != 0 && v&(v-1) == 0 }

// NextPow2 returns the smallest power of two >= v (v > 0), or 0 when
// there is none in 64 bits (v > 1<<63).
func NextPow2(v uint64) uint64 {
	if v > 1<<63 {
		return 0
	}
	p := uint64(1)
	for p < v {
		p <<= 1
	}
	return p
}
