package vmtest

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestControlChannel drives the zc.ctl control channel end to end: zchost
// run --ctl offers cluster 99 without plugging it; in the guest, zcguest
// ctl list sees the offer, zcguest ctl plug asks for it and waits for the
// device, zcguest list shows its queues, zcount counts exactly N frames;
// when zchost is done it sends an unplug-notice, which zcguest wait --gone
// --notice receives and answers before the device goes away. "port": the VM
// boots with a zc.ctl port; "hotplug": it boots without virtio-serial and
// zchost hot-plugs the controller, the chardev and the port.
func TestControlChannel(t *testing.T) {
	for _, tc := range []struct {
		name string
		opt  Option
	}{
		{"port", VirtioSerial("zc.ctl")},
		{"hotplug", Modules(VirtioConsoleModules...)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const n = 5000
			h := newHostTools(t)
			vm := Start(t, tc.opt, Name(tc.name), GoBinary("zcguest", zcguestPkg), GoBinary("zcount", zcountPkg), Script(fmt.Sprintf(`
zcguest ctl list --json --timeout 60s > /tmp/offers.json || exit 1
echo "ZCRESULT {\"offers\":$(cat /tmp/offers.json)}"
zcguest ctl plug -c 99 --timeout 60s || exit 1
zcguest wait -c 99 --gone --notice --timeout 60s > /tmp/notice.txt 2>&1 &
W=$!
i=0; while ! grep -q listening /tmp/notice.txt; do sleep 0.05; i=$((i+1)); [ $i -lt 1200 ] || exit 1; done
zcguest list
echo "ZCRESULT $(zcount -i zc:99@0 -n %d --verify --json --interval 0)"
wait $W; rc=$?
cat /tmp/notice.txt
echo "ZCRESULT {\"wait_exit\":$rc,\"log\":\"$(tr '\n' '|' < /tmp/notice.txt)\"}"
sleep 1 # let QEMU see the eject before power-off`, n)))
			ctx := testCtx(t, 120*time.Second)
			zchost := h.start(t, h.zchost, "run", "-c", "99", "-i", fmt.Sprintf("gen:len=%d,count=%d", frameLen, n), "-n", "1",
				"--lossless", "--backing", "shm", "--stats-interval", "0", "--wait-consumers", "90s", "--ctl", "--vm", vm.QMPPath())

			var offers struct {
				Offers []struct {
					ID      uint32 `json:"id"`
					Queues  []int  `json:"queues"`
					Size    uint64 `json:"size"`
					Shared  bool   `json:"shared"`
					Plugged bool   `json:"plugged"`
				} `json:"offers"`
			}
			if _, err := vm.Result(ctx, &offers); err != nil {
				t.Fatal(err)
			}
			if len(offers.Offers) != 1 || offers.Offers[0].ID != 99 || len(offers.Offers[0].Queues) != 1 || offers.Offers[0].Queues[0] != 0 ||
				offers.Offers[0].Size == 0 || offers.Offers[0].Shared || offers.Offers[0].Plugged {
				t.Errorf("zcguest ctl list: %+v, want cluster 99, queue 0, a region of its own, not plugged yet", offers.Offers)
			}
			if _, err := vm.Expect(ctx, "cluster 99 plugged at "); err != nil {
				t.Fatal(err)
			}
			if _, _, err := vm.ExpectRegexp(ctx, queueLineRE); err != nil {
				t.Fatalf("zcguest list shows no queue counters: %v", err)
			}
			var s summary
			if _, err := vm.Result(ctx, &s); err != nil {
				t.Fatal(err)
			}
			s.check(t, tc.name+" guest", n)
			var w struct {
				WaitExit int    `json:"wait_exit"`
				Log      string `json:"log"`
			}
			if _, err := vm.Result(ctx, &w); err != nil {
				t.Fatal(err)
			}
			notice := strings.Index(w.Log, "cluster 99 unplug notice")
			gone := strings.Index(w.Log, "cluster 99 gone")
			if w.WaitExit != 0 || notice < 0 || gone < 0 || notice > gone {
				t.Errorf("zcguest wait --gone --notice: exit %d, output %q; want exit 0, the unplug notice, then gone", w.WaitExit, w.Log)
			}
			if _, err := zchost.wait(ctx); err != nil {
				t.Errorf("zchost run: %v", err)
			}
			if err := vm.Shutdown(ctx); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// queueLineRE matches the queue lines zcguest list prints under a valid
// region.
var queueLineRE = regexpMust(`^\s+queue 0\s+depth \d+/\d+ sent`)

func regexpMust(s string) *regexp.Regexp { return regexp.MustCompile(s) }
