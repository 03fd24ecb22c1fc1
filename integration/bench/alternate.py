#!/usr/bin/env python3
"""Time commands side by side, alternating: each round runs every command
once, starting with a different one each round, so a machine whose speed
drifts (other work, thermal, caches) weighs on all of them alike. hyperfine
runs one command's runs back to back instead.

    alternate.py OUT.json ROUNDS WARMUP NAME=COMMAND [NAME=COMMAND ...]

COMMAND is split like a shell would (shlex) and run without one, output
discarded. A failing run stops everything with its output. OUT.json has
hyperfine's shape ({"results": [{"command", "times"}]}), for report.py.
"""
import json
import shlex
import subprocess
import sys
import time


def run(name, argv):
    start = time.perf_counter()
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - start
    if p.returncode != 0:
        sys.exit(f"alternate.py: {name} exited {p.returncode}:\n{p.stderr.decode(errors='replace')[-2000:]}")
    return elapsed


def main(out, rounds, warmup, specs):
    commands = []
    for spec in specs:
        name, _, command = spec.partition("=")
        commands.append((name, shlex.split(command)))
    times = {name: [] for name, _ in commands}
    n = len(commands)
    for r in range(warmup + rounds):
        for i in range(n):
            name, argv = commands[(r + i) % n]
            t = run(name, argv)
            if r >= warmup:
                times[name].append(t)
        print(f"  round {r + 1}/{warmup + rounds}", file=sys.stderr, end="\r")
    print(file=sys.stderr)
    with open(out, "w") as f:
        json.dump({"results": [{"command": name, "times": times[name]} for name, _ in commands]}, f)


if __name__ == "__main__":
    if len(sys.argv) < 5:
        sys.exit(__doc__)
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:])
