//go:build !linux

package ivshmem

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"time"
)

// Outside Linux the format, its parser and the rings build and run over
// memory someone else mapped (FromBytes: a region's bytes read from a
// file or a dump); creating, mapping and sleeping on a region need Linux
// (memfd, mmap(2) of a shared file, futex(2)).

var errNotLinux = fmt.Errorf("%w: zcfabric regions are created and mapped on Linux only (this is %s)", errors.ErrUnsupported, runtime.GOOS)

func memfdCreate(string) (*os.File, error)           { return nil, errNotLinux }
func sealMemfd(*os.File) error                       { return errNotLinux }
func mmapShared(*os.File, int, bool) ([]byte, error) { return nil, errNotLinux }
func munmap([]byte) error                            { return errNotLinux }

// futexWait naps instead (no futex(2)): a sleeper looks again after a
// millisecond.
func futexWait(_ *uint32, _ uint32, timeout time.Duration) error {
	time.Sleep(min(timeout, time.Millisecond))
	return nil
}

// futexWake has nothing to wake: sleepers nap (futexWait).
func futexWake(*uint32) {}
