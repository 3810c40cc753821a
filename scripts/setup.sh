#!/usr/bin/env bash
# Installs what the tests and the VM demo need on a Debian machine (as
# root): QEMU, busybox-static for the guest initramfs, tcpdump and
# netsniff-ng for the capture tests, iproute2 for namespaces, ethtool for
# the capture benchmark (GRO on a veth, driver counters), libvirtd and its
# QEMU driver for the libvirt test (no libvirt-daemon-system: it pulls in
# systemd; vmtest starts a private libvirtd itself, nothing runs as a
# service), clang with libFuzzer and its sanitizer runtimes
# (libclang-rt-14-dev, which clang only recommends) for the C reader's
# fuzz target. The guest kernel is fetched by vmtest itself (apt-get
# download, cached).
set -euo pipefail
if [ "$(id -u)" != 0 ]; then
  echo "setup.sh: not root: skipping apt packages (QEMU and network tests will skip)" >&2
  exit 0
fi
need=()
for p in qemu-system-x86 busybox-static tcpdump netsniff-ng iproute2 ethtool libvirt-daemon libvirt-daemon-driver-qemu gcc libpcap-dev tshark softflowd clang libfuzzer-14-dev libclang-rt-14-dev; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
# vmtest fetches the guest kernel with apt-get download: it needs lists.
if [ ${#need[@]} -gt 0 ] || [ -z "$(ls /var/lib/apt/lists/ 2>/dev/null | grep -v -e lock -e partial)" ]; then
  apt-get update -qq
fi
if [ ${#need[@]} -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
go mod download
