#!/usr/bin/env bash
# Build the NixOS-shaped fixture toplevels with Debian's nix-bin and record
# their store paths in $NIXSPAWN_FIXTURES/nixos.env (sourced by tests and
# benchmarks). GC roots live next to it, so the paths survive a GC.
#   integration/nixos/build.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${NIXSPAWN_FIXTURES:-/var/cache/nixspawn/fixtures}

command -v nix-build >/dev/null || {
	echo "nixos/build.sh: nix-build is missing; install it with: apt-get install nix-bin" >&2
	exit 1
}
sid=$("$here/../fixtures/debian-tree.sh" sid)
busybox=$(command -v busybox || true)
[ -n "$busybox" ] || {
	echo "nixos/build.sh: busybox is missing; install it with: apt-get install busybox-static" >&2
	exit 1
}
busybox=$(readlink -f "$busybox")

mkdir -p "$cache/nixos-roots"
exec 9>"$cache/.lock-nixos"
flock 9
env_file=$cache/nixos.env
tmp=$env_file.tmp
: >"$tmp"
for attr in tiny tiny2 systemd decoyA decoyB; do
	out=$(nix-build "$here/fixtures.nix" -A "$attr" \
		--argstr sidTree "$sid" --argstr busybox "$busybox" \
		--option sandbox false --option build-users-group '' --option substituters '' \
		-o "$cache/nixos-roots/$attr" 2>"$cache/nixos-build-$attr.log") || {
		echo "nixos/build.sh: building $attr failed:" >&2
		tail -n 20 "$cache/nixos-build-$attr.log" >&2
		exit 1
	}
	echo "NIXOS_${attr^^}=$out" >>"$tmp"
done
mv "$tmp" "$env_file"
echo "$env_file"
