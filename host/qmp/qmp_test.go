package qmp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeQEMU plays QEMU's side of a QMP socket over net.Pipe. handle returns
// the reply line (without newline) and events to send after it.
type fakeQEMU struct {
	mu   sync.Mutex
	cmds []string // "execute arguments-json", in order
}

type handler func(cmd string, args map[string]any) (reply string, events []string)

func startFake(t *testing.T, h handler) (*VM, *fakeQEMU) {
	t.Helper()
	client, server := net.Pipe()
	f := &fakeQEMU{}
	go func() {
		defer server.Close()
		w := func(s string) bool { _, err := server.Write([]byte(s + "\n")); return err == nil }
		if !w(`{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": ["oob"]}}`) {
			return
		}
		sc := bufio.NewScanner(server)
		for sc.Scan() {
			var c struct {
				Execute   string         `json:"execute"`
				Arguments map[string]any `json:"arguments"`
			}
			if err := json.Unmarshal(sc.Bytes(), &c); err != nil {
				w(`{"error": {"class": "GenericError", "desc": "bad json"}}`)
				continue
			}
			if c.Execute == "qmp_capabilities" {
				w(`{"return": {}}`)
				continue
			}
			a, _ := json.Marshal(c.Arguments)
			f.mu.Lock()
			f.cmds = append(f.cmds, c.Execute+" "+string(a))
			f.mu.Unlock()
			reply, events := h(c.Execute, c.Arguments)
			if !w(reply) {
				return
			}
			for _, e := range events {
				w(e)
			}
		}
	}()
	mon := NewSocketMonitor(client)
	if err := mon.Connect(); err != nil {
		t.Fatalf("Connect: %v", err)
	}
	vm, err := New(mon, "fake.qmp")
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { vm.Close() })
	return vm, f
}

func (f *fakeQEMU) commands() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.cmds...)
}

func deletedEvent(id string) string {
	return fmt.Sprintf(`{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "DEVICE_DELETED", "data": {"device": %q, "path": "/machine/peripheral/%s"}}`, id, id)
}

// pcMachine answers like QEMU on an i440fx machine that accepts everything
// and unplugs at once.
func pcMachine(cmd string, args map[string]any) (string, []string) {
	switch cmd {
	case "qom-get":
		return `{"return": "pc-i440fx-7.2-machine"}`, nil
	case "device_del":
		id := args["id"].(string)
		return `{"return": {}}`, []string{
			`{"event": "SOMETHING_ELSE", "data": {}}`,
			deletedEvent("not-" + id),
			deletedEvent(id),
		}
	}
	return `{"return": {}}`, nil
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestAttachDetachPC(t *testing.T) {
	vm, f := startFake(t, pcMachine)
	ctx := ctxT(t)
	spec := AttachSpec{Path: "/dev/shm/zc-99", Size: 1 << 20, Name: "c99"}
	a1, err := vm.AttachRegion(ctx, spec)
	if err != nil {
		t.Fatalf("AttachRegion: %v", err)
	}
	if err := vm.Detach(ctx, a1); err != nil {
		t.Fatalf("Detach: %v", err)
	}
	a2, err := vm.AttachRegion(ctx, spec)
	if err != nil {
		t.Fatalf("second AttachRegion: %v", err)
	}
	if a1.MemID == a2.MemID || a1.DevID == a2.DevID || a1.MemID == a1.DevID {
		t.Errorf("ids reused: first %+v, second %+v", a1, a2)
	}
	if a1.Bus != "" || !strings.Contains(a1.MemID, "c99") {
		t.Errorf("attachment %+v: want default bus and label c99 in ids", a1)
	}
	got := f.commands()
	want := []string{
		"qom-get",
		fmt.Sprintf(`object-add {"id":%q,"mem-path":"/dev/shm/zc-99","qom-type":"memory-backend-file","share":true,"size":1048576}`, a1.MemID),
		fmt.Sprintf(`device_add {"driver":"ivshmem-plain","id":%q,"memdev":%q}`, a1.DevID, a1.MemID),
		fmt.Sprintf(`device_del {"id":%q}`, a1.DevID),
		fmt.Sprintf(`object-del {"id":%q}`, a1.MemID),
	}
	for i, w := range want {
		if i >= len(got) || !strings.HasPrefix(got[i], w) {
			t.Fatalf("command %d = %q, want %q (all: %q)", i, got[i], w, got)
		}
	}
}

func TestDetachTimeout(t *testing.T) {
	vm, _ := startFake(t, func(cmd string, args map[string]any) (string, []string) {
		if cmd == "qom-get" {
			return `{"return": "pc-i440fx-7.2-machine"}`, nil
		}
		return `{"return": {}}`, nil // device_del never completes
	})
	a, err := vm.AttachRegion(ctxT(t), AttachSpec{Path: "/dev/shm/x", Size: 4096})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	err = vm.Detach(ctx, a)
	if !errors.Is(err, ErrDetachTimeout) {
		t.Fatalf("Detach = %v, want ErrDetachTimeout", err)
	}
	if !strings.Contains(err.Error(), "zc: detach region /dev/shm/x") || !strings.Contains(err.Error(), "fake.qmp") {
		t.Errorf("error %q does not name op, region and vm", err)
	}
}

func TestDetachAlreadyGone(t *testing.T) {
	vm, f := startFake(t, func(cmd string, args map[string]any) (string, []string) {
		if cmd == "device_del" {
			return `{"error": {"class": "DeviceNotFound", "desc": "Device 'x' not found"}}`, nil
		}
		return `{"return": {}}`, nil
	})
	a := Attachment{MemID: "m1", DevID: "d1", Path: "/dev/shm/x"}
	if err := vm.Detach(ctxT(t), a); err != nil {
		t.Fatalf("Detach of a gone device: %v", err)
	}
	if got := f.commands(); len(got) != 2 || !strings.HasPrefix(got[1], "object-del") {
		t.Errorf("commands %q, want device_del then object-del", got)
	}
}

func TestAttachErrorKeepsClassAndCleansUp(t *testing.T) {
	vm, f := startFake(t, func(cmd string, args map[string]any) (string, []string) {
		switch cmd {
		case "qom-get":
			return `{"return": "pc-i440fx-7.2-machine"}`, nil
		case "device_add":
			return `{"error": {"class": "GenericError", "desc": "Bus 'nope' not found"}}`, nil
		}
		return `{"return": {}}`, nil
	})
	_, err := vm.AttachRegion(ctxT(t), AttachSpec{Path: "/dev/shm/zc-99", Size: 1 << 20})
	var qe *Error
	if !errors.As(err, &qe) || qe.Class != "GenericError" || qe.Command != "device_add" {
		t.Fatalf("AttachRegion error %v: want *Error of class GenericError from device_add", err)
	}
	if !errors.Is(err, ErrGeneric) || errors.Is(err, ErrDeviceNotFound) {
		t.Errorf("error %v: Is matches the wrong sentinels", err)
	}
	if want := "zc: attach region /dev/shm/zc-99 to vm fake.qmp: "; !strings.HasPrefix(err.Error(), want) {
		t.Errorf("error %q, want prefix %q", err, want)
	}
	got := f.commands()
	if last := got[len(got)-1]; !strings.HasPrefix(last, "object-del") {
		t.Errorf("last command %q, want object-del of the orphaned backend", last)
	}
}

func TestAttachBadSize(t *testing.T) {
	vm, f := startFake(t, pcMachine)
	_, err := vm.AttachRegion(ctxT(t), AttachSpec{Path: "/dev/shm/x", Size: 3 << 20})
	if !errors.Is(err, ErrBadSize) {
		t.Fatalf("AttachRegion(3 MiB) = %v, want ErrBadSize", err)
	}
	path := filepath.Join(t.TempDir(), "region")
	if err := os.WriteFile(path, make([]byte, 8192), 0o600); err != nil {
		t.Fatal(err)
	}
	a, err := vm.AttachRegion(ctxT(t), AttachSpec{Path: path})
	if err != nil || a.Size != 8192 {
		t.Fatalf("AttachRegion(size from file) = %+v, %v; want size 8192", a, err)
	}
	if n := len(f.commands()); n != 3 {
		t.Errorf("%d commands sent, want 3 (none for the bad size)", n)
	}
}

// q35 answers like a q35 machine with root ports zcrp1 (busy), zcrp2 (free,
// 64M reserve) and zcrp3 (free, no reserve).
func q35(cmd string, args map[string]any) (string, []string) {
	switch cmd {
	case "qom-get":
		if args["path"] == "/machine" {
			return `{"return": "pc-q35-7.2-machine"}`, nil
		}
		if args["path"] == "/machine/peripheral/zcrp2" {
			return `{"return": 67108864}`, nil
		}
		return `{"return": 18446744073709551615}`, nil
	case "query-pci":
		port := func(id, devs string) string {
			return fmt.Sprintf(`{"bus": 0, "qdev_id": %q, "id": {"device": 12, "vendor": 6966}, "class_info": {"class": 1540}, "pci_bridge": {"bus": {"prefetchable_range": {"base": 1, "limit": 0}}, "devices": [%s]}}`, id, devs)
		}
		return `{"return": [{"bus": 0, "devices": [` +
			`{"bus": 0, "qdev_id": "", "id": {"device": 10688, "vendor": 32902}},` +
			port("zcrp3", "") + "," + port("zcrp1", `{"bus": 1, "qdev_id": "zcdev-x", "id": {"device": 4368, "vendor": 6900}}`) + "," + port("zcrp2", "") +
			`]}]}`, nil
	}
	return `{"return": {}}`, nil
}

func TestAttachQ35PicksFreeRootPort(t *testing.T) {
	vm, f := startFake(t, q35)
	a, err := vm.AttachRegion(ctxT(t), AttachSpec{Path: "/dev/shm/zc-99", Size: 16 << 20})
	if err != nil {
		t.Fatalf("AttachRegion: %v", err)
	}
	if a.Bus != "zcrp2" {
		t.Errorf("bus %q, want zcrp2 (the free port with enough pref64-reserve)", a.Bus)
	}
	got := f.commands()
	if last := got[len(got)-1]; !strings.Contains(last, `"bus":"zcrp2"`) {
		t.Errorf("device_add %q does not name bus zcrp2", last)
	}
}

func TestAttachQ35NoRootPort(t *testing.T) {
	vm, _ := startFake(t, q35)
	_, err := vm.AttachRegion(ctxT(t), AttachSpec{Path: "/dev/shm/zc-99", Size: 128 << 20})
	if !errors.Is(err, ErrNoRootPort) {
		t.Fatalf("AttachRegion(128 MiB) = %v, want ErrNoRootPort", err)
	}
	if want := "-device pcie-root-port,id=zcrp1,slot=1,pref64-reserve=128M"; !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not tell the user to add %q", err, want)
	}
}

func TestRunAfterDisconnect(t *testing.T) {
	vm, _ := startFake(t, pcMachine)
	if err := vm.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	_, err := vm.AttachRegion(ctxT(t), AttachSpec{Path: "/dev/shm/x", Size: 4096})
	if !errors.Is(err, ErrClosed) {
		t.Fatalf("AttachRegion after Close = %v, want ErrClosed", err)
	}
}

func TestNewIDsUnique(t *testing.T) {
	seen := map[string]bool{}
	for range 1000 {
		m, d := newIDs("a b/c")
		if seen[m] || seen[d] {
			t.Fatalf("id reused: %s %s", m, d)
		}
		seen[m], seen[d] = true, true
		if strings.ContainsAny(m+d, " /") {
			t.Fatalf("ids %q %q keep characters QEMU rejects", m, d)
		}
	}
}

func TestSizeString(t *testing.T) {
	for n, want := range map[uint64]string{64 << 20: "64M", 1 << 30: "1G", 4096: "4K", 1000: "1000", 3 << 20: "3M"} {
		if got := sizeString(n); got != want {
			t.Errorf("sizeString(%d) = %q, want %q", n, got, want)
		}
	}
}
