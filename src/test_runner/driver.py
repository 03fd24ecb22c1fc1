# nixspawn-test's driver module: the NixOS test driver's script dialect
# (node variables, start_all, subtest, retry, succeed, wait_for_unit, ...)
# over nixspawn containers. Written for nixspawn from the driver's documented
# API; standard library only. It talks to the nixspawn-test process over a
# unix socket, one JSON request and one JSON answer per connection.

import base64
import code
import contextlib
import json
import os
import re
import shlex
import socket
import sys
import tarfile
import tempfile
import threading
import time
import traceback
import unittest
import xml.etree.ElementTree as ET

SOCKET = os.environ["NIXSPAWN_TEST_SOCKET"]
OUT_DIR = os.environ["NIXSPAWN_TEST_OUT"]
JUNIT = os.environ.get("NIXSPAWN_TEST_JUNIT")
LOGFILE = os.environ.get("LOGFILE")
COLOR = sys.stderr.isatty()


class RequestedAssertionFailed(AssertionError):
    """A check the script asked for did not hold."""


class TestScriptError(Exception):
    """The script used the API wrongly."""


class MachineError(Exception):
    """A node could not do what was asked (it did not boot, it is gone)."""


class NotAvailableInContainer(MachineError):
    pass


class PollingConditionError(Exception):
    """A polling condition did not hold when a command was about to run."""


def _call(request):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(SOCKET)
        s.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    if not data:
        raise MachineError(f"nixspawn-test gave no answer to {request['op']}")
    answer = json.loads(data)
    if "error" in answer:
        raise MachineError(answer["error"])
    return answer


def _seconds(t):
    """Durations as the 2026 driver takes them: int/float seconds or a timedelta."""
    if t is None:
        return None
    if hasattr(t, "total_seconds"):
        return t.total_seconds()
    return float(t)


class XMLLog:
    """The driver's XML log ($LOGFILE): <logfile> with a <nest> per nested
    block (its <head> the message), a <line> per message (machine= when a
    node's) and the nodes' console lines as type="serial"."""

    def __init__(self, path):
        from xml.sax.saxutils import XMLGenerator

        self.file = open(path, "w", encoding="utf-8")
        self.xml = XMLGenerator(self.file, encoding="utf-8")
        self.lock = threading.Lock()
        with self.lock:
            self.xml.startDocument()
            self.xml.startElement("logfile", {})

    @staticmethod
    def _clean(text):
        # XML 1.0 has no place for most control characters.
        return "".join(c if c in "\t\n" or ord(c) >= 32 else f"\\x{ord(c):02x}" for c in text)

    def line(self, text, attrs):
        with self.lock:
            if self.file.closed:
                return
            self.xml.startElement("line", attrs)
            self.xml.characters(self._clean(str(text)))
            self.xml.endElement("line")
            self.file.flush()

    def begin(self, head, attrs):
        with self.lock:
            self.xml.startElement("nest", {})
            self.xml.startElement("head", attrs)
            self.xml.characters(self._clean(head))
            self.xml.endElement("head")
            self.file.flush()

    def end(self):
        with self.lock:
            self.xml.endElement("nest")
            self.file.flush()

    def close(self):
        with self.lock:
            if self.file.closed:
                return
            self.xml.endElement("logfile")
            self.xml.endDocument()
            self.file.close()


class Logger:
    def __init__(self):
        self.depth = 0
        self.cases = []  # JUnit: (name, seconds, failure or None)
        self._case = None
        self.xml = XMLLog(LOGFILE) if LOGFILE else None
        # Messages of the open nested blocks, innermost last: what a
        # command is run for, for the runner's status line.
        self.context = []

    def _emit(self, text, color=None):
        if COLOR and color:
            text = f"\x1b[{color}m{text}\x1b[0m"
        if COLOR:
            # Over the runner's status line.
            text = "\r\x1b[K" + text
        sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def log(self, message, machine=None):
        prefix = f"{machine}: " if machine else ""
        self._emit("  " * self.depth + prefix + str(message))
        if self.xml:
            self.xml.line(message, {"machine": machine} if machine else {})

    def info(self, message, machine=None):
        self.log(message, machine)

    def warning(self, message, machine=None):
        self.log(message, machine)

    def error(self, message):
        self._emit(f"!!! {message}", "1;31")
        if self.xml:
            self.xml.line(message, {"type": "error"})

    @contextlib.contextmanager
    def nested(self, message, machine=None):
        prefix = f"{machine}: " if machine else ""
        self._emit("  " * self.depth + prefix + message, "1;32")
        if self.xml:
            self.xml.begin(message, {"machine": machine} if machine else {})
        self.depth += 1
        self.context.append(message)
        start = time.monotonic()
        try:
            yield
        finally:
            self.depth -= 1
            self.context.pop()
            self._emit(
                "  " * self.depth
                + f"(finished: {prefix}{message}, in {time.monotonic() - start:.2f} seconds)"
            )
            if self.xml:
                self.xml.end()

    @contextlib.contextmanager
    def subtest(self, name):
        outer = self._case
        start = time.monotonic()
        self._case = name
        failure = None
        try:
            with self.nested(f"subtest: {name}"):
                yield
        except BaseException as e:
            failure = f"{type(e).__name__}: {e}"
            raise
        finally:
            self._case = outer
            self.cases.append((name, time.monotonic() - start, failure))

    def write_junit(self, total, failure):
        if not JUNIT:
            return
        suite = ET.Element("testsuite", name="NixOS integration test")
        cases = list(self.cases)
        inner = sum(c[1] for c in cases)
        cases.insert(0, ("main", max(total - inner, 0.0), failure if not any(c[2] for c in cases) else None))
        failures = 0
        for name, secs, fail in cases:
            case = ET.SubElement(suite, "testcase", name=name, classname="nixspawn-test", time=f"{secs:.3f}")
            if fail:
                failures += 1
                ET.SubElement(case, "failure", message=fail.splitlines()[0] if fail else "").text = fail
        suite.set("tests", str(len(cases)))
        suite.set("failures", str(failures))
        suite.set("time", f"{total:.3f}")
        root = ET.Element("testsuites")
        root.append(suite)
        ET.ElementTree(root).write(JUNIT, encoding="unicode", xml_declaration=True)


logger = Logger()


def log(message):
    logger.log(message)


def subtest(name):
    return logger.subtest(name)


def retry(fn, timeout_seconds=900, timeout=None):
    """Call fn(False) until it returns true or the time is up, then fn(True)
    once more. Polls quickly at first (containers answer in milliseconds)
    and every second later."""
    limit = _seconds(timeout if timeout is not None else timeout_seconds)
    start = time.monotonic()
    pause = 0.05
    while limit is None or time.monotonic() - start < limit:
        if fn(False):
            return
        time.sleep(pause)
        pause = min(pause * 2, 1.0)
    if not fn(True):
        raise RequestedAssertionFailed(
            f"action timed out after {time.monotonic() - start:.0f} seconds (timeout={limit:g})"
        )


_polling_conditions = []  # active ones, innermost last


class PollingCondition:
    """A condition checked before each command while it is active (at most
    once per seconds_interval); a false result (or an exception) raises
    PollingConditionError from the command."""

    def __init__(self, condition, seconds_interval=2.0, description=None):
        self.condition = condition
        self.seconds_interval = seconds_interval
        self.description = str(description or condition.__doc__ or condition.__name__).strip()
        self.last_called = float("-inf")
        self.entered = False

    def status_message(self, ok):
        return f"Polling condition {'succeeded' if ok else 'failed'}: {self.description}"

    def check(self, force=False):
        overdue = time.monotonic() - self.last_called >= self.seconds_interval
        # (entered: the condition's own commands do not check it again)
        if (self.entered or not overdue) and not force:
            return True
        self.entered = True
        try:
            with logger.nested(f"checking polling condition {self.description}"):
                try:
                    result = self.condition()
                except Exception as e:  # noqa: B902 - any failure is a false condition
                    logger.log(f"{type(e).__name__}: {e}")
                    result = False
                result = result is None or bool(result)
                logger.log(self.status_message(result))
                return result
        finally:
            self.entered = False
            self.last_called = time.monotonic()

    def maybe_raise(self):
        if not self.check():
            raise PollingConditionError(self.status_message(False))

    def wait(self, timeout=900):
        def check(last):
            if last:
                logger.log(f"last chance for {self.description}")
            return self.check(force=True)

        with logger.nested(f"waiting for {self.description}"):
            retry(check, timeout)


def polling_condition(fun_=None, *, seconds_interval=2.0, description=None):
    """As the driver: @polling_condition or @polling_condition(seconds_interval=...,
    description=...) makes a function a condition; `with cond:` activates it."""

    class Poll:
        def __init__(self, fun):
            self.condition = PollingCondition(fun, seconds_interval, description)

        def __enter__(self):
            _polling_conditions.append(self.condition)
            return self

        def __exit__(self, *exc):
            _polling_conditions.remove(self.condition)

        def __call__(self):
            return self.condition.condition()

        def wait(self, timeout=900):
            self.condition.wait(_seconds(timeout))

    if fun_ is None:
        return Poll
    return Poll(fun_)


def _check_polling_conditions():
    for condition in list(_polling_conditions):
        condition.maybe_raise()


class VLan:
    """A vlan of the run: bridge br<nr> in the run's own network namespace
    (made and removed by nixspawn-test; start and stop do nothing)."""

    def __init__(self, nr, machines):
        self.nr = nr
        self.bridge = f"br{nr}"
        self.machines = machines

    def __repr__(self):
        return f"<VLan {self.nr}>"

    def start(self):
        pass

    def stop(self):
        pass


def _not_available(method):
    def refuse(self, *args, **kwargs):
        raise NotAvailableInContainer(
            f"{self.name}: {method} is not available in a container (it needs QEMU)"
        )

    refuse.__name__ = method
    return refuse


class Machine:
    """One node: a nixspawn container."""

    def __init__(self, name, info):
        self.name = name
        self.console_log = info["console_log"]
        self.started = False
        self.booted = False
        self.out_dir = OUT_DIR
        self.vlans = info.get("vlans", [])

    def __repr__(self):
        return f"<Machine '{self.name}'>"

    # Logging
    def log(self, message):
        logger.log(message, self.name)

    def nested(self, message, attrs={}):
        return logger.nested(message, self.name)

    # Lifecycle
    def is_up(self):
        return self.booted

    def start(self, allow_reboot=False):
        if self.started:
            return
        self.log("starting")
        _call({"op": "start", "node": self.name})
        self.started = True

    def _wait_booted(self):
        if self.booted:
            return
        self.start()
        with self.nested("waiting for the container to finish booting"):
            _call({"op": "wait_booted", "node": self.name})
        self.booted = True

    def shutdown(self):
        if not self.started:
            return
        with self.nested("shutting down"):
            _call({"op": "shutdown", "node": self.name})
        self.started = self.booted = False

    def crash(self):
        if not self.started:
            return
        self.log("simulating a crash")
        _call({"op": "crash", "node": self.name})
        self.started = self.booted = False

    def reboot(self):
        self._wait_booted()
        with self.nested("rebooting"):
            _call({"op": "reboot", "node": self.name})
        self.booted = False

    def wait_for_shutdown(self):
        if not self.started:
            return
        with self.nested("waiting for the container to power off"):
            _call({"op": "wait_for_shutdown", "node": self.name})
        self.started = self.booted = False

    def release(self):
        pass

    # Commands
    def _exec(self, command, timeout, **extra):
        self._wait_booted()
        request = {
            "op": "exec",
            "node": self.name,
            "command": command,
            "timeout": _seconds(timeout),
            "context": logger.context[-1] if logger.context else "",
        }
        request.update(extra)
        return _call(request)

    def execute(self, command, check_return=True, check_output=True, timeout=900):
        _check_polling_conditions()
        if not check_output:
            self._exec(command, timeout, detach=True)
            return (-2, "")
        answer = self._exec(command, timeout)
        if not check_return:
            return (-1, answer["stdout"])
        return (answer["rc"], answer["stdout"])

    def succeed(self, *commands, timeout=None):
        output = ""
        for command in commands:
            with self.nested(f"must succeed: {command}"):
                rc, out = self.execute(command, timeout=timeout)
                if rc != 0:
                    self.log(f"output: {out}")
                    raise RequestedAssertionFailed(f"command `{command}` failed (exit code {rc})")
                output += out
        return output

    def fail(self, *commands, timeout=None):
        output = ""
        for command in commands:
            with self.nested(f"must fail: {command}"):
                rc, out = self.execute(command, timeout=timeout)
                if rc == 0:
                    raise RequestedAssertionFailed(f"command `{command}` unexpectedly succeeded")
                output += out
        return output

    def wait_until_succeeds(self, command, timeout=900):
        output = ""

        def check(_last):
            nonlocal output
            rc, output = self.execute(command, timeout=timeout)
            return rc == 0

        with self.nested(f"waiting for success: {command}"):
            retry(check, timeout)
            return output

    def wait_until_fails(self, command, timeout=900):
        output = ""

        def check(_last):
            nonlocal output
            rc, output = self.execute(command, timeout=timeout)
            return rc != 0

        with self.nested(f"waiting for failure: {command}"):
            retry(check, timeout)
            return output

    def sleep(self, secs=None, duration=None):
        secs = _seconds(duration if duration is not None else secs)
        self.succeed(f"sleep {secs:g}")

    def systemctl(self, q, user=None):
        if user is not None:
            q = q.replace("'", "\\'")
            return self.execute(
                f"su -l {user} --shell /bin/sh -c "
                "$'XDG_RUNTIME_DIR=/run/user/`id -u` "
                f"systemctl --user {q}'"
            )
        return self.execute(f"systemctl {q}")

    def start_job(self, name, user=None):
        return self.systemctl(f"start {name}", user)

    def stop_job(self, name, user=None):
        return self.systemctl(f"stop {name}", user)

    def get_unit_info(self, unit, user=None):
        # (shlex.quote leaves a plain unit name as it is, so the command is
        # plain words, run without a shell.)
        rc, lines = self.systemctl(f"--no-pager show {shlex.quote(unit)}", user)
        if rc != 0:
            raise RequestedAssertionFailed(
                f'retrieving systemctl info for unit "{unit}"'
                + ("" if user is None else f' under user "{user}"')
                + f" failed with exit code {rc}"
            )
        info = {}
        for line in lines.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                info[key] = value
        return info

    def get_unit_property(self, unit, property, user=None):
        return self._unit_properties(unit, [property], user)[property]

    def _unit_properties(self, unit, properties, user=None, optional=()):
        """Several properties of a unit from one `systemctl show` (those in
        `optional` may be missing: systemctl leaves out an empty Job)."""
        asked = " ".join(shlex.quote(f"--property={p}") for p in list(properties) + list(optional))
        rc, out = self.systemctl(f"--no-pager show {shlex.quote(unit)} {asked}", user)
        shown = " and ".join(f'"{p}"' for p in properties)
        if rc != 0:
            raise RequestedAssertionFailed(
                f"retrieving systemctl property {shown} for unit \"{unit}\""
                + ("" if user is None else f' under user "{user}"')
                + f" failed with exit code {rc}"
            )
        values = {}
        for line in out.splitlines():
            key, sep, value = line.partition("=")
            if sep and (key in properties or key in optional):
                values[key] = value
        for p in properties:
            if p not in values:
                raise RequestedAssertionFailed(f'systemctl show printed no "{p}" for unit "{unit}": {out!r}')
        return values

    def require_unit_state(self, unit, require_state="active"):
        with self.nested(f"checking if unit '{unit}' has reached state '{require_state}'"):
            state = self.get_unit_property(unit, "ActiveState")
            if state != require_state:
                raise RequestedAssertionFailed(
                    f"Expected unit '{unit}' to to be in state '{require_state}' but it is in state '{state}'"
                )

    def wait_for_unit(self, unit, user=None, timeout=900):
        # With the time it became active for the timeline and the unit's
        # own job, in the same call.
        wanted = ["ActiveState"] + (["ActiveEnterTimestampMonotonic"] if user is None else [])
        last = {}

        def check_active(_last):
            last.clear()
            last.update(self._unit_properties(unit, wanted, user, optional=["Job"]))
            state = last["ActiveState"]
            if state == "failed":
                raise RequestedAssertionFailed(f'unit "{unit}" reached state "{state}"')
            # (A job of the unit's own is a pending job: no need to list them.)
            if state == "inactive" and last.get("Job", "") in ("", "0"):
                _, jobs = self.systemctl("list-jobs --full 2>&1", user)
                if "No jobs" in jobs:
                    info = self.get_unit_info(unit, user)
                    if info.get("ActiveState") == state:
                        raise RequestedAssertionFailed(
                            f'unit "{unit}" is inactive and there are no pending jobs'
                        )
            return state == "active"

        with self.nested(f"waiting for unit {unit}" + ("" if user is None else f" with user {user}")):
            retry(check_active, timeout)
            if user is None:
                entered = last["ActiveEnterTimestampMonotonic"]
                _call({"op": "mark", "node": self.name, "label": unit, "monotonic_usec": int(entered or 0)})

    def wait_for_file(self, filename, timeout=900):
        def check(_last):
            rc, _ = self.execute(f"test -e {shlex.quote(filename)}")
            return rc == 0

        with self.nested(f"waiting for file '{filename}'"):
            retry(check, timeout)

    @staticmethod
    def _port_probe(addr, port):
        # nc where the guest has it (the driver's probe); else bash's /dev/tcp.
        a, p = shlex.quote(str(addr)), shlex.quote(str(port))
        return (
            f"if command -v nc >/dev/null 2>&1; then nc -z {a} {p}; "
            f"else timeout 2 bash -c 'exec 3<>/dev/tcp/'{a}'/'{p} 2>/dev/null; fi"
        )

    def wait_for_open_port(self, port, addr="localhost", timeout=900):
        def check(_last):
            rc, _ = self.execute(self._port_probe(addr, port))
            return rc == 0

        with self.nested(f"waiting for TCP port {port} on {addr}"):
            retry(check, timeout)

    def wait_for_closed_port(self, port, addr="localhost", timeout=900):
        def check(_last):
            rc, _ = self.execute(self._port_probe(addr, port))
            return rc != 0

        with self.nested(f"waiting for TCP port {port} on {addr} to be closed"):
            retry(check, timeout)

    def wait_for_open_unix_socket(self, addr, is_datagram=False, timeout=900):
        # nc where the guest has it; else the socket table of its network
        # namespace (/proc/net/unix: a stream socket listens when its flags
        # say __SO_ACCEPTCON).
        q = shlex.quote(addr)
        nc = f"nc -z{'u' if is_datagram else ''}U {q}"
        table = (
            f"awk -v p={q} -v d={1 if is_datagram else 0} "
            "'NR>1 && $NF==p && (d ? $5==\"0002\" : $4==\"00010000\") {f=1} END {exit !f}' /proc/net/unix"
        )
        probe = f"if command -v nc >/dev/null 2>&1; then {nc}; else {table}; fi"

        def check(_last):
            rc, _ = self.execute(probe)
            return rc == 0

        with self.nested(f"waiting for UNIX socket {addr} to be open"):
            retry(check, timeout)

    def get_console_log(self):
        with open(self.console_log, errors="replace") as f:
            return f.read()

    def wait_for_console_text(self, regex, timeout=None):
        pattern = re.compile(regex)
        limit = _seconds(timeout)
        start = time.monotonic()
        with self.nested(f"waiting for {regex} to appear on the console"):
            with open(self.console_log, errors="replace") as f:
                buffer = ""
                while True:
                    chunk = f.read()
                    if chunk:
                        buffer += chunk
                        lines = buffer.split("\n")
                        buffer = lines.pop()
                        for line in lines:
                            if pattern.search(line):
                                return
                        if buffer and pattern.search(buffer):
                            return
                    elif limit is not None and time.monotonic() - start > limit:
                        raise RequestedAssertionFailed(
                            f"{self.name}: {regex} did not appear on the console within {limit:g} seconds"
                        )
                    else:
                        time.sleep(0.05)

    # Files
    def copy_from_host(self, source, target):
        """Copy a host file or directory into the guest (mode kept, owned by root)."""
        with self.nested(f"copying {source} to {target}"):
            if os.path.isdir(source):
                with tempfile.NamedTemporaryFile(dir=OUT_DIR, suffix=".tar") as t:
                    with tarfile.open(fileobj=t, mode="w") as tar:
                        tar.add(source, arcname=".")
                    t.flush()
                    target_q = shlex.quote(target)
                    rc = self._copy_in(
                        t.name, f"mkdir -p {target_q} && tar --no-same-owner -xf - -C {target_q}"
                    )
            else:
                mode = oct(os.stat(source).st_mode & 0o7777)[2:]
                t = shlex.quote(target)
                rc = self._copy_in(
                    source,
                    f"mkdir -p \"$(dirname {t})\" && cat > {t} && chown 0:0 {t} && chmod {mode} {t}",
                )
            if rc != 0:
                raise RequestedAssertionFailed(f"copying {source} to {self.name}:{target} failed (exit code {rc})")

    def _copy_in(self, host_file, command):
        return self._exec(command, 900, stdin=os.path.abspath(host_file))["rc"]

    def copy_from_machine(self, source, target_dir=""):
        """Copy a guest file or directory into the output directory."""
        dest = os.path.join(OUT_DIR, target_dir)
        os.makedirs(dest, exist_ok=True)
        with self.nested(f"copying {source} from the container to {dest}"):
            with tempfile.NamedTemporaryFile(dir=OUT_DIR, suffix=".tar") as t:
                s = source.rstrip("/") or "/"
                answer = self._exec(
                    f"tar -C \"$(dirname {shlex.quote(s)})\" -cf - \"$(basename {shlex.quote(s)})\"",
                    900,
                    stdout_file=t.name,
                )
                if answer["rc"] != 0:
                    raise RequestedAssertionFailed(
                        f"copying {self.name}:{source} failed (exit code {answer['rc']})"
                    )
                with tarfile.open(t.name) as tar:
                    tar.extractall(dest, filter="data") if hasattr(tarfile, "data_filter") else tar.extractall(dest)

    copy_from_vm = copy_from_machine

    # QEMU-only API
    for _m in (
        "block", "unblock", "forward_port", "send_monitor_command", "send_key", "send_chars",
        "send_console", "screenshot", "get_screen_text", "get_screen_text_variants",
        "wait_for_text", "wait_for_x", "wait_for_window", "shell_interact", "console_interact",
        "wait_for_qmp_event", "switch_root", "get_tty_text", "wait_until_tty_matches",
        "copy_from_host_via_shell", "dump_tty_contents",
    ):
        locals()[_m] = _not_available(_m)
    del _m


def _serial_to_xml(machine):
    """A node's console lines into the XML log, as the driver logs serial lines."""
    with open(machine.console_log, errors="replace") as f:
        partial = ""
        while True:
            chunk = f.read()
            if not chunk:
                time.sleep(0.1)
                continue
            partial += chunk
            *lines, partial = partial.split("\n")
            for line in lines:
                logger.xml.line(line.rstrip("\r"), {"machine": machine.name, "type": "serial"})


def _variable(name):
    return re.sub(r"^[^A-Za-z_]|[^A-Za-z0-9_]", "_", name)


def _main():
    info = _call({"op": "nodes"})
    machines = [Machine(n["name"], n) for n in info["nodes"]]
    script_path = info["script_path"]
    with open(script_path) as f:
        script = f.read()

    vlans = [
        VLan(nr, [m for m in machines if nr in m.vlans])
        for nr in sorted({nr for m in machines for nr in m.vlans})
    ]
    if logger.xml:
        for m in machines:
            threading.Thread(target=_serial_to_xml, args=(m,), daemon=True).start()

    def start_all():
        with logger.nested("starting all containers"):
            for m in machines:
                m.start()

    def join_all():
        with logger.nested("waiting for all containers to finish"):
            for m in machines:
                m.wait_for_shutdown()

    class _Case(unittest.TestCase):
        failureException = RequestedAssertionFailed

        def runTest(self):
            pass

    env = {
        "__name__": "__test_script__",
        "machines": machines,
        "machines_nspawn": machines,
        "machines_qemu": [],
        "vlans": vlans,
        "polling_condition": polling_condition,
        "PollingConditionError": PollingConditionError,
        "start_all": start_all,
        "join_all": join_all,
        "subtest": subtest,
        "retry": retry,
        "log": logger,
        "os": os,
        "t": _Case(),
        "RequestedAssertionFailed": RequestedAssertionFailed,
        "TestScriptError": TestScriptError,
        "MachineError": MachineError,
        "serial_stdout_on": lambda: None,
        "serial_stdout_off": lambda: None,
    }
    for m in machines:
        env[_variable(m.name)] = m
    for v in vlans:
        env[f"vlan{v.nr}"] = v
    if len(machines) == 1:
        env["machine"] = machines[0]

    def test_script():
        with logger.nested("running the test script"):
            exec(compile(script, script_path, "exec"), env)

    env["test_script"] = test_script
    env["run_tests"] = test_script

    if os.environ.get("NIXSPAWN_TEST_INTERACTIVE"):
        code.interact(
            banner="nixspawn-test: nodes are "
            + ", ".join(_variable(m.name) for m in machines)
            + "; start_all() boots them, test_script() runs the script.",
            local=env,
        )
        return 0

    start = time.monotonic()
    try:
        test_script()
    except BaseException as e:  # noqa: B902 - every failure ends the test
        total = time.monotonic() - start
        frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename == script_path]
        if isinstance(e, (RequestedAssertionFailed, TestScriptError)) or frames:
            for f in frames:
                logger.error(f"{f.filename}:{f.lineno}: {f.line}")
            logger.error(f"{type(e).__name__}: {e}")
        if not isinstance(e, (RequestedAssertionFailed, TestScriptError)):
            sys.stderr.write("".join(traceback.format_exception(e)))
        failure = f"{type(e).__name__}: {e}"
        if frames:
            failure += f" (at {frames[-1].filename}:{frames[-1].lineno}: {frames[-1].line})"
        logger.write_junit(total, failure)
        return 1
    total = time.monotonic() - start
    logger.write_junit(total, None)
    logger.log(f"test script finished in {total:.2f}s")
    return 0


def _run():
    try:
        return _main()
    finally:
        if logger.xml:
            time.sleep(0.2)  # the last console lines
            logger.xml.close()


if __name__ == "__main__":
    sys.exit(_run())
