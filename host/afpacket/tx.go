package afpacket

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// ErrFrameTooLong: a frame does not fit in a TX ring slot.
var ErrFrameTooLong = errors.New("frame longer than the TX ring slot")

// TX frame header (struct tpacket2_hdr) offsets and the data offset:
// TPACKET2_HDRLEN - sizeof(struct sockaddr_ll) = TPACKET_ALIGN(32) = 32.
const (
	txStatus  = 0  // u32 tp_status
	txLen     = 4  // u32 tp_len
	txDataOff = 32 // frame data starts here in its slot
)

// TXOptions tunes OpenTX. The zero value gives 1024 slots of 2048 bytes
// (frames up to 2016 bytes) going through the qdisc.
type TXOptions struct {
	// FrameSize is the slot size: a power of two from 64 to a page; a
	// frame may be FrameSize-32 bytes long.
	FrameSize uint32
	// NumFrames is the number of slots, rounded up to whole pages of
	// slots.
	NumFrames uint32
	// QdiscBypass hands frames straight to the driver
	// (PACKET_QDISC_BYPASS): faster, but no traffic shaping and no copy to
	// other packet sockets on this host; a full driver queue drops.
	QdiscBypass bool
}

// TX sends frames out of one interface through a TPACKET_V2 TX ring: Send
// copies a burst of frames into ring slots and makes one sendto call for
// all of them. Not safe for concurrent use.
type TX struct {
	fd        int
	ifname    string
	ring      []byte
	frameSize int
	numFrames int
	head      int
	closed    bool
}

// Defaults for TXOptions fields left zero.
const (
	DefaultTXFrameSize = 2048
	DefaultTXFrames    = 1024
)

// OpenTX opens a TX ring on ifname (resolved in the calling thread's
// network namespace). The socket receives nothing.
func OpenTX(ifname string, opt TXOptions) (*TX, error) {
	if opt.FrameSize == 0 {
		opt.FrameSize = DefaultTXFrameSize
	}
	if opt.NumFrames == 0 {
		opt.NumFrames = DefaultTXFrames
	}
	page := uint32(os.Getpagesize())
	if opt.FrameSize < 64 || opt.FrameSize > page || opt.FrameSize&(opt.FrameSize-1) != 0 {
		return nil, fmt.Errorf("afpacket: open TX on %s: frame size %d: want a power of two from 64 to %d", ifname, opt.FrameSize, page)
	}
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return nil, fmt.Errorf("afpacket: open TX on %s: %w", ifname, err)
	}
	perBlock := page / opt.FrameSize
	blocks := (opt.NumFrames + perBlock - 1) / perBlock
	t := &TX{fd: -1, ifname: ifname, frameSize: int(opt.FrameSize), numFrames: int(blocks * perBlock)}
	if err := t.setup(ifi.Index, page, blocks, &opt); err != nil {
		t.Close()
		return nil, fmt.Errorf("afpacket: open TX on %s: %w", ifname, err)
	}
	return t, nil
}

func (t *TX) setup(ifindex int, page, blocks uint32, opt *TXOptions) error {
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	t.fd = fd
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_VERSION, unix.TPACKET_V2); err != nil {
		return fmt.Errorf("set TPACKET_V2: %w", err)
	}
	// Drop a malformed frame instead of stopping the ring at it.
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_LOSS, 1); err != nil {
		return fmt.Errorf("set PACKET_LOSS: %w", err)
	}
	if opt.QdiscBypass {
		if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_QDISC_BYPASS, 1); err != nil {
			return fmt.Errorf("set PACKET_QDISC_BYPASS: %w", err)
		}
	}
	req := unix.TpacketReq{Block_size: page, Block_nr: blocks, Frame_size: opt.FrameSize, Frame_nr: uint32(t.numFrames)}
	if err := unix.SetsockoptTpacketReq(fd, unix.SOL_PACKET, unix.PACKET_TX_RING, &req); err != nil {
		return fmt.Errorf("set PACKET_TX_RING (%d slots of %d bytes): %w", req.Frame_nr, req.Frame_size, err)
	}
	t.ring, err = unix.Mmap(fd, 0, int(page*blocks), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return fmt.Errorf("mmap ring: %w", err)
	}
	// Protocol 0: bound for sending only, no receive hook.
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Ifindex: ifindex}); err != nil {
		return fmt.Errorf("bind: %w", err)
	}
	return nil
}

// MaxFrameLen returns the longest frame Send accepts.
func (t *TX) MaxFrameLen() int { return t.frameSize - txDataOff }

// Send copies frames (each from its Ethernet header) into free ring slots,
// in order, and asks the kernel to send them with one sendto call. It
// returns how many frames it queued: fewer than len(frames) when the ring
// is full (call again later) or, with ErrFrameTooLong, at the first frame
// that does not fit. A full device queue is not an error: those frames are
// sent on the next Send or Flush.
func (t *TX) Send(frames [][]byte) (int, error) {
	if t.closed {
		return 0, ErrClosed
	}
	n := 0
	var err error
	for _, f := range frames {
		slot := t.ring[t.head*t.frameSize : (t.head+1)*t.frameSize]
		st := statusWord(slot, txStatus)
		// Acquire: the kernel is done with the slot once it reads AVAILABLE.
		if st.Load() != unix.TP_STATUS_AVAILABLE {
			break
		}
		if len(f) > t.frameSize-txDataOff {
			err = fmt.Errorf("afpacket: send on %s: %d bytes: %w", t.ifname, len(f), ErrFrameTooLong)
			break
		}
		copy(slot[txDataOff:], f)
		binary.NativeEndian.PutUint32(slot[txLen:], uint32(len(f)))
		// Release: data and length before the status that publishes them.
		st.Store(unix.TP_STATUS_SEND_REQUEST)
		t.head++
		if t.head == t.numFrames {
			t.head = 0
		}
		n++
	}
	if n > 0 {
		if ferr := t.Flush(); ferr != nil {
			return n, ferr
		}
	}
	return n, err
}

// Flush asks the kernel to send every queued frame (one non-blocking
// sendto call).
func (t *TX) Flush() error {
	if t.closed {
		return ErrClosed
	}
	err := unix.Sendto(t.fd, nil, unix.MSG_DONTWAIT, nil)
	switch err {
	case nil, unix.EAGAIN, unix.ENOBUFS, unix.EINTR:
		return nil
	}
	return fmt.Errorf("afpacket: send on %s: %w", t.ifname, err)
}

// Pending returns how many slots still hold frames the kernel has not
// finished sending.
func (t *TX) Pending() int {
	n := 0
	for i := 0; i < t.numFrames; i++ {
		if statusWord(t.ring[i*t.frameSize:], txStatus).Load() != unix.TP_STATUS_AVAILABLE {
			n++
		}
	}
	return n
}

// FD returns the socket's file descriptor.
func (t *TX) FD() int { return t.fd }

// Close unmaps the ring and closes the socket; frames not yet sent may be
// lost.
func (t *TX) Close() error {
	if t.closed {
		return nil
	}
	t.closed = true
	var errs []error
	if t.ring != nil {
		errs = append(errs, unix.Munmap(t.ring))
		t.ring = nil
	}
	if t.fd >= 0 {
		errs = append(errs, unix.Close(t.fd))
		t.fd = -1
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("afpacket: close TX on %s: %w", t.ifname, err)
	}
	return nil
}
