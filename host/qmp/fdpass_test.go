package qmp

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/zcfabric/zc/internal/testgate"
	"github.com/zcfabric/zc/ivshmem"
	"golang.org/x/sys/unix"
)

// qemuView returns n bytes of what QEMU process pid has mapped shared
// from the file with inode ino, read through /proc/PID/mem: the bytes the
// guest's BAR2 would show.
func qemuView(t *testing.T, pid int, ino uint64, n int) []byte {
	t.Helper()
	maps, err := os.Open(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer maps.Close()
	sc := bufio.NewScanner(maps)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 5 || f[4] != strconv.FormatUint(ino, 10) || !strings.HasSuffix(f[1], "s") {
			continue
		}
		start, _, _ := strings.Cut(f[0], "-")
		addr, err := strconv.ParseUint(start, 16, 64)
		if err != nil {
			t.Fatal(err)
		}
		mem, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
		if err != nil {
			t.Fatal(err)
		}
		defer mem.Close()
		b := make([]byte, n)
		if _, err := mem.ReadAt(b, int64(addr)); err != nil {
			t.Fatalf("read QEMU's mapping at %#x: %v", addr, err)
		}
		return b
	}
	t.Fatalf("QEMU (pid %d) maps no shared file with inode %d", pid, ino)
	return nil
}

// dialQEMUAs starts a paused pc QEMU that drops to uid/gid 65534 (-runas
// nobody) and connects to it.
func dialQEMUAs(t *testing.T) (*VM, Cred) {
	t.Helper()
	testgate.Root(t)
	sock := startQEMU(t, "pc", "-runas", "nobody")
	vm, err := Dial(ctxT(t), sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vm.Close() })
	c, err := vm.PeerCred()
	if err != nil {
		t.Fatal(err)
	}
	if c.UID == 0 {
		t.Fatalf("PeerCred = %+v: QEMU under -runas nobody reported as root", c)
	}
	return vm, c
}

// shares writes a pattern into the region and checks that QEMU's mapping
// of the same inode reads it.
func shares(t *testing.T, pid int, m *ivshmem.Mapping) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(m.Path, &st); err != nil {
		t.Fatal(err)
	}
	pattern := []byte(fmt.Sprintf("zc-%d-%s", os.Getpid(), m.Path))
	copy(m.Bytes[4096:], pattern)
	if got := qemuView(t, pid, st.Ino, 4096+len(pattern))[4096:]; !bytes.Equal(got, pattern) {
		t.Fatalf("QEMU reads %q from the region, want %q", got, pattern)
	}
}

func newRegion(t *testing.T, name string, kind ivshmem.Backing, group string) *ivshmem.Mapping {
	t.Helper()
	path := filepath.Join("/dev/shm", fmt.Sprintf("zc-qmptest-%d-%s", os.Getpid(), name))
	m, err := ivshmem.CreateWith(path, 1<<20, ivshmem.CreateOptions{Backing: kind, Group: group})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close(); m.Remove() })
	if err := m.Publish(); err != nil {
		t.Fatal(err)
	}
	return m
}

// objectAddByPath is the plain object-add AttachRegion would send for a
// file QEMU opens itself.
func objectAddByPath(ctx context.Context, vm *VM, id, path string) error {
	return vm.execute(ctx, "object-add", map[string]any{
		"qom-type": "memory-backend-file", "id": id, "mem-path": path, "size": 1 << 20, "share": true,
	}, nil)
}

// TestAttachGivesFileToQEMUUser: QEMU running as nobody cannot open a 0600
// region file of root's; AttachRegion gives it to QEMU's uid (mode and
// group kept) and QEMU then maps the region's bytes. A 0660 file of
// QEMU's group is left alone.
func TestAttachGivesFileToQEMUUser(t *testing.T) {
	vm, qemu := dialQEMUAs(t)
	ctx := ctxT(t)

	m := newRegion(t, "own", ivshmem.BackingShm, "")
	if err := objectAddByPath(ctx, vm, "zctest-plain", m.Path); err == nil || !strings.Contains(err.Error(), "Permission denied") {
		t.Fatalf("object-add of a 0600 root file by QEMU as uid %d = %v, want Permission denied", qemu.UID, err)
	}
	a, err := vm.AttachRegion(ctx, AttachSpec{Path: m.File, Name: "own"})
	if err != nil {
		t.Fatal(err)
	}
	if a.ByFD {
		t.Errorf("a /dev/shm file went by fd: %+v", a)
	}
	if mode, uid, gid := statIDs(t, m.Path); mode != ivshmem.ModeOwner || uid != qemu.UID || gid != os.Getegid() {
		t.Errorf("region file is %o %d:%d after attach, want %o %d:%d", mode, uid, gid, ivshmem.ModeOwner, qemu.UID, os.Getegid())
	}
	shares(t, qemu.PID, m)

	g := newRegion(t, "group", ivshmem.BackingShm, strconv.Itoa(qemu.GID))
	if _, err := vm.AttachRegion(ctx, AttachSpec{Path: g.File, Name: "group"}); err != nil {
		t.Fatal(err)
	}
	if mode, uid, gid := statIDs(t, g.Path); mode != ivshmem.ModeGroup || uid != os.Geteuid() || gid != qemu.GID {
		t.Errorf("group region file is %o %d:%d after attach, want %o %d:%d (untouched)", mode, uid, gid, ivshmem.ModeGroup, os.Geteuid(), qemu.GID)
	}
	shares(t, qemu.PID, g)
}

// TestAttachMemfdByFD: QEMU running as nobody cannot open the agent's
// memfd by its /proc path; AttachRegion passes it over the QMP socket
// instead, QEMU maps the same bytes, keeps no fd set, and the backend's
// mem-path is QEMU's own /proc/self/fd/N.
func TestAttachMemfdByFD(t *testing.T) {
	vm, qemu := dialQEMUAs(t)
	ctx := ctxT(t)
	m := newRegion(t, "memfd", ivshmem.BackingMemfd, "")
	if err := objectAddByPath(ctx, vm, "zctest-procpath", m.File); err == nil || !strings.Contains(err.Error(), "Permission denied") {
		t.Fatalf("object-add of %s by QEMU as uid %d = %v, want Permission denied", m.File, qemu.UID, err)
	}
	a, err := vm.AttachRegion(ctx, AttachSpec{Path: m.File, Name: "memfd"})
	if err != nil {
		t.Fatal(err)
	}
	if !a.ByFD || a.Path != m.File || a.Size != 1<<20 {
		t.Errorf("attachment %+v, want ByFD, path %s, 1 MiB", a, m.File)
	}
	shares(t, qemu.PID, m)
	rs, err := vm.Regions(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 1 || rs[0].DevID != a.DevID || !strings.HasPrefix(rs[0].Path, "/proc/self/fd/") {
		t.Errorf("Regions = %+v, want %s with mem-path /proc/self/fd/N", rs, a.DevID)
	}

	// The VM is paused: QEMU keeps the removed fd set until a remove-fd
	// while it runs. The next attach, running, sweeps it.
	var sets []any
	if err := vm.execute(ctx, "query-fdsets", nil, &sets); err != nil || len(sets) != 1 {
		t.Errorf("query-fdsets on the paused VM = %v, %v; want the one QEMU keeps", sets, err)
	}
	if err := vm.execute(ctx, "cont", nil, nil); err != nil {
		t.Fatal(err)
	}
	m2 := newRegion(t, "memfd2", ivshmem.BackingMemfd, "")
	a2, err := vm.AttachRegion(ctx, AttachSpec{Path: m2.File, Name: "memfd2"})
	if err != nil || !a2.ByFD {
		t.Fatalf("second attach = %+v, %v", a2, err)
	}
	shares(t, qemu.PID, m2)
	if err := vm.execute(ctx, "query-fdsets", nil, &sets); err != nil || len(sets) != 0 {
		t.Errorf("query-fdsets on the running VM = %v, %v; want none left", sets, err)
	}
	// A refused object-add (size differs from the memfd's) leaves no set.
	_, err = vm.AttachRegion(ctx, AttachSpec{Path: m2.File, Size: 2 << 20, Name: "toobig"})
	if err == nil || !strings.Contains(err.Error(), "does not match 'size'") {
		t.Fatalf("attach with the wrong size = %v, want QEMU's size mismatch", err)
	}
	if err := vm.execute(ctx, "query-fdsets", nil, &sets); err != nil || len(sets) != 0 {
		t.Errorf("query-fdsets after a failed attach = %v, %v; want none left", sets, err)
	}
}

// TestDetachSweepsFDSets: detaching a region that went by fd removes the
// fd sets AttachRegion left in QEMU, and no other.
func TestDetachSweepsFDSets(t *testing.T) {
	vm, f := startFake(t, func(cmd string, args map[string]any) (string, []string) {
		switch cmd {
		case "device_del":
			return `{"return": {}}`, []string{deletedEvent(args["id"].(string))}
		case "query-fdsets":
			return `{"return": [{"fdset-id": 3, "fds": [{"fd": 20, "opaque": "zc region zcmem-a"}]},` +
				`{"fdset-id": 4, "fds": [{"fd": 21, "opaque": "libvirt"}]}, {"fdset-id": 5, "fds": [{"fd": 22}]}]}`, nil
		}
		return `{"return": {}}`, nil
	})
	if err := vm.Detach(ctxT(t), Attachment{MemID: "m", DevID: "d", ByFD: true}); err != nil {
		t.Fatal(err)
	}
	got := strings.Join(f.commands(), "\n")
	want := "device_del {\"id\":\"d\"}\nobject-del {\"id\":\"m\"}\nquery-fdsets null\nremove-fd {\"fdset-id\":3}"
	if got != want {
		t.Errorf("commands:\n%s\nwant:\n%s", got, want)
	}
}
