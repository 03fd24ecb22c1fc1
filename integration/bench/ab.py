#!/usr/bin/env python3
"""Run commands side by side, alternating them run by run (A B C A B C ...)
so that drift of a busy machine hits each the same, and print a markdown
table of medians, quartiles and the ratio of each median to the first's.

    ab.py [--runs N] [--warmup N] [--title T] [--json OUT] NAME=COMMAND ...

COMMAND is run with /bin/sh -c; a non-zero exit aborts with its output.
--json writes every run's time ({"NAME": [seconds, ...]}) for further
arithmetic (slopes, say).
"""
import argparse
import json
import statistics
import subprocess
import sys
import time


def once(cmd):
    t0 = time.monotonic()
    p = subprocess.run(["/bin/sh", "-c", cmd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    dt = time.monotonic() - t0
    if p.returncode != 0:
        sys.exit(f"ab.py: `{cmd}` failed ({p.returncode}): {p.stderr.decode(errors='replace').strip()}")
    return dt


def fmt(seconds):
    return f"{seconds * 1000:.1f} ms" if seconds < 10 else f"{seconds:.2f} s"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--title", default="")
    ap.add_argument("--json", default="")
    ap.add_argument("commands", nargs="+")
    a = ap.parse_args()
    named = [c.split("=", 1) for c in a.commands]
    for _ in range(a.warmup):
        for _, cmd in named:
            once(cmd)
    times = {name: [] for name, _ in named}
    for _ in range(a.runs):
        for name, cmd in named:
            times[name].append(once(cmd))
    base = statistics.median(times[named[0][0]])
    if a.title:
        print(f"**{a.title}** ({a.runs} runs each, alternating)\n")
    print("| command | median | p25 | p75 | ratio to first |")
    print("|---|---:|---:|---:|---:|")
    for name, _ in named:
        t = sorted(times[name])
        # One run has no quartiles: its time stands for both.
        q = statistics.quantiles(t, n=4) if len(t) > 1 else [t[0], t[0], t[0]]
        med = statistics.median(t)
        print(f"| {name} | {fmt(med)} | {fmt(q[0])} | {fmt(q[2])} | {med / base:.2f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(times, f)


if __name__ == "__main__":
    main()
