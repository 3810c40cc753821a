#!/usr/bin/env bash
# Builds every binary into bin/ (git-ignored): the Go commands and
# examples, and the libpcap shim bin/libzcpcap.so (pcapshim/src/zcpcap.c; it
# needs a C compiler and the libpcap headers, libpcap-dev, which
# scripts/setup.sh installs). Run from anywhere:
#
#   bash scripts/build.sh
#   LD_PRELOAD=bin/libzcpcap.so tcpdump -i zc:99@0
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bin
go build -o bin/ ./cmd/... ./examples/...
CC=${CC:-cc}
if ! command -v "$CC" >/dev/null 2>&1; then
  echo "build.sh: no C compiler ($CC): bin/libzcpcap.so not built (apt-get install gcc)" >&2
  exit 1
fi
if ! echo '#include <pcap/pcap.h>' | "$CC" -E -x c - >/dev/null 2>&1; then
  echo "build.sh: no libpcap headers: bin/libzcpcap.so not built (apt-get install libpcap-dev)" >&2
  exit 1
fi
"$CC" -O2 -Wall -Wextra -fPIC -shared -o bin/libzcpcap.so pcapshim/src/zcpcap.c -ldl
echo "build.sh: built $(ls bin | tr '\n' ' ')"
