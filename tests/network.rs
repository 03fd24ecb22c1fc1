//! Privileged: guests with networks, every launcher started inside a
//! network namespace these tests make (never the machine's own):
//! side by side with systemd-nspawn 252 on the same tree and argv (the
//! links' names, altnames, MACs and states on both ends, the guest's link
//! list, the nft table after `-p`, what is left afterwards); nixspawn on
//! its own with the addressing it provides (guests on a zone and a bridge
//! pinging each other and the host, a user namespace, a booted bookworm
//! guest, port forwarding from another namespace); moved links and
//! macvlans on ifb links (this kernel has no dummy links); bad input in
//! one line with nothing left; a SIGKILLed launcher leaving nothing.

mod common;

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use nixspawn_runtime::network::rtnl::{Link, Rtnl};

/// A network namespace of ours (`ip netns add`), removed on drop with
/// whatever is still in it.
struct Netns {
    name: String,
}

impl Netns {
    fn new(tag: &str) -> Netns {
        require_root();
        let name = unique_name(&format!("n13{tag}"));
        assert!(
            Command::new("ip")
                .args(["netns", "add", &name])
                .status()
                .unwrap()
                .success()
        );
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    fn fd(&self) -> OwnedFd {
        std::fs::File::open(self.path()).unwrap().into()
    }

    /// `program` run inside this namespace (nothing else of it changed).
    fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path())).arg(program);
        c
    }

    /// `ip ARGS` here; must succeed.
    fn ip(&self, args: &[&str]) -> String {
        let out = self.command("ip").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn nft(&self, args: &[&str]) -> String {
        let out = self.command("nft").args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The links here as we read them over netlink, with masters by name.
    fn links(&self) -> Vec<String> {
        let ns = self.fd();
        let links: Vec<Link> = std::thread::spawn(move || {
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            Rtnl::open().unwrap().links().unwrap()
        })
        .join()
        .unwrap();
        let name_of = |i: u32| {
            links
                .iter()
                .find(|l| l.index == i)
                .map_or(format!("#{i}"), |l| l.name.clone())
        };
        let mut v: Vec<String> = links
            .iter()
            .map(|l| {
                format!(
                    "{} kind={} mac={} {} master={} altnames={:?}",
                    l.name,
                    l.kind.as_deref().unwrap_or("-"),
                    // A bridge without a MAC of its own shows its first port's.
                    if l.kind.as_deref() == Some("bridge") {
                        "(bridge)".to_owned()
                    } else {
                        l.mac.map_or("-".into(), |m| m.to_string())
                    },
                    if l.up { "UP" } else { "down" },
                    l.master.map_or("-".into(), name_of),
                    l.altnames
                )
            })
            .collect();
        v.sort();
        v
    }

    /// Wait until the links here are `want` (the janitor finishes after
    /// the launcher); returns what they were at the end.
    fn settle(&self, want: &[String], timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let now = self.links();
            if now == want || Instant::now() > deadline {
                return now;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

/// systemd-nspawn inside `ns`, as it must run there to be comparable:
/// with a sysfs showing that namespace's links at /sys/class/net (it
/// decides whether a zone is empty from there) and /sys read-only (a
/// writable /sys makes nspawn 252 wait for udev, which this host lacks).
fn nspawn_in(ns: &Netns) -> Command {
    let mut c = ns.command("unshare");
    c.args(["-m", "--propagation", "private", "sh", "-c"]).arg(
        "d=$(mktemp -d) && mount -t sysfs sysfs \"$d\" \
         && mount --bind \"$d/class/net\" /sys/class/net \
         && mount --bind \"$d/devices/virtual/net\" /sys/devices/virtual/net \
         && umount -l \"$d\" && rmdir \"$d\" \
         && mount -o remount,bind,ro /sys && exec systemd-nspawn \"$@\"",
    );
    c.arg("sh");
    c
}

fn nixspawn_in(ns: &Netns) -> Command {
    ns.command(NIXSPAWN)
}

/// A busybox tree with a directory for talking to the payload.
struct Tree {
    dir: tempfile::TempDir,
    sync: tempfile::TempDir,
}

impl Tree {
    fn new() -> Tree {
        let dir = busybox_tree();
        let bin = dir.path().join("usr/bin");
        for applet in [
            "ip", "ping", "nc", "rm", "ls", "readlink", "ifconfig", "route",
        ] {
            let _ = std::os::unix::fs::symlink("busybox", bin.join(applet));
        }
        let sync = tempfile::tempdir().unwrap();
        // Writable for a guest root in a user namespace too.
        std::fs::set_permissions(
            sync.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o1777),
        )
        .unwrap();
        Tree { dir, sync }
    }

    fn path(&self) -> &str {
        self.dir.path().to_str().unwrap()
    }

    fn bind(&self) -> String {
        format!("--bind={}:/sync", self.sync.path().display())
    }

    fn flag(&self, name: &str) -> PathBuf {
        self.sync.path().join(name)
    }

    fn wait_flag(&self, name: &str, child: &mut std::process::Child, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.flag(name).exists() {
            if let Some(st) = child.try_wait().unwrap() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                panic!("the launcher exited ({st}) before {name}: {err}");
            }
            assert!(Instant::now() < deadline, "no {name} after {timeout:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Wraps a payload script: run it, say "ready", wait for "go", exit.
fn held(script: &str) -> String {
    format!(
        "{script}; touch /sync/ready; while [ ! -e /sync/go ]; do sleep 0.05; done; rm -f /sync/go /sync/ready"
    )
}

/// What one launcher did with `args`: the guest's own link list, the host
/// side's links while it ran and after it (the janitor's work included),
/// and what it said about shortened names.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    guest: String,
    during: Vec<String>,
    after: Vec<String>,
    stderr: String,
}

/// `--ip -o link` in the guest, without the peer index (ifindexes of the
/// host side count every link the namespace ever had).
fn guest_links(stdout: &str) -> String {
    let re_peer = |l: &str| -> String {
        match l.find("@if") {
            Some(i) => {
                let rest = &l[i + 3..];
                let end = rest
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(rest.len());
                format!("{}@if#{}", &l[..i], &rest[end..])
            }
            None => l.to_owned(),
        }
    };
    stdout.lines().map(re_peer).collect::<Vec<_>>().join("\n")
}

/// Run `launcher ARGS` on a copy of a busybox tree in a fresh namespace
/// prepared by `setup`, the payload printing its links and waiting.
fn observe(launcher: &str, name: &str, args: &[&str], setup: &dyn Fn(&Netns)) -> Seen {
    let ns = Netns::new("s");
    setup(&ns);
    let before = ns.links();
    let tree = Tree::new();
    let unit = UnitCgroup::new("net");
    let cmd = match launcher {
        "nspawn" => nspawn_in(&ns),
        _ => nixspawn_in(&ns),
    };
    // Both run as a unit would run them (their cgroup under ours).
    let mut cmd = {
        let mut wrapped = unit.command(cmd.get_program().to_str().unwrap());
        wrapped.args(cmd.get_args());
        wrapped
    };
    // Not quiet: systemd-nspawn says when it shortens a name even so.
    cmd.args(["--register=no", "--keep-unit", "--pipe", "-M", name, "-D"])
        .arg(tree.path())
        .arg(tree.bind())
        .args(args)
        .args(["/bin/sh", "-c", &held("ip -o link")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    tree.wait_flag("ready", &mut child, Duration::from_secs(20));
    let during = ns.links();
    std::fs::write(tree.flag("go"), "").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{launcher} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // nspawn's leftovers next to the tree and under /run: not links.
    remove_nspawn_leftovers(tree.dir.path());
    let after = ns.settle(&before, Duration::from_secs(5));
    Seen {
        guest: guest_links(&String::from_utf8_lossy(&out.stdout)),
        during,
        after,
        stderr: String::from_utf8_lossy(&out.stderr)
            .lines()
            .filter(|l| l.contains("has been changed to"))
            .map(|l| l.trim_start_matches("nixspawn: ").to_owned())
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

/// What a case does to the namespace before the launcher runs.
type Setup = dyn Fn(&Netns);
/// What a case does to the tree before the launcher runs.
type Prepare = dyn Fn(&Path);

fn nspawn_present() -> bool {
    Command::new("systemd-nspawn")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn links_side_by_side_with_nspawn() {
    privileged!();
    assert!(
        nspawn_present(),
        "systemd-nspawn is missing: apt-get install systemd-container"
    );
    let bridge = |ns: &Netns| ns.ip(&["link", "add", "n13br", "type", "bridge"]).clear();
    // Fixed MACs: an ifb gets a random one.
    let ifbs = |ns: &Netns| {
        ns.ip(&[
            "link",
            "add",
            "n13mov",
            "address",
            "02:13:00:00:00:01",
            "type",
            "ifb",
        ]);
        ns.ip(&[
            "link",
            "add",
            "n13par",
            "address",
            "02:13:00:00:00:02",
            "type",
            "ifb",
        ]);
    };
    let none = |_: &Netns| {};
    let cases: Vec<(&str, Vec<&str>, &Setup)> = vec![
        ("n13n", vec!["-n"], &none),
        ("n13-this-is-a-long-machine-name", vec!["-n"], &none),
        ("n134567890123", vec!["--network-veth"], &none),
        ("n13456789012", vec!["-n"], &none),
        (
            "n13-this-is-a-long-machine-name",
            vec!["--network-bridge=n13br"],
            &bridge,
        ),
        ("n13br-a", vec!["--network-bridge=n13br"], &bridge),
        ("n13zone-a", vec!["--network-zone=n13z"], &none),
        (
            "n13x",
            vec![
                "-n",
                "--network-veth-extra=n13x0:ex0",
                "--network-veth-extra=n13x1",
            ],
            &none,
        ),
        (
            "n13mv",
            vec!["--network-macvlan=n13par", "--network-interface=n13mov"],
            &ifbs,
        ),
        ("n13p", vec!["--private-network"], &none),
    ];
    for (name, args, setup) in cases {
        let theirs = observe("nspawn", name, &args, setup);
        let ours = observe("nixspawn", name, &args, setup);
        assert_eq!(
            ours, theirs,
            "{name} {args:?}: nixspawn (left) and systemd-nspawn (right) differ"
        );
        eprintln!("{name} {args:?}: same\n{ours:#?}");
    }
}

#[test]
fn port_map_side_by_side_with_nspawn() {
    privileged!();
    assert!(nspawn_present(), "systemd-nspawn is missing");
    let mut tables = Vec::new();
    for launcher in ["nspawn", "nixspawn"] {
        let ns = Netns::new("p");
        let tree = Tree::new();
        let unit = UnitCgroup::new("net");
        let base = match launcher {
            "nspawn" => nspawn_in(&ns),
            _ => nixspawn_in(&ns),
        };
        let mut cmd = unit.command(base.get_program().to_str().unwrap());
        cmd.args(base.get_args());
        // The guest addresses itself (as its networkd would).
        let script = held(
            "echo 0 > /proc/sys/net/ipv6/conf/host0/accept_dad && ip link set host0 up && ip addr add 10.77.0.2/24 dev host0 && ip addr add fd77::2/64 dev host0",
        );
        cmd.args([
            "-q",
            "--register=no",
            "--keep-unit",
            "--pipe",
            "-M",
            "n13p",
            "-D",
        ])
        .arg(tree.path())
        .arg(tree.bind())
        .args(["-n", "-p", "tcp:8080:80", "-p", "udp:5353:53", "-p", "8443"])
        .args(["/bin/sh", "-c", &script])
        .stdin(Stdio::null());
        let mut child = cmd.spawn().unwrap();
        tree.wait_flag("ready", &mut child, Duration::from_secs(20));
        // The map follows the address (both react to the guest's netlink events).
        let deadline = Instant::now() + Duration::from_secs(5);
        let during = loop {
            let t = (
                ns.nft(&["list", "table", "ip", "io.systemd.nat"]),
                ns.nft(&["list", "table", "ip6", "io.systemd.nat"]),
            );
            if (t.0.contains("10.77.0.2") && t.1.contains("fd77::2")) || Instant::now() > deadline {
                break t;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        std::fs::write(tree.flag("go"), "").unwrap();
        assert!(child.wait().unwrap().success());
        remove_nspawn_leftovers(tree.dir.path());
        let after = ns.nft(&["list", "map", "ip", "io.systemd.nat", "map_port_ipport"]);
        tables.push((launcher, during, after));
    }
    let (_, ours_during, ours_after) = &tables[1];
    let (_, theirs_during, theirs_after) = &tables[0];
    assert_eq!(
        ours_during, theirs_during,
        "the tables while the guest runs"
    );
    assert!(
        ours_during.0.contains("tcp . 8080 : 10.77.0.2 . 80")
            && ours_during.0.contains("udp . 5353 : 10.77.0.2 . 53")
            && ours_during.1.contains("tcp . 8443 : fd77::2 . 8443"),
        "{ours_during:?}"
    );
    assert_eq!(ours_after, theirs_after, "the map after the guest ended");
    assert!(!ours_after.contains("elements"), "{ours_after}");
}

/// A launcher that is killed (and waited for) if a test fails before it
/// ended, so that nothing of a failed test outlives it.
struct Launched(Option<std::process::Child>);

impl Launched {
    fn child(&mut self) -> &mut std::process::Child {
        self.0.as_mut().unwrap()
    }

    fn wait_with_output(mut self) -> std::process::Output {
        self.0.take().unwrap().wait_with_output().unwrap()
    }
}

impl Drop for Launched {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A guest on an ephemeral overlay of the tree (several may share it),
/// waiting for "go", then running `script` (its output is the launcher's
/// stdout).
fn guest(ns: &Netns, tree: &Tree, name: &str, args: &[&str], script: &str) -> Launched {
    Launched(Some(nixspawn_in(ns)
        .args(["-q", "-x", "--pipe", "-M", name, "-D"])
        .arg(tree.path())
        .arg(tree.bind())
        .args(args)
        .args([
            "/bin/sh",
            "-c",
            &format!(
                "touch /sync/ready-{name}; while [ ! -e /sync/go ]; do sleep 0.05; done; {script}"
            ),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()))
}

/// `busybox ping` of each address, from wherever it runs: "ADDR ok|lost".
fn pings(addresses: &[&str]) -> String {
    addresses
        .iter()
        .map(|a| format!("if ping -c 1 -W 3 {a} >/dev/null 2>&1 || ping -c 2 -W 3 {a} >/dev/null 2>&1; then echo {a} ok; else echo {a} lost; fi"))
        .collect::<Vec<_>>()
        .join("; ")
}

#[test]
fn standalone_zone_and_bridge_guests_reach_each_other_and_the_host() {
    privileged!();
    let ns = Netns::new("z");
    // The host routes between the zone and the bridge (its own namespace).
    ns.command("sysctl")
        .args(["-q", "-w", "net.ipv4.ip_forward=1"])
        .status()
        .unwrap();
    ns.ip(&["link", "add", "n13br", "type", "bridge"]);
    // The admin's bridge with the admin's address: nixspawn adds none to
    // a bridge it did not make.
    ns.ip(&["addr", "add", "10.66.0.1/24", "dev", "n13br"]);
    ns.ip(&["link", "set", "n13br", "up"]);
    let before = ns.links();
    let addresses_before = ns.ip(&["-o", "addr", "show", "dev", "n13br"]);
    let tree = Tree::new();
    let everyone = [
        "10.55.0.1",
        "10.55.0.2",
        "10.55.0.3",
        "10.66.0.1",
        "10.66.0.2",
    ];
    let names = ["n13za", "n13zb", "n13ba"];
    let script = |name: &str| {
        format!(
            "{}; touch /sync/pinged-{name}; while [ ! -e /sync/done ]; do sleep 0.05; done",
            pings(&everyone)
        )
    };
    let args: [&[&str]; 3] = [
        &[
            "--network-zone=n13z",
            "--network-address=10.55.0.1/24,10.55.0.2",
        ],
        &[
            "--network-zone=n13z",
            "--network-address=10.55.0.1/24,10.55.0.3",
        ],
        &[
            "--network-bridge=n13br",
            "--network-address=10.66.0.1/24,10.66.0.2",
        ],
    ];
    let mut guests: Vec<_> = names
        .iter()
        .zip(args)
        .map(|(name, args)| (*name, guest(&ns, &tree, name, args, &script(name))))
        .collect();
    for (name, child) in &mut guests {
        tree.wait_flag(
            &format!("ready-{name}"),
            child.child(),
            Duration::from_secs(20),
        );
    }
    // The zone's and the bridge's host addresses, as the launchers put them.
    let addrs = ns.ip(&["-br", "addr"]);
    assert!(
        addrs
            .lines()
            .any(|l| l.starts_with("vz-n13z ") && l.contains("10.55.0.1/24")),
        "{addrs}"
    );
    assert!(
        addrs
            .lines()
            .any(|l| l.starts_with("n13br ") && l.contains("10.66.0.1/24")),
        "{addrs}"
    );
    std::fs::write(tree.flag("go"), "").unwrap();
    for (name, child) in &mut guests {
        tree.wait_flag(
            &format!("pinged-{name}"),
            child.child(),
            Duration::from_secs(60),
        );
    }
    // The host reaches them all too.
    let host = ns
        .command("busybox")
        .args(["sh", "-c", &pings(&everyone[..])])
        .output()
        .unwrap();
    std::fs::write(tree.flag("done"), "").unwrap();
    let want: String = everyone.iter().map(|a| format!("{a} ok\n")).collect();
    assert_eq!(
        String::from_utf8_lossy(&host.stdout),
        want,
        "pings from the host"
    );
    for (name, child) in guests {
        let out = child.wait_with_output();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            want,
            "pings from {name}"
        );
        assert_cleaned_up(name, None);
    }
    // The bridge that was there stays as it was, with its addresses and
    // no more; the zone and every port go.
    let after = ns.settle(&before, Duration::from_secs(5));
    assert_eq!(
        after, before,
        "the zone and the ports gone, the bridge kept"
    );
    assert_eq!(
        ns.ip(&["-o", "addr", "show", "dev", "n13br"]),
        addresses_before,
        "the admin's bridge has the addresses it had"
    );
}

#[test]
fn host_pings_guests_and_port_forward_answers_from_another_namespace() {
    privileged!();
    let ns = Netns::new("f");
    ns.command("sysctl")
        .args([
            "-q",
            "-w",
            "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1",
        ])
        .status()
        .unwrap();
    let tree = Tree::new();
    // A server in the guest (busybox nc, one answer per connection), with
    // a user namespace of its own.
    let server = "while true; do echo hello-from-guest | nc -l -p 80 >/dev/null; done";
    let mut child = guest(
        &ns,
        &tree,
        "n13fw",
        &[
            "-U",
            "-n",
            "-p",
            "8080:80",
            "--network-address=10.44.0.1,10.44.0.2",
            "--network-address=fd44::1/64,fd44::2",
        ],
        server,
    );
    tree.wait_flag("ready-n13fw", child.child(), Duration::from_secs(20));
    std::fs::write(tree.flag("go"), "").unwrap();
    let ping = ns
        .command("busybox")
        .args(["sh", "-c", &pings(&["10.44.0.2", "fd44::2"])])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&ping.stdout),
        "10.44.0.2 ok\nfd44::2 ok\n",
        "the host pings the guest over --network-address"
    );
    // A client in a third namespace, routed through the host's 10.45.0.1.
    let client = Netns::new("c");
    let host_side = format!("n13c{}", std::process::id() % 100000);
    ns.ip(&[
        "link",
        "add",
        &host_side,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &client.name,
    ]);
    ns.ip(&["addr", "add", "10.45.0.1/24", "dev", &host_side]);
    ns.ip(&["link", "set", &host_side, "up"]);
    client.ip(&["addr", "add", "10.45.0.2/24", "dev", "eth0"]);
    client.ip(&["link", "set", "eth0", "up"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let answer = loop {
        let out = client
            .command("busybox")
            .args(["nc", "-w", "2", "10.45.0.1", "8080"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !text.is_empty() || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        answer, "hello-from-guest",
        "-p 8080:80 from another namespace"
    );
    let map = ns.nft(&["list", "map", "ip", "io.systemd.nat", "map_port_ipport"]);
    assert!(map.contains("tcp . 8080 : 10.44.0.2 . 80"), "{map}");
    signal_and_wait(child.child());
    let map = ns.nft(&["list", "map", "ip", "io.systemd.nat", "map_port_ipport"]);
    assert!(!map.contains("elements"), "entries flushed at exit: {map}");
    assert_cleaned_up("n13fw", None);
}

/// The port map's IPv4 entry goes in, its IPv6 entry is refused (one for
/// the same port is there already, someone else's): once the guest is
/// gone, its IPv4 entry must be gone too, and the other IPv6 one stays.
#[test]
fn port_map_half_refused_leaves_nothing() {
    privileged!();
    let ns = Netns::new("p");
    let tree = Tree::new();
    let args = [
        "-n",
        "-p",
        "8082:80",
        "--network-address=10.46.0.1,10.46.0.2",
        "--network-address=fd46::1/64,fd46::2",
    ];
    // A first run makes the tables (they stay, as nspawn's).
    let out = nixspawn_in(&ns)
        .args(["-q", "--pipe", "-M", "n13half", "-D", tree.path()])
        .args(args)
        .arg("/bin/true")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs = "tcp . 8082 : fd46::99 . 80";
    let add = ns
        .command("nft")
        .args([
            "add",
            "element",
            "ip6",
            "io.systemd.nat",
            "map_port_ipport",
            &format!("{{ {theirs} }}"),
        ])
        .output()
        .unwrap();
    assert!(add.status.success(), "{add:?}");
    let mut child = guest(&ns, &tree, "n13half", &args, "true");
    tree.wait_flag("ready-n13half", child.child(), Duration::from_secs(20));
    let v4 = ns.nft(&["list", "map", "ip", "io.systemd.nat", "map_port_ipport"]);
    assert!(v4.contains("tcp . 8082 : 10.46.0.2 . 80"), "{v4}");
    std::fs::write(tree.flag("go"), "").unwrap();
    let out = child.wait_with_output();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let v4 = loop {
        let v4 = ns.nft(&["list", "map", "ip", "io.systemd.nat", "map_port_ipport"]);
        if !v4.contains("elements") || Instant::now() > deadline {
            break v4;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        !v4.contains("elements"),
        "the guest's IPv4 entry stayed: {v4}"
    );
    let v6 = ns.nft(&["list", "map", "ip6", "io.systemd.nat", "map_port_ipport"]);
    assert!(v6.contains(theirs), "the other entry is left alone: {v6}");
}

fn signal_and_wait(child: &mut std::process::Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the launcher did not stop");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn moved_ifb_and_macvlan_come_and_go() {
    privileged!();
    let ns = Netns::new("i");
    ns.ip(&["link", "add", "n13mov", "type", "ifb"]);
    ns.ip(&["link", "add", "n13par", "type", "ifb"]);
    ns.ip(&[
        "link",
        "property",
        "add",
        "dev",
        "n13mov",
        "altname",
        "n13-moved-link",
    ]);
    let before = ns.links();
    let tree = Tree::new();
    let out = nixspawn_in(&ns)
        .args(["-q", "--pipe", "-M", "n13if", "-D", tree.path()])
        .args([
            "--network-interface=n13mov:eth5",
            "--network-macvlan=n13par",
            "--network-macvlan=n13par:mvx",
        ])
        .args(["/bin/sh", "-c", "ip -o link | cut -d' ' -f2,3"])
        .output()
        .unwrap();
    let guest = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(guest.contains("eth5: <BROADCAST,NOARP>"), "{guest}");
    assert!(guest.contains("mv-n13par@"), "{guest}");
    assert!(guest.contains("mvx@"), "{guest}");
    assert!(!ns.links().iter().any(|l| l.contains("eth5")));
    let after = ns.settle(&before, Duration::from_secs(5));
    assert_eq!(
        after, before,
        "the ifb is back under its name, with its altname"
    );
}

/// A guest root hides the link it was given (moves it into a namespace of
/// its own) and puts an impostor in its place: of the same name and kind
/// (the kernel hands it the freed index too, only its address differs),
/// or of the same index and another kind. At the end of the boot the
/// launcher and the janitor must not move the impostor to the host under
/// the host's name; they leave it and say so in one line.
#[test]
fn impostor_of_a_moved_link_stays_in_the_guest() {
    privileged!();
    for (case, same_index) in [("index", true), ("name", false)] {
        let ns = Netns::new("h");
        ns.ip(&["link", "add", "n13hid", "type", "ifb"]);
        let before = ns.links();
        let hide = Netns::new("v");
        let tree = Tree::new();
        let name = format!("n13h{case}");
        // Not quiet: the launcher's notices are what it says.
        let mut child = Launched(Some(
            nixspawn_in(&ns)
                .args(["-x", "--pipe", "-M", &name, "-D", tree.path()])
                .arg(tree.bind())
                .args(["--network-interface=n13hid", "/bin/sh", "-c"])
                .arg(format!(
                    "touch /sync/ready-{name}; while [ ! -e /sync/go ]; do sleep 0.05; done"
                ))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        ));
        tree.wait_flag(
            &format!("ready-{name}"),
            child.child(),
            Duration::from_secs(20),
        );
        let leader = GuestTrace::of(&name).leader;
        let in_guest = |args: &[&str]| {
            let out = Command::new("nsenter")
                .arg(format!("--net=/proc/{leader}/ns/net"))
                .arg("ip")
                .args(args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "ip {args:?} in the guest: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let shown = in_guest(&["-o", "link", "show", "n13hid"]);
        let index = shown.split(':').next().unwrap().trim().to_owned();
        in_guest(&["link", "set", "n13hid", "netns", &hide.name]);
        let mut add = vec!["link", "add", "n13hid"];
        if same_index {
            add.extend(["index", &index]);
        }
        // A veth whose peer is in the namespace the guest made (so it does
        // not die with the guest's), or an ifb like the real one.
        if same_index {
            add.extend([
                "type", "veth", "peer", "name", "n13peer", "netns", &hide.name,
            ]);
        } else {
            add.extend(["type", "ifb"]);
        }
        in_guest(&add);
        std::fs::write(tree.flag("go"), "").unwrap();
        let out = child.wait_with_output();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{case}: {err}");
        // The janitor's turn too.
        std::thread::sleep(Duration::from_millis(500));
        let after = ns.links();
        assert!(
            !after.iter().any(|l| l.starts_with("n13hid ")),
            "{case}: the guest's impostor came to the host: {after:?}"
        );
        assert_eq!(
            after.len() + 1,
            before.len(),
            "{case}: nothing else changed: {after:?}"
        );
        let said: Vec<&str> = err.lines().filter(|l| l.contains("n13hid")).collect();
        assert_eq!(said.len(), 1, "{case}: one line about the link: {err}");
        assert!(said[0].contains("leaving it"), "{case}: {err}");
        assert!(
            hide.links()
                .iter()
                .any(|l| l.starts_with("n13hid kind=ifb ")),
            "{case}: the real link is where the guest put it"
        );
    }
}

/// One line on stderr containing `want`, exit status 1, and nothing of
/// the run anywhere: no state, no links, no cgroups, no processes.
#[test]
fn bad_input_is_one_line_and_leaves_nothing() {
    privileged!();
    let ns = Netns::new("b");
    ns.ip(&["link", "add", "n13ifb", "type", "ifb"]);
    ns.ip(&["link", "add", "n13brb", "type", "bridge"]);
    let before = ns.links();
    let tree = Tree::new();
    for (args, want) in [
        (
            vec!["--network-interface=n13nonexist"],
            "Failed to resolve interface \"n13nonexist\": No such device",
        ),
        (
            vec!["--network-macvlan=n13nonexist"],
            "Failed to resolve interface \"n13nonexist\": No such device",
        ),
        (
            vec!["--network-bridge=n13nobr"],
            "Failed to add interface vb-n13bad to bridge n13nobr: No such device",
        ),
        (
            vec!["--network-bridge=n13ifb"],
            "Failed to add interface vb-n13bad to bridge n13ifb: Operation not supported",
        ),
        (
            vec!["--network-bridge=n13br", "--network-zone=n13z"],
            "--network-bridge= and --network-zone= may not be combined.",
        ),
        (
            vec!["-p", "80"],
            "Cannot use --port= without private networking.",
        ),
        (
            vec!["--network-zone=abcdefghijklm"],
            "Network zone name not valid: vz-abcdefghijklm",
        ),
        (
            vec!["--network-veth-extra=n13toolongname16"],
            "Failed to parse --network-veth-extra= parameter: n13toolongname16",
        ),
        (
            vec!["--network-interface=n13toolongname16"],
            "Network interface name not valid: n13toolongname16",
        ),
        (
            vec!["--network-ipvlan=n13ifb"],
            "--network-ipvlan=n13ifb: this kernel has no ipvlan support (CONFIG_IPVLAN is not set); use --network-macvlan= instead",
        ),
        (
            vec!["--network-namespace-path=/etc/hostname"],
            "Path /etc/hostname doesn't refer to a network namespace, refusing.",
        ),
        (
            vec!["-n", "--network-address=10.0.0.1"],
            "invalid --network-address=10.0.0.1: no comma between the two addresses",
        ),
        (
            // The admin's bridge does not carry the host address: nixspawn
            // would have to add it and could not know when to remove it.
            vec![
                "--network-bridge=n13brb",
                "--network-address=10.77.0.1/24,10.77.0.2",
            ],
            "--network-address=10.77.0.1/24,10.77.0.2: bridge n13brb does not carry 10.77.0.1/24",
        ),
        (
            vec!["-n", "--resolv-conf=sometimes"],
            "Failed to parse /etc/resolv.conf mode: sometimes",
        ),
    ] {
        let out = nixspawn_in(&ns)
            .args(["-M", "n13bad", "-D", tree.path()])
            .args(&args)
            .args(["/bin/true"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: one line: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert_eq!(ns.links(), before, "{args:?} left links");
        assert_cleaned_up("n13bad", None);
    }
}

#[test]
fn sigkill_of_the_launcher_leaves_nothing() {
    privileged!();
    let ns = Netns::new("k");
    ns.ip(&["link", "add", "n13kill", "type", "ifb"]);
    let before = ns.links();
    let tree = Tree::new();
    let mut child = guest(
        &ns,
        &tree,
        "n13k",
        &[
            "--network-zone=n13kz",
            "-p",
            "8081:80",
            "--network-address=10.33.0.1/24,10.33.0.2",
            "--network-interface=n13kill:eth3",
        ],
        "sleep 60",
    );
    tree.wait_flag("ready-n13k", child.child(), Duration::from_secs(20));
    let trace = GuestTrace::of("n13k");
    let during = ns.links();
    assert!(
        during.iter().any(|l| l.starts_with("vz-n13kz ")),
        "{during:?}"
    );
    assert!(!during.iter().any(|l| l.starts_with("n13kill ")));
    let map = ns.nft(&["list", "map", "ip", "io.systemd.nat", "map_port_ipport"]);
    assert!(map.contains("tcp . 8081 : 10.33.0.2 . 80"), "{map}");
    child.child().kill().unwrap();
    child.child().wait().unwrap();
    let after = ns.settle(&before, Duration::from_secs(5));
    assert_eq!(
        after, before,
        "links after the janitor (zone gone, ifb back)"
    );
    let map = ns.nft(&["list", "map", "ip", "io.systemd.nat", "map_port_ipport"]);
    assert!(!map.contains("elements"), "stale port map entries: {map}");
    // The guest's PID 1, orphaned, is reaped by the machine's init.
    wait_for(
        "the guest's PID 1 to be reaped",
        Duration::from_secs(10),
        || !Path::new(&format!("/proc/{}", trace.leader)).exists(),
    );
    trace.assert_gone();
}

#[test]
fn back_to_back_runs_of_one_name() {
    privileged!();
    // Each run's ve- link dies with its namespace after the launcher is
    // gone; the next run of the name waits for it instead of failing.
    let ns = Netns::new("r");
    let tree = Tree::new();
    for i in 0..5 {
        let out = nixspawn_in(&ns)
            .args([
                "-q",
                "--pipe",
                "-M",
                "n13again",
                "-D",
                tree.path(),
                "-n",
                "/bin/true",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "run {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let after = ns.settle(
        &["lo kind=- mac=00:00:00:00:00:00 UP master=- altnames=[]".to_owned()],
        Duration::from_secs(5),
    );
    assert_eq!(after.len(), 1, "{after:?}");
}

#[test]
fn booted_bookworm_with_addresses_and_writable_net_sysctls() {
    privileged!();
    let ns = Netns::new("o");
    let tree = tree("bookworm");
    let name = unique_name("n13boot");
    let cmd = nixspawn_in(&ns);
    let mut g = Guest::start_with(
        cmd,
        &tree,
        &name,
        &["-x", "-b", "-n", "--network-address=10.22.0.1,10.22.0.2"],
    );
    g.wait_ready();
    let ve = nixspawn_runtime::network::names::veth_host_name(&name, false, true).name;
    assert!(
        ns.links()
            .iter()
            .any(|l| l.starts_with(&format!("{ve} kind=veth ")) && l.contains(" UP ")),
        "{:?}",
        ns.links()
    );
    assert_eq!(g.sh("ip -o -4 addr show dev host0 2>/dev/null | grep -o 10.22.0.2 || cat /proc/net/fib_trie | grep -o 10.22.0.2 | head -1").trim(), "10.22.0.2");
    wait_for("host0 to be up", Duration::from_secs(10), || {
        g.sh("cat /sys/class/net/host0/operstate").trim() == "up"
    });
    // The guest may tune its own namespace (nspawn makes /proc/sys/net writable).
    g.sh("echo 1 > /proc/sys/net/ipv4/ip_forward");
    assert_eq!(g.sh("cat /proc/sys/net/ipv4/ip_forward").trim(), "1");
    let (code, _) = g.exec(&["/bin/sh", "-c", "echo 1 > /proc/sys/kernel/sysrq"]);
    assert_ne!(code, 0, "the rest of /proc/sys stays read-only");
    let ping = ns
        .command("busybox")
        .args(["sh", "-c", &pings(&["10.22.0.2"])])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&ping.stdout), "10.22.0.2 ok\n");
    g.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(g.wait_exit(Duration::from_secs(60)), 0);
    assert_cleaned_up(&name, None);
    let left = ns.settle(
        &["lo kind=- mac=00:00:00:00:00:00 UP master=- altnames=[]".to_owned()],
        Duration::from_secs(5),
    );
    assert_eq!(left.len(), 1, "{left:?}");
}

/// resolv.conf and localtime as both launchers leave them in a tree.
fn etc_after(launcher: &str, args: &[&str], prepare: &dyn Fn(&Path)) -> (String, String) {
    let ns = Netns::new("e");
    let tree = Tree::new();
    prepare(tree.dir.path());
    let unit = UnitCgroup::new("net");
    let base = match launcher {
        "nspawn" => nspawn_in(&ns),
        _ => nixspawn_in(&ns),
    };
    let mut cmd = unit.command(base.get_program().to_str().unwrap());
    cmd.args(base.get_args());
    let out = cmd
        .args(["-q", "--register=no", "--keep-unit", "--pipe", "-M", "n13etc", "-D"])
        .arg(tree.path())
        .args(args)
        .args(["/bin/sh", "-c", "for f in /etc/resolv.conf /etc/localtime; do if [ -L $f ]; then echo \"$f -> $(readlink $f)\"; elif [ -e $f ]; then echo \"$f: $(wc -c < $f) bytes\"; else echo \"$f: none\"; fi; done; grep -E ' /etc/(resolv.conf|localtime) ' /proc/self/mountinfo | cut -d' ' -f5,6 | sed 's/,.*//'"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    remove_nspawn_leftovers(tree.dir.path());
    assert!(
        out.status.success(),
        "{launcher} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing = |p: &Path| {
        let mut v = Vec::new();
        for f in ["etc/resolv.conf", "etc/localtime"] {
            let p = p.join(f);
            v.push(match std::fs::symlink_metadata(&p) {
                Ok(m) if m.file_type().is_symlink() => {
                    format!("{f} -> {}", std::fs::read_link(&p).unwrap().display())
                }
                Ok(m) => format!("{f}: {} bytes", m.len()),
                Err(_) => format!("{f}: none"),
            });
        }
        v.join("\n")
    };
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        listing(tree.dir.path()),
    )
}

#[test]
fn resolv_conf_and_timezone_side_by_side_with_nspawn() {
    privileged!();
    assert!(nspawn_present(), "systemd-nspawn is missing");
    let plain = |_: &Path| {};
    let zoneinfo = |p: &Path| {
        let z = p.join("usr/share/zoneinfo/Etc");
        std::fs::create_dir_all(&z).unwrap();
        std::fs::copy("/usr/share/zoneinfo/Etc/UTC", z.join("UTC")).unwrap();
    };
    let links = |p: &Path| {
        std::os::unix::fs::symlink("../run/resolv.conf", p.join("etc/resolv.conf")).unwrap();
        std::os::unix::fs::symlink(
            "/usr/share/zoneinfo/Europe/Nowhere",
            p.join("etc/localtime"),
        )
        .unwrap();
    };
    let cases: Vec<(Vec<&str>, &Prepare)> = vec![
        (vec![], &plain),
        (vec![], &zoneinfo),
        (vec!["--private-network"], &plain),
        (vec!["-n"], &zoneinfo),
        (vec!["--resolv-conf=copy-host", "--timezone=copy"], &links),
        (
            vec!["--resolv-conf=replace-host", "--timezone=delete"],
            &links,
        ),
        (vec!["--resolv-conf=bind-host", "--timezone=bind"], &plain),
        (
            vec!["--resolv-conf=delete", "--timezone=symlink"],
            &zoneinfo,
        ),
        (vec!["--resolv-conf=off", "--timezone=off"], &links),
        (vec!["--resolv-conf=copy-uplink"], &plain),
    ];
    for (args, prepare) in cases {
        let theirs = etc_after("nspawn", &args, prepare);
        let ours = etc_after("nixspawn", &args, prepare);
        assert_eq!(
            ours, theirs,
            "{args:?}: nixspawn (left) and systemd-nspawn (right)"
        );
    }
}
