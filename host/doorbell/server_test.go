package doorbell

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const testSize = 1 << 16

// memfd returns a memfd of size bytes holding a recognisable pattern.
func memfd(t *testing.T, size int64) *os.File {
	t.Helper()
	fd, err := unix.MemfdCreate("zc-doorbell-test", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "memfd")
	t.Cleanup(func() { f.Close() })
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("ZCDOORBELL"), 0); err != nil {
		t.Fatal(err)
	}
	return f
}

// peerLog records OnPeer calls.
type peerLog struct {
	mu     sync.Mutex
	events []string
	ch     chan string
}

func newPeerLog() *peerLog { return &peerLog{ch: make(chan string, 64)} }

func (l *peerLog) on(id uint16, connected bool) {
	e := fmt.Sprintf("%d up", id)
	if !connected {
		e = fmt.Sprintf("%d down", id)
	}
	l.mu.Lock()
	l.events = append(l.events, e)
	l.mu.Unlock()
	l.ch <- e
}

// expect waits for the OnPeer event want.
func (l *peerLog) expect(t *testing.T, want string) {
	t.Helper()
	select {
	case got := <-l.ch:
		if got != want {
			t.Fatalf("OnPeer: got %q, want %q", got, want)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("OnPeer: no %q within 5s", want)
	}
}

// start serves a fresh memfd on a socket in a temporary directory.
func start(t *testing.T, cfg Config) (*Server, *peerLog) {
	t.Helper()
	if cfg.Memory == nil {
		cfg.Memory = memfd(t, testSize)
	}
	if cfg.Path == "" {
		cfg.Path = filepath.Join(t.TempDir(), "db.sock")
	}
	log := newPeerLog()
	cfg.OnPeer = log.on
	cfg.Logf = t.Logf
	s, err := Listen(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, log
}

func dial(t *testing.T, s *Server) *testClient {
	t.Helper()
	c, err := dialClient(s.Path(), s.Vectors())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// TestHandshake checks the messages a client gets, in order: version 0, its
// id (1, the host being 0), the shared memory (the very file: a write
// through the client's mapping shows in the server's), the host peer's
// eventfds, then its own; and the socket's mode.
func TestHandshake(t *testing.T) {
	mem := memfd(t, testSize)
	s, log := start(t, Config{Memory: mem, Vectors: 3})
	fi, err := os.Stat(s.Path())
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want 0600", fi.Mode().Perm())
	}
	c := dial(t, s)
	log.expect(t, "1 up")
	if c.id != 1 {
		t.Errorf("first client id %d, want 1", c.id)
	}
	if len(c.own) != 3 || len(c.peers) != 1 || len(c.peers[HostID]) != 3 {
		t.Fatalf("client got own %v, peers %v; want 3 own eventfds and 3 for host peer %d only", c.own, c.peers, HostID)
	}
	b, err := unix.Mmap(int(c.shm.Fd()), 0, testSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(b)
	if !bytes.HasPrefix(b, []byte("ZCDOORBELL")) {
		t.Errorf("client's memory starts %q, want the server's pattern", b[:10])
	}
	copy(b[100:], "from the client")
	got := make([]byte, 15)
	if _, err := mem.ReadAt(got, 100); err != nil || string(got) != "from the client" {
		t.Errorf("server's memory reads %q (%v), want the client's write", got, err)
	}
	if got := s.Peers(); !slices.Equal(got, []uint16{1}) {
		t.Errorf("Peers() = %v, want [1]", got)
	}
}

// TestRingHost has a client ring the host peer on each vector, the way QEMU
// does for a guest's doorbell write, and WaitHost report it; rings before
// the wait are counted, not lost.
func TestRingHost(t *testing.T) {
	s, _ := start(t, Config{Vectors: 2})
	c := dial(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for v := range 2 {
		for range 3 {
			if err := c.ring(HostID, v); err != nil {
				t.Fatal(err)
			}
		}
		n, err := s.WaitHost(ctx, v)
		if err != nil || n != 3 {
			t.Errorf("vector %d: WaitHost = %d, %v; want 3 rings", v, n, err)
		}
	}
	// A wait that starts first is woken by a later ring.
	done := make(chan error, 1)
	go func() {
		n, err := s.WaitHost(ctx, 1)
		if err == nil && n != 1 {
			err = fmt.Errorf("%d rings, want 1", n)
		}
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	if err := c.ring(HostID, 1); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Errorf("blocked WaitHost: %v", err)
	}
	if _, err := s.WaitHost(ctx, 2); !errors.Is(err, ErrBadVector) {
		t.Errorf("WaitHost(vector 2 of 2) = %v, want ErrBadVector", err)
	}
	if s.HostFD(0) < 0 || s.HostFD(2) != -1 {
		t.Errorf("HostFD(0) = %d, HostFD(2) = %d; want an fd and -1", s.HostFD(0), s.HostFD(2))
	}
}

// TestWaitHostCancel checks that a blocked WaitHost returns when its
// context ends and that the vector works afterwards, and that Close wakes a
// waiter with ErrClosed; with a client connected, so its host eventfds have
// been sent (and must have stayed non-blocking).
func TestWaitHostCancel(t *testing.T) {
	s, _ := start(t, Config{})
	dial(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	if _, err := s.WaitHost(ctx, 0); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("WaitHost past its deadline = %v, want DeadlineExceeded", err)
	}
	if err := s.RingHost(0); err != nil {
		t.Fatal(err)
	}
	if n, err := s.WaitHost(context.Background(), 0); err != nil || n != 1 {
		t.Errorf("WaitHost after a cancelled wait = %d, %v; want 1 ring", n, err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := s.WaitHost(context.Background(), 0)
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, ErrClosed) {
			t.Errorf("WaitHost across Close = %v, want ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("WaitHost did not return after Close")
	}
}

// TestNotify interrupts a client's vectors one by one and checks that only
// the one notified fires; unknown peers and vectors are errors.
func TestNotify(t *testing.T) {
	s, log := start(t, Config{Vectors: 2})
	c := dial(t, s)
	log.expect(t, "1 up")
	for v := range 2 {
		if err := s.Notify(1, v); err != nil {
			t.Fatal(err)
		}
		if n, err := c.waitInterrupt(v, 5*time.Second); err != nil || n != 1 {
			t.Errorf("vector %d: %d interrupts, %v; want 1", v, n, err)
		}
		if n, _ := c.pending(1 - v); n != 0 {
			t.Errorf("vector %d notified, vector %d got %d interrupts too", v, 1-v, n)
		}
	}
	if err := s.Notify(2, 0); !errors.Is(err, ErrNoPeer) {
		t.Errorf("Notify(unknown peer) = %v, want ErrNoPeer", err)
	}
	if err := s.Notify(HostID, 0); !errors.Is(err, ErrNoPeer) {
		t.Errorf("Notify(host) = %v, want ErrNoPeer (use RingHost)", err)
	}
	if err := s.Notify(1, 2); !errors.Is(err, ErrBadVector) {
		t.Errorf("Notify(vector 2 of 2) = %v, want ErrBadVector", err)
	}
	if a := testing.AllocsPerRun(100, func() { _ = s.Notify(1, 0) }); a != 0 {
		t.Errorf("Notify allocates %v times a call, want 0", a)
	}
}

// TestDisconnectAndIDs checks that a client's hang-up removes it (Notify
// then fails, OnPeer says so) and that ids are never reused.
func TestDisconnectAndIDs(t *testing.T) {
	s, log := start(t, Config{})
	for want := int64(1); want <= 3; want++ {
		c, err := dialClient(s.Path(), 1)
		if err != nil {
			t.Fatal(err)
		}
		if c.id != want {
			t.Errorf("client %d got id %d, ids must only go up", want, c.id)
		}
		log.expect(t, fmt.Sprintf("%d up", want))
		c.Close()
		log.expect(t, fmt.Sprintf("%d down", want))
		if err := s.Notify(uint16(want), 0); !errors.Is(err, ErrNoPeer) {
			t.Errorf("Notify(departed %d) = %v, want ErrNoPeer", want, err)
		}
	}
	if got := s.Peers(); len(got) != 0 {
		t.Errorf("Peers() = %v after all left", got)
	}
}

// TestIsolation checks the default: two clients of one server see the host
// peer only, never each other.
func TestIsolation(t *testing.T) {
	s, log := start(t, Config{})
	a := dial(t, s)
	log.expect(t, "1 up")
	b := dial(t, s)
	log.expect(t, "2 up")
	for _, c := range []*testClient{a, b} {
		if len(c.peers) != 1 || c.peers[HostID] == nil {
			t.Errorf("client %d knows peers %v, want the host peer only", c.id, c.peers)
		}
	}
	b.Close()
	log.expect(t, "2 down")
	if m, err := a.next(100 * time.Millisecond); err == nil {
		t.Errorf("client 1 got message %+v about client 2, want nothing", m)
	}
}

// TestMesh checks Mesh mode, as QEMU's example server: clients learn of
// each other (in both directions) with eventfds that interrupt the other,
// and of a departure.
func TestMesh(t *testing.T) {
	s, log := start(t, Config{Mesh: true, Vectors: 2})
	a := dial(t, s)
	log.expect(t, "1 up")
	b := dial(t, s)
	log.expect(t, "2 up")
	if len(b.peers[1]) != 2 || len(b.peers[HostID]) != 2 {
		t.Fatalf("client 2 knows %v, want host and client 1 with 2 vectors", b.peers)
	}
	for range 2 {
		if _, err := a.next(5 * time.Second); err != nil {
			t.Fatal(err)
		}
	}
	if len(a.peers[2]) != 2 {
		t.Fatalf("client 1 knows %v, want client 2 announced with 2 vectors", a.peers)
	}
	if err := b.ring(1, 1); err != nil {
		t.Fatal(err)
	}
	if n, err := a.waitInterrupt(1, 5*time.Second); err != nil || n != 1 {
		t.Errorf("client 2 rang client 1 vector 1: %d, %v", n, err)
	}
	b.Close()
	log.expect(t, "2 down")
	if m, err := a.next(5 * time.Second); err != nil || m.v != 2 || m.fd != -1 {
		t.Errorf("client 1 got %+v, %v; want the disconnect notification for 2", m, err)
	}
}

// TestHostileClients runs clients that break the protocol, then checks that
// the server still serves an honest client and notifies it: one that sends
// garbage after the handshake (dropped), one that hangs up mid-handshake,
// one that never reads, a flood past MaxClients (refused at once), and one
// that sends fds of its own.
func TestHostileClients(t *testing.T) {
	s, log := start(t, Config{MaxClients: 3, SendTimeout: 200 * time.Millisecond})
	raw := func() *net.UnixConn {
		c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: s.Path(), Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}

	// Garbage after a complete handshake: the server drops the client.
	g := dial(t, s)
	log.expect(t, "1 up")
	if _, err := g.conn.Write([]byte("garbage garbage garbage")); err != nil {
		t.Fatal(err)
	}
	log.expect(t, "1 down")
	if _, err := recv(g.conn, 5*time.Second); err == nil {
		t.Error("server kept talking to a client that sent garbage")
	}

	// Garbage with fds attached, before reading anything.
	fd, _ := unix.Eventfd(0, unix.EFD_CLOEXEC)
	h := raw()
	if _, _, err := h.WriteMsgUnix([]byte("x"), unix.UnixRights(fd, fd, fd), nil); err != nil {
		t.Fatal(err)
	}
	unix.Close(fd)
	log.expect(t, "2 up")
	log.expect(t, "2 down")
	h.Close()

	// Hang-ups during the handshake, at once and after one message.
	for i := range 5 {
		c := raw()
		if i%2 == 1 {
			_, _ = recv(c, time.Second)
		}
		c.Close()
	}

	// A client that never reads stays connected (its messages are tiny);
	// it occupies one slot.
	silent := raw()
	defer silent.Close()

	// A flood: at most MaxClients connections are served; the rest are
	// closed at once rather than queued.
	var flood []*net.UnixConn
	for range 10 {
		flood = append(flood, raw())
	}
	refused := 0
	for _, c := range flood {
		if m, err := recv(c, 5*time.Second); err == nil && m.v == RefuseVersion {
			refused++
		}
	}
	if refused < 10-3 {
		t.Errorf("%d of 10 connections past MaxClients 3 got the refusal, want at least 7", refused)
	}
	for _, c := range flood {
		c.Close()
	}
	time.Sleep(100 * time.Millisecond)

	// An honest client still gets served and notified.
	c := dial(t, s)
	if err := s.Notify(uint16(c.id), 0); err != nil {
		t.Fatal(err)
	}
	if n, err := c.waitInterrupt(0, 5*time.Second); err != nil || n != 1 {
		t.Errorf("honest client after the hostile ones: %d interrupts, %v", n, err)
	}
	if err := c.ring(HostID, 0); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if n, err := s.WaitHost(ctx, 0); err != nil || n < 1 {
		t.Errorf("host ring from the honest client: %d, %v", n, err)
	}
	// Close returns promptly with the silent client still connected.
	start := time.Now()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Close took %v with a silent client connected", d)
	}
	if _, err := os.Stat(s.Path()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket file still there after Close: %v", err)
	}
}

// TestListenErrors checks the configuration errors and the stale socket
// rule.
func TestListenErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := Listen(Config{Path: filepath.Join(dir, "a"), Memory: memfd(t, 3<<12)}); !errors.Is(err, ErrBadSize) {
		t.Errorf("Listen with a 12 KiB memory = %v, want ErrBadSize", err)
	}
	if _, err := Listen(Config{Path: filepath.Join(dir, "a"), Memory: memfd(t, testSize), Vectors: MaxVectors + 1}); !errors.Is(err, ErrBadVector) {
		t.Errorf("Listen with %d vectors = %v, want ErrBadVector", MaxVectors+1, err)
	}
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(Config{Path: file, Memory: memfd(t, testSize)}); err == nil {
		t.Error("Listen over a regular file succeeded")
	}
	// A socket left by a dead server is replaced; a live one is not.
	stale := filepath.Join(dir, "stale.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(Config{Path: stale, Memory: memfd(t, testSize)}); err == nil {
		t.Error("Listen over a live socket succeeded")
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	s, err := Listen(Config{Path: stale, Memory: memfd(t, testSize)})
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	s.Close()
}

// TestMemoryShrunk checks that a client is refused, not handed a memory
// QEMU would abort on, when the region was truncated to a size that is not
// a power of two after Listen.
func TestMemoryShrunk(t *testing.T) {
	mem := memfd(t, testSize)
	s, _ := start(t, Config{Memory: mem})
	if err := mem.Truncate(testSize - 4096); err != nil {
		t.Fatal(err)
	}
	conn, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: s.Path(), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Refused with a version QEMU rejects, never a bare hang-up (QEMU
	// would spin on the end of file).
	if m, err := recv(conn, 5*time.Second); err != nil || m.v != RefuseVersion || m.fd != -1 {
		t.Errorf("client of a shrunk memory got %+v, %v; want the refusal %d", m, err, RefuseVersion)
	}
	// The server then waits for the client to hang up rather than hang
	// up first (see RefuseLinger).
	if m, err := recv(conn, 200*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("refused client got %+v, %v; want the connection open and quiet", m, err)
	}
}
