package vmtest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/zcfabric/zc/host/qmp"
)

const zcguestPkg = "github.com/zcfabric/zc/cmd/zcguest"

func testCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// TestBoot boots the Debian cloud kernel with the busybox initramfs on pc
// and q35, runs a guest Go program (zcguest), passes a line from the host
// to the guest over the zc.ctl virtio-serial port, and checks the clean
// power-off. The q35 guest has no root port, so hot-plug must fail with
// ErrNoRootPort and say what to add.
func TestBoot(t *testing.T) {
	for _, machine := range []string{"pc", "q35"} {
		t.Run(machine, func(t *testing.T) {
			vm := Start(t, Machine(machine), RootPorts(0, ""), VirtioSerial("zc.ctl"),
				GoBinary("zcguest", zcguestPkg),
				Script(`zcguest list || exit 1
for p in /sys/class/virtio-ports/*; do
	if [ "$(cat $p/name)" = zc.ctl ]; then port=/dev/${p##*/}; fi
done
[ -n "$port" ] || { echo "no zc.ctl port"; exit 1; }
echo "ctl port $port"
echo "ZCRESULT {\"ctl\":\"$(head -n 1 $port)\"}"`))
			ctx := testCtx(t, 90*time.Second)
			booted, err := vm.Expect(ctx, BootedMarker)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s (%s): booted in %v", machine, vm.AccelName(), booted.Time.Sub(vm.Started()).Round(time.Millisecond))
			if _, err := vm.Expect(ctx, "ADDRESS"); err != nil {
				t.Fatalf("zcguest list did not run: %v", err)
			}
			if _, err := vm.Expect(ctx, "ctl port /dev/vport"); err != nil {
				t.Fatal(err)
			}
			conn, err := vm.DialCtl(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			if _, err := conn.Write([]byte("hello from the host\n")); err != nil {
				t.Fatal(err)
			}
			var got struct{ Ctl string }
			if _, err := vm.Result(ctx, &got); err != nil {
				t.Fatal(err)
			}
			if got.Ctl != "hello from the host" {
				t.Errorf("guest read %q from zc.ctl, want %q", got.Ctl, "hello from the host")
			}

			if machine == "q35" {
				c, err := qmp.Dial(ctx, vm.QMPPath())
				if err != nil {
					t.Fatal(err)
				}
				_, err = c.AttachRegion(ctx, qmp.AttachSpec{Path: "/dev/shm/unused", Size: 1 << 20})
				if !errors.Is(err, qmp.ErrNoRootPort) {
					t.Errorf("AttachRegion on q35 without root ports = %v, want ErrNoRootPort", err)
				} else {
					t.Logf("as expected: %v", err)
				}
				c.Close()
			}
			if err := vm.Shutdown(ctx); err != nil {
				t.Fatal(err)
			}
		})
	}
}
