package doorbell

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"net"
	"os"
	"slices"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// HostID is the host peer's id: the agent's own place among the peers. A
// guest wakes the host by writing HostID<<16|vector to its Doorbell
// register. Clients (QEMU processes) get ids from 1 up.
const HostID = 0

// MaxVectors bounds [Config.Vectors]: each vector costs one eventfd per
// peer in the agent and in every QEMU.
const MaxVectors = 64

// Defaults for [Config].
const (
	// DefaultMaxClients is how many clients may be connected at once.
	DefaultMaxClients = 4
	// DefaultSendTimeout bounds each message the server sends to a
	// client.
	DefaultSendTimeout = 2 * time.Second
)

// Sentinel errors callers branch on.
var (
	// ErrNoPeer means no connected peer has the id given to Notify.
	ErrNoPeer = errors.New("no such peer")
	// ErrBadVector means a vector outside 0..Vectors-1.
	ErrBadVector = errors.New("no such vector")
	// ErrBadSize means the shared memory's size is not a power of two (an
	// ivshmem BAR must be; QEMU 7.2 aborts on anything else) or is zero.
	ErrBadSize = errors.New("shared memory size is not a power of two")
	// ErrClosed means the server is closed.
	ErrClosed = errors.New("doorbell server closed")
	// ErrIDsExhausted means all 65535 client ids of this server were
	// handed out; ids are never reused (see the package doc).
	ErrIDsExhausted = errors.New("client ids exhausted")
)

// Config says what a [Server] serves.
type Config struct {
	// Path is the unix socket to listen on. A stale socket file that
	// nobody listens on any more is replaced; any other file there is an
	// error.
	Path string
	// Memory is the shared memory every client maps: the region's memfd,
	// or its file opened O_RDWR. Its size must be a power of two. The
	// server sends it to each client and never closes it; the caller
	// keeps it open until Close returns.
	Memory *os.File
	// Vectors is the number of interrupt vectors per peer, 1..MaxVectors
	// (0 means 1). Hot-plug the device with the same number.
	Vectors int
	// Mesh makes clients peers of each other as in QEMU's example server:
	// each learns the others' eventfds and gets their disconnect
	// notifications, so guests can interrupt each other. By default a
	// client sees only itself and the host peer: a guest can ring the
	// host and nobody else (fault isolation).
	Mesh bool
	// MaxClients bounds the clients connected at once (0 means
	// DefaultMaxClients); further connections are closed at once.
	MaxClients int
	// SendTimeout bounds each message sent to a client (0 means
	// DefaultSendTimeout). A client that does not read is dropped.
	SendTimeout time.Duration
	// Mode is the socket file's permission bits (0 means 0600). QEMU's
	// user must be able to connect.
	Mode os.FileMode
	// OnPeer, if set, is called when a client has completed the handshake
	// (connected true) and when it is gone (false). It runs on the
	// server's goroutines, without locks held; it must not block long.
	OnPeer func(id uint16, connected bool)
	// Logf, if set, receives one line per dropped or refused client.
	Logf func(format string, args ...any)
}

// Server is an ivshmem server for one shared memory: it hands each client
// (a QEMU with an ivshmem-doorbell device) the memory and eventfds, and is
// itself the host peer ([HostID]) with eventfds of its own. Its methods are
// safe for concurrent use.
type Server struct {
	cfg  Config
	path string
	ln   *net.UnixListener

	// hostFD are the host peer's eventfds, one per vector (non-blocking,
	// read in WaitHost), and stopFD an eventfd Close writes to end every
	// WaitHost. They are plain descriptors, not in the Go runtime's
	// poller: a guest ringing without pause would otherwise wake the
	// runtime once per ring (measured: 0.7 of a CPU at 440,000 writes/s
	// on an eventfd nobody read). hostMu (read-held by WaitHost and
	// RingHost) keeps them open while in use; hostClosed says Close
	// closed them.
	hostFD     []int
	stopFD     int
	hostMu     sync.RWMutex
	hostClosed bool
	memFD      int // cfg.Memory's descriptor

	hsMu   sync.Mutex // serialises handshakes and mesh notifications
	nextID int        // next client id; ids are never reused

	mu      sync.RWMutex
	clients map[uint16]*client
	conns   map[*net.UnixConn]struct{} // every accepted conn, for Close
	closed  bool

	refusing map[*net.UnixConn]struct{} // refused conns waiting for the hang-up

	wg sync.WaitGroup
}

// client is one connected QEMU.
type client struct {
	id   uint16
	conn *net.UnixConn // nil for a client taken over by Recover
	fds  []int         // its own eventfds: writing one interrupts its guest
	pid  int           // its process (SO_PEERCRED), 0 if unknown
}

// Listen validates cfg, creates the host peer's eventfds and starts serving
// on cfg.Path.
func Listen(cfg Config) (*Server, error) {
	s, err := listen(cfg)
	if err != nil {
		return nil, fmt.Errorf("zc: doorbell server at %s: %w", cfg.Path, err)
	}
	return s, nil
}

func listen(cfg Config) (*Server, error) {
	return listenWith(cfg, nil, HostID+1)
}

// listenWith is Listen with the host peer's eventfds given (nil: create
// them) and the first client id.
func listenWith(cfg Config, host []int, nextID int) (*Server, error) {
	if cfg.Memory == nil {
		closeFDs(host)
		return nil, errors.New("no shared memory")
	}
	if cfg.Vectors == 0 {
		cfg.Vectors = 1
	}
	if cfg.Vectors < 0 || cfg.Vectors > MaxVectors {
		closeFDs(host)
		return nil, fmt.Errorf("%w: %d vectors (1..%d)", ErrBadVector, cfg.Vectors, MaxVectors)
	}
	if cfg.MaxClients <= 0 {
		cfg.MaxClients = DefaultMaxClients
	}
	if cfg.SendTimeout <= 0 {
		cfg.SendTimeout = DefaultSendTimeout
	}
	if cfg.Mode == 0 {
		cfg.Mode = 0o600
	}
	if _, err := memorySize(cfg.Memory); err != nil {
		closeFDs(host)
		return nil, err
	}
	if host != nil && len(host) != cfg.Vectors {
		closeFDs(host)
		return nil, fmt.Errorf("%d host eventfds for %d vectors", len(host), cfg.Vectors)
	}
	s := &Server{cfg: cfg, path: cfg.Path, nextID: nextID, clients: map[uint16]*client{}, conns: map[*net.UnixConn]struct{}{},
		refusing: map[*net.UnixConn]struct{}{}, memFD: int(cfg.Memory.Fd()), stopFD: -1}
	var err error
	if s.stopFD, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
		closeFDs(host)
		return nil, fmt.Errorf("create stop eventfd: %w", err)
	}
	for v := range cfg.Vectors {
		var fd int
		if host != nil {
			fd = host[v]
		} else {
			var err error
			if fd, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
				s.closeHost()
				return nil, fmt.Errorf("create host eventfd: %w", err)
			}
		}
		s.hostFD = append(s.hostFD, fd)
	}
	if err := removeStale(cfg.Path); err != nil {
		s.closeHost()
		return nil, err
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: cfg.Path, Net: "unix"})
	if err != nil {
		s.closeHost()
		return nil, err
	}
	if err := os.Chmod(cfg.Path, cfg.Mode); err != nil {
		ln.Close()
		s.closeHost()
		return nil, err
	}
	s.ln = ln
	s.wg.Add(1)
	go s.accept()
	return s, nil
}

// memorySize returns the size of f, or ErrBadSize.
func memorySize(f *os.File) (int64, error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, fmt.Errorf("stat shared memory: %w", err)
	}
	n := fi.Size()
	if n <= 0 || bits.OnesCount64(uint64(n)) != 1 {
		return 0, fmt.Errorf("%w: %d bytes", ErrBadSize, n)
	}
	return n, nil
}

// removeStale removes a socket file at path that nobody listens on (left by
// a process that died). Any other file is left alone and Listen fails.
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode().Type() != os.ModeSocket {
		return fmt.Errorf("%s exists and is not a socket", path)
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("%s: %w", path, syscall.EADDRINUSE)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("probe %s: %w", path, err)
	}
	return os.Remove(path)
}

// Path returns the socket path clients connect to.
func (s *Server) Path() string { return s.path }

// Vectors returns the number of vectors per peer.
func (s *Server) Vectors() int { return len(s.hostFD) }

// Peers returns the ids of the connected clients, sorted.
func (s *Server) Peers() []uint16 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	ids := make([]uint16, 0, len(s.clients))
	for id := range s.clients {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// one is the 8-byte native-endian 1 an eventfd write adds.
var one = [8]byte{1}

// Notify interrupts the guest of client peer on vector: it adds 1 to the
// client's eventfd, which QEMU turns into an MSI-X interrupt (dropped while
// the guest has MSI-X disabled or nobody in the guest handles it; see the
// package doc). It fails with [ErrNoPeer] when no such client is connected
// and [ErrBadVector] for a vector out of range. It allocates nothing.
func (s *Server) Notify(peer uint16, vector int) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	c := s.clients[peer]
	if c == nil {
		return fmt.Errorf("zc: doorbell notify peer %d: %w", peer, ErrNoPeer)
	}
	if vector < 0 || vector >= len(c.fds) {
		return fmt.Errorf("zc: doorbell notify peer %d vector %d: %w", peer, vector, ErrBadVector)
	}
	if _, err := unix.Write(c.fds[vector], one[:]); err != nil && err != unix.EAGAIN {
		// EAGAIN: the counter is saturated, a wake-up is pending anyway.
		return fmt.Errorf("zc: doorbell notify peer %d vector %d: %w", peer, vector, err)
	}
	return nil
}

// RingHost adds 1 to the host peer's eventfd for vector, as a guest's
// doorbell write does; for host processes and tests.
func (s *Server) RingHost(vector int) error {
	if vector < 0 || vector >= len(s.hostFD) {
		return fmt.Errorf("zc: doorbell ring host vector %d: %w", vector, ErrBadVector)
	}
	s.hostMu.RLock()
	defer s.hostMu.RUnlock()
	if s.hostClosed {
		return fmt.Errorf("zc: doorbell ring host vector %d: %w", vector, ErrClosed)
	}
	if _, err := unix.Write(s.hostFD[vector], one[:]); err != nil && err != unix.EAGAIN {
		return fmt.Errorf("zc: doorbell ring host vector %d: %w", vector, err)
	}
	return nil
}

// HostFD returns the host peer's eventfd for vector, for callers that poll
// it themselves (epoll, or a poll over several doorbells): it becomes
// readable when a guest rings the host on vector; read 8 bytes to clear it.
// It is non-blocking and stays valid until Close. It returns -1 for a
// vector out of range.
func (s *Server) HostFD(vector int) int {
	if vector < 0 || vector >= len(s.hostFD) {
		return -1
	}
	return s.hostFD[vector]
}

// WaitHost blocks until a guest rings the host on vector, or ctx ends, or
// the server is closed. It returns how many rings arrived since the last
// wait (at least 1) and clears them: rings that came before the call are
// not lost, it returns at once. Use one waiter per vector at a time. It
// blocks its thread in poll(2) (the eventfd is kept out of the runtime's
// poller, see Server); a ctx that can end costs an eventfd per call.
func (s *Server) WaitHost(ctx context.Context, vector int) (uint64, error) {
	if vector < 0 || vector >= len(s.hostFD) {
		return 0, fmt.Errorf("zc: doorbell wait host vector %d: %w", vector, ErrBadVector)
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	s.hostMu.RLock()
	defer s.hostMu.RUnlock()
	if s.hostClosed {
		return 0, fmt.Errorf("zc: doorbell wait host vector %d: %w", vector, ErrClosed)
	}
	fds := [3]unix.PollFd{{Fd: int32(s.hostFD[vector]), Events: unix.POLLIN}, {Fd: int32(s.stopFD), Events: unix.POLLIN}, {Fd: -1}}
	if ctx.Done() != nil {
		cfd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
		if err != nil {
			return 0, fmt.Errorf("zc: doorbell wait host vector %d: %w", vector, err)
		}
		defer unix.Close(cfd)
		fired := make(chan struct{})
		stop := context.AfterFunc(ctx, func() {
			unix.Write(cfd, one[:])
			close(fired)
		})
		defer func() {
			if !stop() {
				<-fired // it writes cfd: let it finish before cfd closes
			}
		}()
		fds[2] = unix.PollFd{Fd: int32(cfd), Events: unix.POLLIN}
	}
	var b [8]byte
	for {
		n, err := unix.Read(s.hostFD[vector], b[:])
		switch {
		case err == nil && n == 8:
			return binary.NativeEndian.Uint64(b[:]), nil
		case err == nil:
			return 0, fmt.Errorf("zc: doorbell wait host vector %d: short read of %d bytes", vector, n)
		case err != unix.EAGAIN:
			return 0, fmt.Errorf("zc: doorbell wait host vector %d: %w", vector, err)
		}
		if _, err := unix.Poll(fds[:], -1); err != nil && err != unix.EINTR {
			return 0, fmt.Errorf("zc: doorbell wait host vector %d: poll: %w", vector, err)
		}
		if fds[1].Revents != 0 {
			return 0, fmt.Errorf("zc: doorbell wait host vector %d: %w", vector, ErrClosed)
		}
		if fds[2].Revents != 0 {
			return 0, ctx.Err()
		}
	}
}

// Close stops serving: it closes the socket (removing its file) and every
// client connection, and the eventfds it holds, and waits for its
// goroutines. Guests keep their memory; QEMU keeps the eventfds it was
// given, so a guest may still ring the (now unread) host eventfds, but no
// client can connect again (see the package doc). Pending WaitHost calls
// return [ErrClosed].
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	err := s.ln.Close()
	s.mu.Unlock()
	// Let a handshake under way finish (or refuse): QEMU must never see
	// the connection close before the shared-memory message.
	s.hsMu.Lock()
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	for c := range s.refusing {
		c.Close()
	}
	for id, c := range s.clients {
		if c.conn == nil { // recovered: no serve goroutine drops it
			closeFDs(c.fds)
			delete(s.clients, id)
		}
	}
	s.mu.Unlock()
	s.hsMu.Unlock()
	s.wg.Wait()
	s.closeHost()
	if err != nil {
		return fmt.Errorf("zc: close doorbell server at %s: %w", s.path, err)
	}
	return nil
}

// closeHost ends every WaitHost (stopFD), waits until none uses the host
// eventfds, and closes them.
func (s *Server) closeHost() {
	if s.stopFD >= 0 {
		unix.Write(s.stopFD, one[:])
	}
	s.hostMu.Lock()
	defer s.hostMu.Unlock()
	if s.hostClosed {
		return
	}
	s.hostClosed = true
	closeFDs(s.hostFD)
	if s.stopFD >= 0 {
		unix.Close(s.stopFD)
	}
}

func (s *Server) logf(format string, args ...any) {
	if s.cfg.Logf != nil {
		s.cfg.Logf(format, args...)
	}
}

// accept serves connections until the listener closes. It never blocks on
// a client: each connection is handled on its own goroutine.
func (s *Server) accept() {
	defer s.wg.Done()
	for {
		conn, err := s.ln.AcceptUnix()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// EMFILE and the like: back off rather than spin.
			s.logf("doorbell %s: accept: %v", s.path, err)
			time.Sleep(50 * time.Millisecond)
			continue
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			conn.Close()
			return
		}
		if len(s.conns) >= s.cfg.MaxClients {
			if len(s.refusing) >= maxRefusing {
				// A flood: no more goroutines for it.
				s.mu.Unlock()
				conn.Close()
				continue
			}
			s.refusing[conn] = struct{}{}
			s.wg.Add(1)
			s.mu.Unlock()
			s.logf("doorbell %s: refused a client: %d connected already", s.path, s.cfg.MaxClients)
			go func() {
				defer s.wg.Done()
				s.refuse(conn)
				s.mu.Lock()
				delete(s.refusing, conn)
				s.mu.Unlock()
			}()
			continue
		}
		s.conns[conn] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go s.serve(conn)
	}
}

// serve runs the handshake with one client, then watches its connection:
// the protocol is one-way, so anything the client sends, or its hang-up,
// ends it.
func (s *Server) serve(conn *net.UnixConn) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.conns, conn)
		s.mu.Unlock()
		conn.Close()
	}()
	c, err := s.handshake(conn)
	if err != nil {
		s.logf("doorbell %s: client dropped during handshake: %v", s.path, err)
		if errors.Is(err, errRefused) {
			s.refuse(conn)
		}
		return
	}
	if s.cfg.OnPeer != nil {
		s.cfg.OnPeer(c.id, true)
	}
	var buf [64]byte
	n, err := conn.Read(buf[:])
	if n > 0 {
		s.logf("doorbell %s: client %d sent %d bytes; the protocol is one-way, dropping it", s.path, c.id, n)
	} else if err != nil && !errors.Is(err, net.ErrClosed) && !errors.Is(err, io.EOF) {
		s.logf("doorbell %s: client %d: %v", s.path, c.id, err)
	}
	s.drop(c)
	if s.cfg.OnPeer != nil {
		s.cfg.OnPeer(c.id, false)
	}
}

// handshake sends a new client, in the order the spec requires: the
// protocol version, its id, the shared memory, connect notifications for
// the host peer (and, with Mesh, the other clients), then its own eventfds.
// Only a client that got all of it becomes a peer.
func (s *Server) handshake(conn *net.UnixConn) (*client, error) {
	s.hsMu.Lock()
	defer s.hsMu.Unlock()
	refuse := func(err error) (*client, error) {
		return nil, fmt.Errorf("%w: %w", errRefused, err)
	}
	s.mu.RLock()
	closed := s.closed
	s.mu.RUnlock()
	if closed {
		return refuse(ErrClosed)
	}
	if s.nextID > 0xffff {
		return refuse(ErrIDsExhausted)
	}
	if _, err := memorySize(s.cfg.Memory); err != nil {
		return refuse(err)
	}
	c := &client{id: uint16(s.nextID), conn: conn}
	for range s.cfg.Vectors {
		fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
		if err != nil {
			closeFDs(c.fds)
			return refuse(fmt.Errorf("create eventfd: %w", err))
		}
		c.fds = append(c.fds, fd)
	}
	s.nextID++
	send := func(v int64, fd int) error { return s.send(conn, v, fd) }
	err := send(ProtocolVersion, -1)
	if err == nil {
		err = send(int64(c.id), -1)
	}
	if err == nil {
		err = send(-1, s.memFD)
	}
	for v := 0; err == nil && v < len(s.hostFD); v++ {
		err = send(HostID, s.hostFD[v])
	}
	var others []*client
	if s.cfg.Mesh {
		s.mu.RLock()
		for _, o := range s.clients {
			others = append(others, o)
		}
		s.mu.RUnlock()
		slices.SortFunc(others, func(a, b *client) int { return int(a.id) - int(b.id) })
	}
	for _, o := range others {
		for v := 0; err == nil && v < len(o.fds); v++ {
			err = send(int64(o.id), o.fds[v])
		}
	}
	for v := 0; err == nil && v < len(c.fds); v++ {
		err = send(int64(c.id), c.fds[v])
	}
	if err != nil {
		closeFDs(c.fds)
		return nil, fmt.Errorf("client %d: %w", c.id, err)
	}
	// Announce the newcomer to the others; one that cannot take it is its
	// own loss (its connection is closed and its serve goroutine drops it).
	for _, o := range others {
		if o.conn == nil {
			continue // recovered: it cannot be told
		}
		for v := 0; v < len(c.fds); v++ {
			if err := s.send(o.conn, int64(c.id), c.fds[v]); err != nil {
				s.logf("doorbell %s: client %d: announce client %d: %v", s.path, o.id, c.id, err)
				o.conn.Close()
				break
			}
		}
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		closeFDs(c.fds)
		return nil, ErrClosed
	}
	if cred, err := unix.GetsockoptUcred(connFD(conn), unix.SOL_SOCKET, unix.SO_PEERCRED); err == nil {
		c.pid = int(cred.Pid)
	}
	s.clients[c.id] = c
	s.mu.Unlock()
	return c, nil
}

// drop removes a client and, with Mesh, tells the others it is gone.
func (s *Server) drop(c *client) {
	s.hsMu.Lock()
	defer s.hsMu.Unlock()
	s.mu.Lock()
	delete(s.clients, c.id)
	closeFDs(c.fds)
	c.fds = nil
	var others []*client
	if s.cfg.Mesh && !s.closed {
		for _, o := range s.clients {
			others = append(others, o)
		}
	}
	s.mu.Unlock()
	for _, o := range others {
		if o.conn == nil {
			continue // recovered: it cannot be told
		}
		if err := s.send(o.conn, int64(c.id), -1); err != nil {
			s.logf("doorbell %s: client %d: announce departure of client %d: %v", s.path, o.id, c.id, err)
			o.conn.Close()
		}
	}
}

// RefuseVersion is what the server sends instead of [ProtocolVersion] to a
// client it will not serve (too many clients, ids exhausted, the memory's
// size broken, the server closing). QEMU then fails device_add ("server
// sent version -1, expecting 0").
const RefuseVersion = -1

// RefuseLinger is how long a refused connection is kept open for the
// client to read the refusal and hang up. QEMU 7.2 reads the first
// messages synchronously inside device_add and loops forever, its main
// loop at 100% CPU, when the connection is closed before it read them
// (ivshmem_recv_msg retries a read of 0 bytes; a hang-up noticed between
// chardev-add and device_add makes every read return 0): so the server
// hangs up on a client only once the client hung up, or after this long.
const RefuseLinger = 10 * time.Second

// maxRefusing bounds the refused connections kept open at once; a flood
// beyond it is closed at once.
const maxRefusing = 16

// errRefused marks a handshake the server declined.
var errRefused = errors.New("refused")

// refuse sends RefuseVersion and keeps conn open until the client hangs up
// or RefuseLinger passes (or Close), then closes it.
func (s *Server) refuse(conn *net.UnixConn) {
	defer conn.Close()
	_ = conn.SetWriteDeadline(time.Now().Add(time.Second))
	msg := encode(RefuseVersion)
	if _, err := conn.Write(msg[:]); err != nil {
		return
	}
	_ = conn.SetReadDeadline(time.Now().Add(RefuseLinger))
	var buf [64]byte
	for {
		if _, err := conn.Read(buf[:]); err != nil {
			return
		}
	}
}

// send writes one message: v as 8 little-endian bytes, with fd attached
// (SCM_RIGHTS) unless it is negative.
func (s *Server) send(conn *net.UnixConn, v int64, fd int) error {
	if err := conn.SetWriteDeadline(time.Now().Add(s.cfg.SendTimeout)); err != nil {
		return err
	}
	var oob []byte
	if fd >= 0 {
		oob = unix.UnixRights(fd)
	}
	msg := encode(v)
	n, oobn, err := conn.WriteMsgUnix(msg[:], oob, nil)
	if err != nil {
		return fmt.Errorf("send %d: %w", v, err)
	}
	if n != len(msg) || oobn != len(oob) {
		return fmt.Errorf("send %d: short write (%d bytes, %d of control)", v, n, oobn)
	}
	return nil
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}
