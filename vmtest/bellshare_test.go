package vmtest

import (
	"fmt"
	"regexp"
	"testing"
	"time"
)

// TestGuestProcessesShareDoorbell: two readers in one guest, on two queues
// of one ivshmem-doorbell device, both asleep. VFIO lets one process hold
// the device: the first zcount takes its interrupts and passes each one on
// to the second (guest.Doorbell; before, the second polled). Both say they
// wait on the doorbell, QEMU stays nearly idle while both wait, and each
// counts its share of a burst exactly. The first then exits; the second
// takes the interrupts over (it opens the device through VFIO itself), so
// QEMU stays idle while it waits alone, and it counts a second burst
// exactly. Two new readers, asleep the same way when the agent stops,
// both end with "the queue went away".
func TestGuestProcessesShareDoorbell(t *testing.T) {
	const (
		id     = 83
		first  = 2000 // packets of the first burst, split evenly (round-robin)
		second = 1000 // of the second, once the first reader exited
		// A sleeping reader adds 1-2% of a CPU to QEMU under TCG, one that
		// polls about 30% (TestGuestSleepsOnDoorbell); the bound sits far
		// from both.
		idleBound = 450 * time.Millisecond // of QEMU's CPU in 3 s
	)
	h := newHostTools(t)
	ctx := testCtx(t, 200*time.Second)
	vm := bellVM(t, GoBinary("zcguest", zcguestPkg), GoBinary("zcount", zcountPkg), Script(fmt.Sprintf(`
zcguest wait -c %[1]d --timeout 60s --poll 5ms || exit 1
( echo "ZCRESULT $(zcount -i zc:%[1]d@0 -n %[2]d --verify --json --interval 0)"; echo "ZCFIRST exited" ) &
sleep 1
echo "ZCRESULT $(zcount -i zc:%[1]d@1 -n %[3]d --verify --json --interval 0)"
wait
( echo "ZCRESULT $(zcount -i zc:%[1]d@0 --json --interval 0)" ) &
sleep 1
echo "ZCRESULT $(zcount -i zc:%[1]d@1 --json --interval 0)"
wait`, id, first/2, first/2+second/2)))
	agent := h.startAgent(t, true, "run", "-c", fmt.Sprint(id), "-n", "2", "-m", "0",
		"-i", fmt.Sprintf("gen:len=%d,count=%d,after=8s", frameLen, first),
		"-i", fmt.Sprintf("gen:len=%d,count=%d,after=22s", frameLen, second),
		"--keep", "--backing", "shm", "--stats-interval", "0", "--wait-consumers", "90s", "--vm", vm.QMPPath())

	// Both readers sleep on the doorbell: the second through the first.
	expectBothBell := func() {
		t.Helper()
		for q := range 2 {
			re := regexp.MustCompile(fmt.Sprintf(`zc:%d@%d: idle waits: (.*)`, id, q))
			_, m, err := vm.ExpectRegexp(ctx, re)
			if err != nil {
				t.Fatalf("reader %d never said how it waits: %v\nagent:\n%s", q, err, agent.stderrText())
			}
			if m[1] != "doorbell" {
				t.Fatalf("reader %d waits by %q, want the doorbell", q, m[1])
			}
		}
	}
	expectBothBell()
	// expectIdle measures QEMU's CPU over 3 s while who should sleep.
	expectIdle := func(who string) {
		t.Helper()
		time.Sleep(1500 * time.Millisecond) // past the readers' polls and naps
		use := qemuCPU(t, vm)
		t.Logf("QEMU CPU in 3 s while %s waited: %v", who, use)
		if use.cpu > idleBound {
			t.Errorf("QEMU used %v of CPU in 3 s while %s should sleep", use, who)
		}
	}
	agent.awaitLog(t, ctx, "sources started", "zchost run")
	expectIdle("both readers")

	var s summary
	if _, err := vm.Result(ctx, &s); err != nil {
		t.Fatal(err)
	}
	s.check(t, "the first reader (it holds the interrupts)", first/2)
	if _, err := vm.Expect(ctx, "ZCFIRST exited"); err != nil {
		t.Fatal(err)
	}

	// The first reader is gone: the second holds the interrupts now.
	expectIdle("the second reader, alone after the takeover,")
	if _, err := vm.Result(ctx, &s); err != nil {
		t.Fatalf("%v\nagent:\n%s", err, agent.stderrText())
	}
	// The second source numbers its frames from 0 again: one step back.
	if n := uint64(first/2 + second/2); s.Packets != n || s.Bytes != n*frameLen || s.Verified+s.OutOfOrder != n || s.OutOfOrder > 1 || s.Corrupt != 0 || s.Error != "" {
		t.Errorf("the second reader (shared, then its own interrupts): zcount %+v, want %d packets, %d bytes, all verified but the second source's first, no errors", s, n, n*frameLen)
	}

	// Two new readers, one holding the interrupts and one sharing them,
	// both asleep when the agent stops and unplugs the region: both end
	// with "the queue went away" (the holder is told by the kernel, the
	// other by the holder).
	expectBothBell()
	time.Sleep(time.Second)
	agent.stop(t, ctx)
	expectGone(t, ctx, vm, "a sleeping reader after the unplug")
	expectGone(t, ctx, vm, "the other sleeping reader after the unplug")
}
