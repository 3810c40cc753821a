package status

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"

	"github.com/zcfabric/zc"
	"golang.org/x/sys/unix"
)

// MarksSuffix is appended to a cluster's region path to name its marks
// file.
const MarksSuffix = ".marks"

// MarksPath returns the marks file of cluster id ($ZC_DIR/zc-ID.marks).
func MarksPath(id uint32) string { return zc.RegionPath(id) + MarksSuffix }

// The marks file, little-endian:
//
//	offset  size  field
//	0       8     magic "zcmarks1"
//	8       4     pid of the agent that writes it
//	12      4     n, the number of finite sources (File.Sources, in order)
//	16      8*n   each source's position
const (
	marksMagic = "zcmarks1"
	marksHead  = 16
	maxMarks   = 1 << 12
)

// ErrMarks says a marks file is not one: wrong magic, size or count.
var ErrMarks = errors.New("not a marks file")

// Marks holds how far an agent's finite sources got (File.Sources, in the
// same order), written by its engine after every burst into a shared
// mapping of a small file (mode 0600). A record is written at most once a
// second, so after a kill it is up to a second old; the marks survive a
// kill as they were after the last burst (the page cache keeps what a
// dead process wrote to a shared mapping), and a successor resumes from
// them: at most one burst is sent twice. Set is one 8-byte store; Marks
// belongs to one goroutine (the engine's).
type Marks struct {
	b []byte
}

// CreateMarks creates (or replaces) the marks file at path for pid's n
// finite sources, each at start[i], and maps it.
func CreateMarks(path string, pid int, start []uint64) (*Marks, error) {
	n := len(start)
	if n > maxMarks {
		return nil, fmt.Errorf("marks %s: %d sources, at most %d", path, n, maxMarks)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("marks %s: %w", path, err)
	}
	defer f.Close()
	size := marksHead + 8*n
	if err := f.Truncate(int64(size)); err != nil {
		return nil, fmt.Errorf("marks %s: %w", path, err)
	}
	b, err := unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("marks %s: mmap: %w", path, err)
	}
	copy(b, marksMagic)
	binary.LittleEndian.PutUint32(b[8:], uint32(pid))
	binary.LittleEndian.PutUint32(b[12:], uint32(n))
	m := &Marks{b: b}
	for i, p := range start {
		m.Set(i, p)
	}
	return m, nil
}

// Set records that source i got to position pos.
func (m *Marks) Set(i int, pos uint64) {
	binary.LittleEndian.PutUint64(m.b[marksHead+8*i:], pos)
}

// Close unmaps the marks (the file stays).
func (m *Marks) Close() error {
	if m == nil || m.b == nil {
		return nil
	}
	err := unix.Munmap(m.b)
	m.b = nil
	return err
}

// ReadMarks reads the marks file at path: the pid of the agent that wrote
// it and each finite source's position.
func ReadMarks(path string) (pid int, pos []uint64, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, nil, fmt.Errorf("marks %s: %w", path, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, marksHead+8*maxMarks+1))
	if err != nil {
		return 0, nil, fmt.Errorf("marks %s: %w", path, err)
	}
	if len(b) < marksHead || string(b[:8]) != marksMagic {
		return 0, nil, fmt.Errorf("marks %s: %w", path, ErrMarks)
	}
	n := int(binary.LittleEndian.Uint32(b[12:]))
	if n > maxMarks || len(b) != marksHead+8*n {
		return 0, nil, fmt.Errorf("marks %s: %w (%d bytes for %d sources)", path, ErrMarks, len(b), n)
	}
	pos = make([]uint64, n)
	for i := range pos {
		pos[i] = binary.LittleEndian.Uint64(b[marksHead+8*i:])
	}
	return int(binary.LittleEndian.Uint32(b[8:])), pos, nil
}

// Positions returns how far the finite sources of record f, cluster id's,
// got: the positions of the cluster's marks file when it is f's agent's
// (its pid, as many sources), exact to a burst, else the record's, up to
// a second old after a kill. err says why the marks were not used; it is
// nil when they were, or when f has no finite sources.
func (f *File) Positions(id uint32) (_ []Source, err error) {
	srcs := slices.Clone(f.Sources)
	if len(srcs) == 0 {
		return srcs, nil
	}
	pid, pos, err := ReadMarks(MarksPath(id))
	switch {
	case err != nil:
		return srcs, err
	case pid != f.PID || len(pos) != len(srcs):
		return srcs, fmt.Errorf("marks %s: of pid %d for %d sources, the record of pid %d for %d", MarksPath(id), pid, len(pos), f.PID, len(srcs))
	}
	for i := range srcs {
		srcs[i].Position = max(srcs[i].Position, pos[i])
	}
	return srcs, nil
}
