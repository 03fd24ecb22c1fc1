# nixspawn-test script of cases.nix's twoNodes: a reaches b by name on
# vlan 1. The bookworm tree has no HTTP server, curl, ping, nc or python:
# a socket-activated shell answers HTTP/1.0 and bash's /dev/tcp asks.
import base64


def write_file(m, path, text):
    data = base64.b64encode(text.encode()).decode()
    m.succeed(f"mkdir -p $(dirname {path}) && echo {data} | base64 -d > {path}")


def http_server(m, text):
    # Reads the request first: closing with it unread resets the connection.
    write_file(m, "/run/http.sh", r"""
while IFS= read -r line; do
  case "$line" in ""|"$(printf '\r')") break ;; esac
done
printf 'HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n%s\n' "$1"
""")
    write_file(m, "/run/systemd/system/http.socket", "[Socket]\nListenStream=80\nAccept=yes\n")
    write_file(m, "/run/systemd/system/http@.service",
               f"[Service]\nExecStart=/bin/sh /run/http.sh '{text}'\n"
               "StandardInput=socket\nStandardOutput=socket\n")
    m.succeed("systemctl daemon-reload", "systemctl restart http.socket")


def get(m, host):
    return m.succeed(
        f"exec 3<>/dev/tcp/{host}/80; printf 'GET / HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3")


start_all()
b.wait_for_unit("multi-user.target")
http_server(b, "hello from b")
b.wait_for_open_port(80)
a.wait_for_unit("multi-user.target")
addr = a.succeed("getent ahostsv4 b").split()[0]
print(f"a resolves b to {addr}")
assert addr == "192.168.1.2", addr
out = get(a, "b")
assert "hello from b" in out, out
print(f"a got from b: {out.splitlines()[-1]}")
with subtest("b reaches a"):
    http_server(a, "hello from a")
    a.wait_for_open_port(80)
    out = get(b, "a")
    assert "hello from a" in out, out
    print(f"b got from a: {out.splitlines()[-1]}")
