package testgate

import (
	"os"
	"testing"
)

// Root skips the test unless it runs as root (uid 0).
func Root(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("requires root (run the tests as root, e.g. sudo go test ./...)")
	}
}

// Short skips the test in -short mode, naming why it is long.
func Short(t testing.TB, why string) {
	t.Helper()
	if testing.Short() {
		t.Skipf("skipped in -short mode: %s", why)
	}
}
