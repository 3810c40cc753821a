package cpuset

import (
	"errors"
	"fmt"
	"os/exec"
	"runtime"

	"golang.org/x/sys/unix"
)

// ErrTooFewCPUs: the process may run on fewer than two CPUs, or on fewer
// than the index asked for; nothing was pinned.
var ErrTooFewCPUs = errors.New("cpuset: not enough CPUs to pin")

// maxCPUs is the size of the kernel's cpu_set_t (CPU_SETSIZE).
const maxCPUs = 1024

// initial is the set of CPUs the process could use when it started,
// captured before any thread is pinned.
var initial, initialErr = func() (unix.CPUSet, error) {
	var s unix.CPUSet
	err := unix.SchedGetaffinity(0, &s)
	return s, err
}()

// Allowed returns the CPUs the process was allowed to run on at start, in
// increasing order.
func Allowed() []int {
	if initialErr != nil {
		return nil
	}
	var cpus []int
	for c := range maxCPUs {
		if initial.IsSet(c) {
			cpus = append(cpus, c)
		}
	}
	return cpus
}

// Pin locks the calling goroutine to its OS thread and pins the thread to
// the i-th allowed CPU. The returned function undoes both: it resets the
// thread's affinity to every allowed CPU before unlocking, so the thread
// goes back to the scheduler unpinned. Call it from the same goroutine.
//
// With fewer than two allowed CPUs, or i out of range, Pin does nothing
// and returns a no-op undo and an error wrapping ErrTooFewCPUs.
func Pin(i int) (undo func(), err error) {
	cpus := Allowed()
	if len(cpus) < 2 || i < 0 || i >= len(cpus) {
		return func() {}, fmt.Errorf("%w: CPU index %d of %d allowed", ErrTooFewCPUs, i, len(cpus))
	}
	runtime.LockOSThread()
	var s unix.CPUSet
	s.Set(cpus[i])
	if err := unix.SchedSetaffinity(0, &s); err != nil {
		runtime.UnlockOSThread()
		return func() {}, fmt.Errorf("cpuset: pin to CPU %d: %w", cpus[i], err)
	}
	return func() {
		Reset()
		runtime.UnlockOSThread()
	}, nil
}

// Reset sets the calling thread's affinity back to every CPU the process
// was allowed at start. Call it with the goroutine locked to its thread
// (runtime.LockOSThread), or it may reset some other thread.
func Reset() error {
	if initialErr != nil {
		return fmt.Errorf("cpuset: %w", initialErr)
	}
	s := initial
	if err := unix.SchedSetaffinity(0, &s); err != nil {
		return fmt.Errorf("cpuset: reset affinity: %w", err)
	}
	return nil
}

// Start starts cmd from a thread whose affinity is every allowed CPU, so
// the child does not inherit a pin, then restores the thread's affinity.
// It is safe to call from a pinned goroutine.
func Start(cmd *exec.Cmd) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var old unix.CPUSet
	saved := unix.SchedGetaffinity(0, &old) == nil
	if err := Reset(); err != nil {
		return err
	}
	err := cmd.Start()
	if saved {
		unix.SchedSetaffinity(0, &old)
	}
	return err
}

// Current returns the CPUs the calling thread may run on now.
func Current() []int {
	var s unix.CPUSet
	if unix.SchedGetaffinity(0, &s) != nil {
		return nil
	}
	var cpus []int
	for c := range maxCPUs {
		if s.IsSet(c) {
			cpus = append(cpus, c)
		}
	}
	return cpus
}

// Pinned runs f on the calling goroutine pinned to the i-th allowed CPU,
// then unpins it. When pinning is unavailable (one CPU) f runs unpinned.
// It reports whether f ran pinned.
func Pinned(i int, f func()) bool {
	undo, err := Pin(i)
	defer undo()
	f()
	return err == nil
}
