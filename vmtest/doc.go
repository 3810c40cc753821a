// Package vmtest boots throwaway QEMU guests for tests: a Debian cloud
// kernel, a busybox-static initramfs with statically linked Go binaries and
// a generated /init script, the serial console streamed to the test log, and
// QMP on a unix socket for hot-plug.
//
// A test starts a guest with [Start], waits for console output with
// [VM.Expect] or [VM.ExpectRegexp], drives QMP through [VM.QMPPath] (e.g.
// with host/qmp), and reads results the guest prints as lines starting with
// [ResultPrefix] through [VM.Result]. The VM is killed when the test ends.
//
// Everything a guest needs is fetched or built on demand and cached:
//
//   - The kernel: the Debian package linux-image-cloud-amd64 resolved to its
//     versioned linux-image-6.x-cloud-amd64, fetched with apt-get download
//     and unpacked with dpkg-deb -x into the cache directory (never installed
//     into /boot). The cloud flavour boots 2-3x faster under TCG than the
//     generic one.
//   - The initramfs: busybox, /dev/console, /init, kernel modules on request
//     and the Go binaries, written as a gzip'ed newc cpio by this package.
//   - Go binaries: built with CGO_ENABLED=0 once per test process.
//
// Environment variables:
//
//	VMTEST_QEMU     QEMU binary (default qemu-system-x86_64 from $PATH)
//	VMTEST_KERNEL   vmlinuz to boot instead of the cached Debian kernel
//	VMTEST_MODULES  lib/modules/<version> directory matching VMTEST_KERNEL
//	VMTEST_CACHE    cache directory (default $XDG_CACHE_HOME/zcfabric/vmtest,
//	                else ~/.cache/zcfabric/vmtest)
//	VMTEST_BUSYBOX  static busybox (default /bin/busybox)
//	VMTEST_ACCEL    "kvm" or "tcg" to force an accelerator; by default KVM
//	                when testgate.KVM reports it usable, else TCG -cpu max
//
// Tests skip, saying what is missing, when QEMU, busybox or a kernel cannot
// be had. Under TCG, throughput measured in a guest says nothing about KVM;
// use it for correctness and ratios.
package vmtest
