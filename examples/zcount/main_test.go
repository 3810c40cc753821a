package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestUsage: a stray argument (the flags after it would go unread: -n
// never applied, a count that never ends) and a negative --interval or
// --wait are usage errors naming them, exit 2; a missing cluster is 1.
func TestUsage(t *testing.T) {
	t.Setenv("ZC_DIR", t.TempDir())
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"foo", "-n", "bad"}, `zcount: unexpected argument "foo"`},
		{[]string{"--json", "false"}, `--json=false`},
		{[]string{"--interval", "-1s"}, "zcount: --interval -1s: want 0 or more"},
		{[]string{"--wait", "-1ms"}, "zcount: --wait -1ms: want 0 or more"},
	} {
		var stdout, stderr bytes.Buffer
		if code := run(append([]string{"-i", "zc:12345@0"}, tc.args...), &stdout, &stderr); code != 2 || !strings.Contains(stderr.String(), tc.want) || !strings.Contains(stderr.String(), "Usage: zcount") {
			t.Errorf("%q: exit %d, want 2 and %q then the usage\n%s", tc.args, code, tc.want, &stderr)
		}
	}
	var stdout, stderr bytes.Buffer
	if code := run([]string{"-i", "zc:12345@0", "--interval", "0"}, &stdout, &stderr); code != 1 || !strings.Contains(stderr.String(), "not found") {
		t.Errorf("missing cluster: exit %d, want 1\n%s", code, &stderr)
	}
}
