// Package vmmtest is a fake of vmm's VMs for unit tests: VMs that exist
// in memory only, hold attachments as QEMU would, and count what was
// done to them.
package vmmtest

import (
	"context"
	"fmt"
	"sync"

	"github.com/zcfabric/zc/host/qmp"
	"github.com/zcfabric/zc/host/vmm"
)

// Hypervisor is a set of fake VMs by name; Dial reaches them.
type Hypervisor struct {
	mu  sync.Mutex
	vms map[string]*VM
	n   int
}

// VM is one fake VM: the devices plugged into it now, and counters.
type VM struct {
	// Plugged are the attachments present now, in plug order.
	Plugged []qmp.Attachment
	// Attaches and Detaches count the calls that succeeded.
	Attaches, Detaches int
	// Gone makes Dial fail as for a VM that is not running.
	Gone bool
}

// New returns a hypervisor with the named VMs running.
func New(names ...string) *Hypervisor {
	h := &Hypervisor{vms: map[string]*VM{}}
	for _, n := range names {
		h.vms[n] = &VM{}
	}
	return h
}

// VM returns the named VM's record (a copy, under the lock).
func (h *Hypervisor) VM(name string) VM {
	h.mu.Lock()
	defer h.mu.Unlock()
	v := h.vms[name]
	if v == nil {
		return VM{Gone: true}
	}
	c := *v
	c.Plugged = append([]qmp.Attachment(nil), v.Plugged...)
	return c
}

// SetGone stops or starts the named VM.
func (h *Hypervisor) SetGone(name string, gone bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.vms[name] == nil {
		h.vms[name] = &VM{}
	}
	h.vms[name].Gone = gone
	if gone {
		h.vms[name].Plugged = nil // its devices die with it
	}
}

// Dial implements vmm.Dial for the fake VMs.
func (h *Hypervisor) Dial(ctx context.Context, name string) (vmm.VM, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	v := h.vms[name]
	if v == nil || v.Gone {
		return nil, fmt.Errorf("vmmtest: dial %s: no such VM running", name)
	}
	return conn{h, name}, nil
}

type conn struct {
	h    *Hypervisor
	name string
}

func (c conn) vm() (*VM, error) {
	v := c.h.vms[c.name]
	if v == nil || v.Gone {
		return nil, fmt.Errorf("vmmtest: vm %s went away", c.name)
	}
	return v, nil
}

func (c conn) Attach(ctx context.Context, path string, size uint64, label, bus string) (qmp.Attachment, error) {
	c.h.mu.Lock()
	defer c.h.mu.Unlock()
	v, err := c.vm()
	if err != nil {
		return qmp.Attachment{}, err
	}
	c.h.n++
	a := qmp.Attachment{MemID: fmt.Sprintf("zcmem-%s-%d", label, c.h.n), DevID: fmt.Sprintf("zcdev-%s-%d", label, c.h.n), Path: path, Size: size, Bus: bus}
	v.Plugged = append(v.Plugged, a)
	v.Attaches++
	return a, nil
}

func (c conn) Regions(ctx context.Context) ([]qmp.Attachment, error) {
	c.h.mu.Lock()
	defer c.h.mu.Unlock()
	v, err := c.vm()
	if err != nil {
		return nil, err
	}
	return append([]qmp.Attachment(nil), v.Plugged...), nil
}

func (c conn) Detach(ctx context.Context, a qmp.Attachment) error {
	c.h.mu.Lock()
	defer c.h.mu.Unlock()
	v, err := c.vm()
	if err != nil {
		return err
	}
	for i, p := range v.Plugged {
		if p.DevID == a.DevID {
			v.Plugged = append(v.Plugged[:i], v.Plugged[i+1:]...)
			v.Detaches++
			return nil
		}
	}
	return fmt.Errorf("vmmtest: detach %s from %s: %w", a.DevID, c.name, qmp.ErrDeviceNotFound)
}

func (c conn) Close() error { return nil }
