package guest

import (
	"context"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/zcfabric/zc/ivshmem"
)

// fakeDevice adds a PCI device to a fake sysfs tree the way the kernel lays
// it out: the real directory under devices/, a symlink in bus/pci/devices.
// bar is resource2's contents; nil leaves resource2 out. It reports
// failures with t.Error, so it may run in a goroutine.
func fakeDevice(t *testing.T, root, addr, vendor, device string, bar []byte) string {
	t.Helper()
	real := filepath.Join(root, "devices", "pci0000:00", addr)
	if err := os.MkdirAll(real, 0o755); err != nil {
		t.Error(err)
		return real
	}
	write := func(name string, b []byte) {
		if err := os.WriteFile(filepath.Join(real, name), b, 0o644); err != nil {
			t.Error(err)
		}
	}
	write("vendor", []byte(vendor+"\n"))
	write("device", []byte(device+"\n"))
	if bar != nil {
		write("resource2", bar)
	}
	link := filepath.Join(root, "bus", "pci", "devices", addr)
	if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
		t.Error(err)
		return real
	}
	if err := os.Symlink(filepath.Join("..", "..", "..", "devices", "pci0000:00", addr), link); err != nil {
		t.Error(err)
		return real
	}
	return real
}

func region(cluster uint32, size int) []byte {
	b := make([]byte, size)
	copy(b, ivshmem.Magic)
	binary.LittleEndian.PutUint32(b[24:], cluster)
	for i := 32; i < size; i++ {
		b[i] = byte(i * 7)
	}
	return b
}

func TestFindMapAndGone(t *testing.T) {
	root := t.TempDir()
	fakeDevice(t, root, "0000:00:03.0", "0x1af4", "0x1000", []byte("virtio net, not ivshmem"))
	fakeDevice(t, root, "0000:00:05.0", "0x1af4", "0x1110", region(7, 4096))
	fakeDevice(t, root, "0000:00:04.0", "0x1af4", "0x1110", region(99, 8192))
	fakeDevice(t, root, "0000:00:06.0", "0x1af4", "0x1110", nil) // BAR not assigned yet
	fakeDevice(t, root, "0000:00:07.0", "0x8086", "0x1110", region(1, 4096))

	devs, err := Find(root)
	if err != nil {
		t.Fatal(err)
	}
	want := []Device{
		{"0000:00:04.0", filepath.Join(root, "bus/pci/devices/0000:00:04.0"), 8192},
		{"0000:00:05.0", filepath.Join(root, "bus/pci/devices/0000:00:05.0"), 4096},
		{"0000:00:06.0", filepath.Join(root, "bus/pci/devices/0000:00:06.0"), 0},
	}
	if len(devs) != len(want) {
		t.Fatalf("Find = %+v, want %+v", devs, want)
	}
	for i := range want {
		if devs[i] != want[i] {
			t.Errorf("device %d = %+v, want %+v", i, devs[i], want[i])
		}
	}

	m, err := devs[0].Map()
	if err != nil {
		t.Fatal(err)
	}
	b := m.Bytes()
	if id, ok := ClusterID(b); !ok || id != 99 || len(b) != 8192 || b[100] != byte(700%256) {
		t.Errorf("mapped region: cluster %d ok=%v len %d b[100]=%d", id, ok, len(b), b[100])
	}
	b[200] = 0xee // MAP_SHARED: the store reaches the file
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	onDisk, _ := os.ReadFile(filepath.Join(devs[0].Dir, "resource2"))
	if onDisk[200] != 0xee {
		t.Errorf("store through the mapping not shared: byte 200 = %#x", onDisk[200])
	}
	if _, err := os.Stat(filepath.Join(devs[0].Dir, "enable")); err == nil {
		t.Errorf("Map created an enable attribute in the fake tree")
	}

	if _, err := devs[2].Map(); err == nil {
		t.Errorf("Map of a device without resource2 succeeded")
	}
	if Gone(devs[0]) {
		t.Errorf("Gone before removal")
	}
	if err := os.RemoveAll(filepath.Join(root, "devices", "pci0000:00", "0000:00:04.0")); err != nil {
		t.Fatal(err)
	}
	if !Gone(devs[0]) {
		t.Errorf("Gone after removal = false")
	}
}

func TestFindMissingRoot(t *testing.T) {
	_, err := Find(filepath.Join(t.TempDir(), "nosys"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Find(missing) = %v, want ErrNotExist", err)
	}
}

func TestWaitForCluster(t *testing.T) {
	root := t.TempDir()
	fakeDevice(t, root, "0000:00:04.0", "0x1af4", "0x1110", region(7, 4096))
	// Another cluster appears first with no BAR, then gets one.
	go func() {
		time.Sleep(20 * time.Millisecond)
		real := fakeDevice(t, root, "0000:00:05.0", "0x1af4", "0x1110", nil)
		time.Sleep(20 * time.Millisecond)
		os.WriteFile(filepath.Join(real, "resource2"), region(99, 4096), 0o644)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	d, err := Wait(ctx, root, MatchCluster(99), time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if d.Addr != "0000:00:05.0" || d.Size != 4096 {
		t.Errorf("Wait = %+v, want 0000:00:05.0 with 4096 bytes", d)
	}

	ctx, cancel = context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	if _, err := Wait(ctx, root, MatchCluster(12345), 0); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Wait for an absent cluster = %v, want DeadlineExceeded", err)
	}
}

func TestClusterID(t *testing.T) {
	for _, c := range []struct {
		b    []byte
		id   uint32
		ok   bool
		name string
	}{
		{region(99, 64), 99, true, "header"},
		{make([]byte, 64), 0, false, "zeros (unplugged BAR)"},
		{region(99, 64)[:27], 0, false, "too short"},
		{append([]byte("ZCFABRIX"), region(1, 64)[8:]...), 0, false, "bad magic"},
	} {
		id, ok := ClusterID(c.b)
		if id != c.id || ok != c.ok {
			t.Errorf("%s: ClusterID = %d, %v; want %d, %v", c.name, id, ok, c.id, c.ok)
		}
	}
}

func TestResolveIn(t *testing.T) {
	root := t.TempDir()
	fakeDevice(t, root, "0000:00:04.0", "0x1af4", "0x1110", region(7, 4096))
	fakeDevice(t, root, "0000:00:05.0", "0x1af4", "0x1110", region(99, 4096)) // magic and id, no valid header
	fakeDevice(t, root, "0000:00:06.0", "0x1af4", "0x1110", nil)

	if _, err := ResolveIn(root, 5); !errors.Is(err, ErrNotFound) {
		t.Errorf("ResolveIn(absent cluster) = %v, want ErrNotFound", err)
	}
	_, err := ResolveIn(root, 99)
	if err == nil || errors.Is(err, ErrNotFound) || !errors.Is(err, ivshmem.ErrBadRegion) {
		t.Errorf("ResolveIn(cluster with a broken header) = %v, want ErrBadRegion", err)
	}
	if _, err := ResolveIn(filepath.Join(root, "nosys"), 99); !errors.Is(err, ErrNotFound) {
		t.Errorf("ResolveIn(no sysfs) = %v, want ErrNotFound", err)
	}
	t.Setenv(SysfsEnv, root)
	if SysfsRoot() != root {
		t.Errorf("SysfsRoot() = %s with %s=%s", SysfsRoot(), SysfsEnv, root)
	}
	if _, _, err := Resolve(5); !errors.Is(err, ErrNotFound) {
		t.Errorf("Resolve(absent cluster) = %v, want ErrNotFound", err)
	}
}
