package vmtest

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestWaitQMP plays QEMU's QMP socket between bind and listen: the file
// exists but a dial is refused, so waitQMP must not return yet (it gives up
// at its timeout with the refusal); once the socket listens it returns,
// and its probe connection reached the listener. A QEMU that exited ends
// the wait with an error saying so.
func TestWaitQMP(t *testing.T) {
	dir, err := os.MkdirTemp("", "vmtest-wait-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "qmp.sock")
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "qmp.sock")
	defer f.Close()
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("bound socket has no file: %v", err)
	}

	vm := &VM{qmp: path, exited: make(chan struct{})}
	if err := vm.waitQMP(200 * time.Millisecond); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("waitQMP on a bound socket that does not listen = %v, want connection refused", err)
	}

	if err := unix.Listen(fd, 4); err != nil {
		t.Fatal(err)
	}
	if err := vm.waitQMP(time.Minute); err != nil {
		t.Fatalf("waitQMP on a listening socket: %v", err)
	}
	ln, err := net.FileListener(f)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ln.(*net.UnixListener).SetDeadline(time.Now().Add(10 * time.Second))
	c, err := ln.Accept()
	if err != nil {
		t.Fatalf("waitQMP's probe connection never reached the listener: %v", err)
	}
	c.Close()

	gone := &VM{qmp: filepath.Join(dir, "none.sock"), exited: make(chan struct{}), exitErr: errors.New("exit status 1")}
	close(gone.exited)
	if err := gone.waitQMP(time.Minute); err == nil || !strings.Contains(err.Error(), "exited") {
		t.Errorf("waitQMP after QEMU exited = %v, want an error saying it exited", err)
	}
}
