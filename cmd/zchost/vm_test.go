package main

import (
	"errors"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/zcfabric/zc"
)

func TestAttachDetachFlags(t *testing.T) {
	t.Setenv("ZC_DIR", t.TempDir())
	for _, args := range [][]string{
		{"-c", "99"},
		{"--qmp", "/nonexistent.sock"},
		{"--qmp", "/nonexistent.sock", "-c", "99", "--dev", "zcdev-1"},
	} {
		if err := detachCmd(args); !errors.Is(err, errUsage) {
			t.Errorf("detach %q = %v, want a usage error", args, err)
		}
	}
	if err := attachCmd([]string{"-c", "99"}); !errors.Is(err, errUsage) {
		t.Errorf("attach without --qmp = %v, want a usage error", err)
	}
	if err := attachCmd([]string{"--qmp", "/nonexistent.sock", "-c", "99"}); !errors.Is(err, zc.ErrNotFound) {
		t.Errorf("attach of an absent cluster = %v, want ErrNotFound", err)
	}
	// No daemon answers: --queues cannot be honoured (the VM would map the
	// whole region), nor can detach pick queues; ids do not wrap; nothing
	// after the flags is ignored.
	noDaemon := filepath.Join(t.TempDir(), "none.sock")
	for _, c := range []struct {
		cmd  func([]string) error
		args []string
		want string
	}{
		{attachCmd, []string{"--control", noDaemon, "--qmp", "/nonexistent.sock", "-c", "99", "--queues", "1"}, "--queues: no zchost daemon"},
		{detachCmd, []string{"--control", noDaemon, "--qmp", "/nonexistent.sock", "-c", "99", "--queues", "1"}, "not defined: -queues"},
		{attachCmd, []string{"--control", noDaemon, "--qmp", "/nonexistent.sock", "-c", "4294967296"}, "cluster ids are 0..4294967295"},
		{detachCmd, []string{"--control", noDaemon, "--qmp", "/nonexistent.sock", "-c", "99", "extra"}, `unexpected argument "extra"`},
	} {
		err := c.cmd(c.args)
		if !errors.Is(err, errUsage) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q = %v, want a usage error saying %q", c.args, err, c.want)
		}
	}
}

// TestRunFlags: zchost run refuses what it cannot honour, naming the
// flag, before it makes anything: ids that would wrap, negative sizes and
// durations, a group for a memfd region, an unknown log level or mode,
// and an argument after which the flags would be ignored; stats and
// reload too. Flags that do nothing in a run are named.
func TestRunFlags(t *testing.T) {
	t.Setenv("ZC_DIR", t.TempDir())
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"-c", "4294967373"}, "cluster ids are 0..4294967295"},
		{[]string{"-q", "-4"}, "-q -4: must not be negative"},
		{[]string{"--buffer-size", "-1"}, "--buffer-size -1: must not be negative"},
		{[]string{"--stats-interval", "-1s"}, "--stats-interval -1s: must not be negative"},
		{[]string{"--drain-timeout", "-2s"}, "--drain-timeout -2s: must not be negative"},
		{[]string{"--backing", "memfd", "--group", "nosuchgroup"}, "--group nosuchgroup: a memfd region"},
		{[]string{"--log-level", "nonsense"}, "want trace, debug, info, warn, error or off"},
		{[]string{"-m", "9"}, "want round-robin, ip-pair"},
		{[]string{"-c", "5", "foo", "-n", "bad"}, `unexpected argument "foo"`},
	} {
		err := runCmd(c.args)
		if !errors.Is(err, errUsage) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("run %q = %v, want a usage error saying %q", c.args, err, c.want)
		}
	}
	if err := statsCmd([]string{"5"}); !errors.Is(err, errUsage) || !strings.Contains(err.Error(), `unexpected argument "5"`) {
		t.Errorf("stats 5 = %v, want a usage error", err)
	}
	if err := reloadCmd([]string{"now"}); !errors.Is(err, errUsage) {
		t.Errorf("reload now = %v, want a usage error", err)
	}
	for _, c := range []struct {
		cmd  func([]string) error
		args []string
	}{
		{txCmd, []string{"-i", "zc:99@0", "-o", "lo", "--rate", "-1"}},
		{bounceCmd, []string{"-i", "lo", "-o", "lo", "--stats-interval", "-1s"}},
		{statsCmd, []string{"-c", "5", "--watch", "-1s"}},
	} {
		if err := c.cmd(c.args); !errors.Is(err, errUsage) || !strings.Contains(err.Error(), "must not be negative") {
			t.Errorf("%q = %v, want a usage error", c.args, err)
		}
	}
	for _, c := range []struct {
		args []string
		want []string
	}{
		{[]string{"-m", "2", "--lossless", "--doorbell"}, []string{"--doorbell (no --vm)", "--lossless (no -i source)", "-m (no -i source)"}},
		{[]string{"-i", "gen:count=1", "--hash", "ip", "--bpf", "1\n6 0 0 0"}, nil},
		{[]string{"--vm", "/x.qmp", "--shared", "--drain-timeout", "1s"}, []string{"--drain-timeout (no -i source)"}},
	} {
		var o runOpts
		fs := runFlags(&o)
		fs.SetOutput(io.Discard)
		if err := parseAll(fs, c.args); err != nil {
			t.Fatalf("%q: %v", c.args, err)
		}
		if got := o.noEffect(fs); !slices.Equal(got, c.want) {
			t.Errorf("%q: flags with no effect %q, want %q", c.args, got, c.want)
		}
	}
}
