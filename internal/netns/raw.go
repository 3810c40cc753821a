package netns

import (
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// Raw is an AF_PACKET SOCK_RAW socket bound to one interface in a
// namespace, for injecting and observing whole Ethernet frames in tests.
// It is not safe for concurrent use.
type Raw struct {
	fd     int
	ifname string
}

// OpenRaw opens a raw packet socket on e.Ifname inside e.NS that receives
// only frames of the given EtherType (host byte order; unix.ETH_P_ALL for
// all) and sends frames as given, bypassing the qdisc.
func (e End) OpenRaw(etherType uint16) (*Raw, error) {
	r := &Raw{fd: -1, ifname: e.Ifname}
	err := e.Do(func() error {
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		r.fd = fd
		// Best effort: bypassing the qdisc makes floods faster.
		_ = unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_QDISC_BYPASS, 1)
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(etherType), Ifindex: e.Ifindex})
	})
	if err != nil {
		if r.fd >= 0 {
			unix.Close(r.fd)
		}
		return nil, fmt.Errorf("netns: raw socket on %s in %s: %w", e.Ifname, e.NS, err)
	}
	return r, nil
}

// Send transmits one frame (starting with the Ethernet header), retrying
// while the device queue is full.
func (r *Raw) Send(frame []byte) error {
	for {
		_, err := unix.Write(r.fd, frame)
		if errors.Is(err, unix.ENOBUFS) || errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			time.Sleep(10 * time.Microsecond)
			continue
		}
		if err != nil {
			return fmt.Errorf("netns: send on %s: %w", r.ifname, err)
		}
		return nil
	}
}

// Recv reads one frame into buf, waiting at most timeout. It returns the
// frame's length (which may exceed len(buf) if the frame was truncated) and
// an error wrapping unix.EAGAIN when nothing came in time.
func (r *Raw) Recv(buf []byte, timeout time.Duration) (int, error) {
	tv := unix.NsecToTimeval(timeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(r.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return 0, fmt.Errorf("netns: set receive timeout on %s: %w", r.ifname, err)
	}
	for {
		n, _, err := unix.Recvfrom(r.fd, buf, unix.MSG_TRUNC)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("netns: receive on %s: %w", r.ifname, err)
		}
		return n, nil
	}
}

// SetReadBuffer sets the socket's receive buffer to n bytes, beyond
// net.core.rmem_max (SO_RCVBUFFORCE, root), for bursts that arrive faster
// than the test reads them.
func (r *Raw) SetReadBuffer(n int) error {
	if err := unix.SetsockoptInt(r.fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, n); err != nil {
		return fmt.Errorf("netns: receive buffer of %s: %w", r.ifname, err)
	}
	return nil
}

// Close closes the socket.
func (r *Raw) Close() error {
	if r.fd < 0 {
		return nil
	}
	err := unix.Close(r.fd)
	r.fd = -1
	return err
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
