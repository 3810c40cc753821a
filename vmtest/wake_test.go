package vmtest

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestGuestSleepsOnDoorbell: zchost run --doorbell plugs a VM's region as
// an ivshmem-doorbell device it serves. The guest's zcount (the same
// binary as ever) finds it can take the device's interrupts (vfio-pci, q35
// with a virtual IOMMU) and sleeps on them while its queue is idle: QEMU
// uses little CPU meanwhile. A burst sent later wakes it and is counted
// exactly. A second zcount, asleep when the agent stops and unplugs the
// region, ends with "the queue went away" instead of hanging. The same run
// without --doorbell (ivshmem-plain: the guest polls) gives QEMU's CPU to
// compare with, in the same test. Each VM is first measured idle, the
// region plugged and no reader started, so that what the reader adds shows
// apart from what QEMU and the guest kernel cost under TCG anyway.
func TestGuestSleepsOnDoorbell(t *testing.T) {
	// Compared: the share of a CPU the reader adds to the idle guest.
	bellBeatsPoll(t, "QEMU CPU while the guest's reader was idle", func(t *testing.T, bell bool) (time.Duration, float64) {
		floor, reader := testGuestSleeps(t, bell)
		return reader.cpu, reader.share() - floor.share()
	})
}

// bellBeatsPoll is bellOrPoll that fails unless the run with the doorbell
// costs less than the polling one: test returns its CPU time (logged) and
// the cost compared (a share of a CPU, or CPU seconds).
func bellBeatsPoll(t *testing.T, what string, test func(t *testing.T, bell bool) (time.Duration, float64)) {
	var cost [2]float64
	var ran [2]bool
	bellOrPoll(t, what, func(t *testing.T, bell bool) time.Duration {
		cpu, c := test(t, bell)
		i := map[bool]int{true: 0, false: 1}[bell]
		cost[i], ran[i] = c, true
		return cpu
	})
	if ran[0] && ran[1] && cost[0] >= cost[1] {
		t.Errorf("%s: %.4g with the doorbell, no less than polling (%.4g)", what, cost[0], cost[1])
	}
}

// bellBeatsPollUse is bellBeatsPoll for a test that returns QEMU's CPU
// use: the share of a CPU is compared.
func bellBeatsPollUse(t *testing.T, what string, test func(t *testing.T, bell bool) cpuUse) {
	bellBeatsPoll(t, what, func(t *testing.T, bell bool) (time.Duration, float64) {
		u := test(t, bell)
		return u.cpu, u.share()
	})
}

// qemuCPU measures vm's QEMU process over 3 s.
func qemuCPU(t *testing.T, vm *VM) cpuUse {
	t.Helper()
	u, err := measureCPU(vm.PID(), 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// samplePM is a guest shell command that reads the runtime PM status of
// the PCI device at sysfs directory $dev n times in a row and prints
// "ZCSAMPLED n inactive K" (expectKeptOpen reads it). The device is not
// "active" once the last process holding it through VFIO released it.
func samplePM(n int) string {
	return fmt.Sprintf(`( i=0; off=0; while [ $i -lt %d ]; do read st <$dev/power/runtime_status; [ "$st" != active ] && off=$((off+1)); i=$((i+1)); done; echo "ZCSAMPLED $i inactive $off" )`, n)
}

// expectKeptOpen reads samplePM's line and fails the test if the device
// was ever not active across when: it was released, which it must not
// be (why says who should have kept it open).
func expectKeptOpen(t *testing.T, ctx context.Context, vm *VM, when, why string) {
	t.Helper()
	_, m, err := vm.ExpectRegexp(ctx, regexp.MustCompile(`ZCSAMPLED (\d+) inactive (\d+)`))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("the device's runtime PM status %s: %s samples, %s not active", when, m[1], m[2])
	if m[2] != "0" {
		t.Errorf("the device was not active in %s of %s samples %s: it was released, not kept open by %s", m[2], m[1], when, why)
	}
}

// expectQEMUIdle measures QEMU's CPU over 3 s while who should sleep,
// starting 1.5 s from now (past the readers' polls and naps), and fails
// the test when it used more than bound.
func expectQEMUIdle(t *testing.T, vm *VM, who string, bound time.Duration) {
	t.Helper()
	time.Sleep(1500 * time.Millisecond)
	use := qemuCPU(t, vm)
	t.Logf("QEMU CPU in 3 s while %s waited: %v", who, use)
	if use.cpu > bound {
		t.Errorf("QEMU used %v of CPU in 3 s while %s should sleep (a reader polls)", use, who)
	}
}

// startAgent starts zchost with args, and with --doorbell when bell.
func (h *hostTools) startAgent(t *testing.T, bell bool, args ...string) *proc {
	t.Helper()
	if bell {
		args = append(args, "--doorbell")
	}
	return h.start(t, h.zchost, args...)
}

// bellOrPoll runs test with --doorbell and without (the guest polls) and
// logs what the two cost (what test returns: a CPU time).
func bellOrPoll(t *testing.T, what string, test func(t *testing.T, bell bool) time.Duration) {
	var cpu [2]time.Duration
	for i, bell := range []bool{true, false} {
		t.Run(map[bool]string{true: "doorbell", false: "plain"}[bell], func(t *testing.T) { cpu[i] = test(t, bell) })
	}
	if cpu[0] > 0 && cpu[1] > 0 {
		t.Logf("%s: %v with the doorbell, %v polling (%.1fx less)", what, cpu[0], cpu[1], cpu[1].Seconds()/cpu[0].Seconds())
	}
}

// testGuestSleeps returns QEMU's CPU over three seconds twice: with the
// region plugged and nothing of ours running in the guest (the floor), then
// with the guest's reader waiting on its idle queue.
func testGuestSleeps(t *testing.T, bell bool) (floor, reader cpuUse) {
	const (
		id = 79
		n  = 2000
	)
	h := newHostTools(t)
	ctx := testCtx(t, 150*time.Second)
	// The guest waits for the region, then blocks reading a line from the
	// zc.idle port (the host writes it once it measured the idle guest),
	// then starts its readers.
	vm := bellVM(t, VirtioSerial("zc.idle"), GoBinary("zcguest", zcguestPkg), GoBinary("zcount", zcountPkg), Script(fmt.Sprintf(`
zcguest wait -c %[1]d --timeout 60s --poll 5ms || exit 1
for p in /sys/class/virtio-ports/*; do
	if [ "$(cat $p/name)" = zc.idle ]; then port=/dev/${p##*/}; fi
done
[ -n "$port" ] || { echo "no zc.idle port"; exit 1; }
echo "ZCIDLE: region plugged, no reader until the host writes to $port"
read -r go < $port
[ "$go" = measured ] || { echo "read $go from $port"; exit 1; }
echo "ZCIDLE over"
echo "ZCRESULT $(zcount -i zc:%[1]d@0 -n %[2]d --verify --json --interval 0)"
echo "ZCRESULT $(zcount -i zc:%[1]d@0 --json --interval 0)"`, id, n)))
	// Connect before the guest reads: a port without a host end reads EOF.
	idlePort, err := vm.DialCtl(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer idlePort.Close()
	args := []string{"run", "-c", fmt.Sprint(id), "-i", fmt.Sprintf("gen:len=%d,count=%d,after=6s", frameLen, n),
		"-n", "1", "--keep", "--backing", "shm", "--stats-interval", "0", "--wait-consumers", "90s", "--vm", vm.QMPPath()}
	agent := h.startAgent(t, bell, args...)

	// The floor: the region is plugged, zcguest wait has exited and the
	// guest's shell blocks in read.
	if _, err := vm.Expect(ctx, "ZCIDLE: region plugged"); err != nil {
		t.Fatalf("the guest never saw the region: %v\nagent:\n%s", err, agent.stderrText())
	}
	time.Sleep(1500 * time.Millisecond) // the same settling as the reader gets below
	floor = qemuCPU(t, vm)
	if _, err := idlePort.Write([]byte("measured\n")); err != nil {
		t.Fatal(err)
	}
	if _, err := vm.Expect(ctx, "ZCIDLE over"); err != nil {
		t.Fatal(err)
	}

	// The guest's reader is attached and idle for six seconds: measure
	// QEMU's CPU over three of them.
	agent.awaitLog(t, ctx, "sources started", "zchost run")
	time.Sleep(1500 * time.Millisecond) // past the reader's polls and naps
	reader = qemuCPU(t, vm)
	how := map[bool]string{true: "reader asleep on the doorbell", false: "reader polling"}[bell]
	t.Logf("QEMU CPU in 3 s: guest idle without a reader %v, %s %v: the reader adds %.2f%% of a CPU (%.1fx the idle guest)",
		floor, how, reader, 100*(reader.share()-floor.share()), ratio(reader.share(), floor.share()))
	// A generous bound: a guest that polls keeps its vCPU, and so QEMU's
	// TCG thread, busy most of the time.
	if bell && reader.cpu > 900*time.Millisecond {
		t.Errorf("QEMU used %v of CPU in 3 s while the guest should sleep", reader)
	}

	var s summary
	if _, err := vm.Result(ctx, &s); err != nil {
		t.Fatal(err)
	}
	s.check(t, "guest woken by the doorbell", n)
	want := map[bool]string{true: "idle waits: doorbell", false: "idle waits: poll: no doorbell interrupts"}[bell]
	if _, err := vm.Expect(ctx, want); err != nil {
		t.Errorf("the guest's zcount did not say %q: %v", want, err)
	}
	time.Sleep(2 * time.Second) // the second zcount attaches and sleeps
	agent.stop(t, ctx)
	expectGone(t, ctx, vm, "the sleeping reader after the unplug")
	return floor, reader
}

// TestHostSleepsOnGuestRing: the other direction. A lossless agent feeds a
// guest reader through a 64-slot queue, so it waits for the guest's
// returns a thousand times. With --doorbell it
// sleeps until the guest rings (the guest rings once it returned buffers
// and saw the agent's request); without, it polls. The guest counts every
// packet exactly either way; the agent's CPU and the run's length are
// logged side by side (docs/PERFORMANCE.md).
func TestHostSleepsOnGuestRing(t *testing.T) {
	bellOrPoll(t, "agent CPU feeding a guest losslessly", testHostSleeps)
}

func testHostSleeps(t *testing.T, bell bool) time.Duration {
	const (
		id = 80
		n  = 60000
	)
	h := newHostTools(t)
	ctx := testCtx(t, 150*time.Second)
	vm := bellVM(t, GoBinary("zcguest", zcguestPkg), GoBinary("zcount", zcountPkg), Script(fmt.Sprintf(`
zcguest wait -c %[1]d --timeout 60s --poll 5ms || exit 1
echo "ZCRESULT $(zcount -i zc:%[1]d@0 -n %[2]d --verify --json --interval 0)"`, id, n)))
	args := []string{"run", "-c", fmt.Sprint(id), "-i", fmt.Sprintf("gen:len=%d,count=%d", frameLen, n),
		"-n", "1", "-q", "64", "--lossless", "--backing", "shm", "--stats-interval", "0", "--wait-consumers", "90s", "--vm", vm.QMPPath()}
	agent := h.startAgent(t, bell, args...)
	var s summary
	if _, err := vm.Result(ctx, &s); err != nil {
		t.Fatal(err)
	}
	s.check(t, "guest fed losslessly", n)
	stopCtx, cancel := context.WithTimeout(ctx, 60*time.Second) // a hang bound
	defer cancel()
	if _, err := agent.wait(stopCtx); err != nil {
		t.Fatalf("zchost run: %v", err)
	}
	ps := agent.cmd.ProcessState
	used := ps.UserTime() + ps.SystemTime()
	t.Logf("agent CPU (doorbell %v): %v for %d packets through a 64-slot queue", bell, used, n)
	return used
}

// TestHostReadsGuestAsleep: guest → host. zsend in the guest sends a
// packet every quarter second into a queue that zcount reads on the host.
// With --doorbell the guest says it rings its doorbell, so the host
// zcount (not the agent) sleeps in futex(2) between packets and the
// agent's relay wakes it on each ring; without, it naps. Every packet is
// counted exactly either way, and zcount's CPU is compared: asleep, it
// must use less.
func TestHostReadsGuestAsleep(t *testing.T) {
	bellBeatsPoll(t, "host zcount CPU reading a guest's queue at 4 packets/s", func(t *testing.T, bell bool) (time.Duration, float64) {
		used := testHostReadsGuest(t, bell)
		return used, used.Seconds()
	})
}

func testHostReadsGuest(t *testing.T, bell bool) time.Duration {
	const (
		id = 81
		n  = 24
	)
	h := newHostTools(t)
	ctx := testCtx(t, 150*time.Second)
	vm := bellVM(t, GoBinary("zcguest", zcguestPkg), GoBinary("zsend", zsendPkg), Script(fmt.Sprintf(`
zcguest wait -c %[1]d --timeout 60s --poll 5ms || exit 1
echo "ZCSEND starts"
echo "ZCRESULT $(zsend -o zc:%[1]d@0 -n %[2]d -r 4 -l %[3]d --json)"
zcguest wait -c %[1]d --gone --timeout 60s --poll 5ms
sleep 1 # let QEMU see the eject before power-off`, id, n, frameLen)))
	args := []string{"run", "-c", fmt.Sprint(id), "-n", "1", "--queue-buffers", "256", "--backing", "shm",
		"--stats-interval", "0", "--vm", vm.QMPPath()}
	agent := h.startAgent(t, bell, args...)
	// zcount attaches once zsend holds the producer end, so that it sees
	// its peer is a guest (and whether it rings).
	if _, err := vm.Expect(ctx, "ZCSEND starts"); err != nil {
		t.Fatalf("the guest never saw the region: %v\nagent:\n%s", err, agent.stderrText())
	}
	time.Sleep(time.Second)
	zcount := h.start(t, h.zcount, "-i", fmt.Sprintf("zc:%d@0", id), "-n", fmt.Sprint(n), "--verify", "--json", "--interval", "0")
	zcount.countResult(t, ctx).check(t, "host reader of the guest's queue", n)
	want := map[bool]string{true: "idle waits: futex, woken through the guest's doorbell", false: "idle waits: poll: the peer is a guest without a doorbell device"}[bell]
	if !strings.Contains(zcount.stderrText(), want) {
		t.Errorf("host zcount did not say %q:\n%s", want, zcount.stderrText())
	}
	expectSent(t, ctx, vm, "guest", n)
	agent.stop(t, ctx)
	ps := zcount.cmd.ProcessState
	used := ps.UserTime() + ps.SystemTime()
	t.Logf("host zcount (doorbell %v): %v of CPU for %d packets at 4/s", bell, used, n)
	return used
}

// countResult waits for a host zcount --json run to end and returns its
// summary.
func (p *proc) countResult(t *testing.T, ctx context.Context) summary {
	t.Helper()
	out, err := p.wait(ctx)
	if err != nil {
		t.Fatalf("host zcount: %v\n%s", err, p.stderrText())
	}
	var s summary
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatalf("host zcount output %q: %v", out, err)
	}
	return s
}

// bellVM starts a guest that can take an ivshmem-doorbell device's
// interrupts (q35, a virtual Intel IOMMU, the vfio-pci modules), with
// opts (its binaries and script) on top.
func bellVM(t *testing.T, opts ...Option) *VM {
	t.Helper()
	return Start(t, append([]Option{Machine("q35"), QEMUArgs(IntelIOMMUArgs...), Modules(VFIOModules...), Timeout(2 * time.Minute)}, opts...)...)
}

// expectSent reads the guest zsend's result line from vm (who names it)
// and checks that it sent n packets.
func expectSent(t *testing.T, ctx context.Context, vm *VM, who string, n int) {
	t.Helper()
	var sent struct {
		Packets uint64 `json:"packets"`
	}
	if _, err := vm.Result(ctx, &sent); err != nil {
		t.Fatal(err)
	}
	if sent.Packets != uint64(n) {
		t.Errorf("%s zsend sent %d, want %d", who, sent.Packets, n)
	}
}

// TestGuestReadsHostProcessAsleep: host → guest through a host process
// other than the agent. zsend on the host sends a packet every quarter
// second into a queue that zcount reads in the guest. zsend cannot ring
// the guest, so with --doorbell the guest's zcount rings the agent as it
// goes to sleep, and the agent watches the queue for it (asleep on the
// ring's index word, which zsend's enqueue wakes) and rings its
// interrupt; without, the guest polls. Every packet is counted exactly
// either way, and QEMU's CPU while zsend sends is compared: the guest
// asleep must cost it less.
func TestGuestReadsHostProcessAsleep(t *testing.T) {
	bellBeatsPollUse(t, "QEMU CPU while the guest read a host zsend at 4 packets/s", testGuestReadsHostProcess)
}

func testGuestReadsHostProcess(t *testing.T, bell bool) cpuUse {
	const (
		id = 82
		n  = 24
	)
	h := newHostTools(t)
	ctx := testCtx(t, 150*time.Second)
	vm := bellVM(t, GoBinary("zcguest", zcguestPkg), GoBinary("zcount", zcountPkg), Script(fmt.Sprintf(`
zcguest wait -c %[1]d --timeout 60s --poll 5ms || exit 1
echo "ZCRESULT $(zcount -i zc:%[1]d@0 -n %[2]d --verify --json --interval 0)"
zcguest wait -c %[1]d --gone --timeout 60s --poll 5ms
sleep 1 # let QEMU see the eject before power-off`, id, n)))
	args := []string{"run", "-c", fmt.Sprint(id), "-n", "1", "--queue-buffers", "256", "--backing", "shm",
		"--stats-interval", "0", "--vm", vm.QMPPath()}
	agent := h.startAgent(t, bell, args...)
	want := map[bool]string{true: "idle waits: doorbell (the host peer does not ring", false: "idle waits: poll: no doorbell interrupts"}[bell]
	if _, err := vm.Expect(ctx, want); err != nil {
		t.Fatalf("the guest's zcount did not say %q: %v\nagent:\n%s", want, err, agent.stderrText())
	}
	zsend := h.start(t, h.zsend, "-o", fmt.Sprintf("zc:%d@0", id), "-n", fmt.Sprint(n), "-r", "4", "-l", fmt.Sprint(frameLen), "--json", "--wait", "20s")
	time.Sleep(time.Second) // past the first packets
	use := qemuCPU(t, vm)
	t.Logf("QEMU CPU in 3 s while the guest read a host zsend (doorbell %v): %v", bell, use)
	var s summary
	if _, err := vm.Result(ctx, &s); err != nil {
		t.Fatal(err)
	}
	s.check(t, "guest reader of a host zsend", n)
	if _, err := zsend.wait(ctx); err != nil {
		t.Fatalf("host zsend: %v", err)
	}
	agent.stop(t, ctx)
	return use
}

// TestGuestWaitsForHostProcessAsleep: guest → host through a host process
// other than the agent, the producer waiting. zsend in the guest fills a
// 64-buffer queue that zcount reads on the host; zcount is stopped
// (SIGSTOP) for three seconds, so zsend waits for returned buffers. zcount
// cannot ring the guest, so with --doorbell zsend rings the agent as it
// goes to sleep, and the agent watches the return ring for it and rings
// it once zcount, continued, returns buffers; without, zsend polls. QEMU's
// CPU over those seconds is compared, and every packet is counted exactly.
func TestGuestWaitsForHostProcessAsleep(t *testing.T) {
	bellBeatsPollUse(t, "QEMU CPU while the guest's zsend waited for a stopped host zcount", testGuestWaitsForHostProcess)
}

func testGuestWaitsForHostProcess(t *testing.T, bell bool) cpuUse {
	const (
		id = 83
		n  = 5000
	)
	h := newHostTools(t)
	ctx := testCtx(t, 150*time.Second)
	vm := bellVM(t, GoBinary("zcguest", zcguestPkg), GoBinary("zsend", zsendPkg), Script(fmt.Sprintf(`
zcguest wait -c %[1]d --timeout 60s --poll 5ms || exit 1
echo "ZCSEND starts"
echo "ZCRESULT $(zsend -o zc:%[1]d@0 -n %[2]d -l %[3]d --json)"
zcguest wait -c %[1]d --gone --timeout 60s --poll 5ms
sleep 1 # let QEMU see the eject before power-off`, id, n, frameLen)))
	args := []string{"run", "-c", fmt.Sprint(id), "-n", "1", "-q", "64", "--queue-buffers", "64", "--backing", "shm",
		"--stats-interval", "0", "--vm", vm.QMPPath()}
	agent := h.startAgent(t, bell, args...)
	zcount := h.start(t, h.zcount, "-i", fmt.Sprintf("zc:%d@0", id), "-n", fmt.Sprint(n), "--verify", "--json", "--interval", "0", "--wait", "60s")
	// Stop zcount once it is attached and idle, before zsend sends.
	zcount.awaitLog(t, ctx, "idle waits", "host zcount")
	if err := zcount.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	if _, err := vm.Expect(ctx, "ZCSEND starts"); err != nil {
		t.Fatalf("the guest never saw the region: %v\nagent:\n%s", err, agent.stderrText())
	}
	time.Sleep(1500 * time.Millisecond) // the queue fills; zsend waits, past its polls
	use := qemuCPU(t, vm)
	if err := zcount.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	t.Logf("QEMU CPU in 3 s while the guest's zsend waited for a stopped host zcount (doorbell %v): %v", bell, use)
	zcount.countResult(t, ctx).check(t, "host reader stopped and continued", n)
	expectSent(t, ctx, vm, "guest", n)
	agent.stop(t, ctx)
	return use
}
