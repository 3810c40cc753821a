package vmtest

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestGuestReplacesKilledReader: a guest reader killed with SIGKILL left
// its queue end claimed; before, every later reader in that guest was
// refused ("queue end busy ... held by pid N") until the agent unplugged
// the region. In a VM's own region (the agent's default) the guest can
// judge its own processes: a reader started while the holder lives is
// refused, naming it as a guest pid; once the holder is killed, a new
// reader takes the end over without --force and counts a later burst
// exactly. Between the two, zcguest list shows the end as gone.
func TestGuestReplacesKilledReader(t *testing.T) {
	const (
		id     = 84
		first  = 2000 // read by the reader that gets killed
		second = 3000 // read by its replacement
	)
	h := newHostTools(t)
	vm := Start(t, GoBinary("zcguest", zcguestPkg), GoBinary("zcount", zcountPkg), Script(fmt.Sprintf(`
zcguest wait -c %[1]d --timeout 60s --poll 5ms || exit 1
zcount -i zc:%[1]d@0 --interval 0 >/dev/null 2>&1 &
holder=$!
sleep 4
echo "ZCBUSY holder $holder: $(zcount -i zc:%[1]d@0 -n 1 --interval 0 2>&1 | tr '\n' ' ')"
kill -9 $holder
wait $holder
echo "ZCKILLED $holder"
zcguest list | grep "queue 0 " | sed 's/^ */ZCLIST /'
echo "ZCRESULT $(zcount -i zc:%[1]d@0 -n %[2]d --verify --json --interval 0)"
zcguest wait -c %[1]d --gone --timeout 60s --poll 5ms || exit 1
sleep 1 # let QEMU see the eject before power-off`, id, second)))
	ctx := testCtx(t, 150*time.Second)
	agent := h.start(t, h.zchost, "run", "-c", fmt.Sprint(id), "-n", "1",
		"-i", fmt.Sprintf("gen:len=%d,count=%d", frameLen, first),
		"-i", fmt.Sprintf("gen:len=%d,count=%d,after=15s", frameLen, second),
		"--lossless", "--backing", "shm", "--stats-interval", "0", "--wait-consumers", "60s", "--vm", vm.QMPPath())

	_, m, err := vm.ExpectRegexp(ctx, regexp.MustCompile(`ZCBUSY holder (\d+): (.*)`))
	if err != nil {
		t.Fatalf("%v\nagent:\n%s", err, agent.stderrText())
	}
	if want := "held by guest pid " + m[1]; !regexp.MustCompile(regexp.QuoteMeta(want) + `\b`).MatchString(m[2]) {
		t.Errorf("a second reader while the holder lives: %q, want a refusal saying %q", m[2], want)
	}
	if _, err := vm.Expect(ctx, "ZCKILLED"); err != nil {
		t.Fatal(err)
	}
	// zcguest list shows the end the killed reader left as gone.
	if l, err := vm.Expect(ctx, "ZCLIST"); err != nil {
		t.Fatal(err)
	} else if want := "consumer guest:" + m[1] + " (gone)"; !strings.Contains(l.Text, want) {
		t.Errorf("zcguest list after the kill: %q, want %q", l.Text, want)
	}
	finishCounted(t, ctx, vm, agent, "the reader that replaced the killed one", second)
}

// TestGuestReaderAfterReboot: a guest rebooted (a hard reset, here
// sysrq-b) while its reader held a queue end; the region stays plugged
// across the reset. The next boot's reader takes the end over: the claim
// carries the first boot's tag, so its pid, which in the new boot may name
// another process or none, is not looked at. Before, it was refused until
// the agent unplugged the region. It counts a later burst exactly.
func TestGuestReaderAfterReboot(t *testing.T) {
	const (
		id = 85
		n  = 3000
	)
	h := newHostTools(t)
	// The device is there when the script starts only in the second boot:
	// the agent plugs it after the first boot says ZCPLUG.
	vm := Start(t, QEMUArgs("-action", "reboot=reset"), GoBinary("zcguest", zcguestPkg), GoBinary("zcount", zcountPkg), Script(fmt.Sprintf(`
boot=1
for d in /sys/bus/pci/devices/*; do
	[ "$(cat $d/vendor):$(cat $d/device)" = "0x1af4:0x1110" ] && boot=2
done
echo "ZCBOOT $boot $(cat /proc/sys/kernel/random/boot_id)"
[ $boot = 1 ] && echo ZCPLUG
zcguest wait -c %[1]d --timeout 60s --poll 5ms || exit 1
if [ $boot = 1 ]; then
	zcount -i zc:%[1]d@0 --interval 0 >/dev/null 2>&1 &
	sleep 3
	echo "ZCRESET reader $!"
	echo b >/proc/sysrq-trigger
	sleep 60
fi
echo "ZCRESULT $(zcount -i zc:%[1]d@0 -n %[2]d --verify --json --interval 0)"
zcguest wait -c %[1]d --gone --timeout 60s --poll 5ms || exit 1
sleep 1 # let QEMU see the eject before power-off`, id, n)))
	ctx := testCtx(t, 200*time.Second)
	_, b1, err := vm.ExpectRegexp(ctx, regexp.MustCompile(`ZCBOOT (\d) (\S+)`))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := vm.Expect(ctx, "ZCPLUG"); err != nil {
		t.Fatal(err)
	}
	agent := h.start(t, h.zchost, "run", "-c", fmt.Sprint(id), "-n", "1",
		"-i", fmt.Sprintf("gen:len=%d,count=%d,after=20s", frameLen, n),
		"--lossless", "--backing", "shm", "--stats-interval", "0", "--wait-consumers", "60s", "--vm", vm.QMPPath())
	if _, err := vm.Expect(ctx, "ZCRESET"); err != nil {
		t.Fatalf("%v\nagent:\n%s", err, agent.stderrText())
	}
	_, b2, err := vm.ExpectRegexp(ctx, regexp.MustCompile(`ZCBOOT 2 (\S+)`))
	if err != nil {
		t.Fatalf("no second boot with the device plugged: %v", err)
	}
	if b1[1] != "1" || b1[2] == b2[1] {
		t.Fatalf("boots %q then %q: want a first boot, then a second with another boot id", b1[0], b2[0])
	}
	finishCounted(t, ctx, vm, agent, "the second boot's reader", n)
}

// finishCounted checks the guest's zcount result (who counted n packets,
// all verified), waits for the agent to finish on its own and shuts the
// VM down.
func finishCounted(t *testing.T, ctx context.Context, vm *VM, agent *proc, who string, n uint64) {
	t.Helper()
	var s summary
	if _, err := vm.Result(ctx, &s); err != nil {
		t.Fatalf("%v\nagent:\n%s", err, agent.stderrText())
	}
	s.check(t, who, n)
	if _, err := agent.wait(ctx); err != nil {
		t.Errorf("zchost run: %v", err)
	}
	if err := vm.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
}
