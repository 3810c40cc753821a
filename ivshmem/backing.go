package ivshmem

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
)

// Backing selects the memory behind a region.
type Backing int

// Backings. Every one is reachable by a path that QEMU's
// memory-backend-file and other processes with the right to it can open;
// a memfd can also be handed over as an fd (host/qmp gives it to QEMU so).
const (
	// BackingAuto uses hugetlbfs when a mount is given or found and has
	// room, /dev/shm otherwise.
	BackingAuto Backing = iota
	// BackingShm is a file on tmpfs (/dev/shm by default).
	BackingShm
	// BackingHugetlb is a file on a hugetlbfs mount.
	BackingHugetlb
	// BackingMemfd is an anonymous memfd, sealed against resizing, named by
	// a symlink to /proc/PID/fd/N (it lives as long as the creator).
	BackingMemfd
)

// String names the backing as --backing takes it.
func (k Backing) String() string {
	switch k {
	case BackingShm:
		return "shm"
	case BackingHugetlb:
		return "hugetlbfs"
	case BackingMemfd:
		return "memfd"
	}
	return "auto"
}

// ParseBacking parses "auto", "shm", "hugetlbfs" (or "huge") and "memfd".
func ParseBacking(s string) (Backing, error) {
	switch s {
	case "", "auto":
		return BackingAuto, nil
	case "shm":
		return BackingShm, nil
	case "huge", "hugetlb", "hugetlbfs":
		return BackingHugetlb, nil
	case "memfd":
		return BackingMemfd, nil
	}
	return 0, fmt.Errorf("%w: backing %q (want auto, shm, hugetlbfs or memfd)", ErrConfig, s)
}

// HugePageSize is the hugetlbfs page size regions are rounded up to.
const HugePageSize = 2 << 20

// Mapping is a mapped region file.
type Mapping struct {
	// Bytes is the whole region, mapped shared.
	Bytes []byte
	// Path is the name others open (a file, or a symlink to the file).
	Path string
	// File is the real backing file QEMU's mem-path should use.
	File string
	// Kind is the backing in use.
	Kind    Backing
	f       *os.File
	tmp     string // set until Publish
	closer  func() error
	removed bool // Remove ran: the names may belong to a successor now
}

// FindHugetlbfs returns the first hugetlbfs mount point in /proc/mounts.
func FindHugetlbfs() (string, error) {
	f, err := os.Open("/proc/mounts")
	if err != nil {
		return "", err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) >= 3 && fields[2] == "hugetlbfs" {
			return fields[1], nil
		}
	}
	return "", errors.New("no hugetlbfs mount in /proc/mounts")
}

// CreateOptions are the settings of [CreateWith] besides the name and size.
type CreateOptions struct {
	// Backing selects the memory (default BackingAuto).
	Backing Backing
	// HugetlbDir names the hugetlbfs mount for BackingHugetlb and
	// BackingAuto ("" finds one).
	HugetlbDir string
	// Group, when not empty, is a group (name or numeric id) whose members
	// may open the region file too: the file gets that group and mode
	// 0660. Empty: mode 0600, only the creating user (and root) may open
	// it. A memfd ignores Group: it has no name of its own, and others
	// reach it only through the creator's /proc/PID/fd (same user or
	// root) or an fd handed over, which is its permission.
	Group string
}

// Region file modes: owner only by default, owner and one group on request.
const (
	ModeOwner os.FileMode = 0o600
	ModeGroup os.FileMode = 0o660
)

// Create makes a new region file with [CreateWith], mode 0600.
func Create(path string, size uint64, kind Backing, hugeDir string) (*Mapping, error) {
	return CreateWith(path, size, CreateOptions{Backing: kind, HugetlbDir: hugeDir})
}

// CreateWith makes a new region file of size bytes for the name path, maps
// it and returns it unpublished: it lives under a temporary name until
// Publish renames it to path, so no one attaches to a half-written region.
// A tmpfs or hugetlbfs file is owned by the calling user, mode 0600, or
// 0660 with o.Group (see [CreateOptions]); a memfd is sealed against
// shrinking and growing (F_SEAL_SHRINK|F_SEAL_GROW|F_SEAL_SEAL), so no
// one who holds it can make the mappings fault.
func CreateWith(path string, size uint64, o CreateOptions) (*Mapping, error) {
	if !isPow2(size) {
		return nil, fmt.Errorf("create region %s: size %d is not a power of two", path, size)
	}
	gid := -1
	if o.Group != "" && o.Backing != BackingMemfd {
		var err error
		if gid, err = lookupGroup(o.Group); err != nil {
			return nil, fmt.Errorf("create region %s: %w", path, err)
		}
	}
	kind := o.Backing
	if kind == BackingAuto {
		h := o
		h.Backing = BackingHugetlb
		if m, err := CreateWith(path, size, h); err == nil {
			return m, nil
		}
		kind = BackingShm
	}
	tmp := fmt.Sprintf("%s.tmp-%d", path, os.Getpid())
	m := &Mapping{Path: path, Kind: kind, tmp: tmp}
	var err error
	switch kind {
	case BackingShm:
		m.File = path
		m.f, err = os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL, ModeOwner)
		if err == nil {
			err = setAccess(m.f, gid)
		}
		if err == nil {
			err = m.f.Truncate(int64(size))
		}
	case BackingHugetlb:
		hugeDir := o.HugetlbDir
		if hugeDir == "" {
			if hugeDir, err = FindHugetlbfs(); err != nil {
				return nil, fmt.Errorf("create region %s on hugetlbfs: %w", path, err)
			}
		}
		if size%HugePageSize != 0 {
			return nil, fmt.Errorf("create region %s on hugetlbfs: size %d is not a multiple of %d", path, size, HugePageSize)
		}
		m.File = filepath.Join(hugeDir, fmt.Sprintf("%s-%d-%d", filepath.Base(path), os.Getpid(), nextSerial()))
		m.f, err = os.OpenFile(m.File, os.O_RDWR|os.O_CREATE|os.O_EXCL, ModeOwner)
		if err == nil {
			err = setAccess(m.f, gid)
		}
		if err == nil {
			err = m.f.Truncate(int64(size))
		}
		if err == nil {
			err = os.Symlink(m.File, tmp)
		}
	case BackingMemfd:
		m.f, err = memfdCreate(filepath.Base(path))
		if err == nil {
			m.File = fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), m.f.Fd())
			err = m.f.Truncate(int64(size))
		}
		if err == nil {
			err = sealMemfd(m.f)
		}
		if err == nil {
			err = os.Symlink(m.File, tmp)
		}
	default:
		return nil, fmt.Errorf("create region %s: %w: backing %d", path, ErrConfig, kind)
	}
	if err == nil {
		m.Bytes, err = mmapShared(m.f, int(size), true)
	}
	if err != nil {
		m.cleanup()
		return nil, fmt.Errorf("create region %s (%s, %d bytes): %w", path, kind, size, err)
	}
	return m, nil
}

// setAccess gives f mode 0600, or group gid and mode 0660 when gid >= 0.
// The mode is set explicitly, whatever the umask.
func setAccess(f *os.File, gid int) error {
	if gid < 0 {
		return f.Chmod(ModeOwner)
	}
	if err := f.Chown(-1, gid); err != nil {
		return fmt.Errorf("give it group %d: %w", gid, err)
	}
	return f.Chmod(ModeGroup)
}

// lookupGroup resolves a group name or numeric id.
func lookupGroup(name string) (int, error) {
	if id, err := strconv.Atoi(name); err == nil {
		if id < 0 {
			return 0, fmt.Errorf("%w: group %q", ErrConfig, name)
		}
		return id, nil
	}
	g, err := user.LookupGroup(name)
	if err != nil {
		return 0, fmt.Errorf("%w: group %q: %w", ErrConfig, name, err)
	}
	id, err := strconv.Atoi(g.Gid)
	if err != nil {
		return 0, fmt.Errorf("%w: group %q has id %q", ErrConfig, name, g.Gid)
	}
	return id, nil
}

var serial atomic.Uint64

func nextSerial() uint64 { return serial.Add(1) }

func (m *Mapping) cleanup() {
	if m.Bytes != nil {
		munmap(m.Bytes)
		m.Bytes = nil
	}
	if m.f != nil {
		m.f.Close()
	}
	if m.tmp != "" {
		os.Remove(m.tmp)
	}
	if m.Kind == BackingHugetlb && m.File != "" {
		os.Remove(m.File)
	}
}

// Publish renames the region to its name, replacing a stale file there.
func (m *Mapping) Publish() error {
	if m.tmp == "" {
		return nil
	}
	if err := os.Rename(m.tmp, m.Path); err != nil {
		return fmt.Errorf("publish region %s: %w", m.Path, err)
	}
	m.tmp = ""
	if m.Kind == BackingShm {
		m.File = m.Path
	}
	return nil
}

// Map opens and maps an existing region file (following a symlink).
func Map(path string) (*Mapping, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("map region %s: %w", path, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("map region %s: %w", path, err)
	}
	size := st.Size()
	if size < HeaderSize || size > MaxRegionSize {
		f.Close()
		return nil, fmt.Errorf("map region %s: %w: file of %d bytes", path, ErrBadRegion, size)
	}
	b, err := mmapShared(f, int(size), false)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("map region %s: %w", path, err)
	}
	file, _ := filepath.EvalSymlinks(path)
	return &Mapping{Bytes: b, Path: path, File: file, f: f}, nil
}

// FromBytes wraps memory mapped by someone else (a guest's BAR2); Close
// calls closer.
func FromBytes(b []byte, path string, closer func() error) *Mapping {
	return &Mapping{Bytes: b, Path: path, File: path, closer: closer}
}

// Close unmaps the region and closes its file. The file stays.
func (m *Mapping) Close() error {
	var err error
	if m.closer != nil {
		err = m.closer()
		m.closer = nil
	} else if m.Bytes != nil {
		err = munmap(m.Bytes)
	}
	m.Bytes = nil
	if m.f != nil {
		m.f.Close()
		m.f = nil
	}
	return err
}

// Remove deletes the region's name and, for hugetlbfs, its file. Mappings
// that are still open keep the memory until they close.
func (m *Mapping) Remove() error {
	// Once only: after the first, the name may already be a new region's
	// (a VM's region re-created under the same name while this one is
	// still mapped).
	if m.removed {
		return nil
	}
	m.removed = true
	var errs []error
	if m.tmp != "" {
		errs = append(errs, os.Remove(m.tmp))
	} else if err := os.Remove(m.Path); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	if m.Kind == BackingHugetlb && m.File != "" {
		if err := os.Remove(m.File); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
