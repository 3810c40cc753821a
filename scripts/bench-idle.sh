#!/usr/bin/env bash
# Idle cost: the CPU an agent and a consumer use on a queue carrying a
# trickle (10 packets/s by default), from /proc/PID/stat over a window.
#
#   scripts/bench-idle.sh [-b BINDIR] [-r RATE] [-s SECONDS] [-i IFACE] [-F]
#
# -i captures from IFACE (afpacket:IFACE) instead of generating: with a
# quiet interface, an idle capture (root; e.g. one end of a veth pair:
# ip link add zci0 type veth peer name zci1; ip link set zci0 up).
#
# -F measures the floor instead: a Go program that does nothing but sleep
# RATE times a second (time.Sleep, then nanosleep(2) on its thread), the
# least a process woken per packet can cost on this machine.
#
# BINDIR holds zchost and zcount (default: built from this tree into a
# temporary folder). Prints one line: agent and consumer CPU in percent of
# one CPU, and the packets the consumer counted.
set -eu
BIN= RATE=10 SECS=10 FLOOR= IFACE=
while getopts b:r:s:i:F o; do
	case $o in
	b) BIN=$OPTARG ;;
	i) IFACE=$OPTARG ;;
	r) RATE=$OPTARG ;;
	s) SECS=$OPTARG ;;
	F) FLOOR=1 ;;
	*) sed -n '2,/^set -eu/p' "$0" | sed '$d' >&2; exit 2 ;;
	esac
done
cd "$(dirname "$0")/.."
# On tmpfs, like the default $ZC_DIR (/dev/shm): the agent writes its
# status file there.
W=$(mktemp -d /dev/shm/zcidle-XXXX 2>/dev/null || mktemp -d)
# CPU time in ns of every thread of a process (schedstat: ns precision;
# /proc/PID/stat counts 10 ms ticks).
cpuns() { cat /proc/$1/task/*/schedstat | awk '{s += $1} END {printf "%.0f", s}'; }
if [ -n "$FLOOR" ]; then
	mkdir -p "$W/floor"
	cat >"$W/floor/main.go" <<'GO'
package main

import (
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	rate, _ := strconv.ParseFloat(os.Args[2], 64)
	d := time.Duration(float64(time.Second) / rate)
	for {
		if os.Args[1] == "nanosleep" {
			ts := unix.NsecToTimespec(int64(d))
			unix.Nanosleep(&ts, nil)
		} else {
			time.Sleep(d)
		}
	}
}
GO
	go build -o "$W/floorbin" "$W/floor/main.go"
	for m in time.Sleep nanosleep; do
		"$W/floorbin" $m "$RATE" & P=$!
		sleep 1
		a=$(cpuns $P); sleep "$SECS"; b=$(cpuns $P)
		kill $P; wait $P 2>/dev/null || true
		awk -v d=$((b - a)) -v s="$SECS" -v r="$RATE" -v m=$m 'BEGIN {
			printf "floor: a Go program doing only %s %s times/s: %.3f%% of a CPU\n", m, r, 100*d/1e9/s }'
	done
	rm -rf "$W"
	exit 0
fi
trap 'kill $AP $CP 2>/dev/null || true; rm -rf "$W"' EXIT
if [ -z "$BIN" ]; then
	BIN=$W/bin
	go build -o "$BIN/" ./cmd/zchost ./examples/zcount
fi
export ZC_DIR=$W
ID=$((40000 + $$ % 20000))
SRC=gen:len=64,rate=$RATE
if [ -n "$IFACE" ]; then
	SRC=afpacket:$IFACE RATE="capture from $IFACE"
fi
"$BIN/zchost" run -c $ID -i "$SRC" -n 1 --backing shm --stats-interval 0 2>"$W/agent.log" &
AP=$!
for _ in $(seq 50); do [ -e "$W/zc-$ID" ] && break; sleep 0.1; done
"$BIN/zcount" -i zc:$ID@0 --interval 0 --json >"$W/count.json" &
CP=$!
sleep 2 # past start-up
a0=$(cpuns $AP) c0=$(cpuns $CP)
sleep "$SECS"
a1=$(cpuns $AP) c1=$(cpuns $CP)
kill -INT $CP; wait $CP || true
kill -INT $AP; wait $AP || true
awk -v a=$((a1 - a0)) -v c=$((c1 - c0)) -v s="$SECS" -v r="$RATE" 'BEGIN {
	if (r !~ /^capture/) r = "rate " r "/s"
	printf "%s over %ss: agent %.3f%% of a CPU, consumer %.3f%%\n", r, s, 100*a/1e9/s, 100*c/1e9/s }'
grep -o '"packets":[0-9]*' "$W/count.json" || true
