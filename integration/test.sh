#!/usr/bin/env bash
# The whole test suite, as CI runs it: host packages, fixture trees
# (cached), formatting and lints, then unit and privileged tests.
#   sudo integration/test.sh [extra cargo-nextest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
	echo "test.sh: the privileged tests boot containers; run as root: sudo $0" >&2
	exit 1
fi

integration/setup-host.sh
echo "test.sh: fixture trees (built once, then cached)" >&2
integration/fixtures/debian-tree.sh bookworm >/dev/null
integration/fixtures/debian-tree.sh sid >/dev/null
integration/nixos/build.sh >/dev/null

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
# Every privileged test runs here: one that would skip itself fails instead.
NIXSPAWN_REQUIRE_PRIVILEGED=1 cargo nextest run --workspace --profile ci "$@"
