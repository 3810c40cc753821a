package doorbell

import (
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// testClient is the client side of the protocol, as QEMU's ivshmem-doorbell
// device implements it: it reads the version, its id, the shared memory,
// then connect notifications until its own eventfds came.
type testClient struct {
	conn  *net.UnixConn
	id    int64
	shm   *os.File
	peers map[int64][]int // peer id → eventfds to interrupt it, by vector
	own   []int           // eventfds this client is interrupted through
	gone  []int64         // disconnect notifications received
}

// msg is one message: a value and the fd that came with it (-1 if none).
type msg struct {
	v  int64
	fd int
}

// recv reads one message, with its fd if any.
func recv(conn *net.UnixConn, timeout time.Duration) (msg, error) {
	if err := conn.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return msg{}, err
	}
	var b [MsgSize]byte
	oob := make([]byte, unix.CmsgSpace(4*4))
	got := 0
	m := msg{fd: -1}
	for got < MsgSize {
		n, oobn, _, _, err := conn.ReadMsgUnix(b[got:], oob)
		if err != nil {
			return msg{}, err
		}
		if oobn > 0 {
			cmsgs, err := unix.ParseSocketControlMessage(oob[:oobn])
			if err != nil {
				return msg{}, err
			}
			for _, c := range cmsgs {
				fds, err := unix.ParseUnixRights(&c)
				if err != nil {
					return msg{}, err
				}
				for _, fd := range fds {
					if m.fd >= 0 {
						unix.Close(fd)
						return msg{}, errors.New("more than one fd in a message")
					}
					m.fd = fd
				}
			}
		}
		got += n
	}
	m.v = Decode(b)
	return m, nil
}

// dialClient connects to path and completes the handshake for a device with
// vectors vectors.
func dialClient(path string, vectors int) (*testClient, error) {
	conn, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, err
	}
	c := &testClient{conn: conn, peers: map[int64][]int{}}
	fail := func(err error) (*testClient, error) {
		c.Close()
		return nil, err
	}
	m, err := recv(conn, 5*time.Second)
	if err != nil {
		return fail(fmt.Errorf("version: %w", err))
	}
	if m.v != ProtocolVersion || m.fd != -1 {
		return fail(fmt.Errorf("version message %d fd %d", m.v, m.fd))
	}
	if m, err = recv(conn, 5*time.Second); err != nil {
		return fail(fmt.Errorf("id: %w", err))
	}
	if m.v < 0 || m.v > 0xffff || m.fd != -1 {
		return fail(fmt.Errorf("id message %d fd %d", m.v, m.fd))
	}
	c.id = m.v
	if m, err = recv(conn, 5*time.Second); err != nil {
		return fail(fmt.Errorf("memory: %w", err))
	}
	if m.v != -1 || m.fd < 0 {
		return fail(fmt.Errorf("memory message %d fd %d", m.v, m.fd))
	}
	c.shm = os.NewFile(uintptr(m.fd), "shm")
	for len(c.own) < vectors {
		m, err := recv(conn, 5*time.Second)
		if err != nil {
			return fail(fmt.Errorf("setup: %w", err))
		}
		c.apply(m)
	}
	return c, nil
}

// apply records a connect or disconnect notification.
func (c *testClient) apply(m msg) {
	switch {
	case m.fd < 0:
		c.gone = append(c.gone, m.v)
		for _, fd := range c.peers[m.v] {
			unix.Close(fd)
		}
		delete(c.peers, m.v)
	case m.v == c.id:
		c.own = append(c.own, m.fd)
	default:
		c.peers[m.v] = append(c.peers[m.v], m.fd)
	}
}

// next reads and applies one more notification.
func (c *testClient) next(timeout time.Duration) (msg, error) {
	m, err := recv(c.conn, timeout)
	if err == nil {
		c.apply(m)
	}
	return m, err
}

// ring interrupts peer on vector the way QEMU does for a doorbell write.
func (c *testClient) ring(peer int64, vector int) error {
	fds := c.peers[peer]
	if vector >= len(fds) {
		return fmt.Errorf("peer %d has no vector %d", peer, vector)
	}
	_, err := unix.Write(fds[vector], one[:])
	return err
}

// pending reads (and clears) the counter of the client's own vector
// without blocking; 0 means no interrupt is pending.
func (c *testClient) pending(vector int) (uint64, error) {
	var b [8]byte
	_, err := unix.Read(c.own[vector], b[:])
	if errors.Is(err, unix.EAGAIN) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	return uint64(Decode(b)), nil
}

// waitInterrupt blocks up to timeout for an interrupt on the client's own
// vector.
func (c *testClient) waitInterrupt(vector int, timeout time.Duration) (uint64, error) {
	fds := []unix.PollFd{{Fd: int32(c.own[vector]), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, int(timeout.Milliseconds()))
	if err != nil {
		return 0, err
	}
	if n == 0 {
		return 0, errors.New("no interrupt")
	}
	return c.pending(vector)
}

func (c *testClient) Close() {
	c.conn.Close()
	if c.shm != nil {
		c.shm.Close()
	}
	for _, fds := range c.peers {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}
	for _, fd := range c.own {
		unix.Close(fd)
	}
}
