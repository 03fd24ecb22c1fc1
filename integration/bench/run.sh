#!/usr/bin/env bash
# Side-by-side benchmark: nixspawn vs systemd-nspawn (and bubblewrap for
# /bin/true) on the same trees with the same argv, in one run. Prints a
# markdown table of medians and ratios (paste it into BENCHMARKS.md).
#   sudo integration/bench/run.sh [RUNS]      (not run in CI)
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-20}

[ "$(id -u)" = 0 ] || { echo "run.sh: needs root" >&2; exit 1; }
integration/setup-host.sh
cargo build --release --quiet
nixspawn=$PWD/target/release/nixspawn
bookworm=$(integration/fixtures/debian-tree.sh bookworm)
sid=$(integration/fixtures/debian-tree.sh sid)
work=$(mktemp -d /tmp/nixspawn-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT

# Boot-to-poweroff: the guest powers itself off once multi-user.target is
# reached. The unit comes in through a read-only bind of a copy of the
# tree's /etc/systemd/system, so the trees are not modified.
for suite in bookworm sid; do
	tree=${!suite}
	sys=$work/system-$suite
	cp -a "$tree/etc/systemd/system" "$sys"
	cat >"$sys/poweroff-after-boot.service" <<'UNIT'
[Unit]
Description=Power off once multi-user.target is reached (benchmark)
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/bin/systemctl poweroff --no-block
UNIT
	mkdir -p "$sys/multi-user.target.wants"
	ln -sf ../poweroff-after-boot.service "$sys/multi-user.target.wants/"
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
echo "benchmark: -x /bin/true (nspawn copies the tree on ext4: few runs)" >&2
hf ephemeral -w 1 -r 5 \
	-n "nixspawn -x" "$nixspawn $common -x -D $bookworm /bin/true" \
	-n "systemd-nspawn -x" "systemd-nspawn $common -x -D $bookworm /bin/true"
hf ephemeral-nix -w 5 -r $((runs * 5)) \
	-n "nixspawn" "$nixspawn $common -D $bookworm /bin/true" \
	-n "nixspawn -x" "$nixspawn $common -x -D $bookworm /bin/true"

python3 integration/bench/report.py "$work"/{boot-bookworm,boot-sid,true,ephemeral,ephemeral-nix}.json
