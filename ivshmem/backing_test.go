package ivshmem

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/zcfabric/zc/internal/testgate"
)

func roundTrip(t *testing.T, kind Backing, hugeDir string) *Mapping {
	t.Helper()
	path := filepath.Join(shmDir(t), "zc-test-"+strconv.Itoa(os.Getpid())+"-"+kind.String())
	cfg := testConfig()
	cfg.MinSize = HugePageSize
	l, err := Plan(cfg)
	if err != nil {
		t.Fatal(err)
	}
	m, err := Create(path, l.RegionSize, kind, hugeDir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close(); m.Remove() })
	if err := l.Write(m.Bytes); err != nil {
		t.Fatal(err)
	}
	if _, err := Map(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("unpublished region visible: %v", err)
	}
	Publish(m.Bytes)
	if err := m.Publish(); err != nil {
		t.Fatal(err)
	}
	// A second mapping of the name sees the same bytes.
	m2, err := Map(path)
	if err != nil {
		t.Fatal(err)
	}
	defer m2.Close()
	l2, err := Parse(m2.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if l2.ClusterID != 99 {
		t.Fatalf("cluster %d", l2.ClusterID)
	}
	m.Bytes[l.BufOff] = 0xAB
	if m2.Bytes[l.BufOff] != 0xAB {
		t.Fatal("second mapping does not share memory")
	}
	return m
}

func shmDir(t *testing.T) string {
	if _, err := os.Stat("/dev/shm"); err != nil {
		return t.TempDir()
	}
	return "/dev/shm"
}

func TestBackingShm(t *testing.T) {
	m := roundTrip(t, BackingShm, "")
	if m.File != m.Path {
		t.Fatalf("file %s path %s", m.File, m.Path)
	}
}

func TestBackingMemfd(t *testing.T) {
	m := roundTrip(t, BackingMemfd, "")
	if !strings.HasPrefix(m.File, "/proc/") {
		t.Fatalf("memfd file %s", m.File)
	}
}

// TestBackingHugetlbfs sets up hugepages and a hugetlbfs mount when root.
func TestBackingHugetlbfs(t *testing.T) {
	dir := hugetlbfs(t, 4)
	m := roundTrip(t, BackingHugetlb, dir)
	if !strings.HasPrefix(m.File, dir) {
		t.Fatalf("file %s not on %s", m.File, dir)
	}
	// Auto picks hugetlbfs when it has room.
	l, _ := Plan(Config{ClusterID: 1, Queues: 1, Slots: 8, BufSize: 256, Buffers: 8, MinSize: HugePageSize})
	a, err := Create(filepath.Join(shmDir(t), "zc-test-auto-"+strconv.Itoa(os.Getpid())), l.RegionSize, BackingAuto, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { a.Close(); a.Remove() }()
	if a.Kind != BackingHugetlb {
		t.Fatalf("auto chose %s", a.Kind)
	}
}

// hugetlbfs makes sure n free 2 MiB pages and a hugetlbfs mount exist.
func hugetlbfs(t *testing.T, n int) string {
	t.Helper()
	testgate.Root(t)
	free := func() int {
		b, _ := os.ReadFile("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages")
		v, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		return v
	}
	if free() < n {
		b, _ := os.ReadFile("/proc/sys/vm/nr_hugepages")
		cur, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		if err := os.WriteFile("/proc/sys/vm/nr_hugepages", []byte(strconv.Itoa(cur+n)), 0); err != nil || free() < n {
			t.Skipf("cannot reserve %d hugepages (%v): echo N > /proc/sys/vm/nr_hugepages as root", n, err)
		}
		t.Cleanup(func() { os.WriteFile("/proc/sys/vm/nr_hugepages", []byte(strconv.Itoa(cur)), 0) })
	}
	if dir, err := FindHugetlbfs(); err == nil {
		return dir
	}
	dir := t.TempDir()
	if out, err := runCmd("mount", "-t", "hugetlbfs", "none", dir); err != nil {
		t.Skipf("cannot mount hugetlbfs: %v %s", err, out)
	}
	t.Cleanup(func() { runCmd("umount", dir) })
	return dir
}
