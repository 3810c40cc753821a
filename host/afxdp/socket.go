package afxdp

import (
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// Errors callers branch on.
var (
	// ErrNotSupported: the interface, driver or kernel cannot do what was
	// asked (zero-copy bind on a driver without AF_XDP zero copy, driver
	// mode XDP on a driver without native XDP). Wrapped together with the
	// kernel's errno.
	ErrNotSupported = errors.New("not supported")
	// ErrClosed: the socket was closed.
	ErrClosed = errors.New("socket closed")
)

// BindMode says how the kernel moves packets between the NIC and the UMEM.
type BindMode int

const (
	// BindAuto tries BindZeroCopy and falls back to BindCopy.
	BindAuto BindMode = iota
	// BindZeroCopy: the driver DMAs straight into UMEM frames
	// (XDP_ZEROCOPY). Needs driver support; veth has none.
	BindZeroCopy
	// BindCopy: the kernel copies each packet into a UMEM frame (XDP_COPY).
	// Works on every interface.
	BindCopy
)

// String returns "auto", "zerocopy" or "copy".
func (m BindMode) String() string {
	switch m {
	case BindAuto:
		return "auto"
	case BindZeroCopy:
		return "zerocopy"
	case BindCopy:
		return "copy"
	}
	return fmt.Sprintf("BindMode(%d)", int(m))
}

// Mode is what Open chose.
type Mode struct {
	Bind BindMode // BindZeroCopy or BindCopy
	// XDP is where the redirect program runs; XDPAuto for a socket
	// opened with NoRX, which has no program.
	XDP XDPMode
}

// String returns e.g. "copy/generic" or "zerocopy/driver" ("copy/none"
// without a program).
func (m Mode) String() string {
	x := m.XDP.String()
	if m.XDP == XDPAuto {
		x = "none"
	}
	return m.Bind.String() + "/" + x
}

// bindBusyWait bounds the exponential backoff Open does while bind fails
// with EBUSY (the sum of the sleeps is about twice this).
const bindBusyWait = 512 * time.Millisecond

// DefaultRingSize is the size of each ring when Options leaves it zero.
// 4096, not 2048: with the capture and its consumer sharing a core, the
// kernel fills the RX side for a whole scheduler slice (a few ms) while
// the engine is off the CPU; at 1.3 Mpps a 2048-frame fill ring ran dry
// and lost a third of a flood, 4096 lost under 1% (docs/PERFORMANCE.md).
const DefaultRingSize = 4096

// Options tunes Open. The zero value tries zero copy then copy, driver XDP
// then generic, with DefaultRingSize rings and need_wakeup on.
type Options struct {
	Bind BindMode
	// XDP is the mode for the program Open attaches; ignored when Program
	// is set.
	XDP XDPMode
	// Program, if set, is a redirect program already attached to the same
	// interface (one per interface, shared by its queues' sockets): Open
	// registers the socket in it, Close unregisters it, and the caller
	// closes the Program after all its sockets. If nil, Open attaches a
	// program of its own, which Close detaches.
	Program *Program
	// NoRX opens a transmit-only socket: no RX ring and no XDP program.
	NoRX bool
	// Ring sizes in entries: powers of two; 0 means DefaultRingSize.
	FillSize, CompletionSize, RxSize, TxSize uint32
	// Headroom is reserved in each frame before received data, on top of
	// the kernel's XDP_PACKET_HEADROOM (256 bytes).
	Headroom uint32
	// NoNeedWakeup binds without XDP_USE_NEED_WAKEUP: every Transmit then
	// makes a sendto call, as on kernels before 5.4.
	NoNeedWakeup bool
}

// Desc describes one packet in the UMEM: Addr is a byte offset into the
// UMEM (frame index Addr/frameSize, offset in frame Addr%frameSize) and Len
// its length.
type Desc struct {
	Addr uint64
	Len  uint32
}

// Stats are the kernel's XDP_STATISTICS counters for a socket, cumulative
// since Open.
type Stats struct {
	RxDropped      uint64 // packets dropped for reasons other than the two below
	RxInvalidDescs uint64 // fill ring addresses the kernel rejected
	TxInvalidDescs uint64 // TX descriptors the kernel rejected
	RxRingFull     uint64 // packets dropped because the RX ring was full
	FillRingEmpty  uint64 // times a packet found the fill ring empty (dropped)
	// TxRingEmptyDescs counts the times the kernel looked at an empty TX
	// ring: every Poll in copy mode drives TX and counts one, so it grows
	// on a receive-only socket too. Not a drop.
	TxRingEmptyDescs uint64
}

// Socket is an AF_XDP socket bound to one queue of one interface, over a
// UMEM the caller owns. Receive and Fill must be called from one goroutine
// at a time, and Transmit and Complete from one goroutine at a time; the two
// pairs may run concurrently. Stats and Mode are safe anywhere; Close must
// not race with anything.
type Socket struct {
	fd        int
	ifname    string
	ifindex   int
	queue     int
	umem      []byte
	frameSize uint32
	mode      Mode
	wakeup    bool // bound with XDP_USE_NEED_WAKEUP
	zcErr     error
	prog      *Program
	ownProg   bool

	fill, comp addrRing
	rx, tx     descRing
	pfd        [1]unix.PollFd
	closed     bool
}

// Open creates an AF_XDP socket on queue of ifname (resolved in the calling
// thread's network namespace) over umem, which is split in frames of
// frameSize bytes. umem must start on a page boundary, stay mapped until
// Close returns, and its length must be a multiple of frameSize; frameSize
// is a power of two from 2048 to the page size. Open does not put frames in
// the fill ring: call Fill before expecting packets.
func Open(ifname string, queue int, umem []byte, frameSize uint32, opt Options) (*Socket, error) {
	if err := checkUMEM(umem, frameSize, opt.Headroom); err != nil {
		return nil, fmt.Errorf("afxdp: open %s queue %d: %w", ifname, queue, err)
	}
	for _, sz := range []*uint32{&opt.FillSize, &opt.CompletionSize, &opt.RxSize, &opt.TxSize} {
		if *sz == 0 {
			*sz = DefaultRingSize
		}
		if *sz&(*sz-1) != 0 {
			return nil, fmt.Errorf("afxdp: open %s queue %d: ring size %d is not a power of two", ifname, queue, *sz)
		}
	}
	if queue < 0 {
		return nil, fmt.Errorf("afxdp: open %s queue %d: negative queue", ifname, queue)
	}
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return nil, fmt.Errorf("afxdp: open %s queue %d: %w", ifname, queue, err)
	}
	s := &Socket{fd: -1, ifname: ifname, ifindex: ifi.Index, queue: queue, umem: umem, frameSize: frameSize}

	var errs []error
	for _, m := range []BindMode{BindZeroCopy, BindCopy} {
		if opt.Bind != BindAuto && opt.Bind != m {
			continue
		}
		err := s.setup(m, &opt)
		if err == nil {
			s.mode.Bind = m
			break
		}
		s.teardown()
		if errors.Is(err, unix.EOPNOTSUPP) {
			err = fmt.Errorf("%w: %w", ErrNotSupported, err)
		}
		err = fmt.Errorf("afxdp: bind %s queue %d (%s): %w", ifname, queue, m, err)
		if m == BindZeroCopy {
			s.zcErr = err
		}
		errs = append(errs, err)
	}
	if s.fd < 0 {
		return nil, errors.Join(errs...)
	}
	if opt.NoRX {
		return s, nil
	}
	s.prog = opt.Program
	if s.prog == nil {
		s.prog, err = Attach(ifname, ProgramOptions{Mode: opt.XDP, MaxQueues: max(DefaultMaxQueues, queue+1)})
		if err != nil {
			s.teardown()
			return nil, err
		}
		s.ownProg = true
	} else if s.prog.ifindex != s.ifindex {
		s.teardown()
		return nil, fmt.Errorf("afxdp: open %s queue %d: program is attached to %s", ifname, queue, s.prog.ifname)
	}
	s.mode.XDP = s.prog.mode
	if err := s.prog.register(queue, s.fd); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

func checkUMEM(umem []byte, frameSize, headroom uint32) error {
	page := uint32(os.Getpagesize())
	switch {
	case frameSize < 2048 || frameSize > page || frameSize&(frameSize-1) != 0:
		return fmt.Errorf("frame size %d: want a power of two from 2048 to %d", frameSize, page)
	case len(umem) == 0 || len(umem)%int(frameSize) != 0:
		return fmt.Errorf("UMEM of %d bytes: want a non-zero multiple of the frame size %d", len(umem), frameSize)
	case umemAddr(umem)%uintptr(page) != 0:
		return fmt.Errorf("UMEM at %#x: not page aligned", umemAddr(umem))
	case headroom >= frameSize-unix.XDP_PACKET_HEADROOM:
		return fmt.Errorf("headroom %d: want less than %d", headroom, frameSize-unix.XDP_PACKET_HEADROOM)
	}
	return nil
}

// setup creates, maps and binds the socket in bind mode m. On error the
// caller calls teardown.
func (s *Socket) setup(m BindMode, opt *Options) error {
	fd, err := unix.Socket(unix.AF_XDP, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	s.fd = fd
	if err := registerUMEM(fd, s.umem, s.frameSize, opt.Headroom); err != nil {
		return fmt.Errorf("register UMEM: %w", err)
	}
	sizes := []struct {
		opt  int
		size uint32
	}{
		{unix.XDP_UMEM_FILL_RING, opt.FillSize},
		{unix.XDP_UMEM_COMPLETION_RING, opt.CompletionSize},
		{unix.XDP_TX_RING, opt.TxSize},
	}
	if !opt.NoRX {
		sizes = append(sizes, struct {
			opt  int
			size uint32
		}{unix.XDP_RX_RING, opt.RxSize})
	}
	for _, r := range sizes {
		if err := unix.SetsockoptInt(fd, unix.SOL_XDP, r.opt, int(r.size)); err != nil {
			return fmt.Errorf("set ring size (option %d) to %d: %w", r.opt, r.size, err)
		}
	}
	off, err := mmapOffsets(fd)
	if err != nil {
		return fmt.Errorf("read mmap offsets: %w", err)
	}
	if err := mapAddrRing(&s.fill, fd, unix.XDP_UMEM_PGOFF_FILL_RING, off.Fr, opt.FillSize); err != nil {
		return fmt.Errorf("fill ring: %w", err)
	}
	if err := mapAddrRing(&s.comp, fd, unix.XDP_UMEM_PGOFF_COMPLETION_RING, off.Cr, opt.CompletionSize); err != nil {
		return fmt.Errorf("completion ring: %w", err)
	}
	if err := mapDescRing(&s.tx, fd, unix.XDP_PGOFF_TX_RING, off.Tx, opt.TxSize); err != nil {
		return fmt.Errorf("TX ring: %w", err)
	}
	if !opt.NoRX {
		if err := mapDescRing(&s.rx, fd, unix.XDP_PGOFF_RX_RING, off.Rx, opt.RxSize); err != nil {
			return fmt.Errorf("RX ring: %w", err)
		}
	}
	// A producer ring starts with all entries free.
	s.fill.cachedCons = s.fill.size
	s.tx.cachedCons = s.tx.size

	flags := uint16(unix.XDP_COPY)
	if m == BindZeroCopy {
		flags = unix.XDP_ZEROCOPY
	}
	s.wakeup = !opt.NoNeedWakeup
	if s.wakeup {
		flags |= unix.XDP_USE_NEED_WAKEUP
	}
	sa := &unix.SockaddrXDP{Flags: flags, Ifindex: uint32(s.ifindex), QueueID: uint32(s.queue)}
	// A socket closed a moment ago still holds the queue until a kernel
	// work item releases its buffer pool: retry EBUSY for a while.
	for wait := time.Millisecond; ; wait *= 2 {
		err := unix.Bind(fd, sa)
		if err == nil {
			break
		}
		if err != unix.EBUSY || wait > bindBusyWait {
			return err
		}
		time.Sleep(wait)
	}
	// Trust but verify: XDP_OPTIONS says whether zero copy is on.
	o, err := unix.GetsockoptInt(fd, unix.SOL_XDP, unix.XDP_OPTIONS)
	if err != nil {
		return fmt.Errorf("read XDP_OPTIONS: %w", err)
	}
	if zc := o&unix.XDP_OPTIONS_ZEROCOPY != 0; zc != (m == BindZeroCopy) {
		return fmt.Errorf("bound, but XDP_OPTIONS zero-copy is %v", zc)
	}
	s.pfd[0] = unix.PollFd{Fd: int32(fd), Events: unix.POLLIN}
	return nil
}

// teardown unmaps the rings and closes the socket (not the program).
func (s *Socket) teardown() {
	for _, r := range []*ring{&s.fill.ring, &s.comp.ring, &s.rx.ring, &s.tx.ring} {
		if r.mem != nil {
			_ = unix.Munmap(r.mem)
		}
		*r = ring{}
	}
	s.fill.addrs, s.comp.addrs, s.rx.descs, s.tx.descs = nil, nil, nil, nil
	if s.fd >= 0 {
		_ = unix.Close(s.fd)
		s.fd = -1
	}
}

// Mode returns the bind mode and XDP mode Open chose.
func (s *Socket) Mode() Mode { return s.mode }

// ZeroCopyErr returns why the zero-copy bind failed when BindAuto fell back
// to copy mode (it wraps ErrNotSupported when the driver lacks zero copy),
// or nil.
func (s *Socket) ZeroCopyErr() error { return s.zcErr }

// FD returns the socket's file descriptor, e.g. for an epoll loop.
func (s *Socket) FD() int { return s.fd }

// UMEM returns the UMEM the socket was opened over.
func (s *Socket) UMEM() []byte { return s.umem }

// FrameSize returns the UMEM frame size.
func (s *Socket) FrameSize() uint32 { return s.frameSize }

// Frame returns the bytes d describes, a slice of the UMEM (no copy). It
// panics if d lies outside the UMEM.
func (s *Socket) Frame(d Desc) []byte {
	return s.umem[d.Addr : d.Addr+uint64(d.Len) : d.Addr+uint64(d.Len)]
}

// Fill gives frames to the kernel for receiving: each addr is a UMEM
// offset inside the frame to fill (the kernel rounds it down to the frame
// start). It returns how many it took, from the front of addrs; the rest
// did not fit in the fill ring. The caller must not touch a filled frame
// until Receive returns it.
func (s *Socket) Fill(addrs []uint64) int {
	n := s.fill.free(uint32(len(addrs)))
	n = min(n, uint32(len(addrs)))
	for i := uint32(0); i < n; i++ {
		s.fill.addrs[(s.fill.cachedProd+i)&s.fill.mask] = addrs[i]
	}
	if n > 0 {
		s.fill.produce(n)
	}
	return int(n)
}

// Receive moves up to len(descs) received packets into descs and returns
// how many. Each descriptor's frame now belongs to the caller, who gives it
// back with Fill (or uses it for Transmit). Receive never blocks; use Poll
// to wait. When the ring is empty and the kernel asked for a fill-ring
// wakeup (zero-copy drivers do), Receive makes one non-blocking recvfrom
// call to kick the driver.
func (s *Socket) Receive(descs []Desc) int {
	n := s.rx.avail(uint32(len(descs)))
	if n == 0 {
		if s.wakeup && s.fill.needWakeup() {
			_, _, _ = unix.Recvfrom(s.fd, nil, unix.MSG_DONTWAIT)
		}
		return 0
	}
	for i := uint32(0); i < n; i++ {
		d := &s.rx.descs[(s.rx.cachedCons+i)&s.rx.mask]
		descs[i] = Desc{Addr: d.Addr, Len: d.Len}
	}
	s.rx.consume(n)
	return int(n)
}

// maxCopyKicks bounds the sendto calls one Transmit makes in copy mode,
// where each call sends at most a kernel budget of 32 packets.
const maxCopyKicks = 64

// Transmit queues packets for sending and returns how many it queued (from
// the front of descs; the rest did not fit in the TX ring). Each frame
// belongs to the kernel until Complete returns its address. Transmit kicks
// the kernel with sendto when needed: in copy mode it kicks until the
// kernel has taken everything queued (the kernel sends 32 packets per
// kick), in zero-copy mode once. A full device queue is not an error; the
// packets go out on a later kick (any later Transmit, or Kick).
func (s *Socket) Transmit(descs []Desc) (int, error) {
	if s.closed {
		return 0, ErrClosed
	}
	n := s.tx.free(uint32(len(descs)))
	n = min(n, uint32(len(descs)))
	for i := uint32(0); i < n; i++ {
		d := &s.tx.descs[(s.tx.cachedProd+i)&s.tx.mask]
		d.Addr, d.Len, d.Options = descs[i].Addr, descs[i].Len, 0
	}
	if n > 0 {
		s.tx.produce(n)
	}
	return int(n), s.Kick()
}

// Kick asks the kernel to send what the TX ring holds: in zero-copy mode
// only if the kernel asked for it (need_wakeup), in copy mode always, and
// repeatedly while the kernel keeps taking packets and some remain.
func (s *Socket) Kick() error {
	if s.closed {
		return ErrClosed
	}
	for i := 0; i < maxCopyKicks; i++ {
		before := s.tx.pending()
		// In copy mode the kernel never raises the TX ring's need_wakeup
		// flag (it only caches it), so copy mode always kicks.
		if before == 0 || (s.wakeup && s.mode.Bind == BindZeroCopy && !s.tx.needWakeup()) {
			return nil
		}
		err := unix.Sendto(s.fd, nil, unix.MSG_DONTWAIT, nil)
		switch err {
		case nil, unix.EAGAIN, unix.EBUSY, unix.ENOBUFS, unix.EINTR:
		default:
			return fmt.Errorf("afxdp: kick TX of %s queue %d: %w", s.ifname, s.queue, err)
		}
		if err != nil || s.mode.Bind == BindZeroCopy || s.tx.pending() >= before {
			return nil
		}
	}
	return nil
}

// Complete moves up to len(addrs) addresses of sent frames into addrs and
// returns how many. Those frames belong to the caller again.
func (s *Socket) Complete(addrs []uint64) int {
	n := s.comp.avail(uint32(len(addrs)))
	for i := uint32(0); i < n; i++ {
		addrs[i] = s.comp.addrs[(s.comp.cachedCons+i)&s.comp.mask]
	}
	if n > 0 {
		s.comp.consume(n)
	}
	return int(n)
}

// Poll waits until the RX ring holds packets or timeout passes (a negative
// timeout waits forever) and reports whether packets are there. poll(2)
// also kicks a zero-copy driver that asked for a wakeup.
func (s *Socket) Poll(timeout time.Duration) (bool, error) {
	if s.closed {
		return false, ErrClosed
	}
	ms := -1
	if timeout >= 0 {
		ms = int((timeout + time.Millisecond - 1) / time.Millisecond)
	}
	for {
		s.pfd[0].Revents = 0
		n, err := unix.Poll(s.pfd[:], ms)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return false, fmt.Errorf("afxdp: poll %s queue %d: %w", s.ifname, s.queue, err)
		}
		if n > 0 && s.pfd[0].Revents&unix.POLLERR != 0 {
			return false, fmt.Errorf("afxdp: poll %s queue %d: %w", s.ifname, s.queue, unix.ENXIO)
		}
		return n > 0 && s.pfd[0].Revents&unix.POLLIN != 0, nil
	}
}

// Stats returns the kernel's counters for the socket.
func (s *Socket) Stats() (Stats, error) {
	if s.closed {
		return Stats{}, ErrClosed
	}
	st, err := statistics(s.fd)
	if err != nil {
		return Stats{}, fmt.Errorf("afxdp: statistics of %s queue %d: %w", s.ifname, s.queue, err)
	}
	return Stats{
		RxDropped:        st.Rx_dropped,
		RxInvalidDescs:   st.Rx_invalid_descs,
		TxInvalidDescs:   st.Tx_invalid_descs,
		RxRingFull:       st.Rx_ring_full,
		FillRingEmpty:    st.Rx_fill_ring_empty_descs,
		TxRingEmptyDescs: st.Tx_ring_empty_descs,
	}, nil
}

// Close unregisters the socket from its program, detaches the program if
// Open attached it, unmaps the rings and closes the socket. Frames in the
// fill, RX, TX and completion rings are the caller's again once Close
// returns (the kernel unpins the UMEM when the last reference goes).
func (s *Socket) Close() error {
	if s.closed {
		return nil
	}
	s.closed = true
	var err error
	if s.prog != nil {
		if s.ownProg {
			err = s.prog.Close()
		} else {
			s.prog.unregister(s.queue)
		}
	}
	s.teardown()
	return err
}
