package qmp

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrNotUnixSocket means the QMP connection is not a unix socket served by
// this package's [SocketMonitor]: it has no peer credentials and cannot
// carry file descriptors.
var ErrNotUnixSocket = errors.New("QMP connection is not a unix socket")

// Cred says which process serves a QMP socket and as whom it opens files.
type Cred struct {
	// PID is QEMU's process id (0 when it lives in a pid namespace this
	// process cannot see).
	PID int
	// UID and GID are the ids QEMU opens files with: the filesystem ids in
	// /proc/PID/status, or SO_PEERCRED's when that cannot be read.
	// SO_PEERCRED alone is not enough: it records who created the socket,
	// and QEMU started with -runas (or -run-with user=) creates it as root
	// before it drops to its user (measured on QEMU 7.2: SO_PEERCRED said
	// uid 0 while QEMU ran as 65534).
	UID, GID int
}

// PeerCred returns who serves the other end of the socket.
func (m *SocketMonitor) PeerCred() (Cred, error) {
	uc, ok := m.conn.(*net.UnixConn)
	if !ok {
		return Cred{}, fmt.Errorf("peer credentials: %w", ErrNotUnixSocket)
	}
	rc, err := uc.SyscallConn()
	if err != nil {
		return Cred{}, fmt.Errorf("peer credentials: %w", err)
	}
	var ucred *unix.Ucred
	var serr error
	if err := rc.Control(func(fd uintptr) {
		ucred, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return Cred{}, fmt.Errorf("peer credentials: %w", err)
	}
	if serr != nil {
		return Cred{}, fmt.Errorf("peer credentials: SO_PEERCRED: %w", serr)
	}
	c := Cred{PID: int(ucred.Pid), UID: int(ucred.Uid), GID: int(ucred.Gid)}
	if c.PID > 0 {
		if uid, gid, err := procFSIDs(c.PID); err == nil {
			c.UID, c.GID = uid, gid
		}
	}
	return c, nil
}

// PeerCred returns who runs the VM's QEMU, for a VM from [Dial] (or [New]
// over a [SocketMonitor] on a unix socket); [ErrNotUnixSocket] otherwise.
func (vm *VM) PeerCred() (Cred, error) {
	sm, ok := vm.mon.(*SocketMonitor)
	if !ok {
		return Cred{}, fmt.Errorf("zc: credentials of vm %s: %w", vm.name, ErrNotUnixSocket)
	}
	c, err := sm.PeerCred()
	if err != nil {
		return Cred{}, fmt.Errorf("zc: credentials of vm %s: %w", vm.name, err)
	}
	return c, nil
}

// procFSIDs reads the filesystem uid and gid (the fourth field of the Uid
// and Gid lines) from /proc/PID/status.
func procFSIDs(pid int) (uid, gid int, err error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	uid, gid = -1, -1
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		key, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok || (key != "Uid" && key != "Gid") {
			continue
		}
		fields := strings.Fields(rest)
		if len(fields) != 4 {
			return 0, 0, fmt.Errorf("/proc/%d/status: bad %s line %q", pid, key, sc.Text())
		}
		id, err := strconv.Atoi(fields[3])
		if err != nil {
			return 0, 0, fmt.Errorf("/proc/%d/status: bad %s line %q", pid, key, sc.Text())
		}
		if key == "Uid" {
			uid = id
		} else {
			gid = id
		}
	}
	if err := sc.Err(); err != nil {
		return 0, 0, err
	}
	if uid < 0 || gid < 0 {
		return 0, 0, fmt.Errorf("/proc/%d/status: no Uid or Gid line", pid)
	}
	return uid, gid, nil
}

// grantRegion gives the region file at path (following symlinks) to
// QEMU's user when QEMU could not open it otherwise: a QEMU that runs as
// root, as the file's owner, or in the file's group with group read-write
// needs nothing. Otherwise the file's owner becomes QEMU's uid; its group
// and mode stay, so a 0600 file is QEMU's alone (root, the agent, still
// maps it) and a 0660 one stays open to its group. It reports whether it
// changed the owner.
func grantRegion(path string, c Cred) (bool, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return false, fmt.Errorf("give %s to QEMU's user %d: %w", path, c.UID, err)
	}
	switch {
	case c.UID == 0, int(st.Uid) == c.UID:
		return false, nil
	case int(st.Gid) == c.GID && st.Mode&0o060 == 0o060:
		return false, nil
	}
	if err := os.Chown(path, c.UID, -1); err != nil {
		return false, fmt.Errorf("give %s to QEMU's user %d: %w", path, c.UID, err)
	}
	return true, nil
}
