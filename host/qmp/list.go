package qmp

import (
	"context"
	"errors"
	"fmt"
	"path"
	"sort"
	"strings"
)

// Regions lists the ivshmem devices plugged into the VM (at boot or
// hot-plugged, by this process or another): the attachments [VM.Detach]
// can remove. It reads qom-list of /machine/peripheral, then for each
// ivshmem-plain device its memdev link and the backend's mem-path and size,
// and for each ivshmem-doorbell device its chardev and the size of its BAR2
// (the memory region ivshmem.bar2[0]; Size stays 0 if QEMU does not answer
// that). A doorbell device has no memory backend, its memory being the
// descriptor its ivshmem server sent, and QEMU does not report the server's
// socket path (query-chardev shows "unix:" for a client socket): MemID and
// Path stay empty and ChardevID is set. Devices without an id (not under
// peripheral) are not listed; Bus is left empty.
func (vm *VM) Regions(ctx context.Context) ([]Attachment, error) {
	as, err := vm.regions(ctx)
	if err != nil {
		return nil, fmt.Errorf("zc: list regions of vm %s: %w", vm.name, err)
	}
	return as, nil
}

func (vm *VM) regions(ctx context.Context) ([]Attachment, error) {
	var props []struct {
		Name string `json:"name"`
		Type string `json:"type"`
	}
	if err := vm.execute(ctx, "qom-list", map[string]any{"path": "/machine/peripheral"}, &props); err != nil {
		return nil, err
	}
	var out []Attachment
	for _, p := range props {
		dev := "/machine/peripheral/" + p.Name
		switch p.Type {
		case "child<ivshmem-plain>":
			var memdev string
			if err := vm.execute(ctx, "qom-get", map[string]any{"path": dev, "property": "memdev"}, &memdev); err != nil {
				return nil, fmt.Errorf("memdev of %s: %w", p.Name, err)
			}
			a := Attachment{DevID: p.Name, MemID: path.Base(memdev)}
			if memdev != "" {
				if err := vm.execute(ctx, "qom-get", map[string]any{"path": memdev, "property": "mem-path"}, &a.Path); err != nil {
					return nil, fmt.Errorf("mem-path of %s: %w", memdev, err)
				}
				if err := vm.execute(ctx, "qom-get", map[string]any{"path": memdev, "property": "size"}, &a.Size); err != nil {
					return nil, fmt.Errorf("size of %s: %w", memdev, err)
				}
			}
			out = append(out, a)
		case "child<ivshmem-doorbell>":
			a := Attachment{DevID: p.Name}
			if err := vm.execute(ctx, "qom-get", map[string]any{"path": dev, "property": "chardev"}, &a.ChardevID); err != nil {
				return nil, fmt.Errorf("chardev of %s: %w", p.Name, err)
			}
			// QEMU 7.2 names BAR2's memory region ivshmem.bar2[0]; another
			// version may not: the size is then unknown, not an error.
			err := vm.execute(ctx, "qom-get", map[string]any{"path": dev + "/ivshmem.bar2[0]", "property": "size"}, &a.Size)
			var qe *Error
			if err != nil && !errors.As(err, &qe) {
				return nil, fmt.Errorf("size of %s: %w", p.Name, err)
			}
			out = append(out, a)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].DevID < out[j].DevID })
	return out, nil
}

// SweepBackends removes the memory-backend-file objects whose id starts
// with prefix and that no ivshmem-plain device uses: what an agent
// killed between object-add and device_add left behind (ids are never
// reused, so the agent that comes back cannot take them over). It
// returns the ids removed.
func (vm *VM) SweepBackends(ctx context.Context, prefix string) ([]string, error) {
	gone, err := vm.sweepBackends(ctx, prefix)
	if err != nil {
		return gone, fmt.Errorf("zc: sweep memory backends %s* of vm %s: %w", prefix, vm.name, err)
	}
	return gone, nil
}

func (vm *VM) sweepBackends(ctx context.Context, prefix string) ([]string, error) {
	var objs []struct {
		Name string `json:"name"`
		Type string `json:"type"`
	}
	if err := vm.execute(ctx, "qom-list", map[string]any{"path": "/objects"}, &objs); err != nil {
		return nil, err
	}
	as, err := vm.regions(ctx)
	if err != nil {
		return nil, err
	}
	used := map[string]bool{}
	for _, a := range as {
		used[a.MemID] = true
	}
	var gone []string
	for _, o := range objs {
		if o.Type != "child<memory-backend-file>" || !strings.HasPrefix(o.Name, prefix) || used[o.Name] {
			continue
		}
		if err := vm.execute(ctx, "object-del", map[string]any{"id": o.Name}, nil); err != nil {
			return gone, fmt.Errorf("remove memory backend %s: %w", o.Name, err)
		}
		gone = append(gone, o.Name)
	}
	return gone, nil
}

// Objects lists the ids of the user-created objects (qom-list /objects)
// of the given QOM type, e.g. "memory-backend-file".
func (vm *VM) Objects(ctx context.Context, typ string) ([]string, error) {
	var objs []struct {
		Name string `json:"name"`
		Type string `json:"type"`
	}
	if err := vm.execute(ctx, "qom-list", map[string]any{"path": "/objects"}, &objs); err != nil {
		return nil, fmt.Errorf("zc: list objects of vm %s: %w", vm.name, err)
	}
	var out []string
	for _, o := range objs {
		if o.Type == "child<"+typ+">" {
			out = append(out, o.Name)
		}
	}
	return out, nil
}
