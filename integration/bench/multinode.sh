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
cargo build --release --manifest-path "$repo/Cargo.toml" --bins -q
bin=$repo/target/release
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
'''
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
nspawn_way() { unshare --net --mount --propagation private python3 "$here/nspawn_way.py" "$tree" $(names "$1"); }

description "$nodes" "$work/n$nodes.json"
description "$big" "$work/n$big.json"
echo "# label wall_s cpu_s peak_MiB rc"
for ((r = 1; r <= rounds; r++)); do
	measure "nixspawn-test-$nodes-r$r" nixspawn_test "$work/n$nodes.json"
	measure "nspawn-way-$nodes-r$r" nspawn_way "$nodes"
done
measure "nixspawn-test-$big" nixspawn_test "$work/n$big.json"
measure "nspawn-way-$big" nspawn_way "$big"

# Round trips on one node: succeed("true") vs nsenter vs a transient unit
# through the guest's systemd (what machinectl shell does, minus machined).
cat >"$work/rtt.json" <<EOF
{"machine_prefix": "mnb-", "nodes": {"machine": {"tree": "$tree"}},
 "test_script": "import json, subprocess, statistics, time\nmachine.wait_for_unit('multi-user.target')\nleader = json.loads(subprocess.run(['$bin/nixspawnctl', 'status', '--json', 'mnb-machine'], capture_output=True).stdout)['leader']\nprint('guest cgroups:', open(f'/proc/{leader}/cgroup').read().replace(chr(10), ' '))\ndef timed(fn, n=200):\n    xs = []\n    for _ in range(n):\n        t = time.perf_counter(); fn(); xs.append((time.perf_counter() - t) * 1000)\n    xs.sort(); return statistics.median(xs), xs[len(xs) * 9 // 10]\nns = ['nsenter', '-t', str(leader), '--mount', '--uts', '--ipc', '--net', '--pid', '--cgroup']\nfor label, fn in [\n    ('succeed', lambda: machine.succeed('true')),\n    ('nsenter-driver-shell', lambda: subprocess.run(ns + ['/bin/bash', '-c', 'set -eo pipefail; source /etc/profile; set -u; true'], env={}, check=True)),\n    ('nsenter-true', lambda: subprocess.run(ns + ['/bin/true'], env={}, check=True)),\n    ('transient-unit', lambda: subprocess.run(ns + ['systemd-run', '--wait', '--pipe', '--quiet', '/bin/true'], env={}, check=True, stdout=subprocess.DEVNULL)),\n]:\n    n = 50 if label == 'transient-unit' else 200\n    med, p90 = timed(fn, n)\n    print(f'RTT {label} median {med:.2f} ms p90 {p90:.2f} ms (n={n})')\n"}
EOF
nixspawn_test "$work/rtt.json" 2>/dev/null | grep -E "^(RTT|guest cgroups)"
