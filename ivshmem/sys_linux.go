package ivshmem

import (
	"os"

	"golang.org/x/sys/unix"
)

// MemfdSeals are the seals on a memfd region: its size can never change,
// and no more seals can be added (F_SEAL_WRITE would stop the guest).
const MemfdSeals = unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_SEAL

// memfdCreate makes an anonymous memfd that can be sealed.
func memfdCreate(name string) (*os.File, error) {
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), name), nil
}

// sealMemfd applies MemfdSeals.
func sealMemfd(f *os.File) error {
	_, err := unix.FcntlInt(f.Fd(), unix.F_ADD_SEALS, MemfdSeals)
	return err
}

// mmapShared maps size bytes of f shared, read and write; populate
// faults every page in now (MAP_POPULATE).
func mmapShared(f *os.File, size int, populate bool) ([]byte, error) {
	flags := unix.MAP_SHARED
	if populate {
		flags |= unix.MAP_POPULATE
	}
	return unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ|unix.PROT_WRITE, flags)
}

func munmap(b []byte) error { return unix.Munmap(b) }
