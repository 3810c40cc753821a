package qmp

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// fileRunner is a Monitor that can pass open files with a command, as
// [SocketMonitor] does over a unix socket.
type fileRunner interface {
	RunWithFiles(command []byte, files ...*os.File) ([]byte, error)
}

// run sends one command through the monitor, with files when there are
// any; a monitor that cannot pass them gives [ErrNotUnixSocket].
func (vm *VM) run(b []byte, files []*os.File) ([]byte, error) {
	if len(files) == 0 {
		return vm.mon.Run(b)
	}
	fr, ok := vm.mon.(fileRunner)
	if !ok {
		return nil, fmt.Errorf("pass %d files: %w", len(files), ErrNotUnixSocket)
	}
	return fr.RunWithFiles(b, files...)
}

// canPassFiles reports whether the VM's monitor can pass files over a
// unix socket.
func (vm *VM) canPassFiles() bool {
	sm, ok := vm.mon.(*SocketMonitor)
	if !ok {
		return false
	}
	_, ok = sm.conn.(*net.UnixConn)
	return ok
}

// fdSet is a descriptor QEMU holds in one of its fd sets after add-fd.
type fdSet struct {
	ID int `json:"fdset-id"`
	FD int `json:"fd"`
}

// addFD passes f to QEMU with add-fd and returns the fd set and the
// descriptor number QEMU got. opaque labels the set in query-fdsets.
func (vm *VM) addFD(ctx context.Context, f *os.File, opaque string) (fdSet, error) {
	var s fdSet
	if err := vm.execute(ctx, "add-fd", map[string]any{"opaque": opaque}, &s, f); err != nil {
		return fdSet{}, fmt.Errorf("pass %s to QEMU: %w", f.Name(), err)
	}
	return s, nil
}

// fdOpaque prefixes the opaque label of the fd sets AttachRegion makes.
const fdOpaque = "zc region "

// sweepFDs closes fd sets AttachRegion left behind in QEMU. QEMU 7.2 closes
// the descriptors of a removed fd set only while the VM runs (measured:
// after remove-fd on a paused VM the set stays in query-fdsets, and QEMU
// holds the region's memory, until a remove-fd of that set while running),
// so an attach to a paused VM leaves one; a later attach or detach, with
// the VM running, sweeps it. The caller holds attachMu, so no set of ours
// is between add-fd and object-add. Errors are ignored: a set that stays
// costs one descriptor in QEMU and is tried again next time.
func (vm *VM) sweepFDs(ctx context.Context) {
	var sets []struct {
		ID  int `json:"fdset-id"`
		FDs []struct {
			Opaque string `json:"opaque"`
		} `json:"fds"`
	}
	if err := vm.execute(ctx, "query-fdsets", nil, &sets); err != nil {
		return
	}
	for _, s := range sets {
		for _, fd := range s.FDs {
			if strings.HasPrefix(fd.Opaque, fdOpaque) {
				_ = vm.removeFD(ctx, s.ID)
				break
			}
		}
	}
}

// removeFD closes QEMU's descriptors of fd set id.
func (vm *VM) removeFD(ctx context.Context, id int) error {
	if err := vm.execute(ctx, "remove-fd", map[string]any{"fdset-id": id}, nil); err != nil {
		return fmt.Errorf("remove fd set %d: %w", id, err)
	}
	return nil
}

// openMemfd opens path and returns it when it is a memfd (directly or
// through /proc/PID/fd/N or a symlink to that), nil otherwise or when it
// cannot be opened here.
func openMemfd(path string) *os.File {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil
	}
	target, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(int(f.Fd())))
	if err != nil || !strings.HasPrefix(target, "/memfd:") {
		f.Close()
		return nil
	}
	// Only shmem and hugetlbfs files answer F_GET_SEALS.
	if _, err := unix.FcntlInt(f.Fd(), unix.F_GET_SEALS, 0); err != nil {
		f.Close()
		return nil
	}
	return f
}

// offer is how QEMU gets a region: the mem-path to give
// memory-backend-file, and what to undo afterwards.
type offer struct {
	memPath string
	byFD    bool
	fdset   int
	// note explains a failed grant that did not stop the attach: QEMU may
	// open the file anyway; if it cannot, object-add's error comes with it.
	note error
}

// offer makes the region at path reachable by QEMU; the caller holds
// attachMu. A memfd goes over the
// QMP socket as a descriptor (add-fd, SCM_RIGHTS) and QEMU opens its own
// copy as /proc/self/fd/N: no file name is involved and QEMU's user does
// not matter. Measured on QEMU 7.2, nothing else works for a QEMU that runs
// as another user: memory-backend-file opens mem-path with plain open(2),
// so /dev/fdset/N is not found, and the creator's /proc/PID/fd/N is
// refused. Any other file is named by its path, after [grantRegion] gave
// it to QEMU's user when QEMU's credentials are known.
func (vm *VM) offer(ctx context.Context, path, label string) (offer, error) {
	if vm.canPassFiles() {
		if f := openMemfd(path); f != nil {
			defer f.Close()
			vm.sweepFDs(ctx)
			s, err := vm.addFD(ctx, f, fdOpaque+label)
			if err != nil {
				return offer{}, err
			}
			return offer{memPath: "/proc/self/fd/" + strconv.Itoa(s.FD), byFD: true, fdset: s.ID}, nil
		}
	}
	o := offer{memPath: path}
	if c, err := vm.PeerCred(); err == nil {
		_, o.note = grantRegion(path, c)
	}
	return o, nil
}
