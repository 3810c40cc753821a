package qmp

import (
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/zcfabric/zc/internal/testgate"
)

// startQEMU starts a paused QEMU (no guest code runs) with a QMP socket
// and returns the socket path.
func startQEMU(t *testing.T, machine string, args ...string) string {
	t.Helper()
	qemu := testgate.QEMU(t)
	dir, err := os.MkdirTemp("", "qmpt-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "q.sock")
	cmd := exec.Command(qemu, append([]string{"-machine", machine, "-accel", "tcg", "-nodefaults", "-display", "none", "-S",
		"-qmp", "unix:" + sock + ",server=on,wait=off"}, args...)...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	// Wait until QEMU listens, not just until the socket file exists: the
	// file appears at bind, a moment before listen (a Dial in between got
	// "connection refused" under -race).
	for i := 0; ; i++ {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return sock
		}
		if i == 1000 {
			t.Fatalf("QEMU made no QMP socket at %s", sock)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestCtlPortHotplug: a VM without virtio-serial gets a controller, a
// chardev socket and a port named zc.ctl; FindCtlPort finds it and its
// socket accepts a connection; a second port reuses the controller; ids
// are never reused.
func TestCtlPortHotplug(t *testing.T) {
	for _, machine := range []string{"pc", "q35"} {
		t.Run(machine, func(t *testing.T) {
			var extra []string
			if machine == "q35" {
				extra = []string{"-device", "pcie-root-port,id=zcrp1,slot=1,pref64-reserve=2M"}
			}
			sock := startQEMU(t, machine, extra...)
			ctx := ctxT(t)
			vm, err := Dial(ctx, sock)
			if err != nil {
				t.Fatal(err)
			}
			defer vm.Close()
			if _, err := vm.FindCtlPort(ctx, "zc.ctl"); !errors.Is(err, ErrNoCtlPort) {
				t.Fatalf("FindCtlPort in a bare VM = %v, want ErrNoCtlPort", err)
			}
			ctlSock := filepath.Join(filepath.Dir(sock), "ctl.sock")
			p, err := vm.AddCtlPort(ctx, "zc.ctl", ctlSock)
			if err != nil {
				t.Fatal(err)
			}
			if p.SerialID == "" || !p.Plugged || p.Socket != ctlSock {
				t.Errorf("AddCtlPort = %+v, want a hot-plugged controller and socket %s", p, ctlSock)
			}
			found, err := vm.FindCtlPort(ctx, "zc.ctl")
			if err != nil {
				t.Fatal(err)
			}
			if found.Socket != ctlSock || found.ChardevID != p.ChardevID || found.DevID != p.DevID {
				t.Errorf("FindCtlPort = %+v, want %+v", found, p)
			}
			c, err := net.Dial("unix", found.Socket)
			if err != nil {
				t.Fatalf("connect to the port's socket: %v", err)
			}
			c.Close()
			p2, err := vm.AddCtlPort(ctx, "zc.ctl2", ctlSock+"2")
			if err != nil {
				t.Fatal(err)
			}
			if p2.SerialID != "" {
				t.Errorf("second port added another controller %s", p2.SerialID)
			}
			seen := map[string]bool{}
			for _, id := range []string{p.SerialID, p.ChardevID, p.DevID, p2.ChardevID, p2.DevID} {
				if seen[id] {
					t.Errorf("id %s used twice", id)
				}
				seen[id] = true
			}
		})
	}
}
