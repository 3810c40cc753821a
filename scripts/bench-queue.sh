#!/usr/bin/env bash
# The packet path of two builds side by side: BenchmarkQueue/32 (two
# goroutines, CPU 0 and 1) and BenchmarkTwoProc/32 (two processes) of a
# base revision (default: the last commit of format v1) and of this tree,
# alternating run by run so both see the same machine, then the median
# and best of each and their ratios (also round by round: the median of
# each round's tree/base). Each run also carries its same-run
# baselines: BenchmarkQueue/32/bare (the same exchange over the same rings
# with none of the queue's work: the floor of this shape, this tree only)
# and BenchmarkTwoProc/32/socket (a unix socket pair). floor-producer and
# floor-consumer (this tree only) are the floor's producer in front of the
# queue's consumer and the queue's fast producer in front of the floor's
# consumer: what each end alone costs, against base. Both benchmarks
# also run this tree's producer fast path (Reserve/Commit: the "burst"
# rows), compared with the base's queue (Alloc/SendBurst, v1 has no other).
#
#   scripts/bench-queue.sh [-r BASE_REV] [-k ROUNDS] [-t BENCHTIME]
#
# The machines here are shared VMs whose speed changes by 2-3x within
# seconds: the best of many short runs is the steadier figure, the median
# says what a run usually gets. Run on an otherwise idle machine.
set -eu
BASE=f2fd8ae K=10 T=0.5s
while getopts r:k:t: o; do
	case $o in
	r) BASE=$OPTARG ;;
	k) K=$OPTARG ;;
	t) T=$OPTARG ;;
	*) sed -n '2,/^set -eu/p' "$0" | sed '$d' >&2; exit 2 ;;
	esac
done
cd "$(dirname "$0")/.."
W=$(mktemp -d)
trap 'git worktree remove --force "$W/base" 2>/dev/null || true; rm -rf "$W"' EXIT
git worktree add --detach "$W/base" "$BASE" >/dev/null 2>&1
(cd "$W/base" && go test -c -o "$W/base.test" .)
go test -c -o "$W/tree.test" .

# run BIN PATTERN: "name pkts/s" per sub-benchmark.
run() {
	"$1" -test.run '^$' -test.bench "$2" -test.benchtime "$T" 2>/dev/null |
		awk '/pkts\/s/ { for (i = 1; i < NF; i++) if ($(i+1) == "pkts/s") { n = $1; sub(/-[0-9]+$/, "", n); print n, $i } }'
}
for r in $(seq "$K"); do
	for b in base tree; do
		run "$W/$b.test" 'BenchmarkQueue/32/(queue|burst|bare|floor-producer|floor-consumer)$' | sed "s/^/$b /"
		run "$W/$b.test" 'BenchmarkTwoProc/32/(queue|burst|socket)$' | sed "s/^/$b /"
	done
done >"$W/all"
echo "base $BASE against this tree ($(git rev-parse --short HEAD)$(git diff --quiet || echo +changes)), $K rounds of $T, M pkts/s:"
awk '
{ k = $1 " " $2; v[k, ++n[k]] = $3 / 1e6 }
END {
	for (k in n) {
		m = n[k]
		for (i = 1; i <= m; i++) a[i] = v[k, i]
		for (i = 2; i <= m; i++) { x = a[i]; for (j = i - 1; j >= 1 && a[j] > x; j--) a[j+1] = a[j]; a[j+1] = x }
		med[k] = (m % 2) ? a[(m+1)/2] : (a[m/2] + a[m/2+1]) / 2
		best[k] = a[m]
		printf "  %-40s median %6.1f  best %6.1f  (%d runs)\n", k, med[k], best[k], m
	}
	split("BenchmarkQueue/32/queue BenchmarkTwoProc/32/queue", bs, " ")
	for (i = 1; i <= 2; i++) {
		b = bs[i]
		if (med["base " b] > 0)
			printf "  tree/base %-30s median %.2fx  best %.2fx\n", b, med["tree " b] / med["base " b], best["tree " b] / best["base " b]
		f = b; sub(/queue$/, "burst", f)
		if (med["base " b] > 0 && med["tree " f] > 0)
			printf "  tree %s/base %s  median %.2fx  best %.2fx\n", f, b, med["tree " f] / med["base " b], best["tree " f] / best["base " b]
	}
	# The same ratios round by round (tree and base of one round ran
	# seconds apart, most often in the same machine mode), then their
	# median: steadier than a ratio of medians when the mode changes.
	# Each tree row against the base row of the same name when there is
	# one, and the burst rows also against the base queue row (v1 has no
	# other).
	split("BenchmarkQueue/32/queue BenchmarkQueue/32/burst BenchmarkTwoProc/32/queue BenchmarkTwoProc/32/burst BenchmarkQueue/32/burst BenchmarkTwoProc/32/burst", rs, " ")
	for (i = 1; i <= 6; i++) {
		t = rs[i]; b = t
		if (i > 4) sub(/burst$/, "queue", b)
		m = n["tree " t]
		if (m == 0 || n["base " b] != m) continue
		for (j = 1; j <= m; j++) a[j] = v["tree " t, j] / v["base " b, j]
		for (j = 2; j <= m; j++) { x = a[j]; for (l = j - 1; l >= 1 && a[l] > x; l--) a[l+1] = a[l]; a[l+1] = x }
		printf "  tree %s/base %s  round by round: median %.2fx  range %.2f-%.2fx\n", t, b, (m % 2) ? a[(m+1)/2] : (a[m/2] + a[m/2+1]) / 2, a[1], a[m]
	}
	q = "BenchmarkQueue/32/queue"; f = "BenchmarkQueue/32/bare"
	if (med["tree " f] > 0)
		printf "  tree queue/bare (the queue against its floor)  median %.2fx  best %.2fx\n", med["tree " q] / med["tree " f], best["tree " q] / best["tree " f]
	if (med["tree " f] > 0 && med["base " q] > 0)
		printf "  tree bare/base queue (the floor against v1)  median %.2fx  best %.2fx\n", med["tree " f] / med["base " q], best["tree " f] / best["base " q]
	for (e = 1; e <= 2; e++) {
		h = e == 1 ? "producer" : "consumer"
		f = "BenchmarkQueue/32/floor-" h
		if (med["tree " f] > 0 && med["base " q] > 0)
			printf "  tree floor-%s/base queue (the other end alone)  median %.2fx  best %.2fx\n", h, med["tree " f] / med["base " q], best["tree " f] / best["base " q]
	}
	t = "BenchmarkTwoProc/32/queue"; s = "BenchmarkTwoProc/32/socket"
	if (med["tree " s] > 0)
		printf "  tree twoproc/socket                             median %.2fx  best %.2fx\n", med["tree " t] / med["tree " s], best["tree " t] / best["tree " s]
}' "$W/all" | sort
