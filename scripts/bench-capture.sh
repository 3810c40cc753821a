#!/bin/bash
# bench-capture.sh: capture rate of zcfabric AF_XDP, zcfabric AF_PACKET and
# tcpdump (libpcap) under the same flood on a veth pair, one capture after
# the other in one run. Root; needs tcpdump, ethtool and (for -g trafgen)
# trafgen from Debian's netsniff-ng.
#
# Usage: scripts/bench-capture.sh [-g xdp|trafgen] [-t] [-r RING] [SECONDS]
#
#   -g xdp      (default) `zchost flood`: frames built in the kernel (XDP
#               live frames) and pushed into the capture side's veth ring,
#               as a NIC's DMA would, from CPU 0. The receive path (XDP or
#               the skb path, then the copy into the capture's ring) runs in
#               softirq on CPU 0 too, as on the IRQ core of a NIC; the
#               capturing processes run on CPU 1. Frames the ring had no
#               room for are counted by veth (ethtool -S: xdp_xmit_errors).
#   -g trafgen  trafgen -P 1 on CPU 0 through the socket and skb path: on a
#               small machine it offers less than any capture takes.
#   -t          threaded NAPI on the receiving veth, its thread pinned to
#               the capture CPU: receive path and capture share one core.
#   -r RING     AF_XDP fill/RX ring size (afxdp:vA?ring=RING; default 4096).
#
# Per capture it prints what the generator offered, what the receiving veth
# processed, what the capture saw and the drops it counted, with rates;
# the CPU each capturing process used; and at the end the rate of each
# zcfabric capture divided by tcpdump's.
set -eu
GEN=xdp THREADED=0 XSKOPT=
while getopts g:tr: o; do
	case $o in
	g) GEN=$OPTARG ;;
	t) THREADED=1 ;;
	r) XSKOPT="?ring=$OPTARG" ;;
	*) sed -n '2,/^set -eu/p' "$0" | sed '$d' >&2; exit 2 ;;
	esac
done
shift $((OPTIND - 1))
D=${1:-8}
case $GEN in xdp | trafgen) ;; *) echo "bench-capture: -g $GEN: want xdp or trafgen" >&2; exit 2 ;; esac
for t in tcpdump ethtool $([ "$GEN" = trafgen ] && echo trafgen); do
	command -v $t >/dev/null || { echo "bench-capture: needs $t (scripts/setup.sh installs it)" >&2; exit 1; }
done
NCPU=$(nproc)
GCPU=0 CCPU=$((NCPU > 1 ? 1 : 0))
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
if [ "$GEN" = xdp ]; then
	# XDP frames need NAPI on the receiving veth: GRO gives it without an
	# XDP program, so tcpdump's path has none.
	ip netns exec $A ethtool -K vA gro on
fi
if [ $THREADED = 1 ]; then
	ip netns exec $A sh -c 'echo 1 > /sys/class/net/vA/threaded'
fi
# trafgen: 60-byte frames to vA, EtherType 0x88b5 (local experimental).
{
	printf '{ '
	echo "$MAC" | awk -F: '{for(i=1;i<=6;i++) printf "0x%s, ", $i}'
	printf '0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x88, 0xb5, fill(0x00, 46) }\n'
} > "$W/flood.cfg"

stat() { ip netns exec "$1" cat "/sys/class/net/$2/statistics/$3"; }
xmiterr() { ip netns exec $B ethtool -S vB | awk '/xdp_xmit_errors/ {s += $2} END {print s + 0}'; }
pinnapi() {
	[ $THREADED = 1 ] || return 0
	for p in $(pgrep '^napi/vA' || true); do taskset -p -c $CCPU "$p" >/dev/null; done
}

# flood runs the generator on CPU $GCPU for D seconds and sets OFF (frames
# offered), RING (frames the receiving ring refused) and RX (frames vA's
# receive path processed).
flood() {
	local t0 e0 r0
	pinnapi
	t0=$(stat $B vB tx_packets) e0=$(xmiterr) r0=$(stat $A vA rx_packets)
	if [ "$GEN" = xdp ]; then
		ip netns exec $B taskset -c $GCPU "$W/zchost" flood -o vB --dst "$MAC" --ethertype 0x88b5 \
			-d "${D}s" --stats-interval 0 >"$W/flood.log" 2>&1
		OFF=$(grep -o 'sent=[0-9]*' "$W/flood.log" | tail -1 | cut -d= -f2)
	else
		ip netns exec $B taskset -c $GCPU timeout -s INT "$D" trafgen -o vB -c "$W/flood.cfg" -P 1 -q >/dev/null 2>&1 || true
		OFF=$(($(stat $B vB tx_packets) - t0))
	fi
	RING=$(($(xmiterr) - e0))
	RX=$(($(stat $A vA rx_packets) - r0))
}

HZ=$(getconf CLK_TCK)
cputicks() { awk '{print $14 + $15}' "/proc/$1/stat"; } # utime+stime of a pid

# report NAME SEEN DROPS CPU-TICKS [CONSUMER-TICKS [DELIVERED]]
report() {
	awk -v n="$1" -v o="$OFF" -v r="$RING" -v x="$RX" -v s="$2" -v d="$3" -v t="$D" -v c="$4" -v z="${5:-}" -v hz="$HZ" 'BEGIN {
		printf "%-20s offered %9.0f/s  ring full %9.0f/s  received %9.0f/s  SEEN %9.0f/s  drops counted %9d  seen/offered %.2f\n",
			n, o/t, r/t, x/t, s/t, d, (o ? s/o : 0)
		printf "%-20s CPU of the capturing process %.2f s (%.0f ns/packet seen)", "", c/hz, (s ? c/hz*1e9/s : 0)
		if (z != "") printf ", consumer zcount %.2f s", z/hz
		printf "\n" }'
	printf '%s\t%s\t%s\n' "$1" "$2" "${6:-$2}" >>"$W/seen"
}

echo "flood: $GEN on CPU $GCPU for ${D}s; captures on CPU $CCPU; threaded NAPI: $([ $THREADED = 1 ] && echo "yes, on CPU $CCPU" || echo no)"

# tcpdump: libpcap's TPACKET_V3 ring, writing to /dev/null.
ip netns exec $A taskset -c $CCPU tcpdump -i vA -n -w /dev/null 2>"$W/tcpdump.err" &
TP=$!
sleep 1
C0=$(cputicks $TP)
flood
C1=$(cputicks $TP)
sleep 0.5
kill -INT $TP
wait $TP || true
SEEN=$(awk '/packets captured/ {print $1}' "$W/tcpdump.err")
DROP=$(awk '/packets dropped by kernel/ {print $1}' "$W/tcpdump.err")
report "tcpdump" "$SEEN" "$DROP" $((C1 - C0))

for SRC in afxdp:vA$XSKOPT afpacket:vA; do
	ID=$((0x7d000000 + RANDOM))
	ip netns exec $A taskset -c $CCPU "$W/zchost" run -c $ID -i "$SRC" --backing shm --stats-interval 0 >"$W/run.log" 2>&1 &
	ZP=$!
	sleep 1
	taskset -c $CCPU "$W/zcount" -i zc:$ID@0 --wait 5s --json --interval 0 >"$W/count.json" 2>/dev/null &
	CP=$!
	sleep 0.5
	C0=$(cputicks $ZP) Z0=$(cputicks $CP)
	flood
	C1=$(cputicks $ZP) Z1=$(cputicks $CP)
	sleep 0.5
	kill -INT $ZP
	wait $ZP || true
	wait $CP || true
	# seen: what the source handed to the engine; drops: kernel + queue.
	SEEN=$(grep -o 'source total.*' "$W/run.log" | grep -o 'packets=[0-9]*' | head -1 | cut -d= -f2)
	KD=$(grep -o 'kernel_drops=[0-9]*' "$W/run.log" | tail -1 | cut -d= -f2)
	QD=$(grep 'queue total' "$W/run.log" | grep -o 'drops=[0-9]*' | head -1 | cut -d= -f2)
	GOT=$(grep -o '"packets":[0-9]*' "$W/count.json" | cut -d: -f2)
	report "zchost $SRC" "${SEEN:-0}" "$((${KD:-0} + ${QD:-0}))" $((C1 - C0)) $((Z1 - Z0)) "${GOT:-0}"
	echo "                     kernel drops ${KD:-0}, queue drops ${QD:-0}; zcount: $(cat "$W/count.json")"
done
# seen: captured into the cluster; delivered: read by zcount (tcpdump's
# own reading is its "captured").
awk -F'\t' 'NR == 1 { base = $2; next } base > 0 {
	printf "%-26s / tcpdump: packets seen %.2fx, delivered to the consumer %.2fx\n", $1, $2 / base, $3 / base }' "$W/seen"
