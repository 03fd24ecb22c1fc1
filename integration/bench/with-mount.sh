#!/bin/sh
# with-mount.sh DIR COMMAND [ARGS...]: run COMMAND in a mount namespace of
# its own where DIR is bound onto itself, then gone. Given a closure path,
# nixspawn sees a mount point in its closure and builds the per-path store
# (its fallback; see README) — the real condition a Nix build sandbox
# makes, not a switch. Given any other directory it changes nothing, and
# costs the command the same.
#   unshare --mount --propagation private integration/bench/with-mount.sh DIR COMMAND...
set -eu
dir=$1
shift
mount --bind "$dir" "$dir"
exec "$@"
