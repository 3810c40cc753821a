package vmtest

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestGuestProcessesShareDoorbell: several readers in one guest, on the
// queues of one ivshmem-doorbell device, all asleep. VFIO lets one process
// hold the device: the first zcount takes its interrupts and passes each
// one on to the others (guest.Doorbell; before, they polled).
//
//   - Two readers say they wait on the doorbell, QEMU stays nearly idle
//     while both wait, and each counts its share of a burst exactly.
//   - The first exits; the second takes the interrupts over (it opens the
//     device through VFIO itself), QEMU stays idle while it waits alone,
//     and it counts a second burst exactly.
//   - Two new readers; the one holding the interrupts is killed (SIGKILL)
//     and the other takes them over and sleeps on, reading its queue
//     undisturbed: it kept the holder's VFIO descriptors, so the device
//     is never released (its runtime PM status, sampled across the kill,
//     stays active). Released, vfio-pci suspended it, and BAR2 read zeros
//     under the other readers until one opened it again: they took the
//     region for unplugged (seen in full test runs, and in this test's
//     sampling: 5207 of 6000 samples suspended with the earlier code).
//   - A third reader shares the new holder's interrupts; both, asleep when
//     the agent stops and unplugs the region, end with "the queue went
//     away" (the holder told by the kernel, the other by the holder).
func TestGuestProcessesShareDoorbell(t *testing.T) {
	const (
		id     = 83
		queues = 3
		first  = 3000 // packets of the first burst, split evenly (round-robin)
		second = 1500 // of the second, once the first reader exited
		// A sleeping reader adds 1-2% of a CPU to QEMU under TCG, one that
		// polls about 30% (TestGuestSleepsOnDoorbell); the bound sits far
		// from both.
		idleBound = 450 * time.Millisecond // of QEMU's CPU in 3 s
	)
	h := newHostTools(t)
	ctx := testCtx(t, 200*time.Second)
	// Queue 2 has no reader until the end: its packets wait there, and the
	// agent waits 6 s for the first two readers only (then starts without
	// the third, saying so).
	vm := bellVM(t, GoBinary("zcguest", zcguestPkg), GoBinary("zcount", zcountPkg), Script(fmt.Sprintf(`
at=$(zcguest wait -c %[1]d --timeout 60s --poll 5ms) || exit 1
echo "$at"
dev=/sys/bus/pci/devices/$(echo "$at" | sed -n 's/^cluster [0-9]* at \([^ ]*\) .*/\1/p')
( echo "ZCRESULT $(zcount -i zc:%[1]d@0 -n %[2]d --verify --json --interval 0)"; echo "ZCFIRST exited" ) &
sleep 1
echo "ZCRESULT $(zcount -i zc:%[1]d@1 -n %[3]d --verify --json --interval 0)"
wait
zcount -i zc:%[1]d@0 --json --interval 0 >/dev/null &
holder=$!
sleep 1
( echo "ZCRESULT $(zcount -i zc:%[1]d@1 --json --interval 0)" ) &
sleep 1
# Sample the device's runtime PM status across the kill: it must stay
# active. When the last process holding it through VFIO lets it go,
# vfio-pci suspends it, and BAR2 reads zeros under every reader.
%[4]s &
sampler=$!
usleep 100000
kill -9 $holder
echo "ZCKILLED the holder"
wait $sampler
dmesg | grep -i "vfio\|enabling\|ivshmem\|01:00" | sed 's/^/ZCDMESG /'
sleep 6
echo "ZCRESULT $(zcount -i zc:%[1]d@2 --json --interval 0)"
wait`, id, first/queues, first/queues+second/queues, samplePM(6000))))
	agent := h.startAgent(t, true, "run", "-c", fmt.Sprint(id), "-n", fmt.Sprint(queues), "-m", "0",
		"-i", fmt.Sprintf("gen:len=%d,count=%d,after=8s", frameLen, first),
		"-i", fmt.Sprintf("gen:len=%d,count=%d,after=22s", frameLen, second),
		"--keep", "--backing", "shm", "--stats-interval", "0", "--wait-consumers", "6s", "--vm", vm.QMPPath())

	// expectBell checks that the readers of queues qs, in the order they
	// start, sleep on the doorbell.
	expectBell := func(qs ...int) {
		t.Helper()
		for _, q := range qs {
			re := regexp.MustCompile(fmt.Sprintf(`zc:%d@%d: idle waits: (.*)`, id, q))
			_, m, err := vm.ExpectRegexp(ctx, re)
			if err != nil {
				t.Fatalf("reader of queue %d never said how it waits: %v\nagent:\n%s", q, err, agent.stderrText())
			}
			if m[1] != "doorbell" {
				t.Fatalf("reader of queue %d waits by %q, want the doorbell", q, m[1])
			}
		}
	}
	expectIdle := func(who string) { t.Helper(); expectQEMUIdle(t, vm, who, idleBound) }

	// Both readers sleep on the doorbell: the second through the first.
	expectBell(0, 1)
	agent.awaitLog(t, ctx, "sources started", "zchost run")
	expectIdle("both readers")
	var s summary
	if _, err := vm.Result(ctx, &s); err != nil {
		t.Fatal(err)
	}
	s.check(t, "the first reader (it holds the interrupts)", first/queues)
	if _, err := vm.Expect(ctx, "ZCFIRST exited"); err != nil {
		t.Fatal(err)
	}

	// The first reader is gone: the second holds the interrupts now.
	expectIdle("the second reader, alone after the takeover,")
	if _, err := vm.Result(ctx, &s); err != nil {
		t.Fatalf("%v\nagent:\n%s", err, agent.stderrText())
	}
	// The second source numbers its frames from 0 again: one step back.
	if n := uint64(first/queues + second/queues); s.Packets != n || s.Bytes != n*frameLen || s.Verified+s.OutOfOrder != n || s.OutOfOrder > 1 || s.Corrupt != 0 || s.Error != "" {
		t.Errorf("the second reader (shared, then its own interrupts): zcount %+v, want %d packets, %d bytes, all verified but the second source's first, no errors", s, n, n*frameLen)
	}

	// Two new readers; the holder is killed, the other takes over.
	expectBell(0, 1)
	if _, err := vm.Expect(ctx, "ZCKILLED"); err != nil {
		t.Fatal(err)
	}
	expectKeptOpen(t, ctx, vm, "across the holder's kill", "the other reader")
	expectIdle("the reader left after its interrupts' holder was killed")
	// A third reader shares the new holder's interrupts; the agent stops.
	expectBell(2)
	time.Sleep(time.Second)
	// Nobody took the region for unplugged before it was.
	results := 0
	for _, l := range vm.Lines() {
		if strings.HasPrefix(l.Text, ResultPrefix) {
			results++
		}
	}
	if results != 2 {
		t.Errorf("%d results before the unplug, want the first two readers' only:\n%s", results, vm.Lines())
	}
	agent.stop(t, ctx)
	expectGone(t, ctx, vm, "a sleeping reader after the unplug")
	expectGone(t, ctx, vm, "the other sleeping reader after the unplug")
}
