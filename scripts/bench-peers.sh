#!/usr/bin/env bash
# zcfabric against a real peer on the same two CPUs, one run each, side by
# side: DPDK's memif PMD between two dpdk-testpmd processes (txonly into
# rxonly, 64-byte frames, burst 32, one forwarding CPU each, --no-huge),
# and zsend into zcount through a zcfabric queue (sender on CPU 0,
# receiver on CPU 1, no --verify; zcount's rate is taken from its first
# packet to its last), then BenchmarkTwoProc/32 (the same crossing
# without the tools' work), with the producer on Alloc/SendBurst (queue)
# and on its fast path, Reserve/Commit (burst), which zsend uses.
#
#   scripts/bench-peers.sh [-s SECONDS] [-n PACKETS]
#
# Needs Debian's dpdk-dev package (dpdk-testpmd) for the memif half; without
# it that half is skipped and said so. Run as root on a quiet machine.
set -eu
SECS=10 N=50000000
while getopts s:n: o; do
	case $o in
	s) SECS=$OPTARG ;;
	n) N=$OPTARG ;;
	*) sed -n '2,/^set -eu/p' "$0" | sed '$d' >&2; exit 2 ;;
	esac
done
cd "$(dirname "$0")/.."
W=$(mktemp -d)
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$W"' EXIT
go build -o "$W/" ./cmd/zchost ./examples/zcount ./examples/zsend

# memif: testpmd rxonly (server) and txonly (client).
if command -v dpdk-testpmd >/dev/null; then
	S=$W/memif.sock
	common="--no-huge -m 1024 --no-pci --no-telemetry"
	# testpmd without -i forwards until its stdin ends: keep it open.
	sleep $((SECS + 12)) | dpdk-testpmd -l 0,1 --main-lcore 0 $common --file-prefix rx --vdev=net_memif0,role=server,socket=$S -- \
		--forward-mode=rxonly --nb-cores=1 --burst=32 --total-num-mbufs=32768 --stats-period 1 >"$W/rx.log" 2>&1 &
	PIDS+=($!)
	sleep 2
	sleep $((SECS + 8)) | dpdk-testpmd -l 0,1 --main-lcore 1 $common --file-prefix tx --vdev=net_memif0,role=client,socket=$S -- \
		--forward-mode=txonly --txpkts=64 --nb-cores=1 --burst=32 --total-num-mbufs=32768 --stats-period 1 >"$W/tx.log" 2>&1 &
	PIDS+=($!)
	sleep $((SECS + 5)) # the link takes a few seconds to come up
	pkill -f "file-prefix (rx|tx) --vdev=net_memif0,role=(server|client),socket=$S" 2>/dev/null || true
	wait 2>/dev/null || true
	PIDS=()
	# The rx rates once the link is up: the median of the last SECS.
	MEMIF=$(grep -o 'Rx-pps: *[0-9]*' "$W/rx.log" | awk '{print $2}' | awk '$1 > 0' | tail -n "$SECS" | sort -n | awk '{a[NR]=$1} END {if (NR) print a[int((NR+1)/2)]; else print 0}')
	echo "memif (dpdk-testpmd txonly -> rxonly): $MEMIF pps rx (median of the last ${SECS} s)"
else
	MEMIF=0
	echo "memif: skipped (no dpdk-testpmd: apt-get install dpdk-dev)"
fi

# zcfabric: zsend -> queue -> zcount.
export ZC_DIR=$W
ID=$((30000 + $$ % 20000))
"$W/zchost" run -c $ID -n 1 --queue-buffers 4096 --backing shm --stats-interval 0 2>"$W/agent.log" &
PIDS+=($!)
for _ in $(seq 50); do [ -e "$W/zc-$ID" ] && break; sleep 0.1; done
taskset -c 1 "$W/zcount" -i zc:$ID@0 -n "$N" --interval 0 --json >"$W/count.json" &
CP=$!
sleep 0.5
taskset -c 0 "$W/zsend" -o zc:$ID@0 -n "$N" -l 64 >"$W/send.out" 2>&1
wait $CP
ZC=$(grep -o '"pps":[0-9.e+]*' "$W/count.json" | cut -d: -f2)
echo "zcfabric (zsend -> zcount, $N packets; pps from the first packet to the last): $ZC pps"
awk -v z="$ZC" -v m="$MEMIF" 'BEGIN { if (m > 0) printf "ratio zcfabric/memif: %.2fx\n", z/m }'

# The crossing itself, without the tools' work: BenchmarkTwoProc/32 (this
# process on CPU 0 into a child on CPU 1, through a region on /dev/shm).
go test -c -o "$W/zc.test" .
for b in queue burst; do
	TP=$("$W/zc.test" -test.run '^$' -test.bench "BenchmarkTwoProc/32/$b\$" -test.benchtime 2s 2>/dev/null |
		awk '{ for (i = 1; i < NF; i++) if ($(i+1) == "pkts/s") print $i }')
	echo "BenchmarkTwoProc/32/$b: $TP pkts/s"
	awk -v z="$TP" -v m="$MEMIF" -v b="$b" 'BEGIN { if (m > 0 && z > 0) printf "ratio BenchmarkTwoProc/32/%s / memif: %.2fx\n", b, z/m }'
done
