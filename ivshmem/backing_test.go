package ivshmem

import (
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/zcfabric/zc/internal/testgate"
	"golang.org/x/sys/unix"
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

// fileAccess returns the mode bits, owner and group of the file at path
// (following symlinks).
func fileAccess(t *testing.T, path string) (os.FileMode, int, int) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return os.FileMode(st.Mode & 0o7777), int(st.Uid), int(st.Gid)
}

// otherGroup returns a group the caller may give files to, by id and
// name: nogroup (65534) for root, the caller's own group otherwise.
func otherGroup(t *testing.T) (int, string) {
	gid := os.Getegid()
	if os.Geteuid() == 0 {
		gid = 65534
	}
	g, err := user.LookupGroupId(strconv.Itoa(gid))
	if err != nil {
		t.Skipf("group %d has no name here: %v", gid, err)
	}
	return gid, g.Name
}

// TestRegionFileModes: tmpfs and hugetlbfs region files are 0600 and
// owned by the creator, whatever the umask; with a group, by name or id,
// they are 0660 and carry that group; an unknown group is refused.
func TestRegionFileModes(t *testing.T) {
	old := unix.Umask(0o022)
	defer unix.Umask(old)
	gid, gname := otherGroup(t)
	for _, kind := range []Backing{BackingShm, BackingHugetlb} {
		t.Run(kind.String(), func(t *testing.T) {
			dir := ""
			if kind == BackingHugetlb {
				dir = hugetlbfs(t, 3)
			}
			for i, tc := range []struct {
				group string
				mode  os.FileMode
				gid   int
			}{
				{"", ModeOwner, -1},
				{gname, ModeGroup, gid},
				{strconv.Itoa(gid), ModeGroup, gid},
			} {
				path := filepath.Join(shmDir(t), fmt.Sprintf("zc-test-mode-%d-%s-%d", os.Getpid(), kind, i))
				m, err := CreateWith(path, HugePageSize, CreateOptions{Backing: kind, HugetlbDir: dir, Group: tc.group})
				if err != nil {
					t.Fatalf("group %q: %v", tc.group, err)
				}
				if err := m.Publish(); err != nil {
					t.Fatal(err)
				}
				mode, uid, g := fileAccess(t, m.Path)
				m.Close()
				m.Remove()
				if mode != tc.mode || uid != os.Geteuid() || (tc.gid >= 0 && g != tc.gid) {
					t.Errorf("group %q: file %s is %o uid %d gid %d, want %o uid %d gid %d",
						tc.group, m.File, mode, uid, g, tc.mode, os.Geteuid(), tc.gid)
				}
			}
		})
	}
	path := filepath.Join(shmDir(t), fmt.Sprintf("zc-test-mode-%d-bad", os.Getpid()))
	if m, err := CreateWith(path, 1<<20, CreateOptions{Backing: BackingShm, Group: "no-such-group-zc"}); !errors.Is(err, ErrConfig) {
		if m != nil {
			m.Close()
			m.Remove()
		}
		t.Fatalf("CreateWith(unknown group) = %v, want ErrConfig", err)
	}
	if _, err := os.Lstat(path + fmt.Sprintf(".tmp-%d", os.Getpid())); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("refused create left a file: %v", err)
	}
}

// TestMemfdSealed: a memfd region carries F_SEAL_SHRINK|F_SEAL_GROW|
// F_SEAL_SEAL; shrinking or growing it fails with EPERM through the
// creator's fd and through a second open of its name, no seal can be
// added, and the mappings stay whole.
func TestMemfdSealed(t *testing.T) {
	path := filepath.Join(shmDir(t), fmt.Sprintf("zc-test-seal-%d", os.Getpid()))
	m, err := Create(path, 1<<20, BackingMemfd, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close(); m.Remove() })
	if err := m.Publish(); err != nil {
		t.Fatal(err)
	}
	seals, err := unix.FcntlInt(m.f.Fd(), unix.F_GET_SEALS, 0)
	if err != nil || seals != MemfdSeals {
		t.Fatalf("seals %#x (%v), want %#x", seals, err, MemfdSeals)
	}
	other, err := Map(path)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	for _, f := range []*os.File{m.f, other.f} {
		for _, size := range []int64{4096, 0, 2 << 20} {
			if err := f.Truncate(size); !errors.Is(err, unix.EPERM) {
				t.Errorf("ftruncate(%s, %d) = %v, want EPERM", f.Name(), size, err)
			}
		}
		if err := unix.Fallocate(int(f.Fd()), 0, 0, 2<<20); !errors.Is(err, unix.EPERM) {
			t.Errorf("fallocate(%s) past the end = %v, want EPERM", f.Name(), err)
		}
		if _, err := unix.FcntlInt(f.Fd(), unix.F_ADD_SEALS, unix.F_SEAL_WRITE); !errors.Is(err, unix.EPERM) {
			t.Errorf("F_ADD_SEALS F_SEAL_WRITE on %s = %v, want EPERM", f.Name(), err)
		}
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(m.f.Fd()), &st); err != nil || st.Size != 1<<20 {
		t.Fatalf("size %d (%v) after the attempts, want %d", st.Size, err, 1<<20)
	}
	m.Bytes[len(m.Bytes)-1] = 0x5A // would fault had the file shrunk
	if other.Bytes[len(other.Bytes)-1] != 0x5A {
		t.Fatal("second mapping does not share the last byte")
	}
}

// TestShmNotSealable documents why tmpfs files cannot be protected like a
// memfd: they are born with F_SEAL_SEAL, so resizing stays possible for
// anyone who may open them.
func TestShmNotSealable(t *testing.T) {
	path := filepath.Join(shmDir(t), fmt.Sprintf("zc-test-noseal-%d", os.Getpid()))
	m, err := Create(path, 1<<20, BackingShm, "")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { m.Close(); m.Remove() }()
	if _, err := unix.FcntlInt(m.f.Fd(), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK); err == nil {
		t.Fatal("a tmpfs file took F_SEAL_SHRINK: memfd is no longer the only sealed backing, revisit CreateWith")
	}
}
