#!/usr/bin/env bash
# The closure-only store at NixOS size (issue 17): one overlay mount against
# --shared-store and against the per-path binds (the fallback, forced by the
# real condition: a closure path that is a mount point in the launcher's
# mount namespace; see with-mount.sh). Every command of a group runs in the
# same wrapper, and each group alternates its commands run by run (ab.py).
# Prints markdown tables for BENCHMARKS.md.
#   sudo integration/bench/store.sh [RUNS] [SECTION...]   (not run in CI)
# SECTION: launch (the launcher's cost per path, tiny toplevel `init exit`),
# boot (boot-to-poweroff of the systemd toplevel, overlay vs shared),
# boot-per-path (the same with the per-path store, one run each: it is
# slow), many (GUESTS guests of 2,000 paths each at once, overlay and
# per-path; GUESTS=50 unless set in the environment). Default: all.
set -euo pipefail
cd "$(dirname "$0")/../.."
. integration/bench/poweroff-unit.sh
runs=${1:-10}
shift || true
sections=${*:-launch boot boot-per-path many}

[ "$(id -u)" = 0 ] || {
	echo "store.sh: needs root" >&2
	exit 1
}
cargo build --release --quiet
nixspawn=$PWD/target/release/nixspawn
ctl=$PWD/target/release/nixspawnctl
bench=$PWD/integration/bench
env_file=${NIXSPAWN_FIXTURES:-/var/cache/nixspawn/fixtures}/nixos.env
[ -f "$env_file" ] || env_file=$(integration/nixos/build.sh)
# shellcheck disable=SC1090
. "$env_file"
work=$(mktemp -d /tmp/nixspawn-bench-store.XXXXXX)
trap 'rm -rf "$work"; integration/nixos/synthetic-closure.py remove >/dev/null' EXIT
guests=${GUESTS:-50}
mkdir "$work/scratch"
# Same wrapper for all: a mount of nothing in particular, or (per-path) of
# a closure path, which makes nixspawn fall back.
plain="unshare --mount --propagation private $bench/with-mount.sh $work/scratch"
per_path() { echo "unshare --mount --propagation private $bench/with-mount.sh $1"; }

echo "store.sh: synthetic store paths" >&2
for n in 0 1000 2000 5000 10000; do
	integration/nixos/synthetic-closure.py create "$n" "$NIXOS_TINY" "$work/tiny-$n"
done
for n in 0 1000 2000 5000; do
	integration/nixos/synthetic-closure.py create "$n" "$NIXOS_SYSTEMD" "$work/sys-$n"
done
# A row's name says the closure's whole size (the toplevel's own paths
# plus the synthetic ones).
paths() { wc -l <"$1" | tr -d ' '; }

# The systemd toplevel powers itself off once multi-user.target is reached:
# the unit comes in through a read-only bind over its /etc's
# systemd/system (a directory inside a store path of the closure).
sys_etc=$(nix-store --query --requisites "$NIXOS_SYSTEMD" | grep -- '-debian-sid-etc$')
cp -a "$sys_etc/systemd/system" "$work/nixos-system"
chmod -R u+w "$work/nixos-system"
add_poweroff_unit "$work/nixos-system"
boot="-q --register=no --keep-unit --toplevel=$NIXOS_SYSTEMD --bind-ro=$work/nixos-system:$sys_etc/systemd/system"
launch="-q --pipe --toplevel=$NIXOS_TINY"

ab() { python3 "$bench/ab.py" "$@"; }
for section in $sections; do
	case $section in
	launch)
		echo "store.sh: launch cost, tiny toplevel (init exit)" >&2
		specs=()
		for mode in overlay per-path; do
			for n in 0 1000 2000 5000 10000; do
				if [ $mode = overlay ]; then wrap=$plain; else wrap=$(per_path "$NIXOS_TINY"); fi
				specs+=("$mode, $(paths "$work/tiny-$n") paths=$wrap $nixspawn $launch --closure-file=$work/tiny-$n exit")
			done
		done
		ab --runs $((runs * 3)) --warmup 3 --json "$work/launch.json" \
			--title "launch to exit, tiny toplevel, closure-only" "${specs[@]}"
		echo
		# The launcher's cost per 1,000 paths at each size: the difference
		# to the smallest closure's median, per path.
		python3 - "$work/launch.json" <<'PY'
import json, re, statistics, sys
t = json.load(open(sys.argv[1]))
rows = {}
for name, times in t.items():
    mode, n = re.match(r"(.*), (\d+) paths", name).groups()
    rows.setdefault(mode, []).append((int(n), statistics.median(times)))
print("| store | closure | median | more than the smallest, per 1,000 paths |")
print("|---|---:|---:|---:|")
for mode, pts in rows.items():
    pts.sort()
    n0, t0 = pts[0]
    for n, m in pts:
        per = "" if n == n0 else f"{(m - t0) / (n - n0) * 1e6:.1f} ms"
        print(f"| {mode} | {n} | {m * 1000:.1f} ms | {per} |")
PY
		echo
		# The overlay's own part (closure file read, checked, top layer
		# built, overlay made and probed), as --debug times it.
		echo "| closure | building the overlay (median of 15, --debug) | per 1,000 paths |"
		echo "|---:|---:|---:|"
		for n in 0 1000 2000 5000 10000; do
			for _ in $(seq 15); do
				$plain "$nixspawn" --debug $launch --closure-file="$work/tiny-$n" exit 2>&1 |
					sed -n 's/.*store overlay of \([0-9]*\) paths: \([0-9]*\) µs.*/\1 \2/p'
			done | sort -k2 -n | awk '{ p = $1; v[NR] = $2 } END { m = v[int((NR + 1) / 2)]; per = p >= 1000 ? sprintf("%.1f ms", m / p) : ""; printf "| %d | %.1f ms | %s |\n", p, m / 1000, per }'
		done
		echo
		;;
	boot)
		echo "store.sh: boot-to-poweroff, systemd toplevel, overlay vs shared" >&2
		specs=("--shared-store=$plain $nixspawn $boot --shared-store")
		for n in 0 1000 2000 5000; do
			specs+=("overlay, $(paths "$work/sys-$n") paths=$plain $nixspawn $boot --closure-file=$work/sys-$n")
		done
		ab --runs "$runs" --warmup 1 \
			--title "boot-to-poweroff, systemd toplevel: --shared-store vs the closure-only overlay" "${specs[@]}"
		echo
		;;
	boot-per-path)
		echo "store.sh: boot-to-poweroff with the per-path store (slow)" >&2
		specs=("--shared-store=$plain $nixspawn $boot --shared-store")
		for n in 0 1000 2000 5000; do
			specs+=("per-path, $(paths "$work/sys-$n") paths=$(per_path "$NIXOS_SYSTEMD") $nixspawn $boot --closure-file=$work/sys-$n")
		done
		ab --runs "${PER_PATH_RUNS:-1}" --warmup 0 \
			--title "boot-to-poweroff, systemd toplevel: --shared-store vs per-path binds (the fallback)" "${specs[@]}"
		echo
		;;
	many)
		echo "store.sh: $guests guests of 2,000 extra paths each, at once" >&2
		echo "**$guests guests of $(paths "$work/tiny-2000") store paths each (tiny toplevel), started at once**"
		echo
		echo "| store | all up after | mounts, all guests | under /nix/store, per guest | Slab | SUnreclaim | MemAvailable | all stopped after |"
		echo "|---|---:|---:|---:|---:|---:|---:|---:|"
		mem() { awk -v k="$1:" '$1 == k { print $2 }' /proc/meminfo; }
		secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b - a) / 1e9 }'; }
		for mode in overlay per-path; do
			if [ "$mode" = overlay ]; then wrap=$plain; else wrap=$(per_path "$NIXOS_TINY"); fi
			slab0=$(mem Slab) sunr0=$(mem SUnreclaim) avail0=$(mem MemAvailable)
			t0=$(date +%s%N)
			pids=()
			for i in $(seq "$guests"); do
				$wrap "$nixspawn" $launch --closure-file="$work/tiny-2000" -M "bench-many-$i" >/dev/null 2>&1 &
				pids+=($!)
			done
			for i in $(seq "$guests"); do
				tries=0
				until "$ctl" status "bench-many-$i" >/dev/null 2>&1; do
					tries=$((tries + 1))
					[ $tries -lt 1200 ] || {
						echo "store.sh: bench-many-$i did not start" >&2
						kill -TERM "${pids[@]}"
						exit 1
					}
					sleep 0.05
				done
			done
			t1=$(date +%s%N)
			total=0 store=0
			for i in $(seq "$guests"); do
				leader=$("$ctl" status "bench-many-$i" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["leader"])')
				total=$((total + $(wc -l <"/proc/$leader/mountinfo")))
				store=$(awk '$5 == "/nix/store" || index($5, "/nix/store/") == 1' "/proc/$leader/mountinfo" | wc -l)
			done
			slab1=$(mem Slab) sunr1=$(mem SUnreclaim) avail1=$(mem MemAvailable)
			t2=$(date +%s%N)
			kill -TERM "${pids[@]}"
			wait "${pids[@]}" || true
			t3=$(date +%s%N)
			printf '| %s | %s s | %d | %d | %+d MB | %+d MB | %+d MB | %s s |\n' "$mode" \
				"$(secs "$t0" "$t1")" "$total" "$store" \
				$(((slab1 - slab0) / 1024)) $(((sunr1 - sunr0) / 1024)) $(((avail1 - avail0) / 1024)) \
				"$(secs "$t2" "$t3")"
		done
		echo
		;;
	*)
		echo "store.sh: unknown section $section" >&2
		exit 1
		;;
	esac
done
