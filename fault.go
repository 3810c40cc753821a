package zc

import (
	"fmt"
	"runtime/debug"
)

// ErrFault is what a queue fails with when touching its region faulted:
// the backing file was truncated or replaced under the mapping (SIGBUS),
// by a process that holds it writable (QEMU, a consumer). It wraps
// ErrGone: for its users the queue went away.
var ErrFault = fmt.Errorf("%w: region memory fault (its file was truncated or replaced)", ErrGone)

// Region memory is a shared mapping of a file other processes can
// truncate; touching a page past the new end raises SIGBUS, which would
// kill the whole process. Every access to a region happens between
// guardOn and guardOff (or inside protect): debug.SetPanicOnFault makes
// the runtime turn the fault into a panic on that goroutine, and the
// deferred guardOff turns the panic into ErrFault on the queue that
// touched the memory. Only faults are caught: any other panic goes on.
//
// The pattern in each guarded method:
//
//	old := guardOn()
//	defer q.guardOff(old, "recv", &err)

// guardOn makes faults on this goroutine panics and returns the previous
// setting, for guardOff.
func guardOn() bool { return debug.SetPanicOnFault(true) }

// isFault reports whether a recovered value is a memory fault (the
// runtime's error for a faulting address has an Addr method).
func isFault(v any) bool {
	_, ok := v.(interface{ Addr() uintptr })
	return ok
}

// faulted ends a guard: it restores the fault setting and reports whether
// v, what the deferred function recovered, is a memory fault; any other
// panic goes on. (recover itself must be called in the deferred function.)
func faulted(old bool, v any) bool {
	debug.SetPanicOnFault(old)
	if v == nil {
		return false
	}
	if !isFault(v) {
		panic(v)
	}
	return true
}

// guardOff restores the fault setting and turns a fault panic into the
// queue's failure, stored in *err.
func (q *Queue) guardOff(old bool, op string, err *error) {
	if faulted(old, recover()) {
		*err = q.fail(op, ErrFault)
	}
}

// protect runs fn with faults on region memory turned into ErrFault.
// For the paths that are not per packet (attach, close, stats).
func protect(fn func()) (err error) {
	old := guardOn()
	defer func() {
		if faulted(old, recover()) {
			err = ErrFault
		}
	}()
	fn()
	return nil
}

// CatchFault runs fn and returns ErrFault if it faulted on region memory
// (a truncated region file) instead of letting SIGBUS end the process.
// For code outside this package that writes into buffers (capture
// sources filling the engine pool).
func CatchFault(fn func()) error { return protect(fn) }
