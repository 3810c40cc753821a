package agent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/zcfabric/zc"
	"github.com/zcfabric/zc/host/doorbell"
	"github.com/zcfabric/zc/host/qmp"
)

// exportDoorbell hot-plugs cluster c into the VM at qmpPath as an
// ivshmem-doorbell device served by an ivshmem server of its own (one
// per region: host/doorbell), so that a guest reader of c sleeps on an
// interrupt instead of polling, and the producers in this process ring it
// (zc.Cluster.OnGuestWake); a lossless producer waiting for the guest to
// return buffers sleeps until the guest rings back (OnGuestRing). It
// returns the function that unplugs the device and stops the server. QMP
// VMs only.
func exportDoorbell(ctx context.Context, log hclog.Logger, qmpPath string, c *zc.Cluster) (detach func(context.Context) error, err error) {
	fail := func(err error) (func(context.Context) error, error) {
		return nil, fmt.Errorf("export cluster %d to vm %s with a doorbell: %w", c.ID(), qmpPath, err)
	}
	mem, err := os.OpenFile(c.File(), os.O_RDWR, 0)
	if err != nil {
		return fail(err)
	}
	dir, err := os.MkdirTemp("", "zcbell-")
	if err != nil {
		mem.Close()
		return fail(err)
	}
	cleanup := func() { mem.Close(); os.RemoveAll(dir) }
	vm, err := qmp.Dial(ctx, qmpPath)
	if err != nil {
		cleanup()
		return fail(err)
	}
	defer vm.Close()
	srv, err := doorbell.Listen(doorbell.Config{
		Path: filepath.Join(dir, "bell.sock"), Memory: mem, Vectors: 1,
		Logf: func(f string, a ...any) { log.Warn(fmt.Sprintf(f, a...), "vm", qmpPath) },
	})
	if err != nil {
		cleanup()
		return fail(err)
	}
	// The socket is the region: only QEMU may connect. A QEMU that runs
	// as another user gets the socket (and its folder) as its own.
	if cred, err := vm.PeerCred(); err == nil && cred.UID != os.Getuid() {
		os.Chown(dir, cred.UID, -1)
		os.Chown(srv.Path(), cred.UID, -1)
	}
	start := time.Now()
	a, err := vm.AttachDoorbell(ctx, qmp.DoorbellSpec{Socket: srv.Path(), Size: c.Size(), Vectors: 1, Name: fmt.Sprintf("c%d", c.ID())})
	if err != nil {
		srv.Close()
		cleanup()
		return fail(err)
	}
	c.OnGuestWake(func() {
		for _, p := range srv.Peers() {
			srv.Notify(p, 0)
		}
	})
	// A lossless producer waiting for the guest's returns sleeps until the
	// guest rings (it does once it returned buffers and saw the request).
	c.OnGuestRing(func(d time.Duration) {
		ctx, cancel := context.WithTimeout(context.Background(), d)
		srv.WaitHost(ctx, 0)
		cancel()
	})
	observePlug(qmpPath, time.Since(start))
	log.Info("exported to vm with a doorbell", "vm", qmpPath, "device", a.DevID, "chardev", a.ChardevID, "bus", a.Bus, "took", time.Since(start))
	return func(ctx context.Context) error {
		defer cleanup()
		defer srv.Close()
		c.OnGuestWake(nil)
		c.OnGuestRing(nil)
		vm, err := qmp.Dial(ctx, qmpPath)
		if err != nil {
			return fmt.Errorf("unexport cluster %d from vm %s: %w", c.ID(), qmpPath, err)
		}
		defer vm.Close()
		return vm.DetachDoorbell(ctx, a)
	}, nil
}
