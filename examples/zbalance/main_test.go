package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestUsage: a cluster id beyond 32 bits, a frame length outside 60..2048,
// no queue or no packet, an unknown mode and a stray argument are usage
// errors naming the flag: exit 2, before any cluster is made.
func TestUsage(t *testing.T) {
	t.Setenv("ZC_DIR", t.TempDir())
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-c", "4294967296"}, "zbalance: -c 4294967296: want a cluster id from 0 to 4294967295"},
		{[]string{"-l", "0"}, "zbalance: -l 0: want 60 to 2048 bytes"},
		{[]string{"-l", "59"}, "zbalance: -l 59: want 60 to 2048 bytes"},
		{[]string{"-l", "2049"}, "zbalance: -l 2049: want 60 to 2048 bytes"},
		{[]string{"-n", "0"}, "zbalance: -n 0: want at least one output queue"},
		{[]string{"-count", "0"}, "zbalance: --count 0: want at least one packet"},
		{[]string{"-m", "nope"}, `zbalance: -m "nope": want`},
		{[]string{"extra", "-l", "0"}, `zbalance: unexpected argument "extra"`},
	} {
		var stdout, stderr bytes.Buffer
		if code := run(tc.args, &stdout, &stderr); code != 2 || !strings.Contains(stderr.String(), tc.want) || !strings.Contains(stderr.String(), "Usage: zbalance") || stdout.Len() != 0 {
			t.Errorf("%q: exit %d, want 2 and %q then the usage\nstdout:\n%s\nstderr:\n%s", tc.args, code, tc.want, &stdout, &stderr)
		}
	}
}

// TestBalance: the largest valid cluster id and frame length work: every
// packet generated reaches a worker.
func TestBalance(t *testing.T) {
	t.Setenv("ZC_DIR", t.TempDir())
	var stdout, stderr bytes.Buffer
	if code := run([]string{"-c", "4294967295", "-l", "2048", "-n", "2", "-count", "100"}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, &stdout, &stderr)
	}
	if !strings.Contains(stdout.String(), "total 100 packets") {
		t.Errorf("want 100 packets:\n%s", &stdout)
	}
}
