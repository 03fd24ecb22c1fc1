#!/usr/bin/env bash
# Containers run directly and as Nix derivations (integration/nix-sandbox/
# cases.nix, each derivation a whole nix-build in a fresh builder store:
# evaluation, import of the bundles and the tree, the uid-range sandbox,
# the copy of the tree into the build), alternating run by run. Prints one
# line per run and the medians, seconds.
#   sudo integration/nix-sandbox/bench.sh [RUNS] [single|two|all]
# single: a sid systemd boot (ready, is-system-running, poweroff) and a
#         command guest (cases.nix boot, command);
# two:    the two-node nixspawn-test of cases.nix's twoNodes (bookworm
#         nodes, two-nodes.py) vs nixspawn-test on the same description.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
runs=${1:-3}
which=${2:-all}
bins=${NIXSPAWN_BIN_DIR:-$repo/target/debug}
now() { date +%s.%N; }
declare -A series
note() { series[$1]+="$2 "; }
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {m = NR % 2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2; printf "%.2f", m}'; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", b-a}'; }

single() {
	sid=$("$repo/integration/fixtures/debian-tree.sh" sid)
	t0=$(now)
	"$here/run.sh" --bind "$here:/src" --bind "$sid:/guest" -- nix-build /src/cases.nix -A boot --no-out-link >/dev/null 2>&1
	t1=$(now)
	"$bins/nixspawn" -q -M s15-bench -D "$sid" -x -b >/dev/null 2>&1 </dev/null &
	"$bins/nixspawnctl" wait-ready s15-bench --timeout 60 >/dev/null
	"$bins/nixspawnctl" exec s15-bench systemctl is-system-running >/dev/null
	"$bins/nixspawnctl" poweroff s15-bench
	wait
	t2=$(now)
	"$here/run.sh" --bind "$here:/src" -- nix-build /src/cases.nix -A command --no-out-link >/dev/null 2>&1
	t3=$(now)
	tb=$(mktemp -d)
	mkdir -p "$tb/bin" "$tb/usr" "$tb/etc"
	cp /bin/busybox "$tb/bin/"
	ln -s busybox "$tb/bin/sh"
	"$bins/nixspawn" -q -M s15-bench -D "$tb" --pipe /bin/sh -c 'echo hello' >/dev/null 2>&1 </dev/null
	t4=$(now)
	rm -rf "$tb"
	note boot-drv "$(elapsed "$t0" "$t1")"; note boot-direct "$(elapsed "$t1" "$t2")"
	note cmd-drv "$(elapsed "$t2" "$t3")"; note cmd-direct "$(elapsed "$t3" "$t4")"
	echo "boot: derivation $(elapsed "$t0" "$t1") s, direct $(elapsed "$t1" "$t2") s;" \
		"command: derivation $(elapsed "$t2" "$t3") s, direct $(elapsed "$t3" "$t4") s"
}

two() {
	bw=$("$repo/integration/fixtures/debian-tree.sh" bookworm)
	d=$(mktemp -d)
	printf '{"name": "two-nodes", "machine_prefix": "s15-twob-", "global_timeout": 300,
	  "nodes": {"a": {"tree": "%s"}, "b": {"tree": "%s"}},
	  "test_script_file": "%s"}\n' "$bw" "$bw" "$here/two-nodes.py" >"$d/test.json"
	t0=$(now)
	"$here/run.sh" --bind "$here:/src" --bind "$bw:/guest" -- nix-build /src/cases.nix -A twoNodes --no-out-link >"$d/drv.log" 2>&1 ||
		{ tail -n 20 "$d/drv.log" >&2; exit 1; }
	t1=$(now)
	PATH=/usr/bin:$PATH "$bins/nixspawn-test" --nixspawn "$bins/nixspawn" -o "$d/out" "$d/test.json" >"$d/direct.log" 2>&1 </dev/null ||
		{ tail -n 20 "$d/direct.log" >&2; exit 1; }
	t2=$(now)
	# The time inside: nixspawn-test's own figure in each.
	in_drv=$(sed -n 's/^nixspawn-test: passed in \([0-9.]*\)s$/\1/p' "$d/drv.log")
	in_direct=$(sed -n 's/^nixspawn-test: passed in \([0-9.]*\)s$/\1/p' "$d/direct.log")
	rm -rf "$d"
	note two-drv "$(elapsed "$t0" "$t1")"; note two-direct "$(elapsed "$t1" "$t2")"
	note two-drv-inner "$in_drv"; note two-direct-inner "$in_direct"
	echo "two nodes: derivation $(elapsed "$t0" "$t1") s (nixspawn-test inside: $in_drv s)," \
		"direct $(elapsed "$t1" "$t2") s (nixspawn-test: $in_direct s)"
}

for i in $(seq "$runs"); do
	case "$which" in
	single) single ;;
	two) two ;;
	*) single; two ;;
	esac
done
echo "medians over $runs runs:"
for k in $(printf '%s\n' "${!series[@]}" | sort); do
	echo "  $k: $(echo "${series[$k]}" | median) s"
done
