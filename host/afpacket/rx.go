package afpacket

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// ErrClosed is returned by methods of a closed RX or TX.
var ErrClosed = errors.New("socket closed")

// Block descriptor (struct tpacket_block_desc with tpacket_hdr_v1) offsets.
const (
	blkStatus   = 8  // u32 block_status: TP_STATUS_KERNEL or TP_STATUS_USER
	blkNumPkts  = 12 // u32 num_pkts
	blkFirstPkt = 16 // u32 offset_to_first_pkt
)

// Frame header (struct tpacket3_hdr) offsets.
const (
	pktNextOffset = 0  // u32 tp_next_offset
	pktSec        = 4  // u32 tp_sec
	pktNsec       = 8  // u32 tp_nsec
	pktSnaplen    = 12 // u32 tp_snaplen
	pktLen        = 16 // u32 tp_len
	pktMac        = 24 // u16 tp_mac
)

// RXOptions tunes OpenRX. The zero value gives a 16 MiB ring of 64 blocks
// of 256 KiB, retired after 2 ms.
type RXOptions struct {
	// BlockSize is the size of one ring block: a power of two, at least a
	// page. The largest frame captured whole is a bit under BlockSize.
	BlockSize uint32
	// NumBlocks is the number of blocks in the ring.
	NumBlocks uint32
	// BlockTimeout is how long the kernel fills a block before handing it
	// over part-full: the worst-case latency at low rates. Rounded up to
	// whole milliseconds.
	BlockTimeout time.Duration
	// IgnoreOutgoing skips frames the host itself sends on the interface
	// (PACKET_IGNORE_OUTGOING), e.g. for a bounce between two interfaces.
	IgnoreOutgoing bool
}

// Defaults for RXOptions fields left zero.
const (
	DefaultBlockSize    = 256 << 10
	DefaultNumBlocks    = 64
	DefaultBlockTimeout = 2 * time.Millisecond
)

// RX receives frames from one interface through a TPACKET_V3 ring: the
// kernel copies each frame into a block of a ring mapped into this process,
// and hands over whole blocks. Read and Poll must be called from one
// goroutine at a time; Stats may be called concurrently with them; Close
// must not race with anything.
type RX struct {
	fd        int
	ifname    string
	ring      []byte
	blockSize int
	numBlocks int
	pfd       [1]unix.PollFd
	closed    bool

	// Position in the ring: the block being read, whether it was handed
	// to us, how many of its packets are left and where the next starts.
	blk     int
	inBlock bool
	left    uint32
	off     int

	statsMu sync.Mutex
	stats   Stats
	trunc   atomic.Uint64
}

// Stats are the counters of an RX socket, cumulative since OpenRX.
type Stats struct {
	// Packets is every frame that reached the socket, Drops included
	// (the kernel's tp_packets).
	Packets uint64
	// Drops is frames the kernel dropped because the ring had no free
	// block.
	Drops uint64
	// FreezeCount is how many times the ring ran full ("queue frozen").
	FreezeCount uint64
	// Truncated is frames captured shorter than on the wire (larger than a
	// block allows); Read passes the captured part.
	Truncated uint64
}

// OpenRX opens a TPACKET_V3 capture ring on ifname (resolved in the calling
// thread's network namespace), receiving every frame in both directions
// unless opt.IgnoreOutgoing.
func OpenRX(ifname string, opt RXOptions) (*RX, error) {
	if opt.BlockSize == 0 {
		opt.BlockSize = DefaultBlockSize
	}
	if opt.NumBlocks == 0 {
		opt.NumBlocks = DefaultNumBlocks
	}
	if opt.BlockTimeout == 0 {
		opt.BlockTimeout = DefaultBlockTimeout
	}
	page := uint32(os.Getpagesize())
	if opt.BlockSize < page || opt.BlockSize&(opt.BlockSize-1) != 0 {
		return nil, fmt.Errorf("afpacket: open RX on %s: block size %d: want a power of two of at least %d", ifname, opt.BlockSize, page)
	}
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return nil, fmt.Errorf("afpacket: open RX on %s: %w", ifname, err)
	}
	r := &RX{fd: -1, ifname: ifname, blockSize: int(opt.BlockSize), numBlocks: int(opt.NumBlocks)}
	if err := r.setup(ifi.Index, &opt); err != nil {
		r.Close()
		return nil, fmt.Errorf("afpacket: open RX on %s: %w", ifname, err)
	}
	return r, nil
}

func (r *RX) setup(ifindex int, opt *RXOptions) error {
	// Protocol 0: nothing is queued to the socket until bind names
	// ETH_P_ALL, after the ring exists.
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	r.fd = fd
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_VERSION, unix.TPACKET_V3); err != nil {
		return fmt.Errorf("set TPACKET_V3: %w", err)
	}
	if opt.IgnoreOutgoing {
		if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1); err != nil {
			return fmt.Errorf("set PACKET_IGNORE_OUTGOING: %w", err)
		}
	}
	const frameSize = 2048 // V3 frames are variable; this only sizes tp_frame_nr
	req := unix.TpacketReq3{
		Block_size:     opt.BlockSize,
		Block_nr:       opt.NumBlocks,
		Frame_size:     frameSize,
		Frame_nr:       opt.BlockSize / frameSize * opt.NumBlocks,
		Retire_blk_tov: uint32((opt.BlockTimeout + time.Millisecond - 1) / time.Millisecond),
	}
	if err := unix.SetsockoptTpacketReq3(fd, unix.SOL_PACKET, unix.PACKET_RX_RING, &req); err != nil {
		return fmt.Errorf("set PACKET_RX_RING (%d blocks of %d bytes): %w", req.Block_nr, req.Block_size, err)
	}
	r.ring, err = unix.Mmap(fd, 0, int(opt.BlockSize)*int(opt.NumBlocks), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return fmt.Errorf("mmap ring: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifindex}); err != nil {
		return fmt.Errorf("bind: %w", err)
	}
	r.pfd[0] = unix.PollFd{Fd: int32(fd), Events: unix.POLLIN | unix.POLLERR}
	return nil
}

// Read calls fn for up to max received frames, in arrival order, and
// returns how many. data is the frame from its Ethernet header, a view of
// the ring valid only until fn returns: copy it (once, into a cluster
// buffer) before returning. tsNanos is the kernel's receive timestamp in
// nanoseconds since the Unix epoch. Read never blocks; use Poll to wait.
// Blocks are handed back to the kernel as soon as they are read.
func (r *RX) Read(max int, fn func(data []byte, tsNanos int64)) int {
	if r.closed {
		return 0
	}
	n := 0
	for n < max {
		if r.left == 0 {
			if !r.nextBlock() {
				break
			}
			continue
		}
		b := r.ring[r.blk*r.blockSize : (r.blk+1)*r.blockSize]
		h := b[r.off:]
		mac := int(binary.NativeEndian.Uint16(h[pktMac:]))
		snap := binary.NativeEndian.Uint32(h[pktSnaplen:])
		if snap != binary.NativeEndian.Uint32(h[pktLen:]) {
			r.trunc.Add(1)
		}
		ts := int64(binary.NativeEndian.Uint32(h[pktSec:]))*1e9 + int64(binary.NativeEndian.Uint32(h[pktNsec:]))
		fn(h[mac:mac+int(snap):mac+int(snap)], ts)
		r.off += int(binary.NativeEndian.Uint32(h[pktNextOffset:]))
		r.left--
		n++
	}
	if r.left == 0 && r.inBlock {
		r.releaseBlock()
	}
	return n
}

// nextBlock releases the finished block, if any, and takes the next one if
// the kernel has handed it over.
func (r *RX) nextBlock() bool {
	if r.inBlock {
		r.releaseBlock()
	}
	b := r.ring[r.blk*r.blockSize:]
	// Acquire: the block's contents are visible once its status says USER.
	if statusWord(b, blkStatus).Load()&unix.TP_STATUS_USER == 0 {
		return false
	}
	r.inBlock = true
	r.left = binary.NativeEndian.Uint32(b[blkNumPkts:])
	r.off = int(binary.NativeEndian.Uint32(b[blkFirstPkt:]))
	return true
}

// releaseBlock gives the current block back to the kernel and moves on.
func (r *RX) releaseBlock() {
	// Release: we are done reading the block before the kernel may refill it.
	statusWord(r.ring[r.blk*r.blockSize:], blkStatus).Store(unix.TP_STATUS_KERNEL)
	r.inBlock, r.left = false, 0
	r.blk++
	if r.blk == r.numBlocks {
		r.blk = 0
	}
}

// Poll waits until a block is ready to Read or timeout passes (negative:
// forever) and reports whether one is.
func (r *RX) Poll(timeout time.Duration) (bool, error) {
	if r.closed {
		return false, ErrClosed
	}
	if r.left > 0 || statusWord(r.ring[r.blk*r.blockSize:], blkStatus).Load()&unix.TP_STATUS_USER != 0 {
		return true, nil
	}
	ms := -1
	if timeout >= 0 {
		ms = int((timeout + time.Millisecond - 1) / time.Millisecond)
	}
	for {
		r.pfd[0].Revents = 0
		n, err := unix.Poll(r.pfd[:], ms)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return false, fmt.Errorf("afpacket: poll RX on %s: %w", r.ifname, err)
		}
		if n > 0 && r.pfd[0].Revents&(unix.POLLERR|unix.POLLNVAL) != 0 {
			return false, fmt.Errorf("afpacket: poll RX on %s: interface gone or socket error (revents %#x)", r.ifname, r.pfd[0].Revents)
		}
		return n > 0, nil
	}
}

// Stats returns the socket's counters. The kernel resets its counters on
// every read; RX accumulates them, so call Stats as often as you like.
func (r *RX) Stats() (Stats, error) {
	r.statsMu.Lock()
	defer r.statsMu.Unlock()
	if r.closed {
		return Stats{}, ErrClosed
	}
	st, err := unix.GetsockoptTpacketStatsV3(r.fd, unix.SOL_PACKET, unix.PACKET_STATISTICS)
	if err != nil {
		return Stats{}, fmt.Errorf("afpacket: statistics of RX on %s: %w", r.ifname, err)
	}
	r.stats.Packets += uint64(st.Packets)
	r.stats.Drops += uint64(st.Drops)
	r.stats.FreezeCount += uint64(st.Freeze_q_cnt)
	s := r.stats
	s.Truncated = r.trunc.Load()
	return s, nil
}

// FD returns the socket's file descriptor, e.g. for an epoll loop.
func (r *RX) FD() int { return r.fd }

// Close unmaps the ring and closes the socket.
func (r *RX) Close() error {
	r.statsMu.Lock()
	defer r.statsMu.Unlock()
	if r.closed {
		return nil
	}
	r.closed = true
	var errs []error
	if r.ring != nil {
		errs = append(errs, unix.Munmap(r.ring))
		r.ring = nil
	}
	if r.fd >= 0 {
		errs = append(errs, unix.Close(r.fd))
		r.fd = -1
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("afpacket: close RX on %s: %w", r.ifname, err)
	}
	return nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
