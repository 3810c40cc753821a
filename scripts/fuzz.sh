#!/usr/bin/env bash
# Runs every guest-facing fuzz target for FUZZTIME each (default 10s), one
# after another (go test takes one -fuzz target per run), on one worker
# (-parallel 1) so the rest of the machine stays usable. Fails if any
# target fails; the failing input is then in PKG/testdata/fuzz/TARGET/
# (commit it: it becomes a regression test). The campaign in
# docs/SECURITY.md ("Fuzzing") runs the same list for 10^7 executions each
# (FUZZTIME=10000000x).
#
#   scripts/fuzz.sh                 # all targets, 10s each
#   FUZZTIME=60s scripts/fuzz.sh    # longer
#   scripts/fuzz.sh FuzzProducer    # the targets whose name contains it
#                                   # (a plain substring; no match is an error)
#
# Then the C target FuzzCReader: the libpcap shim's reader of the format
# (pcapshim/src/zcreader.c) under libFuzzer with AddressSanitizer and
# UndefinedBehaviorSanitizer (pcapshim/fuzz/fuzz_reader.c), for the same
# FUZZTIME (Ns, Nm or Nx). It needs clang and libFuzzer (apt-get install
# clang libfuzzer-14-dev libclang-rt-14-dev; scripts/setup.sh); without
# them it is skipped, saying so. Its failing input is written to
# pcapshim/fuzz/crash-*: add it to pcapshim/fuzz/corpus/ once fixed (the
# corpus runs first every time).
set -uo pipefail
cd "$(dirname "$0")/.."

# package:target, each fed by bytes a guest (or a hostile peer process)
# controls.
targets=(
	./ivshmem:FuzzParse          # region header and queue table (a guest's BAR)
	./ivshmem:FuzzRingConsumer   # a ring's producer index and slots
	./ivshmem:FuzzWakeWords      # a descriptor ring and its wake word, written by the peer
	.:FuzzConsumer               # host consumer ends under a hostile producer
	.:FuzzProducer               # host producer ends under a hostile consumer
	.:FuzzBalancerInput          # RunBalancer/RunPipeline fed by a hostile producer
	.:FuzzHashes                 # the balancer's packet parsers on guest packet data
	./virtio:FuzzDecode          # control-channel messages from the guest
)

fuzztime=${FUZZTIME:-10s}
filter=${1:-}
failed=()
ran=0
for pt in "${targets[@]}"; do
	pkg=${pt%%:*} target=${pt#*:}
	if [ -n "$filter" ] && [[ $target != *"$filter"* ]]; then continue; fi
	ran=$((ran + 1))
	echo "-- $target ($pkg, $fuzztime)"
	log=$(mktemp)
	start=$SECONDS
	# -fuzzminimizetime: the fuzzer minimises every new interesting input
	# (O(n^2) runs); the host targets cost ~0.3 ms a run, so unbounded
	# minimising would eat the whole budget.
	go test -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" -fuzzminimizetime 2s -parallel 1 "$pkg" >"$log" 2>&1
	rc=$?
	grep -E '^fuzz: elapsed' "$log" | tail -1
	if [ $rc -ne 0 ]; then
		# Go 1.26's coordinator can fail a time-bounded run at the deadline
		# with a bare "context deadline exceeded" and no input written
		# (go.dev/issue/75804, fixed in Go 1.27): not a finding.
		if grep -q 'context deadline exceeded' "$log" && ! grep -q 'Failing input written' "$log"; then
			echo "   (go.dev/issue/75804: deadline race in the fuzz coordinator, no failing input; counted as a pass)"
		else
			cat "$log"
			failed+=("$target")
		fi
	fi
	echo "   $((SECONDS - start))s"
	rm -f "$log"
done
# The C reader (libzcpcap.so's): libFuzzer.
if [ -z "$filter" ] || [[ FuzzCReader == *"$filter"* ]]; then
	ran=$((ran + 1))
	echo "-- FuzzCReader (pcapshim/fuzz, $fuzztime)"
	start=$SECONDS
	cc=${FUZZ_CC:-clang}
	work=$(mktemp -d)
	if ! command -v "$cc" >/dev/null 2>&1; then
		echo "   skipped: no $cc (apt-get install clang libfuzzer-14-dev libclang-rt-14-dev)"
	elif ! "$cc" -g -O2 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -Wall -Wextra -Werror \
		-Ipcapshim/src pcapshim/fuzz/fuzz_reader.c pcapshim/src/zcreader.c -o "$work/fuzz_reader" 2>"$work/build.log"; then
		if grep -q -- '-lclang_rt.fuzzer\|libclang_rt.fuzzer\|cannot find' "$work/build.log"; then
			echo "   skipped: clang has no libFuzzer or sanitizer runtime (apt-get install libfuzzer-14-dev libclang-rt-14-dev; scripts/setup.sh does)"
		else
			cat "$work/build.log"
			failed+=(FuzzCReader)
		fi
	else
		case $fuzztime in
		*x) limit=(-runs="${fuzztime%x}") ;;
		*m) limit=(-max_total_time=$((${fuzztime%m} * 60))) ;;
		*s) limit=(-max_total_time="${fuzztime%s}") ;;
		*) limit=(-max_total_time=10) ;;
		esac
		mkdir "$work/corpus"
		# One job, new inputs kept in a scratch corpus (the committed one
		# is read, not written); the quarantine bounded so the run stays
		# small.
		if ASAN_OPTIONS=quarantine_size_mb=64 "$work/fuzz_reader" "${limit[@]}" -print_final_stats=1 \
			-artifact_prefix=pcapshim/fuzz/ "$work/corpus" pcapshim/fuzz/corpus >"$work/run.log" 2>&1; then
			grep -E '^stat::number_of_executed_units|^#[0-9]+.*DONE' "$work/run.log" | tail -2
		else
			tail -60 "$work/run.log"
			failed+=(FuzzCReader)
		fi
	fi
	rm -rf "$work"
	echo "   $((SECONDS - start))s"
fi

if [ "$ran" -eq 0 ]; then
	echo "fuzz: no target's name contains \"$filter\" (a plain substring, not a pattern); the targets:" >&2
	printf '  %s\n' "${targets[@]#*:}" FuzzCReader >&2
	exit 2
fi
if [ ${#failed[@]} -gt 0 ]; then
	echo "fuzz: FAILED: ${failed[*]}"
	exit 1
fi
echo "fuzz: all targets passed"
