package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/zcfabric/zc"
	"github.com/zcfabric/zc/host/doorbell"
	"github.com/zcfabric/zc/host/libvirt"
	"github.com/zcfabric/zc/host/qmp"
	"github.com/zcfabric/zc/ivshmem"
)

// exportDoorbell hot-plugs cluster c into the VM vmName names as an
// ivshmem-doorbell device served by an ivshmem server of its own (one
// per region: host/doorbell), so that a guest reader of c sleeps on an
// interrupt instead of polling, and the producers in this process ring it
// (zc.Cluster.OnGuestWake); when the guest rings back, relayRings wakes
// the host processes asleep on its queues (this agent's lossless
// producers waiting for returns, a host zcount reading what the guest
// sends), and guestWatch watches, for the guest, the queues whose host
// peer is a process that cannot ring it (a host zsend feeding a guest
// zcount). It returns the function that unplugs the device and stops the
// server.
//
// vmName is a QMP socket (chardev-add + device_add, host/qmp) or
// libvirt:DOMAIN[@SOCKET|URI] (a <shmem> of model ivshmem-doorbell whose
// <server path> is the server's socket, host/libvirt). Either way QEMU
// gets the memory from the server's descriptor, so for libvirt the region
// need not be in /dev/shm.
func exportDoorbell(ctx context.Context, log hclog.Logger, vmName string, c *zc.Cluster) (detach func(context.Context) error, err error) {
	fail := func(err error) (func(context.Context) error, error) {
		return nil, fmt.Errorf("export cluster %d to vm %s with a doorbell: %w", c.ID(), vmName, err)
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
	var p bellPlug
	if libvirt.IsSpec(vmName) {
		p, err = dialLibvirtBell(ctx, log, vmName, c)
	} else {
		p, err = dialQMPBell(ctx, vmName)
	}
	if err != nil {
		cleanup()
		return fail(err)
	}
	defer p.close()
	srv, err := doorbell.Listen(doorbell.Config{
		Path: filepath.Join(dir, "bell.sock"), Memory: mem, Vectors: 1,
		Logf: func(f string, a ...any) { log.Warn(fmt.Sprintf(f, a...), "vm", vmName) },
	})
	if err != nil {
		cleanup()
		return fail(err)
	}
	// The socket is the region: only QEMU may connect. A QEMU that runs
	// as another user gets the socket (and its folder) as its own.
	if uid, gid, ok := p.owner(ctx); ok && uid != os.Getuid() {
		os.Chown(dir, uid, gid)
		os.Chown(srv.Path(), uid, gid)
	}
	// Ring and relay before the device is plugged: a guest reader that
	// attaches at once already finds that this process rings it.
	ringGuests := func() {
		for _, p := range srv.Peers() {
			srv.Notify(p, 0)
		}
	}
	removeWake := c.OnGuestWake(ringGuests)
	relayDone := make(chan struct{})
	w := newGuestWatch(c, ringGuests)
	go func() {
		defer close(relayDone)
		relayRings(srv, func() int { return c.WakeDoorbellSleepers(w.start) })
	}()
	stop := func() { removeWake(); srv.Close(); <-relayDone; w.stop() }
	start := time.Now()
	unplug, desc, err := p.attach(ctx, srv.Path(), c)
	if err != nil {
		stop()
		cleanup()
		return fail(err)
	}
	observePlug(vmName, time.Since(start))
	log.Info("exported to vm with a doorbell", append([]any{"vm", vmName}, append(desc, "took", time.Since(start))...)...)
	return func(ctx context.Context) error {
		defer cleanup()
		defer stop()
		if err := unplug(ctx); err != nil {
			return fmt.Errorf("unexport cluster %d from vm %s: %w", c.ID(), vmName, err)
		}
		return nil
	}, nil
}

// The gap between two passes of relayRings (a look at every ring's wake
// word of the region): relayMinGap while the guest rings now and then;
// it doubles, up to relayMaxGap, each time several rings gathered since
// the last pass (the guest rings faster than the passes go), and is back
// to relayMinGap once a ring comes alone after a quiet gap. A guest that
// rings without pause so costs the agent about one pass per relayMaxGap,
// and delays only the wake-ups of host readers of its own region (one
// relay per exported region).
const (
	relayMinGap = 100 * time.Microsecond
	relayMaxGap = 20 * time.Millisecond
)

// relayRings passes a guest's rings on to the host processes that sleep
// on its queues (a host zcount reading what the guest sends, a lossless
// producer waiting for its returns, this agent's own queues included):
// each time the guest rings the server (peer 0, vector 0), it calls wake:
// zc.Cluster.WakeDoorbellSleepers, which wakes every host sleeper of the
// region that announced it waits for the doorbell. It returns when the
// server closes.
func relayRings(srv *doorbell.Server, wake func() int) {
	var last time.Time
	gap := relayMinGap
	for {
		n, err := srv.WaitHost(context.Background(), 0)
		if err != nil {
			return
		}
		switch {
		case n > 2:
			// Rings gathered in the eventfd while the last pass slept or
			// ran: the guest rings faster than the passes go.
			gap = min(2*gap, relayMaxGap)
		case time.Since(last) >= gap:
			gap = relayMinGap
		}
		if since := time.Since(last); since < gap {
			time.Sleep(gap - since)
		}
		last = time.Now()
		wake()
	}
}

// guestWatch watches, for the guests of one doorbell export, the rings
// whose host producer is a process that cannot ring them (a host zsend
// feeding a guest zcount, a host zcount returning a guest zsend's
// buffers): one goroutine per ring while a guest sleeps on it, asleep on
// the ring's index word until entries come, then it rings the guests.
// A ring has one watcher at most, so a guest that keeps sleeping and
// ringing costs at most one goroutine (and one thread, in futex(2)) per
// ring of its region.
type guestWatch struct {
	c    *zc.Cluster
	ring func() // rings the export's guests
	mu   sync.Mutex
	on   map[guestRing]*ivshmem.GuestSleep // the sleep each watcher waits on
	done bool
	wg   sync.WaitGroup
}

// guestRing names a ring of the region.
type guestRing struct {
	q   uint32
	ret bool
}

func newGuestWatch(c *zc.Cluster, ring func()) *guestWatch {
	return &guestWatch{c: c, ring: ring, on: map[guestRing]*ivshmem.GuestSleep{}}
}

// start watches g's ring for its guest, or hands the ring's watcher the
// newer sleep g.
func (w *guestWatch) start(g ivshmem.GuestSleep) {
	w.mu.Lock()
	defer w.mu.Unlock()
	k := guestRing{g.Queue, g.Return}
	if w.done {
		return
	}
	if cur, ok := w.on[k]; ok {
		*cur = g
		return
	}
	cur := &g
	w.on[k] = cur
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		for {
			w.mu.Lock()
			g, done := *cur, w.done
			w.mu.Unlock()
			if done {
				break
			}
			ring, asleep := w.c.AwaitGuestSleep(g, zc.SleepSlice)
			if ring {
				w.ring()
			}
			if ring || !asleep {
				w.mu.Lock()
				if *cur == g { // no newer sleep handed over meanwhile
					delete(w.on, k)
					w.mu.Unlock()
					return
				}
				w.mu.Unlock()
			}
		}
		w.mu.Lock()
		delete(w.on, k)
		w.mu.Unlock()
	}()
}

// stop ends every watcher and waits for them.
func (w *guestWatch) stop() {
	w.mu.Lock()
	w.done = true
	for _, g := range w.on {
		w.c.InterruptGuestSleep(*g)
	}
	w.mu.Unlock()
	w.wg.Wait()
}

// bellPlug is a connection to the VM a doorbell device goes into.
type bellPlug interface {
	// owner returns the user and group QEMU runs as, when known.
	owner(ctx context.Context) (uid, gid int, ok bool)
	// attach plugs the device for the server at sock and returns the
	// function that unplugs it (dialling again) and the device's
	// description for the log.
	attach(ctx context.Context, sock string, c *zc.Cluster) (unplug func(context.Context) error, desc []any, err error)
	close()
}

// qmpBell plugs a doorbell device over QMP.
type qmpBell struct {
	path string
	vm   *qmp.VM
}

func dialQMPBell(ctx context.Context, qmpPath string) (bellPlug, error) {
	vm, err := qmp.Dial(ctx, qmpPath)
	if err != nil {
		return nil, err
	}
	return qmpBell{path: qmpPath, vm: vm}, nil
}

func (b qmpBell) owner(context.Context) (int, int, bool) {
	cred, err := b.vm.PeerCred()
	if err != nil {
		return 0, 0, false
	}
	return cred.UID, -1, true
}

func (b qmpBell) attach(ctx context.Context, sock string, c *zc.Cluster) (func(context.Context) error, []any, error) {
	a, err := b.vm.AttachDoorbell(ctx, qmp.DoorbellSpec{Socket: sock, Size: c.Size(), Vectors: 1, Name: fmt.Sprintf("c%d", c.ID())})
	if err != nil {
		return nil, nil, err
	}
	return func(ctx context.Context) error {
		vm, err := qmp.Dial(ctx, b.path)
		if err != nil {
			return err
		}
		defer vm.Close()
		return vm.DetachDoorbell(ctx, a)
	}, []any{"device", a.DevID, "chardev", a.ChardevID, "bus", a.Bus}, nil
}

func (b qmpBell) close() { b.vm.Close() }

// libvirtBell plugs a doorbell <shmem> through libvirt.
type libvirtBell struct {
	spec libvirt.Spec
	d    *libvirt.Domain
}

// dialLibvirtBell connects to the domain. When c was adopted from a
// predecessor agent, the doorbell devices that agent plugged for c's
// cluster (alias ua-zc-cID-...) are unplugged first, and their socket
// folders removed: their ivshmem server died with it, and QEMU cannot
// reconnect a running guest's doorbell to a new one (export.go adoptVM
// does the same for QMP VMs, and for libvirt unplugs those whose <shmem
// name> is c's file before this runs).
func dialLibvirtBell(ctx context.Context, log hclog.Logger, name string, c *zc.Cluster) (bellPlug, error) {
	d, spec, err := libvirt.DialName(ctx, name)
	if err != nil {
		return nil, err
	}
	if c.Adopted() {
		present, err := d.Regions(ctx)
		if err != nil {
			d.Close()
			return nil, err
		}
		for _, a := range present {
			if a.Server == "" || !strings.Contains(a.Alias, fmt.Sprintf("-c%d-", c.ID())) {
				continue
			}
			log.Info("unplugging the predecessor's doorbell device (its server is gone); a fresh one follows", "vm", name, "device", a.Alias, "server", a.Server)
			if err := d.Detach(ctx, a); err != nil {
				d.Close()
				return nil, err
			}
			c.DropGuestClaims() // its readers went with the device
			// The predecessor's socket folder, when it made it (a kill
			// leaves it behind).
			if dir := filepath.Dir(a.Server); strings.HasPrefix(filepath.Base(dir), "zcbell-") && filepath.Dir(dir) == filepath.Clean(os.TempDir()) {
				os.RemoveAll(dir)
			}
		}
	}
	return libvirtBell{spec: spec, d: d}, nil
}

func (b libvirtBell) owner(ctx context.Context) (int, int, bool) {
	uid, gid, ok, err := b.d.QEMUOwner(ctx)
	return uid, gid, ok && err == nil
}

func (b libvirtBell) attach(ctx context.Context, sock string, c *zc.Cluster) (func(context.Context) error, []any, error) {
	a, err := b.d.AttachDoorbell(ctx, libvirt.DoorbellSpec{Socket: sock, Region: c.File(), Size: c.Size(), Vectors: 1, Name: fmt.Sprintf("c%d", c.ID())})
	if err != nil {
		return nil, nil, err
	}
	return func(ctx context.Context) error {
		d, err := libvirt.Dial(ctx, b.spec)
		if errors.Is(err, libvirt.ErrNoDomain) {
			return nil // gone with the domain
		}
		if err != nil {
			return err
		}
		defer d.Close()
		return d.Detach(ctx, a)
	}, []any{"device", a.Alias, "chardev", a.ChardevID(), "server", a.Server}, nil
}

func (b libvirtBell) close() { b.d.Close() }
