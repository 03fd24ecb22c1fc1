#!/usr/bin/env bash
# The machined harness: boot a Debian "host" container (systemd, dbus,
# systemd-container) with systemd-nspawn, with nixspawn, the guest trees
# and the Nix store bound in, and run scenario.sh inside it. The scenario
# starts each guest under systemd-nspawn and under nixspawn and compares
# what machinectl, systemctl -M and journalctl -M say about them.
#   sudo integration/machined/run.sh bookworm|sid [NIXSPAWN_BINARY]
# NIXSPAWN_HARNESS_ONLY=network runs the network part alone.
# bookworm: machined 252 (D-Bus API), hybrid cgroups as on this host.
# sid: machined 262 (Varlink), pure cgroup v2 (SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1).
# Exit status: the scenario's. Its log is printed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
suite=${1:?usage: run.sh bookworm|sid [nixspawn binary]}
bin=${2:-$repo/target/debug/nixspawn}
cache=${NIXSPAWN_FIXTURES:-/var/cache/nixspawn/fixtures}

# The host's cgroup layout: bookworm's follows this machine's (hybrid);
# sid's systemd needs pure cgroup v2.
host_env=()
case "$suite" in
bookworm) ;;
sid) host_env=(SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1) ;;
*)
	echo "run.sh: unknown host suite '$suite' (bookworm or sid)" >&2
	exit 2
	;;
esac
command -v systemd-nspawn >/dev/null || {
	echo "run.sh: systemd-nspawn is missing; install it with: apt-get install systemd-container" >&2
	exit 1
}
[ -x "$bin" ] || {
	echo "run.sh: no nixspawn binary at $bin; build it with: cargo build" >&2
	exit 1
}

host_tree=$("$repo/integration/fixtures/debian-tree.sh" "$suite")
bookworm=$("$repo/integration/fixtures/debian-tree.sh" bookworm)
sid=$("$repo/integration/fixtures/debian-tree.sh" sid)
# shellcheck disable=SC1091
. "$cache/nixos.env"

results=$(mktemp -d /var/tmp/nixspawn-machined.XXXXXX)
work=$(mktemp -d /var/tmp/nixspawn-machined-host.XXXXXX)
machine=nshost-$suite-$$
cleanup() {
	# The host is powered off by the scenario; make sure of it after a failure.
	if machinectl show "$machine" >/dev/null 2>&1; then
		machinectl terminate "$machine" 2>/dev/null || true
	fi
	rm -rf --one-file-system "$results" "$work"
	rm -rf /run/systemd/nspawn/unix-export/"$machine" 2>/dev/null || true
}
trap cleanup EXIT
cat >"$results/env" <<EOF
HOST_SUITE=$suite
NIXOS_SYSTEMD=$NIXOS_SYSTEMD
HARNESS_ONLY=${NIXSPAWN_HARNESS_ONLY:-}
EOF

# The host: a throw-away copy of the tree, made here (nspawn's -x would
# put it inside the fixture tree, which the guests are booted from, and
# --volatile=overlay mounts over the tree's own path), every capability and no
# seccomp filter (it runs containers itself), its console on our stderr
# only when asked (NIXSPAWN_HARNESS_CONSOLE=1).
cp -a "$host_tree" "$work/root"
# The host runs systemd-networkd (DHCP for its guests' ve-/vz- links, as
# for systemd-nspawn's), in a network namespace of its own: nothing of the
# machine's network is touched. nixos-container's guests (ve-nc-*) are
# addressed by its scripts, which networkd must leave alone.
chroot "$work/root" systemctl enable systemd-networkd.service >/dev/null 2>&1
mkdir -p "$work/root/etc/systemd/network"
cat >"$work/root/etc/systemd/network/10-nixos-containers.network" <<'EOF'
[Match]
Name=ve-nc-*

[Link]
Unmanaged=yes
EOF
busybox=$(command -v busybox) || {
	echo "run.sh: busybox is missing (ping, nc and ip for the network checks); install busybox-static" >&2
	exit 1
}
# NIXSPAWN_HARNESS_HOLD=1: boot the host and idle, for poking at it by hand
# (nsenter -t HOST-LEADER -a), instead of running the scenario.
[ "${NIXSPAWN_HARNESS_HOLD:-0}" = 1 ] && touch "$results/hold"
console=/dev/null
[ "${NIXSPAWN_HARNESS_CONSOLE:-0}" = 1 ] && console=/dev/stderr
set +e
env SYSTEMD_SECCOMP=0 "${host_env[@]}" \
	timeout 1200 systemd-nspawn -q --console=pipe -M "$machine" \
	-D "$work/root" --capability=all --keep-unit --register=no --private-network \
	--bind-ro="$busybox":/usr/local/bin/busybox \
	--bind-ro="$bin":/usr/local/bin/nixspawn \
	--bind-ro="$here":/harness \
	--bind-ro="$repo/dist/systemd":/harness-units \
	--bind-ro="$here/nixspawn-harness.service":/etc/systemd/system/nixspawn-harness.service \
	--bind="$results":/results \
	--bind-ro="$bookworm":/guests/bookworm \
	--bind-ro="$sid":/guests/sid \
	--bind-ro=/nix \
	-b systemd.wants=nixspawn-harness.service </dev/null >"$console" 2>&1
host_status=$?
set -e
cat "$results/log" 2>/dev/null || echo "run.sh: the scenario left no log" >&2
status=$(cat "$results/status" 2>/dev/null || echo "missing")
echo "run.sh: host $suite: systemd-nspawn exited $host_status, scenario status: $status" >&2
[ "$status" = 0 ]
