package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/zcfabric/zc"
	"github.com/zcfabric/zc/host/vmm"
)

// ErrExported is an export of a VM the cluster exports to already, or of
// a queue another VM holds in its own region.
var ErrExported = errors.New("already exported")

// ErrNotExported is a VM the cluster does not export to.
var ErrNotExported = errors.New("not exported")

// Exports returns the VMs the agent exports to now.
func (a *Agent) Exports() []Export {
	a.exMu.Lock()
	defer a.exMu.Unlock()
	return slices.Clone(a.cfg.Exports)
}

// AddExport exports queues to one more VM while the agent runs: with a
// region of its own (the balancer's outputs for those queues move into
// it between two bursts) or, shared, the cluster's region. The other
// VMs' queues are not touched.
func (a *Agent) AddExport(ctx context.Context, ex Export) (err error) {
	a.exMu.Lock()
	defer a.exMu.Unlock()
	cfg := a.cfg
	fail := func(err error) error { return fmt.Errorf("export cluster %d to vm %s: %w", a.c.ID(), ex.VM, err) }
	if err := checkExports(append(slices.Clone(cfg.Exports), ex), cfg.Queues, !a.shared()); err != nil {
		return fail(fmt.Errorf("%w: %v", ErrExported, err))
	}
	for _, e := range cfg.Exports {
		if e.VM == ex.VM {
			return fail(ErrExported)
		}
	}
	if cfg.Ctl && vmm.IsLibvirt(ex.VM) {
		return fail(fmt.Errorf("%w: %v", ErrConfig, errLibvirtCtl))
	}
	queues := exportQueues(ex, cfg.Queues)
	if a.shared() {
		e, err := newVMExport(ctx, a.log, ex.VM, a.c, queues, true, cfg.Ctl, cfg.Doorbell, false)
		if err != nil {
			return fail(err)
		}
		a.exports = append(a.exports, e)
	} else {
		k := 1
		for _, v := range a.g.vms {
			k = max(k, v.k+1)
		}
		rc := a.g.cfg
		rc.Buffers = len(queues)*cfg.QueueLen + 1024
		rc.Path = zc.VMRegionPath(cfg.ID, k)
		vc, err := zc.CreateCluster(rc)
		if err != nil {
			return fail(err)
		}
		vr := &vmRegion{k: k, spec: vmSpec{path: ex.VM, queues: queues}, c: vc}
		undo := func() {
			for _, q := range vr.queues {
				q.Close()
			}
			vc.Close()
		}
		for _, qi := range queues {
			q, err := vc.Producer(qi)
			if err != nil {
				undo()
				return fail(err)
			}
			vr.queues = append(vr.queues, q)
		}
		if err := a.route(ctx, queues, vr.queues); err != nil {
			undo()
			return fail(err)
		}
		e, err := newVMExport(ctx, a.log, ex.VM, vc, queues, false, cfg.Ctl, cfg.Doorbell, false)
		if err != nil {
			a.route(context.WithoutCancel(ctx), queues, a.mainOuts(queues))
			undo()
			return fail(err)
		}
		vr.export = e
		a.g.mu.Lock()
		a.g.vms = append(a.g.vms, vr)
		a.g.mu.Unlock()
		a.exports = append(a.exports, e)
		a.log.Info("vm region created", "vm", ex.VM, "path", vc.Path(), "queues", queues)
	}
	for _, qi := range queues {
		a.exported[qi] = true
	}
	a.cfg.Exports = append(a.cfg.Exports, ex)
	a.saveState()
	return nil
}

// RemoveExport unplugs VM vm (after the notice, when it has a control
// channel) and removes its region; its queues' packets go back to the
// cluster's own queues. The other VMs' queues are not touched.
func (a *Agent) RemoveExport(ctx context.Context, vm string) error {
	a.exMu.Lock()
	defer a.exMu.Unlock()
	i := slices.IndexFunc(a.cfg.Exports, func(e Export) bool { return e.VM == vm })
	if i < 0 {
		return fmt.Errorf("unexport cluster %d from vm %s: %w", a.c.ID(), vm, ErrNotExported)
	}
	e := a.exports[i]
	e.close()
	a.g.mu.Lock()
	j := slices.IndexFunc(a.g.vms, func(v *vmRegion) bool { return v.export == e })
	var vr *vmRegion
	if j >= 0 {
		vr = a.g.vms[j]
		a.g.vms = slices.Delete(a.g.vms, j, j+1)
	}
	a.g.mu.Unlock()
	if vr != nil {
		if err := a.route(ctx, vr.spec.queues, a.mainOuts(vr.spec.queues)); err != nil {
			a.log.Error("vm region's queues not routed back to the cluster", "vm", vm, "error", err)
		}
		for _, q := range vr.queues {
			q.Close()
		}
		vr.c.Close()
	}
	for _, qi := range exportQueues(a.cfg.Exports[i], a.cfg.Queues) {
		a.exported[qi] = false
	}
	a.exports = slices.Delete(a.exports, i, i+1)
	a.cfg.Exports = slices.Delete(a.cfg.Exports, i, i+1)
	a.saveState()
	a.log.Info("vm unexported", "vm", vm)
	return nil
}

// shared reports whether VMs map the cluster's own region.
func (a *Agent) shared() bool { return a.cfg.Shared || len(a.sources) == 0 }

// mainOuts returns the cluster's own producer ends of queues.
func (a *Agent) mainOuts(queues []int) []*zc.Queue {
	qs := make([]*zc.Queue, len(queues))
	for i, qi := range queues {
		qs[i] = a.outs[qi]
	}
	return qs
}

// route makes qs the balancer's outputs for queues (on the engine's
// goroutine) and the guard's record of them.
func (a *Agent) route(ctx context.Context, queues []int, qs []*zc.Queue) error {
	if a.bal == nil {
		return nil
	}
	err := a.g.onEngine(ctx, func() error {
		for i, qi := range queues {
			if _, err := a.bal.Replace(qi, qs[i]); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	a.g.mu.Lock()
	for i, qi := range queues {
		a.g.outs[qi] = qs[i]
	}
	a.g.mu.Unlock()
	return nil
}

// watchEvery is how often a service agent looks for VMs that came or
// went.
const watchEvery = 2 * time.Second

// watchExports plugs the exports waiting for their VM once its QMP
// socket exists (QEMU started), and releases the export of a VM whose
// QMP socket is gone (QEMU exited; it unlinks its socket): its region is
// removed and the export waits again. libvirt domains are not watched
// (their lifecycle events are not followed yet).
func (a *Agent) watchExports(ctx context.Context) {
	a.exMu.Lock()
	var gone []string
	for _, e := range a.cfg.Exports {
		if !vmm.IsLibvirt(e.VM) {
			if _, err := os.Stat(e.VM); errors.Is(err, os.ErrNotExist) {
				gone = append(gone, e.VM)
			}
		}
	}
	pending := slices.Clone(a.pending)
	a.exMu.Unlock()
	for _, vm := range gone {
		a.log.Info("vm gone (its QMP socket went away); releasing its region", "vm", vm)
		ex := a.exportOf(vm)
		if err := a.RemoveExport(ctx, vm); err != nil {
			a.log.Error("release vm", "vm", vm, "error", err)
			continue
		}
		a.exMu.Lock()
		a.pending = append(a.pending, ex)
		a.exMu.Unlock()
	}
	for _, ex := range pending {
		if vmm.IsLibvirt(ex.VM) {
			continue
		}
		if _, err := os.Stat(ex.VM); err != nil {
			continue
		}
		if err := a.AddExport(ctx, ex); err != nil {
			a.log.Debug("vm not ready yet", "vm", ex.VM, "error", err)
			continue
		}
		a.log.Info("vm appeared; exported", "vm", ex.VM)
		a.exMu.Lock()
		a.pending = slices.DeleteFunc(a.pending, func(p Export) bool { return p.VM == ex.VM })
		a.exMu.Unlock()
	}
}

// exportOf returns the export of vm.
func (a *Agent) exportOf(vm string) Export {
	a.exMu.Lock()
	defer a.exMu.Unlock()
	for _, e := range a.cfg.Exports {
		if e.VM == vm {
			return e
		}
	}
	return Export{VM: vm}
}

// Pending returns the exports waiting for their VM.
func (a *Agent) Pending() []Export {
	a.exMu.Lock()
	defer a.exMu.Unlock()
	return slices.Clone(a.pending)
}
