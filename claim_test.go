package zc

import (
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/zcfabric/zc/ivshmem"
)

// deadPID returns the pid of a process that ran and was reaped.
func deadPID(t *testing.T) uint32 {
	t.Helper()
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Skipf("cannot run true(1) for a dead pid: %v", err)
	}
	return uint32(cmd.Process.Pid)
}

// TestGuestReplacesItsOwnDeadClaims: in a VM's own region (OneVM), a
// guest process takes over a queue end that a dead process of the same
// guest left claimed (killed, or from before a reboot), and is refused
// one a live process holds; in a region several VMs may map, and for
// another side's owner, it cannot tell and is refused with the reason
// and the way out. Both ends, and the producer's takeover keeps its
// earlier loans as usual.
func TestGuestReplacesItsOwnDeadClaims(t *testing.T) {
	mine := bootTag()
	if mine == 0 {
		t.Skip("no /proc/sys/kernel/random/boot_id: no boot tag")
	}
	other := mine%ivshmem.MaxBootTag + 1 // another boot's tag
	dead, live := deadPID(t), uint32(os.Getpid())
	guest := func(pid, boot uint32) ivshmem.Owner {
		return ivshmem.Owner{Side: ivshmem.SideGuest, PID: pid, Boot: boot}
	}
	cases := []struct {
		name   string
		oneVM  bool
		holder ivshmem.Owner
		takes  bool
		why    string // in the refusal
	}{
		{"dead, this boot", true, guest(dead, mine), true, ""},
		{"another boot, its pid alive now", true, guest(live, other), true, ""},
		{"untagged (an older binary), dead", true, guest(dead, 0), true, ""},
		{"alive, this boot", true, guest(live, mine), false, "held by guest pid"},
		{"untagged, alive", true, guest(live, 0), false, "held by guest pid"},
		{"dead, region shared by VMs", false, guest(dead, mine), false, "other VMs may map this region"},
		{"a host process", true, ivshmem.Owner{Side: ivshmem.SideHost, PID: dead}, false, "a guest cannot see"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for _, end := range []ivshmem.End{ivshmem.EndProducer, ivshmem.EndConsumer} {
				c := newCluster(t, Config{ID: 46, Queues: 1, QueueLen: 64, QueueBuffers: 64, OneVM: tc.oneVM})
				if _, err := c.r.l.Claim(c.r.b, 0, end, tc.holder, nil); err != nil {
					t.Fatal(err)
				}
				g := guestView(t, c, nil)
				q, err := g.attach(0, end, false)
				if tc.takes {
					if err != nil {
						t.Fatalf("%s: attach in place of %+v: %v", end, tc.holder, err)
					}
					if o := c.r.l.QueueOwner(c.r.b, 0, end); o != g.owner {
						t.Errorf("%s: owner %+v after the takeover, want %+v", end, o, g.owner)
					}
					q.Close()
					if o := c.r.l.QueueOwner(c.r.b, 0, end); o.Side != 0 {
						t.Errorf("%s: owner %+v after close, want free", end, o)
					}
				} else {
					if !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), tc.why) {
						t.Fatalf("%s: attach in place of %+v: %v, want busy saying %q", end, tc.holder, err, tc.why)
					}
					if o := c.r.l.QueueOwner(c.r.b, 0, end); o != tc.holder {
						t.Errorf("%s: owner %+v after a refusal, want %+v untouched", end, o, tc.holder)
					}
					q, err := g.attach(0, end, true) // force
					if err != nil {
						t.Fatalf("%s: forced attach: %v", end, err)
					}
					q.Close()
				}
				c.Close()
			}
		})
	}
}

// TestHostCannotJudgeGuestOwner: a host process meeting a guest's claim
// is refused with the reason and the way out; the claim is untouched.
func TestHostCannotJudgeGuestOwner(t *testing.T) {
	c := newCluster(t, Config{ID: 47, Queues: 1, QueueLen: 64, OneVM: true})
	holder := ivshmem.Owner{Side: ivshmem.SideGuest, PID: deadPID(t), Boot: 5}
	if _, err := c.r.l.Claim(c.r.b, 0, ivshmem.EndConsumer, holder, nil); err != nil {
		t.Fatal(err)
	}
	_, err := Open("zc:47@0")
	if !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), "held by guest pid") || !strings.Contains(err.Error(), "the host cannot see") {
		t.Fatalf("host attach in place of a guest: %v", err)
	}
	if o := c.r.l.QueueOwner(c.r.b, 0, ivshmem.EndConsumer); o != holder {
		t.Fatalf("owner %+v after a refusal, want %+v", o, holder)
	}
}

// TestAdoptKeepsOneVMFlag: an agent adopting a VM region made before
// FlagOneVM (or with it) keeps the region's flag instead of refusing the
// region for a layout that differs.
func TestAdoptKeepsOneVMFlag(t *testing.T) {
	shmDir(t)
	for _, made := range []bool{false, true} {
		cfg := adoptCfg
		cfg.OneVM = made
		c1, err := CreateCluster(cfg)
		if err != nil {
			t.Fatal(err)
		}
		c1.Leave()
		cfg.OneVM = true
		c2, err := AdoptCluster(cfg)
		if err != nil {
			t.Fatalf("adopt a region made with OneVM %v: %v", made, err)
		}
		if got := c2.r.l.Flags&ivshmem.FlagOneVM != 0; got != made {
			t.Errorf("adopted region has OneVM %v, made with %v", got, made)
		}
		c2.Close()
	}
}
