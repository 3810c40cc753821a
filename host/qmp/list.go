package qmp

import (
	"context"
	"fmt"
	"path"
	"sort"
)

// Regions lists the ivshmem-plain devices plugged into the VM (at boot or
// hot-plugged, by this process or another) with their memory backends: the
// attachments [VM.Detach] can remove. It reads qom-list of
// /machine/peripheral, then each device's memdev link and the backend's
// mem-path and size. Devices without an id (not under peripheral) are not
// listed; Bus is left empty.
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
		if p.Type != "child<ivshmem-plain>" {
			continue
		}
		var memdev string
		if err := vm.execute(ctx, "qom-get", map[string]any{"path": "/machine/peripheral/" + p.Name, "property": "memdev"}, &memdev); err != nil {
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
	}
	sort.Slice(out, func(i, j int) bool { return out[i].DevID < out[j].DevID })
	return out, nil
}
