package qmp

import (
	"context"
	"errors"
	"fmt"
	"path"
	"sort"
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
