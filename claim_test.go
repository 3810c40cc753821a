package zc

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

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
	mine := ownerTag(ivshmem.SideGuest)
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
		{"in a nested pid namespace, dead", true, guest(dead, ivshmem.TagNested), own, false, "it runs in a container of the guest"},
		{"dead, this process in a nested pid namespace", true, guest(dead, mine), ivshmem.TagNested, false, "this process runs in a container of the guest"},
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

// nestedHelper is the child side of the pid namespace tests: run by
// inNestedPIDNS with ZC_TEST_NESTED=MODE (and ZC_TEST_QUEUE), it prints
// one line and exits. Modes: tag (its host and guest owner tags), open
// (attach the consumer end and detach: "ok" or the error), claim (attach
// and exit without detaching: "claimed"), hold (attach, say "holding",
// wait to be killed).
func nestedHelper(mode string) {
	if mode == "tag" {
		fmt.Println(ownerTag(ivshmem.SideHost), ownerTag(ivshmem.SideGuest))
		os.Exit(0)
	}
	q, err := Open(os.Getenv("ZC_TEST_QUEUE"))
	if err != nil {
		fmt.Println(err)
		os.Exit(0)
	}
	switch mode {
	case "open":
		q.Close()
		fmt.Println("ok")
	case "claim":
		fmt.Println("claimed")
	case "hold":
		fmt.Println("holding")
		time.Sleep(time.Minute)
	}
	os.Exit(0)
}

// inNestedPIDNS starts a shell script in a pid namespace of its own
// (unshare(1)) in which $T runs this test binary as nestedHelper, and
// returns it running with its stdout; it skips the test when that cannot
// be done here.
func inNestedPIDNS(t *testing.T, script, queue string) (*exec.Cmd, *bufio.Scanner) {
	t.Helper()
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("no unshare(1) (util-linux): cannot run a process in a pid namespace of its own")
	}
	cmd := exec.Command("unshare", "--pid", "--fork", "--mount-proc", "--kill-child", "sh", "-c", script)
	cmd.Env = append(os.Environ(), "T="+os.Args[0]+" -test.run=^TestNestedHelper$", "ZC_TEST_QUEUE="+queue)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	sc := bufio.NewScanner(out)
	if !sc.Scan() {
		cmd.Wait()
		if strings.HasPrefix(stderr.String(), "unshare:") {
			t.Skipf("cannot run in a pid namespace of its own (needs CAP_SYS_ADMIN): %s", stderr.String())
		}
		t.Fatalf("nested helper said nothing: %s", stderr.String())
	}
	return cmd, sc
}

// asNobody runs this test binary as nestedHelper under user nobody
// (setpriv), with c's region and folder opened to it, and returns its
// output; ok is false (and the test logs why) when that cannot be done.
func asNobody(t *testing.T, c *Cluster, env ...string) (out string, ok bool) {
	t.Helper()
	if _, err := exec.LookPath("setpriv"); err != nil || os.Geteuid() != 0 {
		t.Logf("not run as another user: needs root and setpriv(1) (util-linux)")
		return "", false
	}
	os.Chmod(filepath.Dir(c.Path()), 0o777)
	os.Chmod(c.Path(), 0o666)
	os.Chmod(os.Args[0], 0o755)
	cmd := exec.Command("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", os.Args[0], "-test.run=^TestNestedHelper$")
	cmd.Env = append(os.Environ(), env...)
	b, err := cmd.CombinedOutput()
	if err != nil {
		t.Logf("not run as another user: %v: %s", err, b)
		return "", false
	}
	return string(b), true
}

// TestNestedHelper is nestedHelper when the pid namespace tests run it;
// on its own it skips.
func TestNestedHelper(t *testing.T) {
	mode := os.Getenv("ZC_TEST_NESTED")
	if mode == "" {
		t.Skip("child of the pid namespace tests; runs only when they start it")
	}
	nestedHelper(mode)
}

// TestOwnerTag: a process in the initial pid namespace tags its claims
// TagNone on the host and with its boot's tag in a guest; one in a pid
// namespace of its own (this test binary again, under unshare) with its
// namespace's NSTag on the host and TagNested in a guest.
func TestOwnerTag(t *testing.T) {
	id, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		t.Skipf("no boot id: %v", err)
	}
	if got, want := ownerTag(ivshmem.SideGuest), ivshmem.BootTag(strings.TrimSpace(string(id))); got != want {
		t.Errorf("guest owner tag %d, want the boot's, %d", got, want)
	}
	if got := ownerTag(ivshmem.SideHost); got != ivshmem.TagNone {
		t.Errorf("host owner tag %d, want TagNone", got)
	}
	cmd, sc := inNestedPIDNS(t, `readlink /proc/self/ns/pid; ZC_TEST_NESTED=tag $T`, "")
	var ino uint64
	fmt.Sscanf(sc.Text(), "pid:[%d]", &ino)
	sc.Scan()
	if want := fmt.Sprintf("%d %d", ivshmem.NSTag(ino), ivshmem.TagNested); sc.Text() != want || ivshmem.NSTag(ino) == ivshmem.TagNested {
		t.Errorf("in pid namespace %d: owner tags %q, want %q (host: its NSTag, guest: TagNested)", ino, sc.Text(), want)
	}
	cmd.Wait()
}

// TestNestedPIDNamespaceClaims: claims across host pid namespaces (a
// container: unshare).
//   - A process in a container does not see the host's pids: before, it
//     took the end of a live consumer of the initial namespace for gone
//     and replaced it. Now it is refused and says why.
//   - In the same container, a process replaces one that died holding
//     the end (its namespace's tag, its pid gone).
//   - The initial namespace sees into containers: it is refused a live
//     container process's end, and takes over one whose process is gone,
//     and one whose container is gone.
func TestNestedPIDNamespaceClaims(t *testing.T) {
	c := newCluster(t, Config{ID: 48, Queues: 1, QueueLen: 64})
	owner := func() ivshmem.Owner { return c.r.l.QueueOwner(c.r.b, 0, ivshmem.EndConsumer) }
	live := mustQ(t)(c.Consumer(0))
	cmd, sc := inNestedPIDNS(t, `ZC_TEST_NESTED=open $T`, "zc:48@0")
	if !strings.Contains(sc.Text(), "queue end busy") || !strings.Contains(sc.Text(), "this process runs in a container") {
		t.Errorf("a container process attaching a live consumer's end: %q, want refused", sc.Text())
	}
	cmd.Wait()
	if live.Err() != nil || owner() != live.r.owner {
		t.Errorf("the live consumer lost its end: %v, owner %+v", live.Err(), owner())
	}
	live.Close()

	cmd, sc = inNestedPIDNS(t, `ZC_TEST_NESTED=claim $T; ZC_TEST_NESTED=open $T`, "zc:48@0")
	if sc.Text() != "claimed" || !sc.Scan() || sc.Text() != "ok" {
		t.Errorf("a container process in place of its dead sibling: %q, want claimed then ok", sc.Text())
	}
	cmd.Wait()

	cmd, sc = inNestedPIDNS(t, `ZC_TEST_NESTED=hold $T`, "zc:48@0")
	if sc.Text() != "holding" {
		t.Fatalf("container holder: %q", sc.Text())
	}
	held := owner()
	if _, err := Open("zc:48@0"); !errors.Is(err, ErrBusy) {
		t.Errorf("attach in place of a live container process %+v: %v, want busy", held, err)
	}
	if info, err := Inspect(48); err != nil || info.Queues[0].ConsumerGone {
		t.Errorf("stats of a live container process's end: gone %v (%v)", info.Queues[0].ConsumerGone, err)
	}
	// A user who may not look at others' processes cannot see into the
	// container: refused too, not taken for gone.
	if out, ok := asNobody(t, c, "ZC_TEST_NESTED=open", "ZC_TEST_QUEUE=zc:48@0"); ok && !strings.Contains(out, "queue end busy") {
		t.Errorf("an unprivileged process attaching a live container process's end: %q, want refused", out)
	}
	cmd.Process.Kill() // with --kill-child, the whole container
	cmd.Wait()
	// unshare is gone; its child gets its SIGKILL from the kernel (the
	// parent-death signal) and exits a moment later, not necessarily by
	// the time Wait returns: look until it has.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		info, err := Inspect(48)
		gone := err == nil && len(info.Queues) > 0 && info.Queues[0].ConsumerGone
		if gone {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stats of a gone container's end, 10 s after its kill: gone %v (%v)", gone, err)
		}
	}
	q, err := Open("zc:48@0")
	if err != nil {
		t.Fatalf("attach in place of a gone container %+v: %v", held, err)
	}
	q.Close()

	// A claim from a container whose namespace has no tag: not judged.
	nested := ivshmem.Owner{Side: ivshmem.SideHost, PID: deadPID(t), Tag: ivshmem.TagNested}
	if _, err := c.r.l.Claim(c.r.b, 0, ivshmem.EndConsumer, nested, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := Open("zc:48@0"); !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), "has no tag") {
		t.Errorf("attach in place of an untagged container's claim: %v, want refused", err)
	}
}

// TestStatsSayGone: Inspect marks an end whose holder the reader can tell
// is gone, and the owner column says so; a live holder, and one the
// reader cannot judge, are shown as they are.
func TestStatsSayGone(t *testing.T) {
	if tag := ownerTag(ivshmem.SideGuest); tag == ivshmem.TagNone || tag == ivshmem.TagNested {
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
	claim(2, ivshmem.Owner{Side: ivshmem.SideGuest, PID: dead, Tag: ownerTag(ivshmem.SideGuest)})
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
	qs := g.info(49).Queues
	for i, w := range []string{fmt.Sprint(os.Getpid()), fmt.Sprint(dead), fmt.Sprintf("guest:%d (gone)", dead)} {
		if got := qs[i].Owner(ivshmem.EndConsumer); got != w {
			t.Errorf("guest view, queue %d consumer %q, want %q", i, got, w)
		}
	}
	if live.Err() != nil {
		t.Fatal(live.Err())
	}
}
