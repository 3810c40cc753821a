package zc

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/zcfabric/zc/ivshmem"
)

// fakeIvshmem adds an ivshmem-plain device to a fake sysfs tree whose
// resource2 is a symlink to a region file, so the "guest" maps the very
// bytes the creator writes.
func fakeIvshmem(t *testing.T, root, addr, regionFile string) string {
	t.Helper()
	real := filepath.Join(root, "devices", "pci0000:00", addr)
	if err := os.MkdirAll(real, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, v := range map[string]string{"vendor": "0x1af4\n", "device": "0x1110\n"} {
		if err := os.WriteFile(filepath.Join(real, name), []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(regionFile, filepath.Join(real, "resource2")); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(root, "bus", "pci", "devices", addr)
	if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(link, "resource2")
}

// TestOpenGuestResolver opens zc:99@0 with no host region of that id, so
// Open falls through to the guest resolver, which finds cluster 99 among
// two ivshmem devices of a fake sysfs tree whose BARs are real regions made
// by CreateCluster. Packets sent by the creator arrive through the "BAR";
// an absent cluster is ErrNotFound; zeroing the magic (what an unplugged
// BAR reads) makes the idle consumer fail with ErrGone.
func TestOpenGuestResolver(t *testing.T) {
	c := newCluster(t, Config{ID: 99, QueueLen: 64, Buffers: 256})
	other, err := CreateCluster(Config{ID: 7, QueueLen: 64, Buffers: 256, Backing: BackingShm})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { other.Close() })

	sysfs := t.TempDir()
	fakeIvshmem(t, sysfs, "0000:00:04.0", other.File())
	bar := fakeIvshmem(t, sysfs, "0000:00:05.0", c.File())
	t.Setenv("ZC_DIR", t.TempDir()) // no host regions any more
	t.Setenv("ZC_SYSFS", sysfs)

	q, err := Open("zc:99@0")
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if q.Cluster() != 99 {
		t.Errorf("opened cluster %d, want 99", q.Cluster())
	}
	info, err := Inspect(99)
	if err != nil {
		t.Fatal(err)
	}
	if info.Path != bar || len(info.Queues) != 1 {
		t.Errorf("Inspect(99) = path %s, %d queues; want %s, 1 queue", info.Path, len(info.Queues), bar)
	}

	prod, err := c.Producer(0)
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := range 10 {
		want := fmt.Sprintf("packet %d through the BAR", i)
		if err := prod.Send([]byte(want)); err != nil {
			t.Fatal(err)
		}
		p, err := q.Recv(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if string(p.Data) != want {
			t.Errorf("received %q, want %q", p.Data, want)
		}
		if err := q.Release(p); err != nil {
			t.Fatal(err)
		}
	}

	if _, err := Open("zc:5@0"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Open(zc:5@0) = %v, want ErrNotFound", err)
	}

	// Unplug: the stale BAR reads zeros.
	b := c.Bytes()
	var saved [8]byte
	copy(saved[:], b)
	clear(b[:8])
	t.Cleanup(func() { copy(b, saved[:]) })
	_, err = q.Recv(ctx)
	if !errors.Is(err, ErrGone) || !errors.Is(err, ErrClosed) {
		t.Fatalf("Recv after the BAR turned to zeros = %v, want ErrGone (and ErrClosed)", err)
	}
	t.Logf("consumer after unplug: %v", err)
}

// TestMixedVersionsRefused: a region of format version 1 (an older agent
// or guest binary made it) is refused with one error naming both
// versions, on the host (region file) and in a guest (ivshmem BAR) alike.
func TestMixedVersionsRefused(t *testing.T) {
	c := newCluster(t, Config{ID: 43, QueueLen: 16, Buffers: 32})
	b := c.Bytes()
	binary.LittleEndian.PutUint32(b[8:], 1) // the version word
	binary.LittleEndian.PutUint32(b[108:], crc32.Checksum(b[:108], crc32.MakeTable(crc32.Castagnoli)))
	check := func(where string) {
		t.Helper()
		_, err := Open("zc:43@0")
		if !errors.Is(err, ivshmem.ErrVersion) || !errors.Is(err, ErrBadRegion) {
			t.Fatalf("%s: Open = %v, want ErrVersion", where, err)
		}
		for _, want := range []string{"version 1", "reads version 2"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("%s: %q does not say %q", where, err, want)
			}
		}
	}
	check("host")
	sysfs := t.TempDir()
	fakeIvshmem(t, sysfs, "0000:00:05.0", c.File())
	t.Setenv("ZC_DIR", t.TempDir()) // no host region: the guest resolver finds the BAR
	t.Setenv("ZC_SYSFS", sysfs)
	check("guest")
}
