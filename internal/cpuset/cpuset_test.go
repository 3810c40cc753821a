package cpuset

import (
	"errors"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
)

func TestPinAndUndo(t *testing.T) {
	all := Allowed()
	if len(all) == 0 {
		t.Skip("cpuset: cannot read the process's CPU affinity on " + runtime.GOOS)
	}
	undo, err := Pin(1)
	if errors.Is(err, ErrTooFewCPUs) {
		if len(all) >= 2 {
			t.Fatalf("Pin(1) with %d allowed CPUs: %v", len(all), err)
		}
		t.Skipf("only %d CPU allowed: pinning is skipped by design (%v)", len(all), err)
	}
	if err != nil {
		t.Fatal(err)
	}
	if got := Current(); !slices.Equal(got, []int{all[1]}) {
		undo()
		t.Fatalf("pinned thread may run on %v, want [%d]", got, all[1])
	}
	undo()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	// The undo reset this thread before unlocking it; whichever thread runs
	// us now must not be pinned either.
	if got := Current(); !slices.Equal(got, all) {
		t.Fatalf("after undo the thread may run on %v, want %v", got, all)
	}
	if _, err := Pin(len(all)); !errors.Is(err, ErrTooFewCPUs) {
		t.Fatalf("Pin past the allowed CPUs: %v", err)
	}
}

// TestStartDoesNotInheritPin: a child started from a pinned goroutine
// through Start may run on every allowed CPU, while one started with a
// plain cmd.Start inherits the pin (which is why Start exists).
func TestStartDoesNotInheritPin(t *testing.T) {
	all := Allowed()
	if len(all) < 2 {
		t.Skipf("needs 2 CPUs to tell pinned from unpinned, have %d", len(all))
	}
	if _, err := exec.LookPath("grep"); err != nil {
		t.Skip("needs grep in PATH to read the child's /proc/self/status")
	}
	undo, err := Pin(0)
	if err != nil {
		t.Fatal(err)
	}
	defer undo()
	child := func(start func(*exec.Cmd) error) string {
		t.Helper()
		var out strings.Builder
		cmd := exec.Command("grep", "Cpus_allowed_list", "/proc/self/status")
		cmd.Stdout = &out
		if err := start(cmd); err != nil {
			t.Fatal(err)
		}
		if err := cmd.Wait(); err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(strings.TrimPrefix(out.String(), "Cpus_allowed_list:"))
	}
	pinned := child((*exec.Cmd).Start)
	reset := child(Start)
	if pinned != strconv.Itoa(all[0]) {
		t.Errorf("child of a pinned thread may run on %q, want %q (the inheritance Start guards against)", pinned, strconv.Itoa(all[0]))
	}
	if reset == pinned {
		t.Errorf("child started through Start may run on %q only: it inherited the pin", reset)
	}
	if got := Current(); !slices.Equal(got, []int{all[0]}) {
		t.Errorf("Start did not restore the caller's pin: %v", got)
	}
}
