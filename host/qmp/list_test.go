package qmp

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/zcfabric/zc/host/doorbell"
	"golang.org/x/sys/unix"
)

// TestRegions lists ivshmem-plain and ivshmem-doorbell devices from
// qom-list and qom-get replies shaped like QEMU 7.2's, skipping other
// peripherals: a plain device with its backend's mem-path and size, a
// doorbell with its chardev and BAR2 size, and a doorbell whose BAR2 QEMU
// does not show (size 0, no error).
func TestRegions(t *testing.T) {
	vm, f := startFake(t, func(cmd string, args map[string]any) (string, []string) {
		switch cmd {
		case "qom-list":
			return `{"return": [{"name": "type", "type": "string"}, {"name": "zcrp1", "type": "child<pcie-root-port>"}, ` +
				`{"name": "zcdev-b", "type": "child<ivshmem-plain>"}, {"name": "zcdev-a", "type": "child<ivshmem-plain>"}, ` +
				`{"name": "zcdev-d", "type": "child<ivshmem-doorbell>"}, {"name": "zcdev-c", "type": "child<ivshmem-doorbell>"}]}`, nil
		case "qom-get":
			p, prop := args["path"].(string), args["property"].(string)
			switch {
			case prop == "memdev" && !strings.HasSuffix(p, "-c") && !strings.HasSuffix(p, "-d"):
				return `{"return": "/objects/zcmem-` + p[len(p)-1:] + `"}`, nil
			case prop == "mem-path":
				return `{"return": "/dev/shm/zc-` + p[len(p)-1:] + `"}`, nil
			case prop == "size" && strings.HasPrefix(p, "/objects/"):
				return `{"return": 1048576}`, nil
			case prop == "chardev":
				return `{"return": "zcbell-` + p[len(p)-1:] + `"}`, nil
			case prop == "size" && p == "/machine/peripheral/zcdev-c/ivshmem.bar2[0]":
				return `{"return": 2097152}`, nil
			case prop == "size" && p == "/machine/peripheral/zcdev-d/ivshmem.bar2[0]":
				return `{"error": {"class": "DeviceNotFound", "desc": "Device '` + p + `' not found"}}`, nil
			}
		}
		return `{"error": {"class": "GenericError", "desc": "unexpected"}}`, nil
	})
	got, err := vm.Regions(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	want := []Attachment{
		{MemID: "zcmem-a", DevID: "zcdev-a", Path: "/dev/shm/zc-a", Size: 1 << 20},
		{MemID: "zcmem-b", DevID: "zcdev-b", Path: "/dev/shm/zc-b", Size: 1 << 20},
		{DevID: "zcdev-c", ChardevID: "zcbell-c", Size: 2 << 20},
		{DevID: "zcdev-d", ChardevID: "zcbell-d"},
	}
	if len(got) != len(want) {
		t.Fatalf("Regions = %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("region %d = %+v, want %+v", i, got[i], want[i])
		}
	}
	for _, c := range f.commands() {
		if strings.Contains(c, `"memdev"`) && strings.Contains(c, "zcdev-c") {
			t.Errorf("asked a doorbell device for its memdev: %s", c)
		}
	}
}

// TestRegionsDetachDoorbell detaches a doorbell device as Regions listed
// it (what zchost detach --dev does): device_del, DEVICE_DELETED, then
// chardev-remove of its chardev, never object-del.
func TestRegionsDetachDoorbell(t *testing.T) {
	vm, f := startFake(t, func(cmd string, args map[string]any) (string, []string) {
		switch cmd {
		case "qom-list":
			return `{"return": [{"name": "zcdev-c7-1", "type": "child<ivshmem-doorbell>"}]}`, nil
		case "qom-get":
			if args["property"] == "chardev" {
				return `{"return": "zcbell-c7-1"}`, nil
			}
			return `{"return": 1048576}`, nil
		}
		return pcMachine(cmd, args)
	})
	ctx := ctxT(t)
	rs, err := vm.Regions(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 1 || rs[0].ChardevID != "zcbell-c7-1" || rs[0].MemID != "" {
		t.Fatalf("Regions = %+v, want the doorbell zcdev-c7-1 with chardev zcbell-c7-1", rs)
	}
	if err := vm.Detach(ctx, rs[0]); err != nil {
		t.Fatal(err)
	}
	got := f.commands()
	want := []string{`device_del {"id":"zcdev-c7-1"}`, `chardev-remove {"id":"zcbell-c7-1"}`}
	if len(got) < len(want) || !slices.Equal(got[len(got)-2:], want) {
		t.Errorf("commands %q, want them to end with %q", got, want)
	}
	for _, c := range got {
		if strings.HasPrefix(c, "object-del") {
			t.Errorf("detaching a doorbell sent %s", c)
		}
	}
}

func TestRegionsError(t *testing.T) {
	vm, _ := startFake(t, func(string, map[string]any) (string, []string) {
		return `{"error": {"class": "GenericError", "desc": "no"}}`, nil
	})
	if _, err := vm.Regions(ctxT(t)); !errors.Is(err, ErrGeneric) {
		t.Errorf("Regions = %v, want ErrGeneric", err)
	}
}

// TestRegionsQEMU plugs an ivshmem-plain region and an ivshmem-doorbell
// device into a real, paused QEMU (pc and q35) and lists them: the plain
// one with its backend, the doorbell with its chardev and the size of the
// memory its server sent.
func TestRegionsQEMU(t *testing.T) {
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
			fd, err := unix.MemfdCreate("zc-qmp-list", unix.MFD_CLOEXEC)
			if err != nil {
				t.Fatal(err)
			}
			mem := os.NewFile(uintptr(fd), "memfd")
			defer mem.Close()
			if err := mem.Truncate(1 << 20); err != nil {
				t.Fatal(err)
			}
			bellSock := filepath.Join(filepath.Dir(sock), "bell.sock")
			srv, err := doorbell.Listen(doorbell.Config{Path: bellSock, Memory: mem, Logf: t.Logf})
			if err != nil {
				t.Fatal(err)
			}
			defer srv.Close()
			bell, err := vm.AttachDoorbell(ctx, DoorbellSpec{Socket: bellSock, Size: 1 << 20})
			if err != nil {
				t.Fatal(err)
			}
			file := filepath.Join(t.TempDir(), "region")
			if err := os.WriteFile(file, make([]byte, 2<<20), 0o600); err != nil {
				t.Fatal(err)
			}
			plain, err := vm.AttachRegion(ctx, AttachSpec{Path: file})
			if err != nil {
				t.Fatal(err)
			}
			got, err := vm.Regions(ctx)
			if err != nil {
				t.Fatal(err)
			}
			want := map[string]Attachment{
				plain.DevID: {MemID: plain.MemID, DevID: plain.DevID, Path: file, Size: 2 << 20},
				bell.DevID:  {DevID: bell.DevID, ChardevID: bell.ChardevID, Size: 1 << 20},
			}
			if len(got) != len(want) {
				t.Fatalf("Regions = %+v, want %+v", got, want)
			}
			for _, a := range got {
				if a != want[a.DevID] {
					t.Errorf("region %+v, want %+v", a, want[a.DevID])
				}
			}
		})
	}
}
