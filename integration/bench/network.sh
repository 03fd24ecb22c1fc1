#!/usr/bin/env bash
# What a network costs: /bin/true with and without -n under nixspawn and
# systemd-nspawn (hyperfine, same tree and argv), and 50 guests on one
# zone started and stopped. Everything runs inside a network namespace
# made here, never on the machine's own network.
#   sudo [NIXSPAWN_BIN=...] integration/bench/network.sh [RUNS]      (not run in CI)
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-100}
[ "$(id -u)" = 0 ] || { echo "network.sh: needs root" >&2; exit 1; }
# NIXSPAWN_BIN: a nixspawn built already (no cargo run under the lock).
nixspawn=${NIXSPAWN_BIN:-}
if [ -z "$nixspawn" ]; then
	cargo build --release --quiet
	nixspawn=$PWD/target/release/nixspawn
fi
bookworm=$(integration/fixtures/debian-tree.sh bookworm)
ns=nixspawn-bench-$$
work=$(mktemp -d /tmp/nixspawn-netbench.XXXXXX)
cleanup() {
	ip netns delete "$ns" 2>/dev/null || true
	rm -rf --one-file-system "$work"
}
trap cleanup EXIT
ip netns add "$ns"
ip netns exec "$ns" ip link set lo up
inside() { nsenter --net="/run/netns/$ns" "$@"; }
# systemd-nspawn in the namespace with a sysfs that shows its links (it
# decides whether a zone is empty from /sys/class/net) and /sys read-only.
nspawn_inside() {
	inside unshare -m --propagation private sh -c '
		d=$(mktemp -d) && mount -t sysfs sysfs "$d" &&
		mount --bind "$d/class/net" /sys/class/net &&
		mount --bind "$d/devices/virtual/net" /sys/devices/virtual/net &&
		umount -l "$d" && rmdir "$d" && mount -o remount,bind,ro /sys &&
		exec systemd-nspawn "$@"' sh "$@"
}
export -f inside nspawn_inside 2>/dev/null || true
common="-q --register=no --keep-unit -D $bookworm"

echo "benchmark: /bin/true with and without a veth" >&2
inside hyperfine -N --style none -w 5 -r "$runs" --export-json "$work/true.json" \
	-n "nixspawn" "$nixspawn $common /bin/true" \
	-n "nixspawn -n" "$nixspawn $common -n /bin/true" \
	-n "nixspawn --private-network" "$nixspawn $common --private-network /bin/true" \
	-n "systemd-nspawn" "systemd-nspawn $common /bin/true" \
	-n "systemd-nspawn -n" "systemd-nspawn $common -n /bin/true" >/dev/null
python3 - "$work/true.json" <<'PY'
import json, sys, statistics
r = json.load(open(sys.argv[1]))["results"]
base = statistics.median(r[0]["times"])
print("| command | runs | median | min | max | ratio to first |")
print("|---|---:|---:|---:|---:|---:|")
for x in r:
    m = statistics.median(x["times"])
    print(f"| {x['command']} | {len(x['times'])} | {m*1000:.1f} ms | {min(x['times'])*1000:.1f} ms | {max(x['times'])*1000:.1f} ms | {m/base:.2f}× |")
PY

# 50 guests on one zone: a busybox tree each guest runs on ephemerally,
# waiting for a file before it exits. Without --keep-unit: concurrent
# launchers in one cgroup would each make its payload/ there and collide.
n=50
tree=$work/tree
mkdir -p "$tree/usr/bin" "$tree/etc" "$work/sync"
cp "$(command -v busybox)" "$tree/usr/bin/"
for a in sh sleep test; do ln -s busybox "$tree/usr/bin/$a"; done
ln -s usr/bin "$tree/bin"
now() { date +%s%N; }
ms() { echo $((($2 - $1) / 1000000)); }
zone_run() {
	local launcher=$1 i t0 t1 t2 t3 pids=()
	rm -f "$work/sync/"*
	t0=$(now)
	for ((i = 0; i < n; i++)); do
		if [ "$launcher" = nixspawn ]; then
			inside "$nixspawn" -q --register=no -x -M "zb$i" -D "$tree" \
				--bind="$work/sync:/sync" --network-zone=bench --pipe \
				/bin/sh -c "touch /sync/up-$i; while ! test -e /sync/go; do sleep 0.1; done" &
		else
			nspawn_inside -q --register=no -x -M "zb$i" -D "$tree" \
				--bind="$work/sync:/sync" --network-zone=bench --pipe \
				/bin/sh -c "touch /sync/up-$i; while ! test -e /sync/go; do sleep 0.1; done" &
		fi
		pids+=($!)
	done
	# A launcher that failed never says "up": give up after 120 s.
	local waited=0
	while [ "$(ls "$work/sync" | grep -c '^up-')" -lt "$n" ]; do
		sleep 0.01
		waited=$((waited + 1))
		if [ "$waited" -gt 12000 ]; then
			echo "network.sh: $launcher: only $(ls "$work/sync" | grep -c '^up-') of $n guests came up" >&2
			touch "$work/sync/go"
			for p in "${pids[@]}"; do wait "$p" || true; done
			return 1
		fi
	done
	t1=$(now)
	touch "$work/sync/go"
	for p in "${pids[@]}"; do wait "$p" || true; done
	t2=$(now)
	# Until the zone's ports and the bridge itself are gone.
	while inside ip link show vz-bench >/dev/null 2>&1; do sleep 0.01; done
	t3=$(now)
	echo "| $launcher | $n | $(ms "$t0" "$t1") ms | $(ms "$t1" "$t2") ms | $(ms "$t2" "$t3") ms |"
}
echo "benchmark: $n guests on one zone" >&2
echo
echo "| launcher | guests | all started (payload running) | all launchers exited after \"go\" | then until vz-bench is gone |"
echo "|---|---:|---:|---:|---:|"
zone_run nixspawn
zone_run nspawn
