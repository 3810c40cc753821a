package virtio

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Port is a virtio-serial port seen in the guest's sysfs.
type Port struct {
	// Name is the port's name as the host set it (e.g. "zc.ctl").
	Name string
	// Dev is the port's kernel name, e.g. "vport1p1".
	Dev string
}

// Ports lists the named virtio-serial ports under sysfsRoot's
// class/virtio-ports ("" means /sys), sorted by kernel name. It needs the
// virtio_console module; without it (or with no ports) the list is empty.
func Ports(sysfsRoot string) ([]Port, error) {
	if sysfsRoot == "" {
		sysfsRoot = "/sys"
	}
	dir := filepath.Join(sysfsRoot, "class", "virtio-ports")
	entries, err := os.ReadDir(dir)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("zc: list virtio-serial ports under %s: %w", dir, err)
	}
	var ports []Port
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name(), "name"))
		if err != nil {
			continue // unnamed, or vanishing
		}
		ports = append(ports, Port{Name: strings.TrimSpace(string(b)), Dev: e.Name()})
	}
	sort.Slice(ports, func(i, j int) bool { return ports[i].Dev < ports[j].Dev })
	return ports, nil
}

// PortPath returns the device path of the port called name: devDir ("" means
// /dev) joined with its kernel name. It fails with [ErrNoPort] when sysfs
// lists no such port.
func PortPath(sysfsRoot, devDir, name string) (string, error) {
	if devDir == "" {
		devDir = "/dev"
	}
	ports, err := Ports(sysfsRoot)
	if err != nil {
		return "", err
	}
	for _, p := range ports {
		if p.Name == name {
			return filepath.Join(devDir, p.Dev), nil
		}
	}
	return "", fmt.Errorf("zc: find virtio-serial port %q: %w", name, ErrNoPort)
}

// OpenPort opens the virtio-serial port called name, waiting (polling
// sysfs every poll, default 20 ms) until it appears, as it does some time
// after the host hot-plugs it, or until ctx ends. A port can be open in one
// process at a time (others get EBUSY).
func OpenPort(ctx context.Context, sysfsRoot, devDir, name string, poll time.Duration) (*os.File, error) {
	if poll <= 0 {
		poll = 20 * time.Millisecond
	}
	for {
		path, err := PortPath(sysfsRoot, devDir, name)
		if err == nil {
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			if err == nil {
				return f, nil
			}
			if !os.IsNotExist(err) {
				return nil, fmt.Errorf("zc: open virtio-serial port %q: %w", name, err)
			}
			// The device node is created a little after the sysfs entry.
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("zc: wait for virtio-serial port %q: %w (%w)", name, ErrNoPort, ctx.Err())
		case <-time.After(poll):
		}
	}
}

// Dial opens the zc.ctl port (see [OpenPort]), starts a client on it and
// says hello; ctx bounds the whole.
func Dial(ctx context.Context, sysfsRoot, devDir string) (*Client, error) {
	f, err := OpenPort(ctx, sysfsRoot, devDir, PortName, 0)
	if err != nil {
		return nil, err
	}
	c := NewClient(f)
	if _, err := c.Hello(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}
