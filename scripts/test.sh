#!/usr/bin/env bash
# The test command: vet, the race detector on the packages with shared
# state, then every test (real /dev/shm regions, veth pairs in network
# namespaces, AF_XDP/AF_PACKET sockets, QEMU under TCG). Tests that need
# something this machine lacks (root, QEMU, hugepages) skip and say why.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== go vet"
go vet ./...
echo "== the region format off Linux (ivshmem builds everywhere; the rest is Linux only)"
for goos in darwin windows; do GOOS=$goos go build ./ivshmem; done
echo "== gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go'))
if [ -n "$unformatted" ]; then echo "gofmt would change: $unformatted"; exit 1; fi
echo "== staticcheck"
go tool staticcheck ./...
echo "== go test -race (short) on the core packages"
go test -race -short -count=1 ./ ./ivshmem/... ./guest/... ./host/... ./internal/...
echo "== go test ./..."
# One package at a time: the VM tests (QEMU under TCG) and the capture
# tests (veth floods) each want the two CPUs; side by side they starve
# each other's timing.
go test -p 1 -count=1 -timeout 20m ./...
echo "== fuzz (short)"; bash scripts/fuzz.sh
