package vmtest

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestVMRegionRecovery: a guest breaks its own region (random words over
// its BAR); the agent fails that region, keeps running, and after
// --vm-recover unplugs the broken device and plugs a fresh region in its
// place. The same guest, honest again, opens the fresh region by the same
// name and counts packets on it, verified.
func TestVMRegionRecovery(t *testing.T) {
	const (
		id     = 78
		honest = 500
		after  = 2000
	)
	h := newHostTools(t)
	ctx := testCtx(t, 150*time.Second)
	vm := Start(t, Name("vm"), Timeout(2*time.Minute), GoBinary("zcguest", zcguestPkg), GoBinary("zcount", zcountPkg), GoBinary("scribble", scribblePkg), Script(fmt.Sprintf(`
zcguest wait -c %[1]d --timeout 60s --poll 5ms || exit 1
echo "ZCRESULT $(zcount -i zc:%[1]d@0 -n %[2]d --verify --json --interval 0)"
echo "ZCRESULT $(scribble --bar -c %[1]d --for 1s --handshake 0 --gone 60s)"
zcguest wait -c %[1]d --timeout 60s --poll 5ms || exit 1
echo "ZCRESULT $(zcount -i zc:%[1]d@0 -n %[3]d --verify --json --interval 0)"`, id, honest, after)))
	agent := h.start(t, h.zchost, "run", "-c", fmt.Sprint(id), "-i", fmt.Sprintf("gen:len=%d,count=1000000000,rate=2000", frameLen),
		"-n", "1", "--backing", "shm", "--stats-interval", "1s", "--wait-consumers", "90s", "--vm-recover", "2s",
		"--vm", vm.QMPPath())

	var s summary
	if _, err := vm.Result(ctx, &s); err != nil {
		t.Fatal(err)
	}
	s.check(t, "before the attack", honest)
	var sc scribbleSummary
	if _, err := vm.Result(ctx, &sc); err != nil {
		t.Fatal(err)
	}
	if sc.Error != "" || !sc.Gone || sc.Words == 0 {
		t.Fatalf("scribble: %+v; want words written and the broken device unplugged by the agent", sc)
	}

	if _, err := vm.Result(ctx, &s); err != nil {
		t.Fatal(err)
	}
	if s.Packets != after || s.Verified != after || s.Corrupt != 0 || s.OutOfOrder != 0 || s.Error != "" {
		t.Errorf("on the fresh region: zcount %+v, want %d verified packets", s, after)
	}
	select {
	case <-agent.done:
		t.Fatalf("zchost run exited: %v", agent.err)
	default:
	}
	log := agent.stderrText()
	for _, want := range []string{"vm region failed", "vm region re-created and plugged"} {
		if !strings.Contains(log, want) {
			t.Errorf("agent log lacks %q:\n%s", want, log)
		}
	}
	agent.stop(t, ctx)
}
