// Package vmm reaches the running VMs zchost hot-plugs regions into,
// behind one small interface: a QEMU over its QMP socket (host/qmp), or
// a libvirt domain (host/libvirt). Attachments are described the QMP way
// either way: for a libvirt domain DevID is the device alias (also
// QEMU's device id) and MemID the memory backend libvirt made.
package vmm

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/zcfabric/zc/host/libvirt"
	"github.com/zcfabric/zc/host/qmp"
)

// Help is how flags and configuration keys that take a VM describe it.
const Help = "a QMP unix socket path (-qmp unix:PATH,server=on,wait=off), or libvirt:DOMAIN[@SOCKET|URI]\n" +
	"for a libvirt domain (default socket " + libvirt.DefaultSocket + "; regions must be in /dev/shm)"

// ErrUnsupported is an operation the kind of VM cannot do (a PCI bus for
// a libvirt domain).
var ErrUnsupported = errors.New("not supported for this kind of VM")

// VM is a running VM: regions are hot-plugged into it as ivshmem-plain
// devices, listed and unplugged.
type VM interface {
	// Attach plugs the region file path of size bytes; label goes into
	// the ids, bus picks a PCI bus ("" for the default).
	Attach(ctx context.Context, path string, size uint64, label, bus string) (qmp.Attachment, error)
	// Regions lists the ivshmem devices plugged now.
	Regions(ctx context.Context) ([]qmp.Attachment, error)
	// Detach unplugs one.
	Detach(ctx context.Context, a qmp.Attachment) error
	// Close ends the connection (the VM runs on).
	Close() error
}

// IsLibvirt reports whether name is a libvirt domain (libvirt:DOMAIN...).
func IsLibvirt(name string) bool { return libvirt.IsSpec(name) }

// Dial connects to the VM named as on zchost's command line:
// libvirt:DOMAIN[@SOCKET|URI] for a libvirt domain, else the path of a
// QMP socket.
func Dial(ctx context.Context, name string) (VM, error) {
	if !libvirt.IsSpec(name) {
		vm, err := qmp.Dial(ctx, name)
		if err != nil {
			return nil, err
		}
		return qmpVM{vm}, nil
	}
	d, _, err := libvirt.DialName(ctx, name)
	if err != nil {
		return nil, err
	}
	return libvirtVM{d}, nil
}

// qmpVM is a VM reached over QMP.
type qmpVM struct{ vm *qmp.VM }

func (c qmpVM) Attach(ctx context.Context, path string, size uint64, label, bus string) (qmp.Attachment, error) {
	return c.vm.AttachRegion(ctx, qmp.AttachSpec{Path: path, Size: size, Bus: bus, Name: label})
}
func (c qmpVM) Regions(ctx context.Context) ([]qmp.Attachment, error) { return c.vm.Regions(ctx) }
func (c qmpVM) Detach(ctx context.Context, a qmp.Attachment) error    { return c.vm.Detach(ctx, a) }
func (c qmpVM) Close() error                                          { return c.vm.Close() }

// libvirtVM is a libvirt domain; regions become libvirt <shmem> devices.
type libvirtVM struct{ d *libvirt.Domain }

func (c libvirtVM) Attach(ctx context.Context, path string, size uint64, label, bus string) (qmp.Attachment, error) {
	if bus != "" {
		return qmp.Attachment{}, fmt.Errorf("--bus: %w (libvirt picks the PCI address)", ErrUnsupported)
	}
	a, err := c.d.AttachRegion(ctx, libvirt.AttachSpec{Path: path, Size: size, Name: label})
	if err != nil {
		return qmp.Attachment{}, err
	}
	return fromLibvirt(a), nil
}

func (c libvirtVM) Regions(ctx context.Context) ([]qmp.Attachment, error) {
	as, err := c.d.Regions(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]qmp.Attachment, len(as))
	for i, a := range as {
		out[i] = fromLibvirt(a)
	}
	return out, nil
}

func (c libvirtVM) Detach(ctx context.Context, a qmp.Attachment) error {
	return c.d.Detach(ctx, libvirt.Attachment{Alias: a.DevID, Name: filepath.Base(a.Path), Path: a.Path, Size: a.Size})
}

func (c libvirtVM) Close() error { return c.d.Close() }

func fromLibvirt(a libvirt.Attachment) qmp.Attachment {
	return qmp.Attachment{MemID: a.MemID(), DevID: a.Alias, ChardevID: a.ChardevID(), Path: a.Path, Size: a.Size}
}

// CutSpec splits a VM export NAME[=Q,Q..]. A libvirt URI may hold '='
// itself (?socket=PATH), so for libvirt names only a trailing list of
// digits and commas is a queue list.
func CutSpec(s string) (name, list string, hasList bool) {
	if !libvirt.IsSpec(s) {
		return strings.Cut(s, "=")
	}
	i := strings.LastIndexByte(s, '=')
	if i < 0 || strings.Trim(s[i+1:], "0123456789,") != "" {
		return s, "", false
	}
	return s[:i], s[i+1:], true
}

// Sweeper is a VM whose leftover memory backends can be removed (QMP;
// libvirt removes its own).
type Sweeper interface {
	// SweepBackends removes the memory backends whose id starts with
	// prefix that no device uses, and returns their ids.
	SweepBackends(ctx context.Context, prefix string) ([]string, error)
}

// SweepBackends implements Sweeper.
func (c qmpVM) SweepBackends(ctx context.Context, prefix string) ([]string, error) {
	return c.vm.SweepBackends(ctx, prefix)
}
