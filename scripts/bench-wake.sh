#!/usr/bin/env bash
# Wake-up latency between host processes: zsend at a low rate (each
# packet timestamped as it is made) into zcount --latency, which sleeps
# between packets; prints zcount's median, 99th percentile and maximum of
# (receipt - timestamp).
#
#   scripts/bench-wake.sh [-b BINDIR] [-r RATE] [-n PACKETS] [-F] [-P|-S]
#
# BINDIR holds zchost, zsend and zcount (default: built from this tree).
# -F: then, in the same run, the machine's floor: scripts/wakefloor.c
#     (built with gcc into the temp dir) sends RATE timestamped wake-ups a
#     second through a futex on a shared page from one process to another,
#     with no zcfabric code; prints its line and the ratios of the p50s and
#     p99s (zcount / floor).
# -P: pin the sender to CPU 0 and the receiver to CPU 1 (taskset for zsend
#     and zcount, wakefloor --pin); the agent is not pinned.
# -S: sender and receiver (and the floor's two processes) on CPU 0, the
#     agent on CPU 1. On these VMs a wake-up that crosses vCPUs costs
#     several times one that stays on a vCPU (an idle vCPU is halted and
#     woken through the hypervisor): measure both placements, and compare
#     each with its own floor.
set -eu
BIN='' RATE=1000 N=5000 FLOOR='' PIN='' SAME=''
while getopts b:r:n:FPS o; do
	case $o in
	b) BIN=$OPTARG ;;
	r) RATE=$OPTARG ;;
	n) N=$OPTARG ;;
	F) FLOOR=1 ;;
	P) PIN=1 ;;
	S) SAME=1 ;;
	*) sed -n '2,/^set -eu/p' "$0" | sed '$d' >&2; exit 2 ;;
	esac
done
cd "$(dirname "$0")/.."
W=$(mktemp -d)
trap 'kill $AP 2>/dev/null || true; rm -rf "$W"' EXIT
if [ -n "$FLOOR" ]; then # first: fail before the long build
	gcc -O2 -Wall -Wextra -o "$W/wakefloor" scripts/wakefloor.c
fi
if [ -z "$BIN" ]; then
	BIN=$W/bin
	go build -o "$BIN/" ./cmd/zchost ./examples/zcount ./examples/zsend
fi
ON0=() ON1=() ONA=()
[ -z "$PIN" ] || ON0=(taskset -c 0) ON1=(taskset -c 1)
[ -z "$SAME" ] || ON0=(taskset -c 0) ON1=(taskset -c 0) ONA=(taskset -c 1)
export ZC_DIR=$W
ID=$((20000 + $$ % 10000))
"${ONA[@]}" "$BIN/zchost" run -c $ID -n 1 --queue-buffers 4096 --backing shm --stats-interval 0 2>"$W/agent.log" &
AP=$!
for _ in $(seq 50); do [ -e "$W/zc-$ID" ] && break; sleep 0.1; done
"${ON1[@]}" "$BIN/zcount" -i zc:$ID@0 -n "$N" --interval 0 --latency --json >"$W/count.json" &
CP=$!
sleep 0.3
"${ON0[@]}" "$BIN/zsend" -o zc:$ID@0 -n "$N" -r "$RATE" -l 64 >/dev/null 2>&1
wait $CP
ZL=$(grep -o '"latency_[a-z0-9_]*":[0-9.e+]*' "$W/count.json" | tr '\n' ' ')
echo "$ZL(rate $RATE/s, $N packets)"
[ -n "$FLOOR" ] || exit 0
FL=$("${ON0[@]}" "$W/wakefloor" -r "$RATE" -n "$N" ${PIN:+--pin})
echo "$FL"
# "ratio zcount/floor: p50 6.1x, p99 13.9x" (n/a where a figure is missing)
printf '%s\n%s\n' "$ZL" "$FL" | awk '
function get(line, k,   m) {
	if (match(line, "\"latency_" k "_us\":[0-9.e+]+")) {
		m = substr(line, RSTART, RLENGTH); sub(/.*:/, "", m); return m + 0
	}
	return -1
}
function ratio(a, b) { return (a > 0 && b > 0) ? sprintf("%.1fx", a / b) : "n/a" }
NR == 1 { z50 = get($0, "p50"); z99 = get($0, "p99") }
NR == 2 { f50 = get($0, "p50"); f99 = get($0, "p99") }
END { printf "ratio zcount/floor: p50 %s, p99 %s\n", ratio(z50, f50), ratio(z99, f99) }'
