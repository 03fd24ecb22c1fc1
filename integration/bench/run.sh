#!/usr/bin/env bash
# Side-by-side benchmark: nixspawn vs systemd-nspawn (and bubblewrap for
# /bin/true) on the same trees with the same argv, in one run. Prints a
# markdown table of medians and ratios (paste it into BENCHMARKS.md).
#   sudo integration/bench/run.sh [RUNS]      (not run in CI)
set -euo pipefail
cd "$(dirname "$0")/../.."
. integration/bench/poweroff-unit.sh
runs=${1:-20}

[ "$(id -u)" = 0 ] || { echo "run.sh: needs root" >&2; exit 1; }
integration/setup-host.sh
cargo build --release --quiet
nixspawn=$PWD/target/release/nixspawn
bookworm=$(integration/fixtures/debian-tree.sh bookworm)
sid=$(integration/fixtures/debian-tree.sh sid)
# shellcheck disable=SC1090
. "$(integration/nixos/build.sh)"
work=$(mktemp -d /tmp/nixspawn-bench.XXXXXX)
trap 'rm -rf "$work"; integration/nixos/synthetic-closure.py remove' EXIT

# Boot-to-poweroff: the guest powers itself off once multi-user.target is
# reached. The unit comes in through a read-only bind of a copy of the
# tree's /etc/systemd/system, so the trees are not modified.
for suite in bookworm sid; do
	tree=${!suite}
	sys=$work/system-$suite
	cp -a "$tree/etc/systemd/system" "$sys"
	add_poweroff_unit "$sys"
done

# nspawn 252 needs this for the sid guest (systemd >= 258 refuses hybrid
# cgroups); nixspawn ignores it and always gives the guest cgroup v2.
export SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1
common="-q --register=no --keep-unit"
hf() { hyperfine -N --style none --export-json "$work/$1.json" "${@:2}" >/dev/null; }

echo "benchmark: boot-to-poweroff (bookworm, sid)" >&2
for suite in bookworm sid; do
	tree=${!suite}
	args="$common -D $tree -b --bind-ro=$work/system-$suite:/etc/systemd/system"
	hf "boot-$suite" -w 2 -r "$runs" -n nixspawn "$nixspawn $args" -n systemd-nspawn "systemd-nspawn $args"
done
echo "benchmark: /bin/true" >&2
hf true -w 5 -r $((runs * 5)) \
	-n nixspawn "$nixspawn $common -D $bookworm /bin/true" \
	-n systemd-nspawn "systemd-nspawn $common -D $bookworm /bin/true" \
	-n bubblewrap "bwrap --bind $bookworm / --dev /dev --proc /proc --unshare-all --die-with-parent /bin/true"
echo "benchmark: the seccomp filter's share of a launch" >&2
# Both through env(1), so both pay for the same extra exec.
hf seccomp -w 5 -r $((runs * 5)) \
	-n "nixspawn with its seccomp filter" "env SYSTEMD_SECCOMP=1 $nixspawn $common -D $bookworm /bin/true" \
	-n "nixspawn without (SYSTEMD_SECCOMP=0)" "env SYSTEMD_SECCOMP=0 $nixspawn $common -D $bookworm /bin/true"
echo "benchmark: -x /bin/true (nspawn copies the tree on ext4: few runs)" >&2
hf ephemeral -w 1 -r 5 \
	-n "nixspawn -x" "$nixspawn $common -x -D $bookworm /bin/true" \
	-n "systemd-nspawn -x" "systemd-nspawn $common -x -D $bookworm /bin/true"
hf ephemeral-nix -w 5 -r $((runs * 5)) \
	-n "nixspawn" "$nixspawn $common -D $bookworm /bin/true" \
	-n "nixspawn -x" "$nixspawn $common -x -D $bookworm /bin/true"

echo "benchmark: closure-only store with 0, 1000 and 10000 extra paths" >&2
for n in 0 1000 10000; do
	integration/nixos/synthetic-closure.py create "$n" "$NIXOS_TINY" "$work/closure-$n"
done
hf closure -w 3 -r $((runs * 2)) \
	-n "0 extra paths" "$nixspawn -q --pipe --toplevel=$NIXOS_TINY --closure-file=$work/closure-0 exit" \
	-n "1000 extra paths" "$nixspawn -q --pipe --toplevel=$NIXOS_TINY --closure-file=$work/closure-1000 exit" \
	-n "10000 extra paths" "$nixspawn -q --pipe --toplevel=$NIXOS_TINY --closure-file=$work/closure-10000 exit"
hf closure-db -w 3 -r $((runs * 2)) \
	-n "closure from the Nix database" "$nixspawn -q --pipe --toplevel=$NIXOS_TINY exit" \
	-n "closure from a store-paths file" "$nixspawn -q --pipe --toplevel=$NIXOS_TINY --closure-file=$work/closure-0 exit"

echo "benchmark: boot-to-poweroff of the systemd toplevel" >&2
# The poweroff unit goes into the toplevel's /etc (a store path) through a
# read-only bind over its systemd/system directory.
sys_etc=$(nix-store --query --requisites "$NIXOS_SYSTEMD" | grep -- '-debian-sid-etc$')
cp -a "$sys_etc/systemd/system" "$work/nixos-system"
chmod -R u+w "$work/nixos-system"
cp "$work/system-sid/poweroff-after-boot.service" "$work/nixos-system/"
mkdir -p "$work/nixos-system/multi-user.target.wants"
ln -sf ../poweroff-after-boot.service "$work/nixos-system/multi-user.target.wants/"
poweroff_bind="--bind-ro=$work/nixos-system:$sys_etc/systemd/system"
# nixos-container's way, runnable by both: a state directory with an empty
# usr/ and os-release, the whole store bound, the toplevel's init as command.
state=$work/nixos-state
mkdir -p "$state/usr" "$state/etc"
: >"$state/etc/os-release"
container_argv="$common -D $state --bind-ro=/nix/store $poweroff_bind --kill-signal=SIGRTMIN+3 $NIXOS_SYSTEMD/init"
hf nixos-boot -w 2 -r "$runs" \
	-n "nixspawn --toplevel (closure-only, empty root)" "$nixspawn $common --toplevel=$NIXOS_SYSTEMD $poweroff_bind" \
	-n "nixspawn --toplevel --shared-store" "$nixspawn $common --toplevel=$NIXOS_SYSTEMD --shared-store $poweroff_bind" \
	-n "nixspawn, nixos-container argv" "$nixspawn $container_argv" \
	-n "systemd-nspawn, nixos-container argv" "systemd-nspawn $container_argv"

python3 integration/bench/report.py "$work"/{boot-bookworm,boot-sid,true,seccomp,ephemeral,ephemeral-nix,closure,closure-db,nixos-boot}.json
