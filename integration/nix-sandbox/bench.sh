#!/usr/bin/env bash
# A single-guest systemd boot (ready, is-system-running, poweroff) run
# directly and as a derivation (cases.nix's `boot`, a fresh builder store
# each time: the tree is imported and copied every run), and a command
# guest both ways. Prints one line per run, seconds.
#   sudo integration/nix-sandbox/bench.sh [RUNS]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
runs=${1:-3}
bins=${NIXSPAWN_BIN_DIR:-$repo/target/debug}
sid=$("$repo/integration/fixtures/debian-tree.sh" sid)
now() { date +%s.%N; }
for i in $(seq "$runs"); do
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
	awk -v a="$t0" -v b="$t1" -v c="$t2" -v d="$t3" -v e="$t4" 'BEGIN {
		printf "boot: derivation %.2f s, direct %.2f s; command: derivation %.2f s, direct %.2f s\n", b-a, c-b, d-c, e-d }'
done
