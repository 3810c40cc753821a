package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/zcfabric/zc/host/libvirt"
	"github.com/zcfabric/zc/host/qmp"
)

// vmHelp is how flags that take a VM describe it.
const vmHelp = "a QMP unix socket path (-qmp unix:PATH,server=on,wait=off), or libvirt:DOMAIN[@SOCKET|URI]\n" +
	"for a libvirt domain (default socket " + libvirt.DefaultSocket + "; regions must be in /dev/shm)"

// vmConn is a running VM zchost hot-plugs regions into: a QEMU reached
// over its QMP socket, or a libvirt domain. Attachments are described
// the QMP way either way: for a libvirt domain DevID is the device alias
// (also QEMU's device id) and MemID the memory backend libvirt made.
type vmConn interface {
	attach(ctx context.Context, path string, size uint64, label, bus string) (qmp.Attachment, error)
	regions(ctx context.Context) ([]qmp.Attachment, error)
	detach(ctx context.Context, a qmp.Attachment) error
	Close() error
}

// dialVM connects to the VM named as on the command line: libvirt:DOMAIN
// [@SOCKET|URI] for a libvirt domain, else the path of a QMP socket.
func dialVM(ctx context.Context, name string) (vmConn, error) {
	if !libvirt.IsSpec(name) {
		vm, err := qmp.Dial(ctx, name)
		if err != nil {
			return nil, err
		}
		return qmpConn{vm}, nil
	}
	spec, err := libvirt.ParseSpec(name)
	if err != nil {
		return nil, err
	}
	d, err := libvirt.Dial(ctx, spec)
	if err != nil {
		return nil, err
	}
	return libvirtConn{d}, nil
}

// qmpConn is a VM reached over QMP.
type qmpConn struct{ vm *qmp.VM }

func (c qmpConn) attach(ctx context.Context, path string, size uint64, label, bus string) (qmp.Attachment, error) {
	return c.vm.AttachRegion(ctx, qmp.AttachSpec{Path: path, Size: size, Bus: bus, Name: label})
}
func (c qmpConn) regions(ctx context.Context) ([]qmp.Attachment, error) { return c.vm.Regions(ctx) }
func (c qmpConn) detach(ctx context.Context, a qmp.Attachment) error    { return c.vm.Detach(ctx, a) }
func (c qmpConn) Close() error                                          { return c.vm.Close() }

// libvirtConn is a libvirt domain; regions become libvirt <shmem> devices.
type libvirtConn struct{ d *libvirt.Domain }

func (c libvirtConn) attach(ctx context.Context, path string, size uint64, label, bus string) (qmp.Attachment, error) {
	if bus != "" {
		return qmp.Attachment{}, fmt.Errorf("%w: --bus is not supported for libvirt domains (libvirt picks the PCI address)", errUsage)
	}
	a, err := c.d.AttachRegion(ctx, libvirt.AttachSpec{Path: path, Size: size, Name: label})
	if err != nil {
		return qmp.Attachment{}, err
	}
	return fromLibvirt(a), nil
}

func (c libvirtConn) regions(ctx context.Context) ([]qmp.Attachment, error) {
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

func (c libvirtConn) detach(ctx context.Context, a qmp.Attachment) error {
	return c.d.Detach(ctx, libvirt.Attachment{Alias: a.DevID, Name: filepath.Base(a.Path), Path: a.Path, Size: a.Size})
}

func (c libvirtConn) Close() error { return c.d.Close() }

func fromLibvirt(a libvirt.Attachment) qmp.Attachment {
	return qmp.Attachment{MemID: a.MemID(), DevID: a.Alias, Path: a.Path, Size: a.Size}
}

// cutVMSpec splits --vm NAME[=Q,Q..]. A libvirt URI may hold '=' itself
// (?socket=PATH), so for libvirt names only a trailing list of digits and
// commas is a queue list.
func cutVMSpec(s string) (name, list string, hasList bool) {
	if !libvirt.IsSpec(s) {
		return strings.Cut(s, "=")
	}
	i := strings.LastIndexByte(s, '=')
	if i < 0 || strings.Trim(s[i+1:], "0123456789,") != "" {
		return s, "", false
	}
	return s[:i], s[i+1:], true
}

// errLibvirtCtl refuses --ctl for libvirt domains: the zc.ctl port is
// found and hot-plugged over QMP.
var errLibvirtCtl = errors.New("--ctl is not supported for libvirt domains (the zc.ctl port is managed over QMP)")
