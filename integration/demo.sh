#!/usr/bin/env bash
# Quick start: install what is needed, build nixspawn, create a demo guest
# (a Debian bookworm tree with systemd), boot it with its boot output on
# this terminal, look inside once it is up, and power it off.
#   sudo integration/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
	echo "demo.sh: containers need root; run: sudo $0" >&2
	exit 1
fi
integration/setup-host.sh
cargo build --release --quiet
echo "demo.sh: building the demo tree with debootstrap (once; cached afterwards)..." >&2
tree=$(integration/fixtures/debian-tree.sh bookworm)

nixspawn=target/release/nixspawn
ctl=target/release/nixspawnctl
name=nixspawn-demo

# read-only console: the boot output comes here, the terminal stays ours.
"$nixspawn" -M "$name" -D "$tree" --ephemeral --boot --console=read-only &
launcher=$!
"$ctl" wait-ready "$name" --timeout 60
echo
echo "=== $name is up; asking it from the host (nixspawnctl exec):"
echo -n "system state: "
"$ctl" exec "$name" -- systemctl is-system-running --wait
"$ctl" exec "$name" -- systemctl list-units --type=target --state=active --no-pager --no-legend --plain | grep multi-user
"$ctl" status "$name"
echo "=== powering it off (nixspawnctl poweroff)"
"$ctl" poweroff "$name"
status=0
wait "$launcher" || status=$?
echo "=== launcher exit status: $status"
exit "$status"
