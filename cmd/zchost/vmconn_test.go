package main

import (
	"errors"
	"strings"
	"testing"

	"github.com/zcfabric/zc/host/libvirt"
)

func TestAttachDetachLibvirtNames(t *testing.T) {
	t.Setenv("ZC_DIR", t.TempDir())
	// detach reads the VM name first: a bad one is a spec error, an
	// unreachable daemon an error that names the domain.
	if err := detachCmd([]string{"--qmp", "libvirt:", "-c", "99"}); !errors.Is(err, libvirt.ErrBadSpec) {
		t.Errorf("detach --qmp libvirt: = %v, want ErrBadSpec", err)
	}
	err := detachCmd([]string{"--qmp", "libvirt:nodomain@/nonexistent/libvirt-sock", "-c", "99", "--timeout", "2s"})
	if err == nil || !strings.Contains(err.Error(), "libvirt domain nodomain") {
		t.Errorf("detach from an unreachable libvirt = %v, want an error naming the domain", err)
	}
}

func TestRunCtlLibvirt(t *testing.T) {
	t.Setenv("ZC_DIR", t.TempDir())
	err := runCmd([]string{"-c", "77", "--backing", "shm", "--ctl", "--vm", "libvirt:web1", "--stats-interval", "0"})
	if !errors.Is(err, errUsage) || !strings.Contains(err.Error(), "--ctl is not supported for libvirt") {
		t.Errorf("run --ctl --vm libvirt:web1 = %v, want a usage error about --ctl", err)
	}
}
