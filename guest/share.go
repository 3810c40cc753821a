package guest

import (
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Sharing a doorbell's interrupts between the processes of a guest.
//
// VFIO lets one process at a time open a device (a second open of its
// group fails with EBUSY), so only the first process of a guest to open a
// doorbell could take its interrupts; every other reader of a queue of
// that device polled. The process that holds the device (the owner) now
// also listens on an abstract unix socket named after the device
// (shareName). Another process of the guest that opens the doorbell
// connects to it first: the owner answers with one byte (shareHello) and
// an eventfd (SCM_RIGHTS), and writes to that eventfd each time one of
// the device's vectors fires. Each interrupt wakes every process; each
// looks at its own queues, as it would after a spurious wake-up.
//
// With the eventfd the owner also passes its VFIO descriptors (device,
// group, container), which the subscriber keeps: the device stays open
// as long as any process of the guest uses its interrupts. When the last
// descriptor of an open device closes, vfio-pci disables it (it writes
// the PCI command register, turning memory decoding off, tries a bus
// reset, then restores it), and every process that maps BAR2 reads zeros
// meanwhile: it took its region for unplugged, or its ring indices for
// corrupt. A takeover with the passed descriptors opens and releases
// nothing.
//
// The connection stays open and carries what ends the sharing:
//   - shareGone: the device is being unplugged (the owner received the
//     kernel's device request and released it); the subscriber's Wait
//     returns ErrDoorbellGone, and it closes the descriptors it kept, so
//     that the unplug completes.
//   - end of file: the owner closed its doorbell or its process ended;
//     the subscriber takes the interrupts over (it listens first, which
//     only one process can, then routes the vectors to eventfds of its
//     own through the descriptors it kept, and serves the others), or
//     subscribes to whoever did. Without descriptors (an owner from
//     before they were passed) it opens the device through VFIO itself,
//     which the kernel allows once the owner's descriptors are closed.
//
// The owner drops a subscriber when its connection ends (the process
// exited). Any process of the guest may connect: all it can get is
// wake-ups.
//
// A reader that maps BAR2 without this package (the libpcap shim,
// pcapshim/src/zcreader.c) subscribes too, and keeps the descriptors (it
// sends one byte, 'S', as it connects; the owner reads nothing a
// subscriber sends).
// When the owner stops and no Go process takes over, such a reader lends
// them: it listens in the owner's place without taking the interrupts,
// and answers a connection with shareTake and the 3 descriptors (no
// eventfd). The process that connected takes the interrupts over with
// them (adopt), as after its owner stopped; the reader stops listening
// first, and subscribes to it.
const (
	shareHello = 'H'
	shareGone  = 'G'
	shareTake  = 'T'
)

// shareName is the abstract unix socket of the owner of device d's
// interrupts: a hash of the device's sysfs directory (unique per device,
// and per fake sysfs tree in tests).
func shareName(d Device) string {
	h := fnv.New64a()
	h.Write([]byte(d.Dir))
	return fmt.Sprintf("@zcfabric-doorbell-%016x", h.Sum64())
}

// bellShare is the owner's side: it passes each interrupt on to the
// subscribers' eventfds.
type bellShare struct {
	ln     *net.UnixListener
	vfds   []int // the owner's VFIO descriptors, passed with each hello
	mu     sync.Mutex
	subs   map[*net.UnixConn]int // each subscriber's eventfd
	closed bool
	wg     sync.WaitGroup
}

// listenShare starts passing device d's interrupts on to the guest's other
// processes, with v's descriptors (v may be nil in tests). Only one
// process of the guest can listen: that makes it the owner.
func listenShare(d Device, v *vfio) (*bellShare, error) {
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: shareName(d), Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("share the interrupts of %s: %w", d.Addr, err)
	}
	s := &bellShare{ln: ln, subs: make(map[*net.UnixConn]int)}
	if v != nil {
		s.vfds = v.fds()
	}
	s.wg.Add(1)
	go s.accept()
	return s, nil
}

func (s *bellShare) accept() {
	defer s.wg.Done()
	for {
		c, err := s.ln.AcceptUnix()
		if err != nil {
			return // closed
		}
		fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
		if err != nil {
			c.Close()
			continue
		}
		if _, _, err := c.WriteMsgUnix([]byte{shareHello}, unix.UnixRights(append([]int{fd}, s.vfds...)...), nil); err != nil {
			unix.Close(fd)
			c.Close()
			continue
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			unix.Close(fd)
			c.Close()
			return
		}
		s.subs[c] = fd
		s.wg.Add(1)
		s.mu.Unlock()
		go s.watch(c)
	}
}

// watch drops a subscriber once its connection ends (its process closed
// the doorbell or exited). Subscribers send nothing.
func (s *bellShare) watch(c *net.UnixConn) {
	defer s.wg.Done()
	var b [1]byte
	for {
		if _, err := c.Read(b[:]); err != nil {
			break
		}
	}
	s.mu.Lock()
	if fd, ok := s.subs[c]; ok {
		delete(s.subs, c)
		unix.Close(fd)
	}
	s.mu.Unlock()
	c.Close()
}

// notify wakes every subscriber: one eventfd write each.
func (s *bellShare) notify() {
	one := [8]byte{1} // the eventfd counter is host-endian; amd64 and arm64 are little-endian
	s.mu.Lock()
	for _, fd := range s.subs {
		unix.Write(fd, one[:])
	}
	s.mu.Unlock()
}

// subscribers returns how many processes the owner passes interrupts to.
func (s *bellShare) subscribers() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.subs)
}

// close ends the sharing. With gone (the device is being unplugged) the
// subscribers are told so; otherwise they see the connection end and take
// the interrupts over. Safe to call twice.
func (s *bellShare) close(gone bool) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	s.ln.Close()
	for c, fd := range s.subs {
		if gone {
			c.SetWriteDeadline(time.Now().Add(time.Second))
			c.Write([]byte{shareGone})
		}
		c.Close()
		unix.Close(fd)
		delete(s.subs, c)
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// errNoOwner: nobody in this guest shares the device's interrupts.
var errNoOwner = errors.New("no process of this guest shares the device's interrupts")

// errHandedOver: a reader that held the device without its interrupts
// handed its descriptors over (shareTake): take the interrupts with them.
var errHandedOver = errors.New("handed the device's descriptors to take its interrupts over")

// dialShare subscribes to the interrupts of device d that another process
// of the guest holds: the connection (which ends the subscription when
// closed, or tells of an unplug), the eventfd the owner writes, and the
// owner's VFIO descriptors (nil from an owner that passes none). From a
// reader that lends the descriptors it returns them alone, with
// errHandedOver.
func dialShare(d Device) (*net.UnixConn, *os.File, *vfio, error) {
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: shareName(d), Net: "unix"})
	if err != nil {
		return nil, nil, nil, fmt.Errorf("%w: %v", errNoOwner, err)
	}
	fail := func(err error) (*net.UnixConn, *os.File, *vfio, error) {
		c.Close()
		return nil, nil, nil, fmt.Errorf("subscribe to the interrupts of %s: %w", d.Addr, err)
	}
	c.SetReadDeadline(time.Now().Add(time.Second))
	var b [1]byte
	oob := make([]byte, unix.CmsgSpace(4*4))
	n, oobn, _, _, err := c.ReadMsgUnix(b[:], oob)
	if err != nil {
		return fail(err)
	}
	c.SetReadDeadline(time.Time{})
	if n != 1 || (b[0] != shareHello && b[0] != shareTake) {
		return fail(fmt.Errorf("owner answered %q", b[:n]))
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		return fail(fmt.Errorf("no eventfd in the owner's answer (%v)", err))
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err == nil && b[0] == shareTake && len(fds) == 3 {
		c.Close()
		for _, fd := range fds {
			unix.CloseOnExec(fd)
		}
		return nil, nil, &vfio{dev: fds[0], group: fds[1], container: fds[2]}, errHandedOver
	}
	if err != nil || b[0] != shareHello || (len(fds) != 1 && len(fds) != 4) {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return fail(fmt.Errorf("want an eventfd and maybe 3 VFIO descriptors in the owner's answer, got %d (%v)", len(fds), err))
	}
	for _, fd := range fds {
		unix.CloseOnExec(fd)
	}
	var held *vfio
	if len(fds) == 4 {
		held = &vfio{dev: fds[1], group: fds[2], container: fds[3]}
	}
	// The eventfd is non-blocking (the owner made it so; the flag is the
	// open file's), so the runtime poller watches the file.
	return c, os.NewFile(uintptr(fds[0]), "doorbell-share"), held, nil
}
