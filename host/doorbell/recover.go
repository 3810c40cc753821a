package doorbell

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// State is what a successor needs to take a server's peers over after the
// agent died (see the package doc, "Restarts"): plain numbers, to be kept
// in the agent's state directory (it marshals to JSON). Eventfds are named
// by their eventfd-id, the number /proc/PID/fdinfo shows for an eventfd,
// unique among the eventfds alive on the machine.
type State struct {
	// Vectors is the number of vectors per peer.
	Vectors int `json:"vectors"`
	// NextID is the next client id: ids are never reused.
	NextID int `json:"next_id"`
	// Host are the eventfd-ids of the host peer's eventfds, by vector.
	Host []uint64 `json:"host"`
	// Clients are the connected clients.
	Clients []ClientState `json:"clients"`
}

// ClientState is one client of a [State].
type ClientState struct {
	// ID is its peer id.
	ID uint16 `json:"id"`
	// PID is its process (QEMU), from SO_PEERCRED; Start is that
	// process's start time (field 22 of /proc/PID/stat), which tells a
	// reused pid apart.
	PID   int    `json:"pid"`
	Start uint64 `json:"start"`
	// Eventfds are the eventfd-ids of its own vectors.
	Eventfds []uint64 `json:"eventfds"`
}

// ErrNotRecovered means Recover could not take a client over: its process
// is gone (or is another one now), or no longer holds the eventfds (the
// device was unplugged), or may not be inspected (pidfd_getfd needs
// ptrace access to it: root, or CAP_SYS_PTRACE).
var ErrNotRecovered = errors.New("client not recovered")

// State returns what Recover needs to take this server's clients over.
// Clients whose process or eventfds cannot be identified are left out.
func (s *Server) State() (State, error) {
	s.hsMu.Lock()
	defer s.hsMu.Unlock()
	s.mu.RLock()
	defer s.mu.RUnlock()
	st := State{Vectors: len(s.hostFD), NextID: s.nextID}
	self := os.Getpid()
	for _, fd := range s.hostFD {
		id, err := eventfdID(self, fd)
		if err != nil {
			return State{}, fmt.Errorf("zc: doorbell state of %s: %w", s.path, err)
		}
		st.Host = append(st.Host, id)
	}
	for _, c := range s.clients {
		start, err := startTime(c.pid)
		if c.pid == 0 || err != nil {
			continue
		}
		cs := ClientState{ID: c.id, PID: c.pid, Start: start}
		for _, fd := range c.fds {
			id, err := eventfdID(self, fd)
			if err != nil {
				return State{}, fmt.Errorf("zc: doorbell state of %s: client %d: %w", s.path, c.id, err)
			}
			cs.Eventfds = append(cs.Eventfds, id)
		}
		st.Clients = append(st.Clients, cs)
	}
	slices.SortFunc(st.Clients, func(a, b ClientState) int { return int(a.ID) - int(b.ID) })
	return st, nil
}

// Recover starts a server in place of a dead one whose State was saved:
// it listens on cfg.Path again (new clients get ids from st.NextID on) and
// takes the saved clients over without their cooperation. A client
// process (QEMU) keeps the eventfds it was given, its own and the host
// peer's, after the server is gone; Recover finds them among the
// process's descriptors by eventfd-id (/proc/PID/fdinfo) and copies them
// with pidfd_getfd(2). The guests then go on ringing the host and being
// notified, with no re-plug. A recovered client has no connection: the
// server cannot tell it of other peers, and learns of its departure only
// through [Server.Forget]. Clients that cannot be taken over are left out
// and returned, each as an error wrapping [ErrNotRecovered].
func Recover(cfg Config, st State) (*Server, []error, error) {
	if cfg.Vectors == 0 {
		cfg.Vectors = st.Vectors
	}
	if cfg.Vectors != st.Vectors {
		return nil, nil, fmt.Errorf("zc: recover doorbell server at %s: %d vectors configured, %d saved", cfg.Path, cfg.Vectors, st.Vectors)
	}
	var lost []error
	var clients []*client
	var host []int
	for _, cs := range st.Clients {
		c, h, err := takeOver(cs, st.Host, host == nil)
		if err != nil {
			lost = append(lost, fmt.Errorf("zc: recover doorbell client %d (pid %d): %w: %w", cs.ID, cs.PID, ErrNotRecovered, err))
			continue
		}
		if h != nil {
			host = h
		}
		clients = append(clients, c)
	}
	s, err := listenWith(cfg, host, max(st.NextID, HostID+1))
	if err != nil {
		for _, c := range clients {
			closeFDs(c.fds)
		}
		return nil, lost, fmt.Errorf("zc: recover doorbell server at %s: %w", cfg.Path, err)
	}
	s.mu.Lock()
	for _, c := range clients {
		s.clients[c.id] = c
	}
	s.mu.Unlock()
	return s, lost, nil
}

// takeOver copies a client's eventfds (and, if wantHost, the host peer's)
// out of its process.
func takeOver(cs ClientState, hostIDs []uint64, wantHost bool) (*client, []int, error) {
	start, err := startTime(cs.PID)
	if err != nil {
		return nil, nil, err
	}
	if start != cs.Start {
		return nil, nil, fmt.Errorf("pid %d is another process now", cs.PID)
	}
	pidfd, err := unix.PidfdOpen(cs.PID, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("pidfd_open %d: %w", cs.PID, err)
	}
	defer unix.Close(pidfd)
	byID, err := eventfds(cs.PID)
	if err != nil {
		return nil, nil, err
	}
	var got []int
	grab := func(ids []uint64) ([]int, error) {
		var fds []int
		for _, id := range ids {
			target, ok := byID[id]
			if !ok {
				return fds, fmt.Errorf("process %d holds no eventfd with id %d", cs.PID, id)
			}
			fd, err := unix.PidfdGetfd(pidfd, target, 0)
			if err != nil {
				return fds, fmt.Errorf("pidfd_getfd %d fd %d: %w", cs.PID, target, err)
			}
			unix.CloseOnExec(fd)
			fds = append(fds, fd)
		}
		return fds, nil
	}
	own, err := grab(cs.Eventfds)
	got = append(got, own...)
	if err != nil {
		closeFDs(got)
		return nil, nil, err
	}
	var host []int
	if wantHost {
		if host, err = grab(hostIDs); err != nil {
			closeFDs(append(got, host...))
			return nil, nil, err
		}
	}
	// Copies share the file description: make sure it is non-blocking for
	// the runtime poller (QEMU sets O_NONBLOCK too).
	for _, fd := range append(own, host...) {
		if err := unix.SetNonblock(fd, true); err != nil {
			closeFDs(append(own, host...))
			return nil, nil, err
		}
	}
	return &client{id: cs.ID, fds: own, pid: cs.PID}, host, nil
}

// Forget removes a client, for recovered clients (which have no connection
// to hang up) when their device was unplugged or their process exited. A
// connected client is disconnected. Unknown ids are ignored.
func (s *Server) Forget(id uint16) {
	s.mu.Lock()
	c := s.clients[id]
	if c != nil && c.conn != nil {
		s.mu.Unlock()
		c.conn.Close() // its serve goroutine drops it
		return
	}
	delete(s.clients, id)
	s.mu.Unlock()
	if c != nil {
		closeFDs(c.fds)
		if s.cfg.OnPeer != nil {
			s.cfg.OnPeer(id, false)
		}
	}
}

// eventfdID returns the eventfd-id of descriptor fd of process pid.
func eventfdID(pid, fd int) (uint64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/fdinfo/%d", pid, fd))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	id, ok, err := scanEventfdID(f)
	if err != nil {
		return 0, err
	}
	if !ok {
		return 0, fmt.Errorf("fd %d of process %d is no eventfd (or the kernel shows no eventfd-id in fdinfo)", fd, pid)
	}
	return id, nil
}

// scanEventfdID reads an fdinfo file for its "eventfd-id:" line.
func scanEventfdID(f *os.File) (uint64, bool, error) {
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "eventfd-id:"); ok {
			id, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			return id, err == nil, err
		}
	}
	return 0, false, sc.Err()
}

// eventfds maps eventfd-id → descriptor number for process pid.
func eventfds(pid int) (map[uint64]int, error) {
	dir := fmt.Sprintf("/proc/%d/fdinfo", pid)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	out := map[uint64]int{}
	for _, e := range entries {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		f, err := os.Open(filepath.Join(dir, e.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		id, ok, _ := scanEventfdID(f)
		f.Close()
		if ok {
			out[id] = fd
		}
	}
	return out, nil
}

// startTime returns field 22 of /proc/PID/stat (start time in clock ticks
// since boot).
func startTime(pid int) (uint64, error) {
	if pid <= 0 {
		return 0, fmt.Errorf("no pid")
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3; field 22 is f[19].
	if len(f) < 20 {
		return 0, fmt.Errorf("parse /proc/%d/stat: %d fields", pid, len(f)+2)
	}
	return strconv.ParseUint(f[19], 10, 64)
}

// connFD returns a connection's descriptor without the blocking-mode side
// effect of a File method.
func connFD(c *net.UnixConn) int {
	fd := -1
	if rc, err := c.SyscallConn(); err == nil {
		_ = rc.Control(func(f uintptr) { fd = int(f) })
	}
	return fd
}
