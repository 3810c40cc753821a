#!/bin/bash
# bench-capture.sh: capture rate of zcfabric AF_XDP, zcfabric AF_PACKET and
# tcpdump (libpcap) under the same flood on a veth pair, one capture after
# the other in one run. Root; needs tcpdump, ethtool and (for -g trafgen)
# trafgen from Debian's netsniff-ng.
#
# Usage: scripts/bench-capture.sh [-g xdp|trafgen] [-t] [-r RING] [SECONDS]
#        scripts/bench-capture.sh -s [-l] [-n COUNT] [-b BINDIR] [SECONDS]
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
#   -s          capture tools on a queue instead (libzcpcap.so, issue 11):
#               tcpdump -w /dev/null through the shim, zcount, and
#               zdump -w - | tcpdump -r - -w /dev/null, each on CPU 1
#               reading a queue that `zchost run -i gen:len=64,count=COUNT`
#               (-n, default 20000000) fills from CPU 0 at full speed,
#               dropping what finds the queue full (-l: --lossless, the
#               generator waits for the reader); then tcpdump on the veth
#               under the XDP flood of 64-byte frames for SECONDS. Needs
#               cc and libpcap-dev for the shim (or -b).
#   -b BINDIR   zchost, zcount, zdump and libzcpcap.so already built there
#               (default: built from this tree into a temporary directory).
#
# Per capture it prints what the generator offered, what the receiving veth
# processed, what the capture saw and the drops it counted, with rates;
# the CPU each capturing process used; and at the end the rate of each
# zcfabric capture divided by tcpdump's.
set -eu
GEN=xdp THREADED=0 XSKOPT= SHIM=0 N=20000000 BIN= FLEN=60 LOSSLESS=
while getopts g:tr:sn:b:l o; do
	case $o in
	g) GEN=$OPTARG ;;
	t) THREADED=1 ;;
	r) XSKOPT="?ring=$OPTARG" ;;
	s) SHIM=1 FLEN=64 ;;
	n) N=$OPTARG ;;
	l) LOSSLESS=--lossless ;;
	b) BIN=$(cd "$OPTARG" && pwd) ;;
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
if [ -z "$BIN" ]; then
	BIN=$W
	(cd "$ROOT" && go build -o "$W" ./cmd/zchost ./examples/zcount ./examples/zdump)
	[ $SHIM = 0 ] || cc -O2 -fPIC -shared -o "$W/libzcpcap.so" "$ROOT/pcapshim/src/zcpcap.c" -ldl # as scripts/build.sh
fi
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
		ip netns exec $B taskset -c $GCPU "$BIN/zchost" flood -o vB --dst "$MAC" --ethertype 0x88b5 --len $FLEN \
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

if [ $SHIM = 1 ]; then
	VETH_PPS=$(awk -v s="$SEEN" -v t="$D" 'BEGIN {printf "%.0f", s / t}')
	VETH_NS=$(awk -v c=$((C1 - C0)) -v s="$SEEN" -v hz="$HZ" 'BEGIN {printf "%.0f", s ? c / hz * 1e9 / s : 0}')
	ZC_DIR=$(mktemp -d /dev/shm/zcbench.XXXXXX) # the queues' regions
	export ZC_DIR
	trap 'cleanup; rm -rf "$ZC_DIR"' EXIT
	# cpuof FILE CMD...: runs CMD and writes to FILE the CPU ticks
	# (user+sys) it and its children used: cutime+cstime in
	# /proc/PID/stat of this subshell once CMD has been waited for.
	cpuof() {
		local f=$1 s=0
		shift
		"$@" || s=$?
		awk '{print $16 + $17}' "/proc/$BASHPID/stat" >"$f"
		return $s
	}
	export -f cpuof
	export BIN W N PRELOAD="$BIN/libzcpcap.so"
	# qrun NAME CMD: zchost's generator (CPU $GCPU) writes N 64-byte
	# frames into a queue as fast as it can, dropping what finds the queue
	# full (-l: waiting for room instead), while CMD (a bash command line;
	# $Q is the queue's name), on CPU $CCPU, reads it. When the generator
	# is done, zchost closes the cluster and the readers exit. packets/s:
	# what the reader took (the queue's received_reported) over the
	# generator's time (zchost "sources done: seconds"); CPU per packet:
	# CMD's user+sys over what it took.
	qrun() {
		local name=$1 cmd=$2 id=$((0x7e000000 + RANDOM)) i zp rp
		rm -f "$W"/c*.cpu "$W/gen.cpu"
		( cpuof "$W/gen.cpu" taskset -c $GCPU "$BIN/zchost" run -c $id -i gen:len=64,count=$N $LOSSLESS --keep \
			--wait-consumers 60s --backing shm --stats-interval 0 ) >"$W/q.log" 2>&1 &
		zp=$!
		for i in $(seq 200); do [ -e "$ZC_DIR/zc-$id" ] && break; sleep 0.05; done
		( cpuof "$W/c.cpu" taskset -c $CCPU env Q=zc:$id@0 bash -c "$cmd" ) >"$W/q.out" 2>&1 &
		rp=$!
		for i in $(seq 1200); do grep -q 'sources done' "$W/q.log" && break; sleep 0.1; done
		sleep 0.5 # the reader takes what is left in the queue
		pkill -INT -P $zp -x zchost || true # zchost is taskset's exec'd child of the cpuof subshell
		wait $zp || true
		wait $rp || true
		local secs got sent drops
		secs=$(grep -o 'sources done:.*' "$W/q.log" | grep -o 'seconds=[0-9.e+-]*' | cut -d= -f2)
		got=$(grep 'queue total' "$W/q.log" | grep -o 'received_reported=[0-9]*' | cut -d= -f2)
		sent=$(grep 'queue total' "$W/q.log" | grep -o 'sent=[0-9]*' | cut -d= -f2)
		drops=$(grep 'queue total' "$W/q.log" | grep -o 'drops=[0-9]*' | head -1 | cut -d= -f2)
		if [ -z "$secs" ] || [ "${got:-0}" = 0 ] || [ ! -s "$W/c.cpu" ]; then
			echo "bench-capture: $name failed:" >&2
			cat "$W/q.out" "$W/q.log" >&2
			exit 1
		fi
		awk -v n="$name" -v N="$got" -v t="$secs" -v c="$(cat "$W/c.cpu")" -v g="$(cat "$W/gen.cpu")" \
			-v p1="$(cat "$W/c1.cpu" 2>/dev/null)" -v p2="$(cat "$W/c2.cpu" 2>/dev/null)" -v hz="$HZ" \
			-v s="$sent" -v d="$drops" 'BEGIN {
			printf "%-40s %10.0f packets/s  CPU %6.1f ns/packet", n, N / t, c / hz * 1e9 / N
			if (p1 != "") printf " (zdump %.1f + tcpdump %.1f)", p1 / hz * 1e9 / N, p2 / hz * 1e9 / N
			printf "  [read %d of %d sent + %d dropped in %.2f s; zchost CPU %.0f%%]\n", N, s, d, t, g / hz / t * 100
			printf "%s\t%.0f\t%.1f\n", n, N / t, c / hz * 1e9 / N >> (ENVIRON["W"] "/shim") }'
	}
	echo "queues: zchost run -i gen:len=64,count=$N $LOSSLESS on CPU $GCPU; readers on CPU $CCPU; load: $(cut -d' ' -f1-3 /proc/loadavg), CPU pressure: $(awk '/some/ {print $2}' /proc/pressure/cpu 2>/dev/null)"
	qrun "tcpdump via libzcpcap.so" 'LD_PRELOAD=$PRELOAD tcpdump -i $Q -n -w /dev/null'
	qrun "zcount" '"$BIN/zcount" -i $Q --interval 0 --json'
	qrun "zdump -w - | tcpdump -r - -w /dev/null" \
		'cpuof $W/c1.cpu "$BIN/zdump" -i $Q -w - | cpuof $W/c2.cpu tcpdump -r - -w /dev/null'
	printf '%-40s %10.0f packets/s  CPU %6.1f ns/packet (tcpdump only; the receive path runs on CPU %s)\n' \
		"tcpdump on the veth (AF_PACKET)" "$VETH_PPS" "$VETH_NS" "$GCPU"
	awk -F'\t' -v v="$VETH_PPS" 'NR == 1 {t = $2} $1 == "zcount" {z = $2} END {
		printf "shim tcpdump / veth tcpdump: %.2fx (goal >= 3)\n", t / v
		printf "zcount / shim tcpdump:       %.2fx (goal <= 2)\n", z / t }' "$W/shim"
	echo "load at the end: $(cut -d' ' -f1-3 /proc/loadavg), CPU pressure: $(awk '/some/ {print $2}' /proc/pressure/cpu 2>/dev/null)"
	exit 0
fi

for SRC in afxdp:vA$XSKOPT afpacket:vA; do
	ID=$((0x7d000000 + RANDOM))
	ip netns exec $A taskset -c $CCPU "$BIN/zchost" run -c $ID -i "$SRC" --backing shm --stats-interval 0 >"$W/run.log" 2>&1 &
	ZP=$!
	sleep 1
	taskset -c $CCPU "$BIN/zcount" -i zc:$ID@0 --wait 5s --json --interval 0 >"$W/count.json" 2>/dev/null &
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
