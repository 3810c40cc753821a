//go:build linux

package ivshmem

import (
	"errors"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// futex(2) on a word of a shared mapping: the kernel keys a shared futex
// on the file and offset, so processes that map the same region file wait
// and wake on the same word (not FUTEX_PRIVATE_FLAG).

// futex(2) operations (linux/futex.h), shared (no FUTEX_PRIVATE_FLAG).
const (
	futexOpWait = 0
	futexOpWake = 1
)

// futexWait sleeps while *addr == val, at most timeout (which must be
// positive). It returns on a wake, a timeout, a signal, or at once when
// *addr != val.
func futexWait(addr *uint32, val uint32, timeout time.Duration) error {
	ts := unix.NsecToTimespec(int64(timeout))
	_, _, e := unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(addr)), futexOpWait, uintptr(val),
		uintptr(unsafe.Pointer(&ts)), 0, 0)
	switch e {
	case 0, unix.EAGAIN, unix.EINTR, unix.ETIMEDOUT:
		return nil
	}
	return errors.New("futex wait: " + e.Error())
}

// futexWake wakes every waiter on addr.
func futexWake(addr *uint32) {
	unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(addr)), futexOpWake, 1<<30, 0, 0, 0)
}
