package vmtest

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// KernelPackage is the Debian meta-package the guest kernel comes from.
const KernelPackage = "linux-image-cloud-amd64"

// Kernel is a guest kernel and, when known, its modules.
type Kernel struct {
	// Vmlinuz is the kernel image passed to QEMU's -kernel.
	Vmlinuz string
	// Modules is the lib/modules/<version> directory, "" if unknown.
	Modules string
}

// CacheDir returns the directory vmtest caches kernels in: VMTEST_CACHE,
// else $XDG_CACHE_HOME/zcfabric/vmtest, else ~/.cache/zcfabric/vmtest.
func CacheDir() (string, error) {
	if d := os.Getenv("VMTEST_CACHE"); d != "" {
		return d, nil
	}
	base := os.Getenv("XDG_CACHE_HOME")
	if base == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("vmtest: find cache directory: %w (set VMTEST_CACHE)", err)
		}
		base = filepath.Join(home, ".cache")
	}
	return filepath.Join(base, "zcfabric", "vmtest"), nil
}

var kernelOnce = sync.OnceValues(findKernel)

// GuestKernel returns the kernel to boot, fetching the Debian cloud kernel
// into [CacheDir] on first use (see the package doc), or skips the test
// saying why none could be had. VMTEST_KERNEL (and VMTEST_MODULES) override
// it. The result is shared by all tests of the process.
func GuestKernel(t testing.TB) Kernel {
	t.Helper()
	k, err := kernelOnce()
	if err != nil {
		t.Skipf("requires a guest kernel: %v (set VMTEST_KERNEL to a vmlinuz, or allow apt-get download %s)", err, KernelPackage)
	}
	return k
}

func findKernel() (Kernel, error) {
	if v := os.Getenv("VMTEST_KERNEL"); v != "" {
		if _, err := os.Stat(v); err != nil {
			return Kernel{}, fmt.Errorf("VMTEST_KERNEL: %w", err)
		}
		return Kernel{Vmlinuz: v, Modules: os.Getenv("VMTEST_MODULES")}, nil
	}
	cache, err := CacheDir()
	if err != nil {
		return Kernel{}, err
	}
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return Kernel{}, fmt.Errorf("vmtest: create cache %s: %w", cache, err)
	}
	// Serialise test processes (go test ./... runs packages in parallel).
	lock, err := os.OpenFile(filepath.Join(cache, "lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return Kernel{}, fmt.Errorf("vmtest: lock cache %s: %w", cache, err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return Kernel{}, fmt.Errorf("vmtest: lock cache %s: %w", cache, err)
	}
	pkg, resolveErr := resolveKernelPackage()
	if resolveErr != nil {
		// Offline or not Debian: use the newest kernel already cached.
		if k, err := newestCached(cache); err == nil {
			return k, nil
		}
		return Kernel{}, resolveErr
	}
	dir := filepath.Join(cache, pkg)
	if k, err := unpacked(dir); err == nil {
		return k, nil
	}
	if err := fetchKernel(cache, pkg, dir); err != nil {
		return Kernel{}, err
	}
	return unpacked(dir)
}

var dependsRE = regexp.MustCompile(`(?m)^\s*Depends:\s*(linux-image-\S+-cloud-amd64)\s*$`)

// resolveKernelPackage maps the meta-package to the versioned kernel
// package it depends on, e.g. linux-image-6.1.0-56-cloud-amd64.
func resolveKernelPackage() (string, error) {
	out, err := exec.Command("apt-cache", "depends", KernelPackage).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("vmtest: apt-cache depends %s: %w: %s", KernelPackage, err, bytes.TrimSpace(out))
	}
	m := dependsRE.FindSubmatch(out)
	if m == nil {
		return "", fmt.Errorf("vmtest: apt-cache depends %s: no linux-image-*-cloud-amd64 dependency in %q", KernelPackage, out)
	}
	return string(m[1]), nil
}

// fetchKernel downloads pkg's .deb and unpacks it into dir.
func fetchKernel(cache, pkg, dir string) error {
	tmp, err := os.MkdirTemp(cache, "fetch-")
	if err != nil {
		return fmt.Errorf("vmtest: fetch %s: %w", pkg, err)
	}
	defer os.RemoveAll(tmp)
	dl := exec.Command("apt-get", "download", pkg)
	dl.Dir = tmp
	if out, err := dl.CombinedOutput(); err != nil {
		return fmt.Errorf("vmtest: apt-get download %s: %w: %s", pkg, err, bytes.TrimSpace(out))
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, pkg+"_*.deb"))
	if len(debs) != 1 {
		return fmt.Errorf("vmtest: apt-get download %s: want one .deb in %s, found %q", pkg, tmp, debs)
	}
	x := filepath.Join(tmp, "x")
	if out, err := exec.Command("dpkg-deb", "-x", debs[0], x).CombinedOutput(); err != nil {
		return fmt.Errorf("vmtest: dpkg-deb -x %s: %w: %s", debs[0], err, bytes.TrimSpace(out))
	}
	if err := os.Rename(x, dir); err != nil {
		return fmt.Errorf("vmtest: fetch %s: %w", pkg, err)
	}
	return nil
}

// unpacked returns the kernel unpacked in dir.
func unpacked(dir string) (Kernel, error) {
	vmlinuz, _ := filepath.Glob(filepath.Join(dir, "boot", "vmlinuz-*"))
	if len(vmlinuz) != 1 {
		return Kernel{}, fmt.Errorf("vmtest: no single boot/vmlinuz-* in %s", dir)
	}
	ver := strings.TrimPrefix(filepath.Base(vmlinuz[0]), "vmlinuz-")
	k := Kernel{Vmlinuz: vmlinuz[0]}
	for _, lib := range []string{"lib", "usr/lib"} {
		mods := filepath.Join(dir, lib, "modules", ver)
		if fi, err := os.Stat(mods); err == nil && fi.IsDir() {
			k.Modules = mods
			break
		}
	}
	return k, nil
}

// newestCached returns the kernel of the highest-sorting cached package.
func newestCached(cache string) (Kernel, error) {
	dirs, _ := filepath.Glob(filepath.Join(cache, "linux-image-*-cloud-amd64"))
	sort.Strings(dirs)
	for i := len(dirs) - 1; i >= 0; i-- {
		if k, err := unpacked(dirs[i]); err == nil {
			return k, nil
		}
	}
	return Kernel{}, errors.New("vmtest: no kernel cached")
}

// modulePaths finds the .ko files for names under k.Modules, in order.
func (k Kernel) modulePaths(names []string) ([]string, error) {
	if len(names) == 0 {
		return nil, nil
	}
	if k.Modules == "" {
		return nil, errors.New("kernel modules directory unknown (set VMTEST_MODULES)")
	}
	found := map[string]string{}
	err := filepath.WalkDir(k.Modules, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if name, ok := strings.CutSuffix(d.Name(), ".ko"); ok {
			found[name] = p
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("scan %s: %w", k.Modules, err)
	}
	paths := make([]string, len(names))
	for i, n := range names {
		if paths[i] = found[n]; paths[i] == "" {
			return nil, fmt.Errorf("module %s.ko not found under %s (compressed modules are not supported)", n, k.Modules)
		}
	}
	return paths, nil
}
