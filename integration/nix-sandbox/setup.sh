#!/usr/bin/env bash
# Build (once) and cache a Debian sid tree with Nix (sid's nix-bin, 2.34 or
# newer) configured for sandboxed `uid-range` builds, the "Nix builder" in
# which nixspawn runs as a derivation's builder (issue 15).
#   integration/nix-sandbox/setup.sh
# Prints the tree's path. Cached under $NIXSPAWN_FIXTURES (default
# /var/cache/nixspawn/fixtures) as nix-sandbox-sid, rebuilt only when this
# script's recipe number changes or the tree is incomplete. Enter it with
# integration/nix-sandbox/run.sh, never with chroot (Nix needs
# CLONE_NEWUSER, which the kernel refuses to a chrooted process).
set -euo pipefail

# Bump when the package set, nix.conf or the post-install steps change.
recipe=1
cache=${NIXSPAWN_FIXTURES:-/var/cache/nixspawn/fixtures}
tree=$cache/nix-sandbox-sid
stamp=$tree/.nixspawn-fixture

mkdir -p "$cache"
exec 9>"$cache/.lock-nix-sandbox"
flock 9

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$recipe" ]; then
	echo "$tree"
	exit 0
fi

command -v debootstrap >/dev/null || {
	echo "nix-sandbox/setup.sh: debootstrap is missing; install it with: apt-get install debootstrap" >&2
	exit 1
}

work=$(mktemp -d "$cache/.nix-sandbox-sid.XXXXXX")
trap 'rm -rf --one-file-system "$work"' EXIT
root=$work/root
mirror=${NIXSPAWN_DEBIAN_MIRROR:-http://deb.debian.org/debian}

# libdbi-perl: without it debootstrap cannot resolve libdbd-sqlite3-perl's
# virtual dependency (perl-dbdabi-94), which nix-bin pulls in.
# systemd and dbus: the same tree boots as a nixspawn guest (Nix inside a
# guest, --nested-sandbox). busybox-static: a builder that needs no store.
debootstrap --variant=minbase \
	--include=nix-bin,libdbi-perl,systemd,systemd-sysv,dbus,busybox-static \
	sid "$root" "$mirror" >"$work/debootstrap.log" 2>&1 || {
	echo "nix-sandbox/setup.sh: debootstrap sid failed; last lines of its log:" >&2
	tail -n 30 "$work/debootstrap.log" >&2
	exit 1
}

# From dpkg's database: Nix itself cannot run in a chroot without /proc.
nixver=$(dpkg-query --admindir="$root/var/lib/dpkg" -W -f='${Version}' nix-bin)
nixver=${nixver#*:}
case "$nixver" in
2.[0-9].* | 2.1[0-9].*)
	echo "nix-sandbox/setup.sh: sid's nix-bin is $nixver; uid-range builds need 2.20 or newer" >&2
	exit 1
	;;
esac

mkdir -p "$root/etc/nix"
# sandbox-fallback = false: with the default, a failed namespace check
# silently builds unsandboxed and uid-range derivations fail with a
# misleading "only supported in sandboxed builds".
cat >"$root/etc/nix/nix.conf" <<'CONF'
build-users-group = nixbld
sandbox = true
sandbox-fallback = false
auto-allocate-uids = true
use-cgroups = true
experimental-features = nix-command auto-allocate-uids cgroups
system-features = uid-range
substituters =
CONF
chroot "$root" getent group nixbld >/dev/null || chroot "$root" groupadd -r nixbld
mkdir -p "$root/.oldroot"
# Image hygiene as for the Debian fixtures: systemd takes the machine id
# from $container_uuid, no host name, no root password.
: >"$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id" "$root/etc/hostname"
chroot "$root" passwd -d root >/dev/null
rm -f "$root/var/cache/apt/archives/"*.deb
echo "$nixver" >"$root/.nix-version"
echo "$recipe" >"$root/.nixspawn-fixture"

rm -rf --one-file-system "$tree"
mv "$root" "$tree"
echo "$tree"
