#!/usr/bin/env bash
# Run a command (usually nix-build) as root inside the Nix builder fixture
# of setup.sh, entered as the experiment in nix-sandbox.md found works:
# a private mount namespace, pivot_root (a chrooted process may not make
# user namespaces, which Nix's sandbox needs), a plain bind of /sys with
# cgroup2 on /sys/fs/cgroup (Nix takes the first cgroup2 it sees).
#
#   integration/nix-sandbox/run.sh [--bind SRC:DST]... [--keep DIR] CMD...
#
# The fixture is never written: the root is an overlay whose upper layer is
# a scratch directory, removed afterwards (or kept in DIR with --keep).
# nixspawn's binaries (from $NIXSPAWN_BIN_DIR, default target/debug) are
# copied with the loader and shared libraries they link into /nixspawn of
# that root, beside a static busybox, so a derivation can take them as an
# input: builtins.path { path = /nixspawn; name = "nixspawn"; }; and a
# Python 3 (bin/python3, its stdlib and libraries) at /nixspawn-python3,
# the interpreter nix/test.nix's builder gives nixspawn-test.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
bins=${NIXSPAWN_BIN_DIR:-$repo/target/debug}
binds=()
keep=
while [ $# -gt 0 ]; do
	case "$1" in
	--bind) binds+=("$2"); shift 2 ;;
	--keep) keep=$2; shift 2 ;;
	--) shift; break ;;
	*) break ;;
	esac
done
[ $# -gt 0 ] || { echo "usage: run.sh [--bind SRC:DST]... [--keep DIR] CMD..." >&2; exit 2; }

tree=$("$here/setup.sh")
# One run at a time: every run's Nix allocates the same first build uid
# (auto-allocate-uids, a fresh store each time) and so the same
# nix-build-uid-N cgroup below ours, whose processes Nix kills when a
# build ends — another run's builder with them.
exec 8>"${NIXSPAWN_FIXTURES:-/var/cache/nixspawn/fixtures}/.lock-nix-sandbox-run"
flock 8
scratch=$(mktemp -d /var/tmp/nixspawn-nix-sandbox.XXXXXX)
cleanup() { [ -n "$keep" ] || rm -rf --one-file-system "$scratch"; }
trap cleanup EXIT
mkdir -p "$scratch/upper" "$scratch/work" "$scratch/root"

# The bundle: binaries, their loader and libraries, busybox.
bundle=$scratch/bundle
mkdir -p "$bundle/bin" "$bundle/lib"
for b in nixspawn nixspawnctl nixspawn-test; do
	[ -x "$bins/$b" ] || continue
	cp "$bins/$b" "$bundle/bin/"
	# Debug info would only make the store import slow.
	strip --strip-debug "$bundle/bin/$b" 2>/dev/null || true
	ldd "$bins/$b" | awk '/=>/ {print $3} /ld-linux/ {print $1}' | while read -r lib; do
		[ -f "$lib" ] && cp -Ln "$lib" "$bundle/lib/" 2>/dev/null || true
	done
done
[ -x "$bundle/bin/nixspawn" ] || { echo "run.sh: no nixspawn in $bins (cargo build first, or set NIXSPAWN_BIN_DIR)" >&2; exit 1; }
cp "$tree/bin/busybox" "$bundle/bin/busybox"
cp -r "$repo/nix" "$bundle/nix"

# nixspawn-test's driver interpreter, at /nixspawn-python3: the host's
# Debian python3 (the one the direct runs use too), whose libraries are
# the same host glibc build as the nixspawn bundle's, so the builder can
# put both in one /lib. The standard library goes along without
# bytecode, tests, GUI and packaging modules; the landmark
# lib/python3.X/os.py next to bin/ makes it find its stdlib.
python=$(readlink -f "${NIXSPAWN_PYTHON3:-/usr/bin/python3}")
pyb=$scratch/python3
if [ -x "$python" ]; then
	pyver=$("$python" -c 'import sys; print("python%d.%d" % sys.version_info[:2])')
	pylib=$("$python" -c 'import os, sysconfig; print(os.path.dirname(sysconfig.get_path("stdlib") + "/"))')
	mkdir -p "$pyb/bin" "$pyb/lib"
	cp "$python" "$pyb/bin/$pyver"
	ln -s "$pyver" "$pyb/bin/python3"
	tar -C "$(dirname "$pylib")" -cf - \
		--exclude=__pycache__ --exclude=site-packages --exclude=dist-packages \
		--exclude=test --exclude=tests --exclude=idlelib --exclude=tkinter \
		--exclude=turtledemo --exclude=ensurepip --exclude=lib2to3 \
		--exclude=pydoc_data --exclude='config-3*' "$(basename "$pylib")" |
		tar -C "$pyb/lib" -xf -
	[ "$(basename "$pylib")" = "$pyver" ] || mv "$pyb/lib/$(basename "$pylib")" "$pyb/lib/$pyver"
	# The interpreter's libraries and those of its extension modules.
	for elf in "$python" "$pyb/lib/$pyver"/lib-dynload/*.so; do
		[ -f "$elf" ] || continue
		ldd "$elf" 2>/dev/null | awk '/=> \// {print $3} /ld-linux/ {print $1}'
	done | sort -u | while read -r lib; do
		[ -f "$lib" ] && cp -Ln "$lib" "$pyb/lib/" 2>/dev/null || true
	done
fi

bind_lines=
for b in "${binds[@]}"; do bind_lines+="${b%%:*}:${b#*:}"$'\n'; done

S=$scratch R=$scratch/root T=$tree BINDS=$bind_lines unshare -m --propagation private bash -euc '
	mount -t overlay overlay -o "lowerdir=$T,upperdir=$S/upper,workdir=$S/work" "$R"
	mkdir -p "$R/nixspawn"
	mount --bind "$S/bundle" "$R/nixspawn"
	if [ -d "$S/python3" ]; then
		mkdir -p "$R/nixspawn-python3"
		mount --bind "$S/python3" "$R/nixspawn-python3"
	fi
	while IFS=: read -r src dst; do
		[ -n "$src" ] || continue
		mkdir -p "$R$dst"
		mount --rbind "$src" "$R$dst"
		mount -o remount,bind,ro "$R$dst"
	done <<<"$BINDS"
	mount -t proc proc "$R/proc"
	mount --rbind /dev "$R/dev"
	mount --bind /sys "$R/sys"
	mount -t cgroup2 none "$R/sys/fs/cgroup"
	mount -t tmpfs -o mode=0755 tmpfs "$R/run"
	mount -t tmpfs -o mode=1777 tmpfs "$R/tmp"
	cd "$R"
	pivot_root . .oldroot
	umount -l /.oldroot
	exec env -i PATH=/usr/bin:/usr/sbin:/bin:/sbin HOME=/root TERM=dumb "$@"
' run.sh "$@"
