package qmp

import (
	"bufio"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/zcfabric/zc/internal/testgate"
	"golang.org/x/sys/unix"
)

// serveFakeQMP accepts connections on l until it closes and answers like
// QEMU: the greeting, then {"return": {}} to every command.
func serveFakeQMP(l net.Listener) error {
	for {
		c, err := l.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			if _, err := c.Write([]byte(`{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": []}}` + "\n")); err != nil {
				return
			}
			sc := bufio.NewScanner(c)
			for sc.Scan() {
				if _, err := c.Write([]byte(`{"return": {}}` + "\n")); err != nil {
					return
				}
			}
		}()
	}
}

// TestFakeQMPServer is not a test: run by TestPeerCredOtherUser in a
// child process under another uid, it serves a fake QMP socket.
func TestFakeQMPServer(t *testing.T) {
	sock := os.Getenv("ZC_TEST_FAKE_QMP")
	if sock == "" {
		t.Skip("helper process for TestPeerCredOtherUser")
	}
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	serveFakeQMP(l) // until the parent kills this process
}

func waitListening(t *testing.T, sock string) {
	t.Helper()
	for i := 0; ; i++ {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return
		}
		if i == 1000 {
			t.Fatalf("nothing listens on %s", sock)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestPeerCredSelf: over a real unix socket served by this process,
// PeerCred names this process and its ids; over a pipe it is
// ErrNotUnixSocket.
func TestPeerCredSelf(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "q.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go serveFakeQMP(l)
	vm, err := Dial(ctxT(t), sock)
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	c, err := vm.PeerCred()
	if err != nil {
		t.Fatal(err)
	}
	if want := (Cred{PID: os.Getpid(), UID: os.Geteuid(), GID: os.Getegid()}); c != want {
		t.Errorf("PeerCred = %+v, want %+v", c, want)
	}
	piped, _ := startFake(t, pcMachine)
	if _, err := piped.PeerCred(); !errors.Is(err, ErrNotUnixSocket) {
		t.Errorf("PeerCred over a pipe = %v, want ErrNotUnixSocket", err)
	}
}

// TestPeerCredOtherUser: a QMP server run as uid/gid 65534 is reported as
// such, with its pid.
func TestPeerCredOtherUser(t *testing.T) {
	testgate.Root(t)
	dir, err := os.MkdirTemp("", "qmpcred-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "q.sock")
	// The test binary's own folder is closed to other users: run a copy.
	bin := filepath.Join(dir, "qmp.test")
	if err := copyFile(os.Args[0], bin, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-test.run=^TestFakeQMPServer$")
	cmd.Env = append(os.Environ(), "ZC_TEST_FAKE_QMP="+sock)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Skipf("cannot run a child as uid 65534: %v", err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	waitListening(t, sock)
	vm, err := Dial(ctxT(t), sock)
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	c, err := vm.PeerCred()
	if err != nil {
		t.Fatal(err)
	}
	if want := (Cred{PID: cmd.Process.Pid, UID: 65534, GID: 65534}); c != want {
		t.Errorf("PeerCred = %+v, want %+v", c, want)
	}
}

func statIDs(t *testing.T, path string) (mode os.FileMode, uid, gid int) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return os.FileMode(st.Mode & 0o7777), int(st.Uid), int(st.Gid)
}

// TestGrantRegion: a region file goes to QEMU's uid only when QEMU could
// not open it otherwise, and keeps its group and mode; through a symlink
// the target changes.
func TestGrantRegion(t *testing.T) {
	testgate.Root(t)
	dir := t.TempDir()
	for i, tc := range []struct {
		mode     os.FileMode
		uid, gid int // the file's
		qemu     Cred
		changed  bool
	}{
		{0o600, 0, 0, Cred{UID: 0, GID: 0}, false},             // QEMU as root
		{0o600, 64055, 0, Cred{UID: 64055, GID: 64055}, false}, // QEMU owns it
		{0o660, 0, 64055, Cred{UID: 64055, GID: 64055}, false}, // QEMU's group may write
		{0o640, 0, 64055, Cred{UID: 64055, GID: 64055}, true},  // group may only read
		{0o600, 0, 0, Cred{UID: 64055, GID: 64055}, true},
		{0o660, 0, 1234, Cred{UID: 64055, GID: 64055}, true}, // another group: keep it
	} {
		file := filepath.Join(dir, "r"+strconv.Itoa(i))
		if err := os.WriteFile(file, nil, 0); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(file, tc.uid, tc.gid); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(file, tc.mode); err != nil {
			t.Fatal(err)
		}
		link := file + ".link"
		if err := os.Symlink(file, link); err != nil {
			t.Fatal(err)
		}
		changed, err := grantRegion(link, tc.qemu)
		if err != nil || changed != tc.changed {
			t.Errorf("case %d: grantRegion = %v, %v; want %v", i, changed, err, tc.changed)
		}
		wantUID := tc.uid
		if tc.changed {
			wantUID = tc.qemu.UID
		}
		if mode, uid, gid := statIDs(t, file); mode != tc.mode || uid != wantUID || gid != tc.gid {
			t.Errorf("case %d: file is %o %d:%d, want %o %d:%d", i, mode, uid, gid, tc.mode, wantUID, tc.gid)
		}
	}
	if _, err := grantRegion(filepath.Join(dir, "missing"), Cred{UID: 1}); !errors.Is(err, os.ErrNotExist) ||
		!strings.Contains(err.Error(), "QEMU's user 1") {
		t.Errorf("grantRegion(missing) = %v, want ErrNotExist naming QEMU's user", err)
	}
}

func TestProcFSIDs(t *testing.T) {
	uid, gid, err := procFSIDs(os.Getpid())
	if err != nil || uid != os.Geteuid() || gid != os.Getegid() {
		t.Fatalf("procFSIDs(self) = %d, %d, %v; want %d, %d", uid, gid, err, os.Geteuid(), os.Getegid())
	}
	if _, _, err := procFSIDs(1 << 30); err == nil {
		t.Fatalf("procFSIDs of pid %d found one", 1<<30)
	}
}

func copyFile(from, to string, mode os.FileMode) error {
	b, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	return os.WriteFile(to, b, mode)
}
