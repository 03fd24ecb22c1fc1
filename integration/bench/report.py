"""Turn hyperfine JSON exports into a markdown table of medians and ratios.

Each file is one comparison; the first command in it is the baseline the
ratios are taken against (nixspawn), so a ratio above 1 means slower than
nixspawn.
"""
import json
import os
import platform
import statistics
import subprocess
import sys


def fmt_ms(seconds):
    return f"{seconds * 1000:.1f} ms" if seconds < 10 else f"{seconds:.2f} s"


def main(paths):
    kernel = platform.release()
    nspawn = subprocess.run(["systemd-nspawn", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    print(f"Kernel {kernel}, {os.cpu_count()} cores; {nspawn}.\n")
    print("| benchmark | command | runs | median | min | max | ratio to first |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for path in paths:
        name = os.path.basename(path).removesuffix(".json")
        results = json.load(open(path))["results"]
        base = statistics.median(results[0]["times"])
        for r in results:
            med = statistics.median(r["times"])
            print(f"| {name} | {r['command']} | {len(r['times'])} | {fmt_ms(med)} | {fmt_ms(min(r['times']))} "
                  f"| {fmt_ms(max(r['times']))} | {med / base:.2f}× |")


if __name__ == "__main__":
    main(sys.argv[1:])
