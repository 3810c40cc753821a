#!/bin/bash
# bench-capture.sh: capture rate under a trafgen flood on a veth pair, for
# zcfabric AF_XDP, zcfabric AF_PACKET and tcpdump (libpcap), in one run.
# Root; needs trafgen (Debian netsniff-ng) and tcpdump. Usage:
#   scripts/bench-capture.sh [SECONDS]
# Prints one line per capture: packets the flood offered (veth TX of the
# sender), packets the capture saw, the drops it counted, and rates.
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

report() { # name offered seen drops
	awk -v n="$1" -v o="$2" -v s="$3" -v d="$4" -v t="$D" \
		'BEGIN { printf "%-22s offered %10d (%8.0f/s)  seen %10d (%8.0f/s)  drops counted %10d  seen/offered %.2f\n", n, o, o/t, s, s/t, d, (o ? s/o : 0) }'
}

# tcpdump: libpcap's TPACKET_V3 ring, writing to /dev/null.
ip netns exec $A tcpdump -i vA -n -w /dev/null 2>"$W/tcpdump.err" &
TP=$!
sleep 1
OFF=$(flood)
sleep 0.5
kill -INT $TP
wait $TP || true
SEEN=$(awk '/packets captured/ {print $1}' "$W/tcpdump.err")
DROP=$(awk '/packets dropped by kernel/ {print $1}' "$W/tcpdump.err")
report "tcpdump -w /dev/null" "$OFF" "$SEEN" "$DROP"
cat "$W/tcpdump.err" >&2

for SRC in afxdp:vA afpacket:vA; do
	ID=$((0x7d000000 + RANDOM))
	ip netns exec $A "$W/zchost" run -c $ID -i "$SRC" --backing shm --stats-interval 0 >"$W/run.log" 2>&1 &
	ZP=$!
	sleep 1
	"$W/zcount" -i zc:$ID@0 --wait 5s --json --interval 0 >"$W/count.json" 2>/dev/null &
	CP=$!
	sleep 0.5
	OFF=$(flood)
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
	echo "  consumer (zcount): $(cat "$W/count.json")"
done
