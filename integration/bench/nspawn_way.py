#!/usr/bin/env python3
# The nixpkgs container test driver's approach, re-created for the benchmark
# (our own code, from the documented behaviour in
# ../shared/reference/test-driver.md §3.2): per node a named network
# namespace (`ip netns add`), one veth per vlan whose host end is a port of
# bridge br<vlan> (192.168.<vlan>.254), systemd-nspawn 252 joining the
# namespace with --network-namespace-path, the guest's PID 1 found as the
# only child of nspawn, every command through
# `nsenter -t PID1 --mount --uts --ipc --net --pid --cgroup` with an empty
# environment, and the driver's one-second retry. Run it inside a private
# network and mount namespace (multinode.sh does: `unshare -n -m`), as the
# Nix sandbox would be.
#
#   nspawn_way.py TREE NODES   (NODES as multinode.sh names them: a0 a1 ... b0 ...)
#
# Unlike the driver, every wait has a deadline (PID 1's discovery, each
# unit wait, each command, the final shutdown): a node that does not come
# up fails the run naming the node and quoting its systemd-nspawn's stderr
# (kept in $NSPAWN_WAY_LOGS, default a temporary directory) instead of
# hanging it.

import os
import subprocess
import sys
import tempfile
import time

TREE = sys.argv[1]
NAMES = sys.argv[2:]
LOGS = os.environ.get("NSPAWN_WAY_LOGS") or tempfile.mkdtemp(prefix="nspawn-way.")
PID1_TIMEOUT = 60
UNIT_TIMEOUT = 120
COMMAND_TIMEOUT = 60
STOP_TIMEOUT = 60


class NodeFailed(Exception):
    pass


def inotify_instances():
    """Inotify instances held on the host, by program: all uid 0 here, so
    all counted against one fs.inotify.max_user_instances."""
    by = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                comm = open(f"/proc/{pid}/comm").read().strip()
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:inotify":
                        by[comm] = by.get(comm, 0) + 1
            except OSError:
                pass
    top = sorted(by.items(), key=lambda kv: -kv[1])[:6]
    return f"{sum(by.values())} (" + ", ".join(f"{c}: {n}" for c, n in top) + ")"


def sh(*args):
    subprocess.run(args, check=True)


def vlans_of(name):
    return [1, 2] if name == "a0" else ([1] if name.startswith("a") else [2])


class Machine:
    def __init__(self, name, n):
        self.name, self.n, self.pid1 = name, n, None

    def start(self):
        ns = f"nixos-nspawn-{self.name}"
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        for k, vlan in enumerate(vlans_of(self.name)):
            host, guest = f"{self.name}-eth{k + 1}", f"eth{k + 1}"
            sh("ip", "link", "add", host, "type", "veth", "peer", "name", guest, "netns", ns)
            sh("ip", "link", "set", host, "master", f"br{vlan}", "up")
            sh("ip", "-n", ns, "addr", "add", f"192.168.{vlan}.{self.n}/24", "dev", guest)
            sh("ip", "-n", ns, "link", "set", guest, "up")
        self.stderr_path = os.path.join(LOGS, f"{self.name}.stderr")
        self.console_path = os.path.join(LOGS, f"{self.name}.console")
        self.proc = subprocess.Popen(
            [
                "systemd-nspawn", "-q", f"--machine={self.name}", "--keep-unit", "--register=no",
                f"--network-namespace-path=/run/netns/{ns}", "-D", TREE, "--volatile=overlay",
                "--console=pipe", "-b",
            ],
            # (the console goes to a file, as the driver reads it from a pipe)
            stdin=subprocess.DEVNULL, stdout=open(self.console_path, "w"), stderr=open(self.stderr_path, "w"),
        )

    def failed(self, what):
        try:
            err = open(self.stderr_path).read().strip()
        except OSError:
            err = ""
        rc = self.proc.poll()
        state = "running" if rc is None else f"exited with {rc}"
        try:
            console = open(self.console_path, errors="replace").read().splitlines()
        except OSError:
            console = []
        hints = [line for line in console if "inotify" in line or "Failed" in line][:5]
        return NodeFailed(
            f"{self.name}: {what} (systemd-nspawn {state}; its stderr: {err or '(empty)'}; "
            f"console: {' / '.join(hints) or '(nothing failed there)'}; "
            f"inotify instances on the host now: {inotify_instances()} "
            f"(fs.inotify.max_user_instances: {open('/proc/sys/fs/inotify/max_user_instances').read().strip()}))"
        )

    def stop_hard(self):
        """Kill the guest's PID 1 (its PID namespace goes with it), then
        nspawn: SIGKILL of nspawn alone leaves the guest running."""
        if self.proc.poll() is not None:
            return
        try:
            kids = open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read().split()
        except OSError:
            kids = []
        for k in kids:
            try:
                os.kill(int(k), 9)
            except OSError:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def connect(self):
        # PID 1 is nspawn's only child.
        p = self.proc.pid
        deadline = time.monotonic() + PID1_TIMEOUT
        while self.pid1 is None:
            if self.proc.poll() is not None:
                raise self.failed("systemd-nspawn ended before its PID 1 was found")
            if time.monotonic() > deadline:
                raise self.failed(f"no PID 1 within {PID1_TIMEOUT}s")
            try:
                kids = open(f"/proc/{p}/task/{p}/children").read().split()
            except OSError:
                kids = []
            if len(kids) == 1:
                self.pid1 = int(kids[0])
            else:
                time.sleep(0.01)

    def execute(self, cmd):
        self.connect()
        try:
            r = subprocess.run(
                ["nsenter", "-t", str(self.pid1), "--mount", "--uts", "--ipc", "--net", "--pid", "--cgroup",
                 "/bin/bash", "-c", f"set -eo pipefail; source /etc/profile; set -u; {cmd}"],
                env={}, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, timeout=COMMAND_TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            raise self.failed(f"`{cmd}` did not end within {COMMAND_TIMEOUT}s")
        return r.returncode, r.stdout.decode()

    def succeed(self, cmd):
        rc, out = self.execute(cmd)
        if rc != 0:
            raise Exception(f"{self.name}: command `{cmd}` failed (exit code {rc})")
        return out

    def wait_for_unit(self, unit):
        # the driver's retry: one try a second
        deadline = time.monotonic() + UNIT_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise self.failed(f"systemd-nspawn ended while waiting for {unit}")
            rc, out = self.execute(f"systemctl show -p ActiveState {unit}")
            if out.strip() == "ActiveState=active":
                return
            if out.strip() == "ActiveState=failed":
                raise self.failed(f"{unit} failed")
            if time.monotonic() > deadline:
                raise self.failed(f"{unit} not active within {UNIT_TIMEOUT}s")
            time.sleep(1)


def main():
    machines = {}
    try:
        run(machines)
    except NodeFailed as e:
        print(f"nspawn-way: FAILED: {e}", file=sys.stderr)
        sys.exit(1)
    finally:
        for m in machines.values():
            m.stop_hard()
        for name in NAMES:
            subprocess.run(["ip", "netns", "del", f"nixos-nspawn-{name}"], check=False,
                           stderr=subprocess.DEVNULL)


def run(machines):
    for vlan in (1, 2):
        sh("ip", "link", "add", f"br{vlan}", "type", "bridge")
        sh("ip", "addr", "add", f"192.168.{vlan}.254/24", "dev", f"br{vlan}")
        sh("ip", "link", "set", f"br{vlan}", "up")
    names = sorted(NAMES)
    machines.update({name: Machine(name, i + 1) for i, name in enumerate(names)})
    hosts = "127.0.0.1 localhost\n" + "".join(
        f"192.168.{vlans_of(n)[0]}.{m.n} {n}\n" for n, m in machines.items()
    )
    for m in machines.values():
        m.start()
    for m in machines.values():
        m.wait_for_unit("multi-user.target")
        m.succeed(f"printf '{hosts}' > /etc/hosts")
    run_checks(machines)
    if os.environ.get("ACCOUNT"):
        # The guests' own CPU time, as multinode.sh's nixspawn-test script reads it.
        for m in machines.values():
            total = 0
            for line in m.succeed("cat /proc/[0-9]*/stat 2>/dev/null || true").splitlines():
                f = line.rsplit(")", 1)[1].split()
                total += sum(int(x) for x in f[11:15])
            print(f"GUESTCPU {m.name} {total / os.sysconf('SC_CLK_TCK'):.2f}")
    for m in machines.values():
        m.proc.terminate()
    for m in machines.values():
        try:
            m.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise m.failed(f"did not stop within {STOP_TIMEOUT}s")
        # as run-nspawn does at exit
        subprocess.run(["ip", "netns", "del", f"nixos-nspawn-{m.name}"], check=False)
    print("nspawn-way: passed")


def reach(host):
    return f"out=$(timeout 3 bash -c 'exec 3<>/dev/tcp/{host}/9' 2>&1 || true); [[ $out == *refused* ]]"


def unreachable(addr):
    return f"out=$(timeout 3 bash -c 'exec 3<>/dev/tcp/{addr}/9' 2>&1 || true); [[ $out == *unreachable* ]]"


def run_checks(machines):
    m = machines
    m["a1"].succeed(reach("a2"))
    m["b1"].succeed(reach("b2"))
    m["a0"].succeed(reach("b1"))
    m["b2"].succeed(reach("192.168.2.1"))
    m["a1"].succeed(unreachable("192.168.2.2"))


if __name__ == "__main__":
    main()
