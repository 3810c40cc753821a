package zc

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
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
	mine := ownerTag()
	if mine == ivshmem.TagNone || mine == ivshmem.TagNested {
		t.Skipf("this test process has owner tag %d: it needs a boot id and the initial pid namespace", mine)
	}
	other := mine%(ivshmem.TagNested-1) + 1 // another boot's tag
	dead, live := deadPID(t), uint32(os.Getpid())
	guest := func(pid, tag uint32) ivshmem.Owner {
		return ivshmem.Owner{Side: ivshmem.SideGuest, PID: pid, Tag: tag}
	}
	const own = -1 // this process keeps its own tag
	cases := []struct {
		name   string
		oneVM  bool
		holder ivshmem.Owner
		myTag  int // this process's tag instead of mine, or own
		takes  bool
		why    string // in the refusal
	}{
		{"dead, this boot", true, guest(dead, mine), own, true, ""},
		{"another boot, its pid alive now", true, guest(live, other), own, true, ""},
		{"alive, this boot", true, guest(live, mine), own, false, "held by guest pid"},
		{"untagged (a binary from before tags), dead", true, guest(dead, ivshmem.TagNone), own, false, "carries no boot tag"},
		{"in a nested pid namespace, dead", true, guest(dead, ivshmem.TagNested), own, false, "nested pid namespace of the guest"},
		{"dead, this process in a nested pid namespace", true, guest(dead, mine), ivshmem.TagNested, false, "this process runs in a nested pid namespace"},
		{"dead, this process without a boot id", true, guest(dead, mine), ivshmem.TagNone, false, "boot id cannot be read"},
		{"dead, region shared by VMs", false, guest(dead, mine), own, false, "other VMs may map this region"},
		{"a host process", true, ivshmem.Owner{Side: ivshmem.SideHost, PID: dead}, own, false, "a guest cannot see"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for _, end := range []ivshmem.End{ivshmem.EndProducer, ivshmem.EndConsumer} {
				c := newCluster(t, Config{ID: 46, Queues: 1, QueueLen: 64, QueueBuffers: 64, OneVM: tc.oneVM})
				if _, err := c.r.l.Claim(c.r.b, 0, end, tc.holder, nil); err != nil {
					t.Fatal(err)
				}
				g := guestView(t, c, nil)
				if tc.myTag != own {
					g.owner.Tag = uint32(tc.myTag)
				}
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
	holder := ivshmem.Owner{Side: ivshmem.SideGuest, PID: deadPID(t), Tag: 5}
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

// inNestedPIDNS runs this test binary's test name under unshare(1) in a
// pid namespace of its own, with env added, and returns its output; it
// skips the test when that cannot be done here.
func inNestedPIDNS(t *testing.T, name string, env ...string) (string, error) {
	t.Helper()
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("no unshare(1) (util-linux): cannot run a process in a pid namespace of its own")
	}
	cmd := exec.Command("unshare", "--pid", "--fork", "--mount-proc", os.Args[0], "-test.run=^"+name+"$")
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if strings.HasPrefix(string(out), "unshare:") {
		t.Skipf("cannot run in a pid namespace of its own (needs CAP_SYS_ADMIN): %s", out)
	}
	return string(out), err
}

// TestOwnerTag: a process in the initial pid namespace tags its guest
// claims with its boot's tag; one in a pid namespace of its own (this
// test binary again, under unshare) with ivshmem.TagNested, so that
// nobody judges its pid.
func TestOwnerTag(t *testing.T) {
	if os.Getenv("ZC_TEST_PRINT_TAG") != "" {
		fmt.Println(ownerTag())
		os.Exit(0)
	}
	id, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		t.Skipf("no boot id: %v", err)
	}
	if got, want := ownerTag(), ivshmem.BootTag(strings.TrimSpace(string(id))); got != want {
		t.Errorf("owner tag %d, want the boot's, %d", got, want)
	}
	out, err := inNestedPIDNS(t, "TestOwnerTag", "ZC_TEST_PRINT_TAG=1")
	if got := strings.TrimSpace(out); err != nil || got != strconv.Itoa(ivshmem.TagNested) {
		t.Errorf("in a nested pid namespace: owner tag %q (%v), want %d (TagNested)", got, err, ivshmem.TagNested)
	}
}

// TestNestedPIDNamespaceCannotSteal: a host process in a pid namespace of
// its own (a container) does not see the host's pids; before, it took the
// end of a live consumer of the initial namespace for gone (kill(pid, 0)
// found no such pid) and replaced it. Now it is refused and says why, and
// the initial namespace does not judge its claims either.
func TestNestedPIDNamespaceCannotSteal(t *testing.T) {
	if q := os.Getenv("ZC_TEST_NESTED_OPEN"); q != "" {
		_, err := Open(q)
		fmt.Println(err)
		os.Exit(0)
	}
	c := newCluster(t, Config{ID: 48, Queues: 1, QueueLen: 64})
	live := mustQ(t)(c.Consumer(0))
	out, _ := inNestedPIDNS(t, "TestNestedPIDNamespaceCannotSteal", "ZC_TEST_NESTED_OPEN=zc:48@0")
	if !strings.Contains(out, "queue end busy") || !strings.Contains(out, "this process runs in a nested pid namespace") {
		t.Errorf("a nested process attaching a live consumer's end: %q, want refused", out)
	}
	if live.Err() != nil || c.r.l.QueueOwner(c.r.b, 0, ivshmem.EndConsumer) != live.r.owner {
		t.Errorf("the live consumer lost its end: %v, owner %+v", live.Err(), c.r.l.QueueOwner(c.r.b, 0, ivshmem.EndConsumer))
	}
	live.Close()
	// A container's claim, its process gone: the initial namespace cannot
	// tell (its pid means nothing here) and is refused.
	nested := ivshmem.Owner{Side: ivshmem.SideHost, PID: deadPID(t), Tag: ivshmem.TagNested}
	if _, err := c.r.l.Claim(c.r.b, 0, ivshmem.EndConsumer, nested, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := Open("zc:48@0"); !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), "it runs in a nested pid namespace") {
		t.Errorf("attach in place of a container's claim: %v, want refused", err)
	}
}

// TestStatsSayGone: Inspect marks an end whose holder the reader can tell
// is gone, and the owner column says so; a live holder, and one the
// reader cannot judge, are shown as they are.
func TestStatsSayGone(t *testing.T) {
	if tag := ownerTag(); tag == ivshmem.TagNone || tag == ivshmem.TagNested {
		t.Skipf("this test process has owner tag %d: it needs a boot id and the initial pid namespace", tag)
	}
	c := newCluster(t, Config{ID: 49, Queues: 3, QueueLen: 64, OneVM: true})
	dead := deadPID(t)
	live := mustQ(t)(c.Consumer(0))
	claim := func(q uint32, o ivshmem.Owner) {
		t.Helper()
		if _, err := c.r.l.Claim(c.r.b, q, ivshmem.EndConsumer, o, nil); err != nil {
			t.Fatal(err)
		}
	}
	claim(1, ivshmem.Owner{Side: ivshmem.SideHost, PID: dead})
	claim(2, ivshmem.Owner{Side: ivshmem.SideGuest, PID: dead, Tag: ownerTag()})
	info, err := Inspect(49)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{fmt.Sprint(os.Getpid()), fmt.Sprintf("%d (gone)", dead), fmt.Sprintf("guest:%d", dead)}
	for i, w := range want {
		if got := info.Queues[i].Owner(ivshmem.EndConsumer); got != w {
			t.Errorf("host view, queue %d consumer %q, want %q", i, got, w)
		}
	}
	// A guest's view (the region mapped again as a guest maps it): its
	// own dead process is gone; it cannot judge the host's.
	g := guestView(t, c, nil)
	qs := g.stats()
	for i, w := range []string{fmt.Sprint(os.Getpid()), fmt.Sprint(dead), fmt.Sprintf("guest:%d (gone)", dead)} {
		if got := qs[i].Owner(ivshmem.EndConsumer); got != w {
			t.Errorf("guest view, queue %d consumer %q, want %q", i, got, w)
		}
	}
	if live.Err() != nil {
		t.Fatal(live.Err())
	}
}
