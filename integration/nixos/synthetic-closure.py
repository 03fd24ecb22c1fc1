#!/usr/bin/env python3
"""Synthetic closures for the closure-scale benchmark.

    synthetic-closure.py create N TOPLEVEL OUT   # N extra store paths + a store-paths file
    synthetic-closure.py remove                  # delete every synthetic path again

Creates N small directories in /nix/store named like real store paths
(`<32-char hash>-nixspawn-synthetic-<i>`) and writes OUT: TOPLEVEL's closure
(from the Nix database) plus those N paths, one per line, as closureInfo's
store-paths file has them. The paths are not registered with Nix (they are
mount sources, nothing more), so boot them with --closure-file. A Nix GC
would delete them; `remove` does so deliberately.
"""
import hashlib
import os
import shutil
import subprocess
import sys

STORE = "/nix/store"
ALPHABET = "0123456789abcdfghijklmnpqrsvwxyz"  # Nix's base-32
TAG = "-nixspawn-synthetic-"


def name(i):
    digest = hashlib.sha256(f"nixspawn-synthetic-{i}".encode()).digest()
    return "".join(ALPHABET[b % 32] for b in digest[:32]) + f"{TAG}{i}"


def create(n, toplevel, out):
    closure = subprocess.run(["nix-store", "--query", "--requisites", toplevel],
                             check=True, capture_output=True, text=True).stdout.split()
    paths = list(closure)
    for i in range(n):
        p = os.path.join(STORE, name(i))
        if not os.path.isdir(p):
            os.makedirs(os.path.join(p, "share"), exist_ok=True)
            with open(os.path.join(p, "share", "data"), "w") as f:
                f.write(f"synthetic {i}\n")
        paths.append(p)
    with open(out, "w") as f:
        f.write("\n".join(paths) + "\n")


def remove():
    for entry in os.listdir(STORE):
        if TAG in entry:
            shutil.rmtree(os.path.join(STORE, entry))


if __name__ == "__main__":
    if sys.argv[1:2] == ["create"] and len(sys.argv) == 5:
        create(int(sys.argv[2]), sys.argv[3], sys.argv[4])
    elif sys.argv[1:] == ["remove"]:
        remove()
    else:
        sys.exit(__doc__)
