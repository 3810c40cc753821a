#!/bin/bash
# bench-capture.sh: capture rate under a trafgen flood on a veth pair, for
# zcfabric AF_XDP, zcfabric AF_PACKET and tcpdump (libpcap), in one run.
# Root; needs trafgen (Debian netsniff-ng) and tcpdump. Usage:
#   scripts/bench-capture.sh [SECONDS]
# Prints one line per capture: packets the flood offered (veth TX of the
# sender), packets the capture saw, the drops it counted, and rates; then
# the CPU each capturing process spent during the flood (user+sys from
# /proc/PID/stat) per packet it saw, and the ratio to tcpdump's.
set -eu
D=${1:-10}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
W=$(mktemp -d)
A=zctcapA$$ B=zctcapB$$
cleanup() {
	for p in $(jobs -p); do kill "$p" 2>/dev/null || true; done
	ip netns del $A 2>/dev/null || true
	ip netns del $B 2>/dev/null || true
	rm -rf "$W"
}
trap cleanup EXIT
(cd "$ROOT" && go build -o "$W" ./cmd/zchost ./examples/zcount)
ip netns add $A
ip netns add $B
ip link add vA netns $A type veth peer name vB netns $B
for ns in $A $B; do ip netns exec $ns sysctl -qw net.ipv6.conf.all.disable_ipv6=1; done
ip -n $A link set vA up
ip -n $B link set vB up
MAC=$(ip -n $A -br link show vA | awk '{print $3}')
# 60-byte frames to vA, EtherType 0x88b5 (local experimental).
{
	printf '{ '
	echo "$MAC" | awk -F: '{for(i=1;i<=6;i++) printf "0x%s, ", $i}'
	printf '0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x88, 0xb5, fill(0x00, 46) }\n'
} > "$W/flood.cfg"

txpkts() { ip netns exec $B cat /sys/class/net/vB/statistics/tx_packets; }

flood() { # runs trafgen on one CPU for D seconds; prints packets offered
	local before after
	before=$(txpkts)
	ip netns exec $B timeout -s INT "$D" trafgen -o vB -c "$W/flood.cfg" -P 1 -q >/dev/null 2>&1 || true
	after=$(txpkts)
	echo $((after - before))
}

HZ=$(getconf CLK_TCK)
cputicks() { awk '{print $14 + $15}' "/proc/$1/stat"; } # utime+stime of a pid

cpurep() { # name pid-ticks-delta seen [consumer-ticks-delta]
	awk -v n="$1" -v c="$2" -v s="$3" -v z="${4:-}" -v hz="$HZ" \
		'BEGIN { printf "%-22s CPU %6.2f s  %7.0f ns/packet seen", n, c/hz, (s ? c/hz*1e9/s : 0);
		         if (z != "") printf "  (consumer zcount: %.2f s, %.0f ns/packet)", z/hz, (s ? z/hz*1e9/s : 0);
		         printf "\n" }'
	printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$W/cpu"
}

report() { # name offered seen drops
	awk -v n="$1" -v o="$2" -v s="$3" -v d="$4" -v t="$D" \
		'BEGIN { printf "%-22s offered %10d (%8.0f/s)  seen %10d (%8.0f/s)  drops counted %10d  seen/offered %.2f\n", n, o, o/t, s, s/t, d, (o ? s/o : 0) }'
}

# tcpdump: libpcap's TPACKET_V3 ring, writing to /dev/null.
ip netns exec $A tcpdump -i vA -n -w /dev/null 2>"$W/tcpdump.err" &
TP=$!
sleep 1
C0=$(cputicks $TP)
OFF=$(flood)
C1=$(cputicks $TP)
sleep 0.5
kill -INT $TP
wait $TP || true
SEEN=$(awk '/packets captured/ {print $1}' "$W/tcpdump.err")
DROP=$(awk '/packets dropped by kernel/ {print $1}' "$W/tcpdump.err")
report "tcpdump -w /dev/null" "$OFF" "$SEEN" "$DROP"
cpurep "tcpdump" $((C1 - C0)) "$SEEN"
cat "$W/tcpdump.err" >&2

for SRC in afxdp:vA afpacket:vA; do
	ID=$((0x7d000000 + RANDOM))
	ip netns exec $A "$W/zchost" run -c $ID -i "$SRC" --backing shm --stats-interval 0 >"$W/run.log" 2>&1 &
	ZP=$!
	sleep 1
	"$W/zcount" -i zc:$ID@0 --wait 5s --json --interval 0 >"$W/count.json" 2>/dev/null &
	CP=$!
	sleep 0.5
	C0=$(cputicks $ZP) Z0=$(cputicks $CP)
	OFF=$(flood)
	C1=$(cputicks $ZP) Z1=$(cputicks $CP)
	sleep 0.5
	kill -INT $ZP
	wait $ZP || true
	wait $CP || true
	cat "$W/run.log" >&2
	# seen: what the source handed to the engine; drops: kernel + queue.
	SEEN=$(grep -o 'source total.*' "$W/run.log" | grep -o 'packets=[0-9]*' | head -1 | cut -d= -f2)
	KD=$(grep -o 'kernel_drops=[0-9]*' "$W/run.log" | tail -1 | cut -d= -f2)
	QD=$(grep 'queue total' "$W/run.log" | grep -o 'drops=[0-9]*' | head -1 | cut -d= -f2)
	report "zchost $SRC" "$OFF" "${SEEN:-0}" "$(( ${KD:-0} + ${QD:-0} ))"
	cpurep "zchost $SRC" $((C1 - C0)) "${SEEN:-0}" $((Z1 - Z0))
	echo "  consumer (zcount): $(cat "$W/count.json")"
done
# CPU per packet seen, tcpdump's divided by each capture's (> 1: cheaper
# than tcpdump).
awk -F'\t' -v hz="$HZ" '{ ns = ($3 ? $2/hz*1e9/$3 : 0) }
	NR == 1 { base = ns; next }
	ns > 0 { printf "CPU per packet, tcpdump / %s: %.2fx\n", $1, base / ns }' "$W/cpu"

