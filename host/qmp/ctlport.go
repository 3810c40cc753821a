package qmp

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// ErrNoCtlPort means the VM has no virtserialport of the wanted name, or
// its chardev is not a unix socket the agent can connect to.
var ErrNoCtlPort = errors.New("no control port")

// CtlPort is a virtio-serial port in a VM whose chardev is a unix socket
// server: the host end of a control channel (see package virtio).
type CtlPort struct {
	// Name is the port's name, e.g. "zc.ctl".
	Name string
	// Socket is the chardev's unix socket path, to connect to.
	Socket string
	// ChardevID and DevID are the QEMU ids of the chardev and the
	// virtserialport; SerialID is the virtio-serial-pci device hot-plugged
	// for it, "" when the VM had a virtio-serial bus already.
	ChardevID, DevID, SerialID string
	// Plugged is true when AddCtlPort hot-plugged the port.
	Plugged bool
}

// qomChild is one entry of qom-list.
type qomChild struct {
	Name string `json:"name"`
	Type string `json:"type"`
}

// devices lists /machine/peripheral (devices with an id) and
// /machine/peripheral-anon (without) as QOM paths → type.
func (vm *VM) devices(ctx context.Context, typ string) ([]string, error) {
	var out []string
	for _, dir := range []string{"/machine/peripheral", "/machine/peripheral-anon"} {
		var props []qomChild
		if err := vm.execute(ctx, "qom-list", map[string]any{"path": dir}, &props); err != nil {
			return nil, err
		}
		for _, p := range props {
			if p.Type == "child<"+typ+">" {
				out = append(out, dir+"/"+p.Name)
			}
		}
	}
	return out, nil
}

// FindCtlPort returns the VM's virtserialport called name and its socket,
// or [ErrNoCtlPort] when there is none or its chardev is no unix socket.
func (vm *VM) FindCtlPort(ctx context.Context, name string) (CtlPort, error) {
	p, err := vm.findCtlPort(ctx, name)
	if err != nil {
		return CtlPort{}, fmt.Errorf("zc: find port %s in vm %s: %w", name, vm.name, err)
	}
	return p, nil
}

func (vm *VM) findCtlPort(ctx context.Context, name string) (CtlPort, error) {
	ports, err := vm.devices(ctx, "virtserialport")
	if err != nil {
		return CtlPort{}, err
	}
	for _, path := range ports {
		var got, chardev string
		if err := vm.execute(ctx, "qom-get", map[string]any{"path": path, "property": "name"}, &got); err != nil {
			return CtlPort{}, fmt.Errorf("name of %s: %w", path, err)
		}
		if got != name {
			continue
		}
		if err := vm.execute(ctx, "qom-get", map[string]any{"path": path, "property": "chardev"}, &chardev); err != nil {
			return CtlPort{}, fmt.Errorf("chardev of %s: %w", path, err)
		}
		sock, err := vm.chardevSocket(ctx, chardev)
		if err != nil {
			return CtlPort{}, err
		}
		p := CtlPort{Name: name, Socket: sock, ChardevID: chardev}
		if dir, id, ok := strings.Cut(strings.TrimPrefix(path, "/machine/"), "/"); ok && dir == "peripheral" {
			p.DevID = id
		}
		return p, nil
	}
	return CtlPort{}, ErrNoCtlPort
}

// chardevSocket returns the unix socket path of a chardev, from
// query-chardev's filename ("[disconnected:]unix:PATH,server=on").
func (vm *VM) chardevSocket(ctx context.Context, id string) (string, error) {
	var chardevs []struct {
		Label    string `json:"label"`
		Filename string `json:"filename"`
	}
	if err := vm.execute(ctx, "query-chardev", nil, &chardevs); err != nil {
		return "", err
	}
	for _, c := range chardevs {
		if c.Label != id {
			continue
		}
		f := strings.TrimPrefix(c.Filename, "disconnected:")
		rest, ok := strings.CutPrefix(f, "unix:")
		if !ok {
			return "", fmt.Errorf("%w: chardev %s is %q, not a unix socket", ErrNoCtlPort, id, c.Filename)
		}
		path, opts, _ := strings.Cut(rest, ",")
		if !strings.Contains(opts, "server=on") || path == "" {
			return "", fmt.Errorf("%w: chardev %s is %q, not a unix socket server", ErrNoCtlPort, id, c.Filename)
		}
		return path, nil
	}
	return "", fmt.Errorf("%w: chardev %s not found", ErrNoCtlPort, id)
}

// AddCtlPort hot-plugs a control port: a virtio-serial-pci controller when
// the VM has none (on q35 behind a free pcie-root-port, which it then
// occupies), a unix socket server chardev at socket (chardev-add, QEMU
// creates the socket; wait=off), and a virtserialport called name on it.
// Every id is fresh. The guest needs the virtio_console module (and its
// dependencies) to see the port; it appears as /dev/vportNpM with
// /sys/class/virtio-ports/vportNpM/name reading name.
func (vm *VM) AddCtlPort(ctx context.Context, name, socket string) (CtlPort, error) {
	p, err := vm.addCtlPort(ctx, name, socket)
	if err != nil {
		return CtlPort{}, fmt.Errorf("zc: add port %s to vm %s: %w", name, vm.name, err)
	}
	return p, nil
}

func (vm *VM) addCtlPort(ctx context.Context, name, socket string) (CtlPort, error) {
	vm.attachMu.Lock()
	defer vm.attachMu.Unlock()
	serials, err := vm.devices(ctx, "virtio-serial-pci")
	if err != nil {
		return CtlPort{}, err
	}
	_, chardev := newIDs("ctl")
	chardev = strings.Replace(chardev, "zcdev-", "zcchr-", 1)
	_, dev := newIDs("ctl")
	p := CtlPort{Name: name, Socket: socket, ChardevID: chardev, DevID: dev, Plugged: true}
	var bus string
	if len(serials) == 0 {
		_, p.SerialID = newIDs("ctl")
		p.SerialID = strings.Replace(p.SerialID, "zcdev-", "zcser-", 1)
		args := map[string]any{"driver": "virtio-serial-pci", "id": p.SerialID}
		pcie, err := vm.isPCIe(ctx)
		if err != nil {
			return CtlPort{}, err
		}
		if pcie {
			rp, err := vm.FreeRootPort(ctx, 0)
			if err != nil {
				return CtlPort{}, err
			}
			args["bus"] = rp
		}
		if err := vm.execute(ctx, "device_add", args, nil); err != nil {
			return CtlPort{}, fmt.Errorf("add virtio-serial-pci %s: %w", p.SerialID, err)
		}
		bus = p.SerialID + ".0"
	}
	err = vm.execute(ctx, "chardev-add", map[string]any{
		"id": chardev,
		"backend": map[string]any{"type": "socket", "data": map[string]any{
			"addr":   map[string]any{"type": "unix", "data": map[string]any{"path": socket}},
			"server": true, "wait": false,
		}},
	}, nil)
	if err != nil {
		return CtlPort{}, fmt.Errorf("add chardev %s at %s: %w", chardev, socket, err)
	}
	args := map[string]any{"driver": "virtserialport", "id": dev, "chardev": chardev, "name": name}
	if bus != "" {
		args["bus"] = bus
	}
	if err := vm.execute(ctx, "device_add", args, nil); err != nil {
		err = fmt.Errorf("add virtserialport %s: %w", dev, err)
		if derr := vm.execute(context.WithoutCancel(ctx), "chardev-remove", map[string]any{"id": chardev}, nil); derr != nil {
			err = errors.Join(err, fmt.Errorf("remove chardev %s: %w", chardev, derr))
		}
		return CtlPort{}, err
	}
	return p, nil
}
