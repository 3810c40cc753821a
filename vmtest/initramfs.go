package vmtest

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"os"
	"path"
	"sort"
	"strings"
)

// VirtioConsoleModules are the modules a guest needs for virtio-serial, in
// the order they must be loaded (measured on the Debian 6.1 cloud kernel).
var VirtioConsoleModules = []string{
	"virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci", "virtio_console",
}

// Console markers /init prints.
const (
	// BootedMarker is printed once /init has mounted filesystems and
	// loaded modules, just before the test's script runs.
	BootedMarker = "ZCBOOTED"
	// ExitMarker precedes the script's exit status: "ZCEXIT 0".
	ExitMarker = "ZCEXIT"
)

// initramfs describes the guest's root filesystem.
type initramfs struct {
	busybox  []byte
	binaries map[string][]byte // name in /bin → contents
	modules  []string          // host paths of .ko files, load order
	script   string            // shell commands run after boot
}

// initScript returns /init: mount the pseudo filesystems (the Debian kernel
// has DEVTMPFS_MOUNT off), load modules, run the test's script, report its
// status and power off, which makes QEMU (-no-reboot) exit.
func (r *initramfs) initScript() string {
	var b strings.Builder
	b.WriteString(`#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/shm /tmp && mount -t tmpfs tmpfs /dev/shm
`)
	for _, m := range r.modules {
		fmt.Fprintf(&b, "insmod /lib/modules/%s || echo 'vmtest: insmod %s failed'\n", path.Base(m), path.Base(m))
	}
	fmt.Fprintf(&b, "echo %s\n", BootedMarker)
	b.WriteString("(\n")
	b.WriteString(r.script)
	b.WriteString("\n)\n")
	fmt.Fprintf(&b, "echo \"%s $?\"\n", ExitMarker)
	// The guest's sysfs drops an unplugged device before QEMU completes
	// the unplug: a script that ends on "the device is gone" must not
	// power the VM off under the host's object-del.
	b.WriteString("sleep 1\n")
	b.WriteString("poweroff -f\n")
	return b.String()
}

// build writes the gzip'ed newc cpio archive.
func (r *initramfs) build() ([]byte, error) {
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	if err != nil {
		return nil, err
	}
	c := newCPIO(zw)
	for _, d := range []string{"bin", "dev", "proc", "sys", "tmp", "root", "lib", "lib/modules"} {
		c.Dir(d, 0o755)
	}
	c.CharDev("dev/console", 0o600, 5, 1)
	c.CharDev("dev/null", 0o666, 1, 3)
	c.File("bin/busybox", 0o755, r.busybox)
	c.File("init", 0o755, []byte(r.initScript()))
	names := make([]string, 0, len(r.binaries))
	for n := range r.binaries {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		c.File("bin/"+n, 0o755, r.binaries[n])
	}
	for _, m := range r.modules {
		b, err := os.ReadFile(m)
		if err != nil {
			return nil, err
		}
		c.File("lib/modules/"+path.Base(m), 0o644, b)
	}
	if err := c.Close(); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
