#!/usr/bin/env bash
# Install the Debian packages nixspawn's tests, demo and benchmarks use.
# Skips apt entirely when everything is already there.
set -euo pipefail

# e2fsprogs, erofs-utils, squashfs-tools, fdisk: disk images for the --image tests;
# udev: systemd-nspawn 252 refuses --image without a udevd (the tests run
# one without rules in a private mount namespace; apt does not start it).
packages=(debootstrap systemd-container bubblewrap hyperfine busybox-static nix-bin gcc libc6-dev bsdutils gcc-multilib e2fsprogs erofs-utils squashfs-tools fdisk udev)
missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	command -v apt-get >/dev/null || {
		echo "setup-host.sh: need ${missing[*]}, but there is no apt-get; install them with your package manager" >&2
		exit 1
	}
	echo "setup-host.sh: installing ${missing[*]}" >&2
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

command -v cargo >/dev/null || {
	echo "setup-host.sh: cargo is missing; install a Rust toolchain (rustup.rs), 1.95 or newer" >&2
	exit 1
}
cargo nextest --version >/dev/null 2>&1 || {
	echo "setup-host.sh: installing cargo-nextest" >&2
	cargo install --locked cargo-nextest >/dev/null
}
