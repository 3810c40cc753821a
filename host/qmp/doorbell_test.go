package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/zcfabric/zc/host/doorbell"
	"golang.org/x/sys/unix"
)

// TestDoorbellCommands checks the QMP commands of a doorbell plug and
// unplug on a fake pc machine: chardev-add (client socket), device_add
// ivshmem-doorbell on it, then device_del, DEVICE_DELETED, chardev-remove;
// and that a retried detach of a device already gone succeeds.
func TestDoorbellCommands(t *testing.T) {
	vm, f := startFake(t, func(cmd string, args map[string]any) (string, []string) {
		if cmd == "chardev-remove" && len(f0.commands()) > 6 {
			return `{"error": {"class": "GenericError", "desc": "Chardev 'x' not found"}}`, nil
		}
		if cmd == "device_del" && len(f0.commands()) > 5 {
			return `{"error": {"class": "DeviceNotFound", "desc": "Device 'x' not found"}}`, nil
		}
		return pcMachine(cmd, args)
	})
	f0 = f
	ctx := ctxT(t)
	a, err := vm.AttachDoorbell(ctx, DoorbellSpec{Socket: "/run/zc/bell.sock", Size: 1 << 20, Vectors: 2, Name: "c7"})
	if err != nil {
		t.Fatal(err)
	}
	if a.Bus != "" || a.Vectors != 2 || !strings.Contains(a.DevID, "c7") || a.ChardevID == a.DevID {
		t.Errorf("attachment %+v", a)
	}
	if err := vm.DetachDoorbell(ctx, a); err != nil {
		t.Fatal(err)
	}
	if err := vm.DetachDoorbell(ctx, a); err != nil {
		t.Errorf("retried DetachDoorbell of a gone device: %v", err)
	}
	got := f.commands()
	want := []string{
		"qom-get",
		fmt.Sprintf(`chardev-add {"backend":{"data":{"addr":{"data":{"path":"/run/zc/bell.sock"},"type":"unix"},"server":false},"type":"socket"},"id":%q}`, a.ChardevID),
		fmt.Sprintf(`device_add {"chardev":%q,"driver":"ivshmem-doorbell","id":%q,"vectors":2}`, a.ChardevID, a.DevID),
		fmt.Sprintf(`device_del {"id":%q}`, a.DevID),
		fmt.Sprintf(`chardev-remove {"id":%q}`, a.ChardevID),
		fmt.Sprintf(`device_del {"id":%q}`, a.DevID),
		fmt.Sprintf(`chardev-remove {"id":%q}`, a.ChardevID),
	}
	if len(got) != len(want) {
		t.Fatalf("commands %q, want %q", got, want)
	}
	for i := range want {
		if got[i] != want[i] && !(i == 0 && strings.HasPrefix(got[i], want[i])) {
			t.Errorf("command %d = %s, want %s", i, got[i], want[i])
		}
	}
	if _, err := vm.AttachDoorbell(ctx, DoorbellSpec{Socket: "/x", Size: 3 << 20}); !errors.Is(err, ErrBadSize) {
		t.Errorf("AttachDoorbell of 3 MiB = %v, want ErrBadSize", err)
	}
}

// f0 lets TestDoorbellCommands's handler count the commands so far.
var f0 *fakeQEMU

// chardevs returns the ids of QEMU's chardevs.
func chardevs(t *testing.T, ctx context.Context, vm *VM) []string {
	t.Helper()
	var out []struct {
		Label string `json:"label"`
	}
	if err := vm.execute(ctx, "query-chardev", nil, &out); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, c := range out {
		ids = append(ids, c.Label)
	}
	return ids
}

// TestDoorbellQEMU plugs ivshmem-doorbell devices into a real, paused QEMU
// (pc and q35) backed by a doorbell server: QEMU completes the handshake
// inside device_add (the server sees peer 1, then 2) and the device is
// there; a server that is not listening, and one whose memory QEMU must
// refuse, fail the plug and leave no chardev behind. (Unplug needs a guest
// to acknowledge it: see vmtest's TestDoorbell.)
func TestDoorbellQEMU(t *testing.T) {
	for _, machine := range []string{"pc", "q35"} {
		t.Run(machine, func(t *testing.T) {
			var extra []string
			if machine == "q35" {
				extra = []string{"-device", "pcie-root-port,id=zcrp1,slot=1,pref64-reserve=2M", "-device", "pcie-root-port,id=zcrp2,slot=2,pref64-reserve=2M"}
			}
			sock := startQEMU(t, machine, extra...)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			vm, err := Dial(ctx, sock)
			if err != nil {
				t.Fatal(err)
			}
			defer vm.Close()
			fd, err := unix.MemfdCreate("zc-qmp-bell", unix.MFD_CLOEXEC)
			if err != nil {
				t.Fatal(err)
			}
			mem := os.NewFile(uintptr(fd), "memfd")
			defer mem.Close()
			if err := mem.Truncate(1 << 20); err != nil {
				t.Fatal(err)
			}
			bellSock := filepath.Join(filepath.Dir(sock), "bell.sock")
			srv, err := doorbell.Listen(doorbell.Config{Path: bellSock, Memory: mem, Vectors: 2, Logf: t.Logf})
			if err != nil {
				t.Fatal(err)
			}
			defer srv.Close()
			before := chardevs(t, ctx, vm)
			for want := uint16(1); want <= 2; want++ {
				a, err := vm.AttachDoorbell(ctx, DoorbellSpec{Socket: bellSock, Size: 1 << 20, Vectors: 2})
				if err != nil {
					t.Fatal(err)
				}
				if peers := srv.Peers(); len(peers) != int(want) || peers[want-1] != want {
					t.Errorf("server peers %v after plug %d", peers, want)
				}
				var vectors json.Number
				if err := vm.execute(ctx, "qom-get", map[string]any{"path": "/machine/peripheral/" + a.DevID, "property": "vectors"}, &vectors); err != nil || vectors != "2" {
					t.Errorf("device %s: vectors %q, %v", a.DevID, vectors, err)
				}
				if machine == "q35" && a.Bus == "" {
					t.Errorf("q35 doorbell on the default bus")
				}
			}
			// Nobody listening: chardev-add fails, nothing is left.
			dead := filepath.Join(filepath.Dir(sock), "dead.sock")
			n := len(chardevs(t, ctx, vm))
			if _, err := vm.AttachDoorbell(ctx, DoorbellSpec{Socket: dead, Size: 1 << 20, Bus: "none-needed"}); err == nil {
				t.Error("AttachDoorbell to a socket nobody serves succeeded")
			}
			// A server whose memory shrank: it drops QEMU mid-handshake,
			// device_add fails and the chardev is removed again.
			if err := mem.Truncate(1<<20 - 4096); err != nil {
				t.Fatal(err)
			}
			if _, err := vm.AttachDoorbell(ctx, DoorbellSpec{Socket: bellSock, Size: 1 << 20, Bus: busFor(machine)}); err == nil {
				t.Error("AttachDoorbell with a refused handshake succeeded")
			} else {
				t.Logf("refused handshake: %v", err)
			}
			if got := chardevs(t, ctx, vm); len(got) != n {
				t.Errorf("chardevs %v after failed plugs, want %d (before the doorbells: %v)", got, n, before)
			}
		})
	}
}

// busFor returns a bus for a plug that must fail before it matters.
func busFor(machine string) string {
	if machine == "q35" {
		return "zcrp2"
	}
	return ""
}
