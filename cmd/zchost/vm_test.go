package main

import (
	"errors"
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
}
