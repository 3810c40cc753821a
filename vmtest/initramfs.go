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
	files    map[string][]byte // path in the guest (absolute) → contents, mode 0755
}

// HostFile copies the host file src (symbolic links followed) into the
// guest as the absolute path dst, mode 0755, making its parent
// directories: for dynamically linked programs and their libraries (see
// pcap_test.go).
func HostFile(dst, src string) Option {
	return func(c *config) {
		if c.files == nil {
			c.files = map[string]string{}
		}
		c.files[dst] = src
	}
}

// addHostFiles reads the files HostFile named.
func (r *initramfs) addHostFiles(files map[string]string) error {
	for dst, src := range files {
		b, err := os.ReadFile(src)
		if err != nil {
			return fmt.Errorf("host file for %s: %w", dst, err)
		}
		if r.files == nil {
			r.files = map[string][]byte{}
		}
		r.files[dst] = b
	}
	return nil
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
	dirs := map[string]bool{}
	for _, d := range []string{"bin", "dev", "proc", "sys", "tmp", "root", "lib", "lib/modules"} {
		c.Dir(d, 0o755)
		dirs[d] = true
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
	names = names[:0]
	for n := range r.files {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		rel := strings.TrimPrefix(path.Clean(n), "/")
		var parents []string // the kernel's unpacker makes no parent directories
		for d := path.Dir(rel); d != "." && !dirs[d]; d = path.Dir(d) {
			parents = append(parents, d)
			dirs[d] = true
		}
		for i := len(parents) - 1; i >= 0; i-- {
			c.Dir(parents[i], 0o755)
		}
		c.File(rel, 0o755, r.files[n])
	}
	if err := c.Close(); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
