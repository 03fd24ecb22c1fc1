#!/usr/bin/env bash
# Fuzz every target for SECONDS each (default 60), two at a time. New
# inputs go to a scratch corpus, so fuzz/corpus/ keeps only the seeds.
#   fuzz/run-all.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-60}
scratch=$(mktemp -d /tmp/nixspawn-fuzz.XXXXXX)
export RUSTC_BOOTSTRAP=1
cargo fuzz build -O >/dev/null 2>&1
targets=$(cargo fuzz list)
status=0
run() {
	local t=$1
	mkdir -p "$scratch/$t"
	if cargo fuzz run -O "$t" "$scratch/$t" "corpus/$t" -- -max_total_time="$secs" -print_final_stats=1 \
		>"$scratch/$t.log" 2>&1; then
		echo "$t: $(grep -m1 -o 'stat::number_of_executed_units: *[0-9]*' "$scratch/$t.log" | grep -o '[0-9]*$') runs, no crash"
	else
		echo "$t: FAILED, see $scratch/$t.log and fuzz/artifacts/$t/"
		return 1
	fi
}
set -- $targets
while [ $# -gt 0 ]; do
	run "$1" & a=$!
	b=
	if [ $# -gt 1 ]; then run "$2" & b=$!; fi
	wait $a || status=1
	if [ -n "$b" ]; then wait "$b" || status=1; fi
	shift $(( $# > 1 ? 2 : 1 ))
done
exit $status
