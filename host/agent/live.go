package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/zcfabric/zc"
	"github.com/zcfabric/zc/host/libvirt"
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
	for _, e := range a.pending {
		if e.VM == ex.VM {
			return fail(fmt.Errorf("%w (waiting for the vm)", ErrExported))
		}
	}
	if cfg.Ctl && vmm.IsLibvirt(ex.VM) {
		return fail(fmt.Errorf("%w: %v", ErrConfig, errLibvirtCtl))
	}
	queues := exportQueues(ex, cfg.Queues)
	if a.shared() {
		e, err := newVMExport(ctx, a.log, ex.VM, a.c, queues, true, cfg.Ctl, cfg.Doorbell, false)
		if err != nil {
			return err
		}
		a.exports = append(a.exports, e)
	} else {
		k := 1
		for _, v := range a.g.vms {
			k = max(k, v.k+1)
		}
		spec := vmSpec{path: ex.VM, queues: queues}
		vc, qs, err := a.g.openRegion(k, spec, zc.CreateCluster)
		if err != nil {
			return fail(err)
		}
		vr := &vmRegion{k: k, spec: spec, c: vc, queues: qs}
		undo := func() {
			for _, q := range vr.queues {
				q.Close()
			}
			vc.Close()
		}
		if err := a.route(ctx, queues, vr.queues); err != nil {
			undo()
			return fail(err)
		}
		e, err := newVMExport(ctx, a.log, ex.VM, vc, queues, false, cfg.Ctl, cfg.Doorbell, false)
		if err != nil {
			a.route(context.WithoutCancel(ctx), queues, a.mainOuts(queues))
			undo()
			return err
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
	a.saveStateLocked()
	if a.watchKick != nil {
		select {
		case a.watchKick <- struct{}{}:
		default: // a kick is on its way already
		}
	}
	return nil
}

// RemoveExport unplugs VM vm (after the notice, when it has a control
// channel) and removes its region; its queues' packets go back to the
// cluster's own queues. The other VMs' queues are not touched.
//
// The queues are routed back before the unplug: once the VM's reader is
// gone its queue fills, and a lossless balancer would then wait for room
// there for good, never taking the change (its outputs change on the
// engine's goroutine, between bursts).
func (a *Agent) RemoveExport(ctx context.Context, vm string) error {
	a.exMu.Lock()
	defer a.exMu.Unlock()
	i := slices.IndexFunc(a.cfg.Exports, func(e Export) bool { return e.VM == vm })
	if i < 0 {
		return fmt.Errorf("unexport cluster %d from vm %s: %w", a.c.ID(), vm, ErrNotExported)
	}
	e := a.exports[i]
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
	}
	e.close()
	if vr != nil {
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
	a.saveStateLocked()
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

// watchLoop runs watchExports every watchEvery while an export that is
// not a libvirt domain's (watchLibvirt follows those) is configured or
// waits for its VM; with none, it sleeps until AddExport adds one (an
// agent without VMs does not wake for them).
func (a *Agent) watchLoop(ctx context.Context) {
	t := time.NewTimer(watchEvery)
	defer t.Stop()
	for {
		if !a.watching() {
			t.Stop()
			select {
			case <-ctx.Done():
				return
			case <-a.watchKick:
			}
			t.Reset(watchEvery)
		}
		select {
		case <-ctx.Done():
			return
		case <-a.watchKick:
		case <-t.C:
			a.watchExports(ctx)
			t.Reset(watchEvery)
		}
	}
}

// watching reports whether watchExports has an export to look at.
func (a *Agent) watching() bool {
	a.exMu.Lock()
	defer a.exMu.Unlock()
	qmp := func(e Export) bool { return !vmm.IsLibvirt(e.VM) }
	return slices.ContainsFunc(a.cfg.Exports, qmp) || slices.ContainsFunc(a.pending, qmp)
}

// watchExports plugs the exports waiting for their VM once its QMP
// socket exists (QEMU started), and releases the export of a VM whose
// QMP socket is gone (QEMU exited; it unlinks its socket): its region is
// removed and the export waits again. libvirt domains are followed
// through their lifecycle events instead (watchLibvirt).
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
		a.release(ctx, vm)
	}
	for _, ex := range pending {
		if vmm.IsLibvirt(ex.VM) {
			continue // watchLibvirt
		}
		if _, err := os.Stat(ex.VM); err == nil {
			a.tryPlug(ctx, ex.VM)
		}
	}
}

// tryPlug exports to vm if its export waits.
func (a *Agent) tryPlug(ctx context.Context, vm string) {
	a.exMu.Lock()
	i := slices.IndexFunc(a.pending, func(p Export) bool { return p.VM == vm })
	var ex Export
	if i >= 0 {
		ex = a.pending[i]
		a.pending = slices.Delete(a.pending, i, i+1)
	}
	a.exMu.Unlock()
	if i < 0 {
		return
	}
	if err := a.AddExport(ctx, ex); err != nil {
		a.log.Debug("vm not ready yet", "vm", vm, "error", err)
		a.exMu.Lock()
		a.pending = append(a.pending, ex)
		a.exMu.Unlock()
		return
	}
	a.log.Info("vm appeared; exported", "vm", vm)
}

// release frees vm's region (the VM went away) and makes its export
// wait for it again.
func (a *Agent) release(ctx context.Context, vm string) {
	ex, ok := a.exportOf(vm)
	if !ok {
		return
	}
	if err := a.RemoveExport(ctx, vm); err != nil {
		a.log.Error("release vm", "vm", vm, "error", err)
		return
	}
	a.exMu.Lock()
	a.pending = append(a.pending, ex)
	a.exMu.Unlock()
}

// watchLibvirt follows libvirt domain vm's lifecycle events until ctx
// ends: plugged when it starts, its region freed when it stops, crashes
// or is destroyed. A lost connection to libvirtd is made again.
func (a *Agent) watchLibvirt(ctx context.Context, vm string) {
	spec, err := libvirt.ParseSpec(vm)
	if err != nil {
		a.log.Error("libvirt domain not watched", "vm", vm, "error", err)
		return
	}
	for ctx.Err() == nil {
		events, err := libvirt.Watch(ctx, spec)
		if err != nil {
			a.log.Warn("libvirt events; trying again", "vm", vm, "error", err)
		} else {
			a.tryPlug(ctx, vm) // it may have started before the watch
			for lc := range events {
				a.log.Info("libvirt domain "+lc.String(), "vm", vm)
				switch lc {
				case libvirt.Started:
					a.tryPlug(ctx, vm)
				case libvirt.Stopped:
					a.release(ctx, vm)
				}
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(watchEvery):
		}
	}
}

// exportOf returns the export of vm, if vm is exported now.
func (a *Agent) exportOf(vm string) (Export, bool) {
	a.exMu.Lock()
	defer a.exMu.Unlock()
	for _, e := range a.cfg.Exports {
		if e.VM == vm {
			return e, true
		}
	}
	return Export{}, false
}

// Pending returns the exports waiting for their VM.
func (a *Agent) Pending() []Export {
	a.exMu.Lock()
	defer a.exMu.Unlock()
	return slices.Clone(a.pending)
}
