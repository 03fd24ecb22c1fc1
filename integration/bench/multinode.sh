#!/usr/bin/env bash
# Multi-node benchmark: the same test (bookworm nodes on two vlans: boot,
# wait for multi-user.target on each, same-vlan and cross-vlan reachability,
# isolation, shutdown) run by nixspawn-test and by a re-creation of the
# nixpkgs container driver's approach on systemd-nspawn 252
# (nspawn_way.py), alternating, in one run. Then 24 nodes each way, and the
# round trip of `succeed("true")` next to nsenter and a machinectl-shell-style
# entry (a transient unit through the guest's systemd).
#
#   sudo integration/bench/multinode.sh [ROUNDS] [NODES] [BIG]   (default 3 10 24)
#
# NIXSPAWN_BIN_DIR=DIR takes nixspawn, nixspawn-test and nixspawnctl from DIR
# (a saved build, to compare two builds in the same hour) instead of
# building this checkout.
#
# Wall time from date, CPU time (cpuacct.usage) and peak memory
# (memory.max_usage_in_bytes) of a v1 cgroup each run is started in (the
# guests stay in it: neither launcher moves them in the v1 cpuacct or
# memory hierarchies here). Run it under the shared lock.
set -euo pipefail

rounds=${1:-3}
nodes=${2:-10}
big=${3:-24}
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
tree=$("$repo/integration/fixtures/debian-tree.sh" bookworm)
if [ -n "${NIXSPAWN_BIN_DIR:-}" ]; then
	bin=$(cd "$NIXSPAWN_BIN_DIR" && pwd)
else
	cargo build --release --manifest-path "$repo/Cargo.toml" --bins -q
	bin=$repo/target/release
fi
work=$(mktemp -d /tmp/nixspawn-multinode.XXXXXX)
trap 'rm -rf "$work"' EXIT
export SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1

names() { # N: a0 a1 ... b0 b1 ... (half on vlan 1, half on vlan 2; a0 on both)
	local n=$1 i
	for ((i = 0; i < (n + 1) / 2; i++)); do echo -n "a$i "; done
	for ((i = 0; i < n / 2; i++)); do echo -n "b$i "; done
}

description() { # N FILE
	python3 - "$tree" "$1" "$2" "$(names "$1")" <<'EOF'
import json, sys
tree, n, path, names = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4].split()
def vlans(x):
    return [1, 2] if x == "a0" else ([1] if x.startswith("a") else [2])
# With ACCOUNT=1 in the environment, the CPU time the guest's own processes
# used (living ones with their reaped children; commands forked from the
# host side are not in it, in either way), as nspawn_way.py measures it.
ACCOUNT = '''
if os.environ.get("ACCOUNT"):
    for m in machines:
        total = 0
        for line in m.succeed("cat /proc/[0-9]*/stat 2>/dev/null || true").splitlines():
            f = line.rsplit(")", 1)[1].split()
            total += sum(int(x) for x in f[11:15])
        print(f"GUESTCPU {m.name} {total / os.sysconf('SC_CLK_TCK'):.2f}")
'''
script = '''
def reach(host):
    return f"out=$(timeout 3 bash -c 'exec 3<>/dev/tcp/{host}/9' 2>&1 || true); [[ $out == *refused* ]]"
def unreachable(addr):
    return f"out=$(timeout 3 bash -c 'exec 3<>/dev/tcp/{addr}/9' 2>&1 || true); [[ $out == *unreachable* ]]"
start_all()
for m in machines:
    m.wait_for_unit("multi-user.target")
a1.succeed(reach("a2"))
b1.succeed(reach("b2"))
a0.succeed(reach("b1"))
b2.succeed(reach("192.168.2.1"))
a1.succeed(unreachable("192.168.2.2"))
''' + ACCOUNT
json.dump({"machine_prefix": "mnb-", "global_timeout": 600,
           "nodes": {x: {"tree": tree, "vlans": vlans(x)} for x in names},
           "test_script": script}, open(path, "w"))
EOF
}

# measure LABEL CMD...: one line "LABEL wall cpu peak rc"
measure() {
	local label=$1 cg=nixspawn-multinode-$$
	shift
	mkdir -p /sys/fs/cgroup/memory/$cg /sys/fs/cgroup/cpuacct/$cg
	echo 0 >/sys/fs/cgroup/memory/$cg/memory.max_usage_in_bytes 2>/dev/null || true
	echo 0 >/sys/fs/cgroup/cpuacct/$cg/cpuacct.usage
	local t0 t1 rc=0
	t0=$(date +%s.%N)
	(
		echo $BASHPID >/sys/fs/cgroup/memory/$cg/cgroup.procs
		echo $BASHPID >/sys/fs/cgroup/cpuacct/$cg/cgroup.procs
		"$@"
	) >"$work/$label.log" 2>&1 || rc=$?
	grep -E "^[a-z0-9]+: launch" "$work/$label.log" | sed "s/^/  $label /" >&2 || true
	t1=$(date +%s.%N)
	local cpu peak
	cpu=$(cat /sys/fs/cgroup/cpuacct/$cg/cpuacct.usage)
	peak=$(cat /sys/fs/cgroup/memory/$cg/memory.max_usage_in_bytes)
	# Stragglers (a janitor finishing) still count; then the cgroups go.
	for _ in $(seq 100); do
		[ -z "$(cat /sys/fs/cgroup/memory/$cg/cgroup.procs)" ] && break
		sleep 0.1
	done
	rmdir /sys/fs/cgroup/memory/$cg /sys/fs/cgroup/cpuacct/$cg 2>/dev/null || true
	python3 -c "import sys; l,a,b,c,p,r=sys.argv[1:]; print(f'{l} {float(b)-float(a):.2f} {int(c)/1e9:.2f} {int(p)/2**20:.0f} {r}')" \
		"$label" "$t0" "$t1" "$cpu" "$peak" "$rc"
	if [ "$rc" != 0 ]; then tail -30 "$work/$label.log" >&2; fi
}

nixspawn_test() { "$bin/nixspawn-test" --nixspawn "$bin/nixspawn" "$@"; }
nspawn_way() { NSPAWN_WAY_LOGS=$work/nspawn-logs-$1 unshare --net --mount --propagation private python3 "$here/nspawn_way.py" "$tree" $(names "$1"); }

mkdir -p "$work/nspawn-logs-$nodes" "$work/nspawn-logs-$big"
description "$nodes" "$work/n$nodes.json"
description "$big" "$work/n$big.json"
echo "# label wall_s cpu_s peak_MiB rc"
[ -n "${RTT_ONLY:-}" ] && rounds=0
for ((r = 1; r <= rounds; r++)); do
	measure "nixspawn-test-$nodes-r$r" nixspawn_test "$work/n$nodes.json"
	measure "nspawn-way-$nodes-r$r" nspawn_way "$nodes"
done
if [ -z "${RTT_ONLY:-}" ]; then
	measure "nixspawn-test-$big" nixspawn_test "$work/n$big.json"
	measure "nspawn-way-$big" nspawn_way "$big"
	# Where the CPU goes: one more run each way with the guests' own CPU
	# time read before shutdown (the reading itself costs a little wall).
	for way in nixspawn-test nspawn-way; do
		if [ $way = nixspawn-test ]; then
			ACCOUNT=1 measure "$way-$nodes-account" nixspawn_test "$work/n$nodes.json"
		else
			ACCOUNT=1 measure "$way-$nodes-account" nspawn_way "$nodes"
		fi
		awk -v l="$way-$nodes" '/^GUESTCPU/ {s += $3; n++} END {printf "guest CPU %s: %.2f s in %d guests\n", l, s, n}' \
			"$work/$way-$nodes-account.log"
	done
	grep -h "launch +\|PID 1 exec +\|READY=1 +\|multi-user.target +" "$work/nixspawn-test-$nodes-account.log" | head -60 || true
fi

# Round trips on one node, alternating sample by sample (ab-style):
# succeed("true") (a plain word list: forked by the node's entry, no bash),
# succeed("true;") (shell syntax: through bash), nsenter with the nspawn
# driver's shell line, nsenter /bin/true, and a transient unit through the
# guest's systemd (what machinectl shell does, minus machined).
# (RTT_ONLY=1 runs just this part.)
cat >"$work/rtt.py" <<EOF
import json, subprocess, statistics, time
machine.wait_for_unit('multi-user.target')
leader = json.loads(subprocess.run(['$bin/nixspawnctl', 'status', '--json', 'mnb-machine'], capture_output=True).stdout)['leader']
ns = ['nsenter', '-t', str(leader), '--mount', '--uts', '--ipc', '--net', '--pid', '--cgroup']
ways = [
    ('succeed-plain', lambda: machine.succeed('true')),
    ('succeed-bash', lambda: machine.succeed('true;')),
    ('nsenter-driver-shell', lambda: subprocess.run(ns + ['/bin/bash', '-c', 'set -eo pipefail; source /etc/profile; set -u; true'], env={}, check=True)),
    ('nsenter-true', lambda: subprocess.run(ns + ['/bin/true'], env={}, check=True)),
    ('transient-unit', lambda: subprocess.run(ns + ['systemd-run', '--wait', '--pipe', '--quiet', '/bin/true'], env={}, check=True, stdout=subprocess.DEVNULL)),
]
times = {label: [] for label, _ in ways}
for i in range(200):
    for label, fn in ways:
        if label == 'transient-unit' and i % 4:
            continue
        t = time.perf_counter(); fn(); times[label].append((time.perf_counter() - t) * 1000)
for label, xs in times.items():
    xs.sort()
    print(f'RTT {label} median {statistics.median(xs):.2f} ms p90 {xs[len(xs) * 9 // 10]:.2f} ms (n={len(xs)})')
EOF
python3 -c 'import json, sys; json.dump({"machine_prefix": "mnb-", "nodes": {"machine": {"tree": sys.argv[1]}}, "test_script": open(sys.argv[2]).read()}, open(sys.argv[3], "w"))' \
	"$tree" "$work/rtt.py" "$work/rtt.json"
nixspawn_test "$work/rtt.json" 2>/dev/null | grep -E "^RTT"
