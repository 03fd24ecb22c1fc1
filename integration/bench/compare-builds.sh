#!/usr/bin/env bash
# Same-run comparison of this checkout's nixspawn against another revision's
# (a refactoring must not cost speed): /bin/true and boot-to-poweroff of the
# bookworm tree, the two builds alternating run by run.
#   sudo integration/bench/compare-builds.sh REV [RUNS]      (not run in CI)
set -euo pipefail
cd "$(dirname "$0")/../.."
. integration/bench/poweroff-unit.sh
rev=${1:?usage: compare-builds.sh REV [RUNS]}
runs=${2:-20}
[ "$(id -u)" = 0 ] || { echo "compare-builds.sh: needs root" >&2; exit 1; }

work=$(mktemp -d /tmp/nixspawn-compare.XXXXXX)
trap 'git worktree remove --force "$work/old" 2>/dev/null; rm -rf "$work"' EXIT
git worktree add -q --detach "$work/old" "$rev"
echo "compare-builds.sh: building $rev and this checkout (release)" >&2
(cd "$work/old" && cargo build --release --quiet --bin nixspawn)
cargo build --release --quiet --bin nixspawn
old=$work/old/target/release/nixspawn
new=$PWD/target/release/nixspawn
bookworm=$(integration/fixtures/debian-tree.sh bookworm)

sys=$work/system
cp -a "$bookworm/etc/systemd/system" "$sys"
add_poweroff_unit "$sys"

common="-q --register=no --keep-unit -D $bookworm"
short=$(git rev-parse --short "$rev")
python3 integration/bench/ab.py --runs $((runs * 5)) --warmup 5 --title "/bin/true" \
	"this checkout=$new $common /bin/true" "$short=$old $common /bin/true"
echo
python3 integration/bench/ab.py --runs "$runs" --title "bookworm boot to poweroff" \
	"this checkout=$new $common -b --bind-ro=$sys:/etc/systemd/system" \
	"$short=$old $common -b --bind-ro=$sys:/etc/systemd/system"
