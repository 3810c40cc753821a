package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/zcfabric/zc"
	"github.com/zcfabric/zc/host/qmp"
	"github.com/zcfabric/zc/host/vmm"
	"github.com/zcfabric/zc/virtio"
)

// noticeDeadline is how long zchost waits for a guest's ready after an
// unplug-notice before it unplugs anyway.
const noticeDeadline = 5 * time.Second

// classifyCtl maps the errors a plug request can meet onto the classes
// the guest is told (virtio sentinels; the rest is "internal", its text
// logged on the host only).
func classifyCtl(err error) error {
	if errors.Is(err, zc.ErrClosed) { // ErrGone wraps it
		return virtio.ErrGone
	}
	return nil
}

// errNotOffered is a plug request for a cluster or queue this VM is not
// offered.
var errNotOffered = virtio.ErrNotOffered

// vmExport is one VM zchost run exports a region to: the plug state and,
// when the VM has a zc.ctl port (or --ctl), the control channel served for
// it. It implements virtio.Handler.
type vmExport struct {
	log     hclog.Logger
	qmpPath string
	target  *zc.Cluster
	queues  []int
	shared  bool
	ctl     bool // plug on the guest's request only
	bell    bool // plug as ivshmem-doorbell (exportDoorbell)

	mu     sync.Mutex
	detach func(context.Context) error // nil while not plugged
	closed bool

	srv    *virtio.Server
	served chan struct{}
}

var _ virtio.Handler = (*vmExport)(nil)

// newVMExport exports target to the VM whose QMP socket is qmpPath. With
// ctl, the region is only offered: the VM gets a zc.ctl port (hot-plugged
// when it has none) and the guest asks for the plug (zcguest ctl plug).
// Without ctl the region is plugged now, and a zc.ctl port the VM already
// has is served too (offers, and unplug-notices before the unplug).
//
// With adopt (target was adopted from a predecessor agent) a device the
// VM still has on target's file is taken over as it is: no re-plug, the
// guest's readers go on. Memory backends of this cluster that no device
// uses (a predecessor killed between object-add and device_add) are
// removed.
func newVMExport(ctx context.Context, log hclog.Logger, qmpPath string, target *zc.Cluster, queues []int, shared, ctl, bell, adopt bool) (*vmExport, error) {
	e := &vmExport{log: log, qmpPath: qmpPath, target: target, queues: queues, shared: shared, ctl: ctl, bell: bell}
	if adopt {
		detach, err := adoptVM(ctx, log, qmpPath, target, bell)
		if err != nil {
			return nil, err
		}
		e.detach = detach
	}
	if !ctl && e.detach == nil {
		detach, err := e.export(ctx, target)
		if err != nil {
			return nil, err
		}
		e.detach = detach
	}
	sock, err := ctlSocket(ctx, log, qmpPath, ctl)
	if err != nil {
		if ctl {
			e.close()
			return nil, err
		}
		log.Debug("no control channel", "vm", qmpPath, "error", err)
		return e, nil
	}
	conn, err := dialCtl(ctx, sock)
	if err != nil {
		if ctl {
			e.close()
			return nil, fmt.Errorf("control channel of vm %s: %w", qmpPath, err)
		}
		log.Warn("control channel", "vm", qmpPath, "error", err)
		return e, nil
	}
	e.srv = virtio.NewServer(conn, e)
	e.srv.Classify = classifyCtl
	e.srv.Logf = func(f string, a ...any) { log.Debug(fmt.Sprintf(f, a...), "vm", qmpPath) }
	e.served = make(chan struct{})
	go func() {
		defer close(e.served)
		if err := e.srv.Serve(context.Background()); err != nil {
			log.Warn("control channel closed", "vm", qmpPath, "error", err)
		}
	}()
	log.Info("serving control channel", "vm", qmpPath, "socket", sock, "plug", map[bool]string{true: "on request", false: "done"}[ctl])
	return e, nil
}

// ctlSocket returns the unix socket of the VM's zc.ctl port, hot-plugging
// one (with a socket in a fresh temporary directory) when add is set and
// the VM has none.
func ctlSocket(ctx context.Context, log hclog.Logger, qmpPath string, add bool) (string, error) {
	vm, err := qmp.Dial(ctx, qmpPath)
	if err != nil {
		return "", err
	}
	defer vm.Close()
	p, err := vm.FindCtlPort(ctx, virtio.PortName)
	if err == nil || !add || !errors.Is(err, qmp.ErrNoCtlPort) {
		return p.Socket, err
	}
	dir, err := os.MkdirTemp("", "zcctl-")
	if err != nil {
		return "", fmt.Errorf("control port for vm %s: %w", qmpPath, err)
	}
	start := time.Now()
	p, err = vm.AddCtlPort(ctx, virtio.PortName, filepath.Join(dir, "ctl.sock"))
	if err != nil {
		os.RemoveAll(dir)
		return "", err
	}
	log.Info("hot-plugged control port", "vm", qmpPath, "port", p.Name, "socket", p.Socket, "device", p.DevID,
		"chardev", p.ChardevID, "controller", p.SerialID, "took", time.Since(start))
	return p.Socket, nil
}

// dialCtl connects to a chardev socket, retrying briefly: QEMU creates it
// as it adds the chardev.
func dialCtl(ctx context.Context, sock string) (net.Conn, error) {
	var d net.Dialer
	for i := 0; ; i++ {
		conn, err := d.DialContext(ctx, "unix", sock)
		if err == nil || i == 50 {
			return conn, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Offers implements virtio.Handler: the VM's one cluster.
func (e *vmExport) Offers(context.Context) ([]virtio.Offer, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return []virtio.Offer{{ID: e.target.ID(), Queues: e.queues, Size: e.target.Size(), Shared: e.shared, Plugged: e.detach != nil}}, nil
}

// Plug implements virtio.Handler: hot-plug the VM's region unless it is
// plugged already.
func (e *vmExport) Plug(ctx context.Context, cluster uint32, queues []int) error {
	if cluster != e.target.ID() {
		return fmt.Errorf("plug cluster %d: %w", cluster, errNotOffered)
	}
	for _, q := range queues {
		if !slices.Contains(e.queues, q) {
			return fmt.Errorf("plug cluster %d queue %d: %w", cluster, q, errNotOffered)
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return fmt.Errorf("plug cluster %d: %w", cluster, zc.ErrGone)
	}
	if e.detach != nil {
		return nil
	}
	detach, err := e.export(ctx, e.target)
	if err != nil {
		return err
	}
	e.detach = detach
	return nil
}

// export plugs c into the VM: as ivshmem-plain, or with a doorbell.
func (e *vmExport) export(ctx context.Context, c *zc.Cluster) (func(context.Context) error, error) {
	if e.bell {
		return exportDoorbell(ctx, e.log, e.qmpPath, c)
	}
	return exportVM(ctx, e.log, e.qmpPath, c)
}

// replace unplugs the region the VM has (after a notice, as close does)
// and exports c in its place: plugged now, or offered for the guest to
// ask for (--ctl). The failed region's device goes away, so the guest's
// readers of it get ErrGone and open the fresh one by the same name.
func (e *vmExport) replace(ctx context.Context, c *zc.Cluster) error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return fmt.Errorf("replace region of vm %s: %w", e.qmpPath, zc.ErrGone)
	}
	detach := e.detach
	e.detach = nil
	e.target = c
	e.mu.Unlock()
	e.unplug(ctx, detach)
	if e.ctl {
		return nil
	}
	d, err := e.export(ctx, c)
	if err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed { // closed meanwhile: undo
		return d(ctx)
	}
	e.detach = d
	return nil
}

// close notifies the guest (bounded by noticeDeadline) and unplugs the
// region if plugged, then stops serving the control channel.
func (e *vmExport) close() {
	e.mu.Lock()
	e.closed = true
	detach := e.detach
	e.detach = nil
	e.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), noticeDeadline+15*time.Second)
	defer cancel()
	e.unplug(ctx, detach)
	if e.srv != nil {
		e.srv.Close()
		<-e.served
	}
}

// abandon stops serving the control channel and leaves the region
// plugged, for the next agent to adopt.
func (e *vmExport) abandon() {
	e.mu.Lock()
	e.closed = true
	e.detach = nil
	e.mu.Unlock()
	if e.srv != nil {
		e.srv.Close()
		<-e.served
	}
}

// unplug sends the guest an unplug-notice (when it has a control channel)
// and runs detach, if the region is plugged.
func (e *vmExport) unplug(ctx context.Context, detach func(context.Context) error) {
	if detach != nil {
		if e.srv != nil {
			start := time.Now()
			err := e.srv.Notify(ctx, e.target.ID(), noticeDeadline)
			switch {
			case err == nil:
				e.log.Info("guest ready for unplug", "vm", e.qmpPath, "took", time.Since(start))
			case errors.Is(err, virtio.ErrNoListener):
				e.log.Debug("no guest listens for notices", "vm", e.qmpPath)
			default:
				e.log.Warn("unplug notice", "vm", e.qmpPath, "error", err)
			}
		}
		if err := detach(ctx); err != nil {
			e.log.Error("detach", "vm", e.qmpPath, "error", err)
		}
	}
}

// exportVM hot-plugs cluster c into the running VM qmpPath names (a QMP
// socket, on q35 behind a free pcie-root-port, see qmp.VM.FreeRootPort; or
// libvirt:DOMAIN, see dialVM) and returns the function that unplugs it.
// The connection is closed in between: QEMU serves one QMP client per
// socket, and zchost detach or a VM manager may need it while the cluster
// runs. detach dials again; a region already unplugged by someone else
// counts as detached.
func exportVM(ctx context.Context, log hclog.Logger, qmpPath string, c *zc.Cluster) (detach func(context.Context) error, err error) {
	vm, err := dialVM(ctx, qmpPath)
	if err != nil {
		return nil, fmt.Errorf("export cluster %d to vm %s: %w", c.ID(), qmpPath, err)
	}
	start := time.Now()
	a, err := vm.Attach(ctx, c.File(), c.Size(), fmt.Sprintf("c%d", c.ID()), "")
	vm.Close()
	if err != nil {
		return nil, fmt.Errorf("export cluster %d to vm %s: %w", c.ID(), qmpPath, err)
	}
	observePlug(qmpPath, time.Since(start))
	log.Info("exported to vm", "vm", qmpPath, "device", a.DevID, "memdev", a.MemID, "bus", a.Bus, "took", time.Since(start))
	return detachFunc(log, qmpPath, c, a), nil
}

// adoptVM finds the device a predecessor plugged into the VM for c's
// region (its memory backend maps c's file) and returns the function
// that unplugs it, or nil when there is none. Memory backends of c's
// cluster that no device uses are removed on the way. A doorbell device
// cannot be taken over (its ivshmem server died with the predecessor,
// and QEMU cannot reconnect a running guest's doorbell to a new one): it
// is unplugged, and the caller plugs a fresh one.
func adoptVM(ctx context.Context, log hclog.Logger, qmpPath string, c *zc.Cluster, bell bool) (func(context.Context) error, error) {
	vm, err := dialVM(ctx, qmpPath)
	if err != nil {
		return nil, fmt.Errorf("adopt cluster %d in vm %s: %w", c.ID(), qmpPath, err)
	}
	defer vm.Close()
	if o, ok := vm.(vmm.Sweeper); ok {
		gone, err := o.SweepBackends(ctx, fmt.Sprintf("zcmem-c%d-", c.ID()))
		if err != nil {
			log.Warn("orphan memory backends not swept", "vm", qmpPath, "error", err)
		} else if len(gone) > 0 {
			log.Info("removed memory backends no device used (a predecessor stopped between object-add and device_add)", "vm", qmpPath, "backends", gone)
		}
	}
	present, err := vm.Regions(ctx)
	if err != nil {
		return nil, fmt.Errorf("adopt cluster %d in vm %s: %w", c.ID(), qmpPath, err)
	}
	for _, a := range present {
		if a.ChardevID != "" && strings.Contains(a.DevID, fmt.Sprintf("-c%d-", c.ID())) {
			if bell && vmm.IsLibvirt(qmpPath) {
				continue // dialLibvirtBell unplugs it, and removes its socket folder
			}
			log.Info("unplugging the predecessor's doorbell device (its server is gone); a fresh one follows", "vm", qmpPath, "device", a.DevID)
			if err := vm.Detach(ctx, a); err != nil {
				return nil, fmt.Errorf("adopt cluster %d in vm %s: %w", c.ID(), qmpPath, err)
			}
			c.DropGuestClaims() // its readers went with the device
			continue
		}
		if a.Path == "" || (a.Path != c.File() && a.Path != c.Path()) {
			continue
		}
		if bell {
			log.Info("unplugging the predecessor's plain device: this export wants a doorbell", "vm", qmpPath, "device", a.DevID)
			if err := vm.Detach(ctx, a); err != nil {
				return nil, fmt.Errorf("adopt cluster %d in vm %s: %w", c.ID(), qmpPath, err)
			}
			c.DropGuestClaims()
			continue
		}
		log.Info("device adopted: the guest keeps its region", "vm", qmpPath, "device", a.DevID, "memdev", a.MemID, "region", c.Path())
		return detachFunc(log, qmpPath, c, a), nil
	}
	return nil, nil
}

// detachFunc returns the function that unplugs attachment a of c from
// the VM: it dials again (QEMU serves one QMP client per socket, and
// zchost detach or a VM manager may need it meanwhile); a region already
// unplugged by someone else counts as detached.
func detachFunc(log hclog.Logger, qmpPath string, c *zc.Cluster, a qmp.Attachment) func(context.Context) error {
	return func(ctx context.Context) error {
		vm, err := dialVM(ctx, qmpPath)
		if err != nil {
			return fmt.Errorf("unexport cluster %d from vm %s: %w", c.ID(), qmpPath, err)
		}
		defer vm.Close()
		present, err := vm.Regions(ctx)
		if err != nil {
			return fmt.Errorf("unexport cluster %d from vm %s: %w", c.ID(), qmpPath, err)
		}
		for _, r := range present {
			if r.DevID == a.DevID {
				return vm.Detach(ctx, a)
			}
		}
		log.Info("already unplugged", "vm", qmpPath, "device", a.DevID)
		return nil
	}
}

var hotplugHook atomic.Pointer[func(string, time.Duration)]

// OnHotplug sets the function called after each hot-plug into a VM with
// how long it took (the daemon's metrics). Safe from any goroutine.
func OnHotplug(fn func(vm string, took time.Duration)) { hotplugHook.Store(&fn) }

func observePlug(vm string, took time.Duration) {
	if f := hotplugHook.Load(); f != nil {
		(*f)(vm, took)
	}
}

// dialVM reaches a VM: vmm.Dial, or a fake in unit tests.
var dialVM = vmm.Dial
