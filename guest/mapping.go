package guest

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/sys/unix"
)

// Mapping is a device's BAR2 mapped into this process. Close unmaps it; the
// slice from Bytes must not be used after that. Close is safe to call more
// than once and concurrently.
type Mapping struct {
	dev  Device
	b    []byte
	once sync.Once
	err  error
}

// Map maps d's BAR2 read-write and shared: stores are seen by the host and
// by other guests mapping the same region. It writes "1" to the device's
// enable attribute first, which is harmless when already enabled (and
// ignored where the attribute is missing, as in fake trees).
func (d Device) Map() (*Mapping, error) {
	b, err := d.mmap()
	if err != nil {
		return nil, fmt.Errorf("zc: map ivshmem device %s: %w", d.Addr, err)
	}
	return &Mapping{dev: d, b: b}, nil
}

func (d Device) mmap() ([]byte, error) {
	if f, err := os.OpenFile(filepath.Join(d.Dir, "enable"), os.O_WRONLY, 0); err == nil {
		_, _ = f.WriteString("1")
		f.Close()
	}
	f, err := os.OpenFile(filepath.Join(d.Dir, "resource2"), os.O_RDWR|unix.O_SYNC, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if fi.Size() == 0 {
		return nil, ErrNoBAR
	}
	b, err := unix.Mmap(int(f.Fd()), 0, int(fi.Size()), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mmap resource2: %w", err)
	}
	return b, nil
}

// Bytes returns the mapped BAR2: the region's bytes.
func (m *Mapping) Bytes() []byte { return m.b }

// Device returns the device the mapping belongs to.
func (m *Mapping) Device() Device { return m.dev }

// Close unmaps the BAR.
func (m *Mapping) Close() error {
	m.once.Do(func() {
		if err := unix.Munmap(m.b); err != nil {
			m.err = fmt.Errorf("zc: unmap ivshmem device %s: %w", m.dev.Addr, err)
		}
	})
	return m.err
}
