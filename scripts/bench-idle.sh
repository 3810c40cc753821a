#!/usr/bin/env bash
# Idle cost: the CPU an agent and a consumer use on a queue carrying a
# trickle (10 packets/s by default), from /proc/PID/stat over a window.
#
#   scripts/bench-idle.sh [-b BINDIR] [-r RATE] [-s SECONDS]
#
# BINDIR holds zchost and zcount (default: built from this tree into a
# temporary folder). Prints one line: agent and consumer CPU in percent of
# one CPU, and the packets the consumer counted.
set -eu
BIN= RATE=10 SECS=10
while getopts b:r:s: o; do
	case $o in
	b) BIN=$OPTARG ;;
	r) RATE=$OPTARG ;;
	s) SECS=$OPTARG ;;
	*) sed -n '2,/^set -eu/p' "$0" | sed '$d' >&2; exit 2 ;;
	esac
done
cd "$(dirname "$0")/.."
W=$(mktemp -d)
trap 'kill $AP $CP 2>/dev/null || true; rm -rf "$W"' EXIT
if [ -z "$BIN" ]; then
	BIN=$W/bin
	go build -o "$BIN/" ./cmd/zchost ./examples/zcount
fi
export ZC_DIR=$W
ID=$((40000 + $$ % 20000))
"$BIN/zchost" run -c $ID -i gen:len=64,rate=$RATE -n 1 --backing shm --stats-interval 0 2>"$W/agent.log" &
AP=$!
for _ in $(seq 50); do [ -e "$W/zc-$ID" ] && break; sleep 0.1; done
"$BIN/zcount" -i zc:$ID@0 --interval 0 --json >"$W/count.json" &
CP=$!
sleep 2 # past start-up
# CPU time in ns of every thread of a process (schedstat: ns precision;
# /proc/PID/stat counts 10 ms ticks).
cpuns() { cat /proc/$1/task/*/schedstat | awk '{s += $1} END {printf "%.0f", s}'; }
a0=$(cpuns $AP) c0=$(cpuns $CP)
sleep "$SECS"
a1=$(cpuns $AP) c1=$(cpuns $CP)
kill -INT $CP; wait $CP || true
kill -INT $AP; wait $AP || true
awk -v a=$((a1 - a0)) -v c=$((c1 - c0)) -v s="$SECS" -v r="$RATE" 'BEGIN {
	printf "rate %s/s over %ss: agent %.3f%% of a CPU, consumer %.3f%%\n", r, s, 100*a/1e9/s, 100*c/1e9/s }'
grep -o '"packets":[0-9]*' "$W/count.json" || true
