#!/usr/bin/env bash
# Wake-up latency between host processes: zsend at a low rate (each
# packet timestamped as it is made) into zcount --latency, which sleeps
# between packets; prints zcount's median, 99th percentile and maximum of
# (receipt - timestamp).
#
#   scripts/bench-wake.sh [-b BINDIR] [-r RATE] [-n PACKETS]
#
# BINDIR holds zchost, zsend and zcount (default: built from this tree).
set -eu
BIN= RATE=1000 N=5000
while getopts b:r:n: o; do
	case $o in
	b) BIN=$OPTARG ;;
	r) RATE=$OPTARG ;;
	n) N=$OPTARG ;;
	*) sed -n '2,/^set -eu/p' "$0" | sed '$d' >&2; exit 2 ;;
	esac
done
cd "$(dirname "$0")/.."
W=$(mktemp -d)
trap 'kill $AP 2>/dev/null || true; rm -rf "$W"' EXIT
if [ -z "$BIN" ]; then
	BIN=$W/bin
	go build -o "$BIN/" ./cmd/zchost ./examples/zcount ./examples/zsend
fi
export ZC_DIR=$W
ID=$((20000 + $$ % 10000))
"$BIN/zchost" run -c $ID -n 1 --queue-buffers 4096 --backing shm --stats-interval 0 2>"$W/agent.log" &
AP=$!
for _ in $(seq 50); do [ -e "$W/zc-$ID" ] && break; sleep 0.1; done
"$BIN/zcount" -i zc:$ID@0 -n "$N" --interval 0 --latency --json >"$W/count.json" &
CP=$!
sleep 0.3
"$BIN/zsend" -o zc:$ID@0 -n "$N" -r "$RATE" -l 64 >/dev/null 2>&1
wait $CP
grep -o '"latency_[a-z0-9_]*":[0-9.e+]*' "$W/count.json" | tr '\n' ' '
echo "(rate $RATE/s, $N packets)"
