//go:build !linux

package cpuset

import (
	"errors"
	"fmt"
	"os/exec"
	"runtime"
)

// ErrTooFewCPUs: pinning is not available; nothing was pinned.
var ErrTooFewCPUs = errors.New("cpuset: not enough CPUs to pin")

// Allowed returns nil: affinity is not implemented on this GOOS.
func Allowed() []int { return nil }

// Pin does nothing outside Linux.
func Pin(i int) (func(), error) {
	return func() {}, fmt.Errorf("%w: not implemented on %s", ErrTooFewCPUs, runtime.GOOS)
}

// Reset does nothing outside Linux.
func Reset() error { return nil }

// Start starts cmd.
func Start(cmd *exec.Cmd) error { return cmd.Start() }

// Current returns nil outside Linux.
func Current() []int { return nil }

// Pinned runs f unpinned and reports false.
func Pinned(i int, f func()) bool { f(); return false }
