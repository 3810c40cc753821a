package main

import (
	"errors"
	"strings"
	"testing"

	"github.com/zcfabric/zc/host/libvirt"
)

func TestParseVMsLibvirt(t *testing.T) {
	specs, err := parseVMs([]string{
		"/run/vm1.qmp=0",
		"libvirt:web1=1",
		"libvirt:web2@qemu+unix:///system?socket=/run/x/libvirt-sock=2,3",
		"libvirt:web3@qemu+unix:///system?socket=/run/a=b",
	}, 4, false)
	if err != nil {
		t.Fatal(err)
	}
	want := []vmSpec{
		{"/run/vm1.qmp", []int{0}},
		{"libvirt:web1", []int{1}},
		{"libvirt:web2@qemu+unix:///system?socket=/run/x/libvirt-sock", []int{2, 3}},
		{"libvirt:web3@qemu+unix:///system?socket=/run/a=b", []int{0, 1, 2, 3}},
	}
	for i, w := range want {
		if specs[i].path != w.path || len(specs[i].queues) != len(w.queues) {
			t.Errorf("spec %d = %+v, want %+v", i, specs[i], w)
			continue
		}
		for j := range w.queues {
			if specs[i].queues[j] != w.queues[j] {
				t.Errorf("spec %d = %+v, want %+v", i, specs[i], w)
			}
		}
	}
	if _, err := parseVMs([]string{"libvirt:web1=4"}, 4, false); err == nil {
		t.Error("queue 4 of 4 accepted")
	}
}

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
