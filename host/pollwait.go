package host

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Pollable is a source whose socket's poll(2) readiness says packets are
// there: an AF_PACKET ring (a block handed to user space) or an AF_XDP
// socket (its RX ring holds descriptors). An engine whose every live
// source is Pollable (or paced, Waiter) sleeps in poll(2) once it is
// idle, instead of napping: no CPU while the wire is quiet, and woken by
// the kernel when a frame arrives.
type Pollable interface {
	PollFD() int
}

// PollFD implements Pollable: the TPACKET_V3 socket.
func (a *AFPacket) PollFD() int { return a.rx.FD() }

// PollFD implements Pollable: the XSK socket.
func (a *AFXDP) PollFD() int { return a.sock.FD() }

// pollSlice is the longest poll(2) sleep. A stop and Engine.Wake (sent
// with each Control function) wake it at once, and nothing else is due
// while every socket is quiet: an idle capture wakes once per slice.
const pollSlice = maxIdleSleep

// poller sleeps in poll(2) on the live sources' sockets and an eventfd
// that a stop or a poke writes.
type poller struct {
	mu     sync.Mutex
	efd    int // -1 when closed, or when eventfd failed (then no poll sleeps)
	fds    []unix.PollFd
	stop   func() bool
	sleeps *atomic.Uint64 // counted as each sleep starts (Engine.PollSleeps)
}

func newPoller(ctx context.Context, sleeps *atomic.Uint64) *poller {
	p := &poller{efd: -1, sleeps: sleeps}
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return p
	}
	p.efd = efd
	p.stop = context.AfterFunc(ctx, func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.efd >= 0 {
			unix.Write(p.efd, []byte{1, 0, 0, 0, 0, 0, 0, 0})
		}
	})
	return p
}

func (p *poller) close() {
	if p.stop != nil {
		p.stop()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.efd >= 0 {
		unix.Close(p.efd)
		p.efd = -1
	}
}

// sleep polls the live sources' sockets for up to limit when every live
// source is Pollable, and reports whether it slept. It returns as soon as
// a socket is readable (or in error: the next Recv says why) or the
// eventfd is written (a stop or a poke).
func (p *poller) sleep(sources []Source, live []bool, limit time.Duration) bool {
	if p.efd < 0 {
		return false
	}
	p.fds = append(p.fds[:0], unix.PollFd{Fd: int32(p.efd), Events: unix.POLLIN})
	for i, s := range sources {
		if !live[i] {
			continue
		}
		ps, ok := s.(Pollable)
		if !ok {
			return false
		}
		p.fds = append(p.fds, unix.PollFd{Fd: int32(ps.PollFD()), Events: unix.POLLIN})
	}
	p.sleeps.Add(1)
	for {
		_, err := unix.Poll(p.fds, int(limit/time.Millisecond))
		if err != unix.EINTR {
			break
		}
	}
	if p.fds[0].Revents&unix.POLLIN != 0 {
		// A poke (or the stop, which Run sees on its context): read it
		// back, or every later poll would return at once.
		var b [8]byte
		unix.Read(p.efd, b[:])
	}
	return true
}

// poke wakes a sleep in progress, or makes the next one return at once.
func (p *poller) poke() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.efd >= 0 {
		unix.Write(p.efd, []byte{1, 0, 0, 0, 0, 0, 0, 0})
	}
}
