package testgate

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

// Linux capability numbers (include/uapi/linux/capability.h).
const (
	capNetRaw   = 13
	capNetAdmin = 12
	capSysAdmin = 21
)

// NetAdmin skips the test unless it can build a test network: it needs root
// (or CAP_NET_ADMIN, CAP_NET_RAW and CAP_SYS_ADMIN, the last one for setns
// and BPF) and the iproute2 `ip` tool on PATH.
func NetAdmin(t testing.TB) {
	t.Helper()
	for _, c := range []struct {
		bit  uint
		name string
	}{{capNetAdmin, "CAP_NET_ADMIN"}, {capNetRaw, "CAP_NET_RAW"}, {capSysAdmin, "CAP_SYS_ADMIN"}} {
		ok, err := hasCap(c.bit)
		if err != nil {
			t.Skipf("requires %s; cannot read capabilities: %v", c.name, err)
		}
		if !ok {
			t.Skipf("requires %s (run the tests as root, e.g. sudo go test ./...)", c.name)
		}
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("requires the iproute2 `ip` tool on PATH (apt-get install -y iproute2)")
	}
	if _, err := os.Stat("/proc/sys/net/ipv4"); err != nil {
		t.Skipf("requires a network stack with /proc/sys/net: %v", err)
	}
}

// hasCap reports whether the calling process has capability bit in its
// effective set, read from /proc/self/status.
func hasCap(bit uint) (bool, error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		v, ok := strings.CutPrefix(line, "CapEff:")
		if !ok {
			continue
		}
		eff, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		if err != nil {
			return false, err
		}
		return eff&(1<<bit) != 0, nil
	}
	return false, os.ErrNotExist
}
