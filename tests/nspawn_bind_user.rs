//! Privileged: `--bind-user=` and `--bind-user-shell=` (issue 16). A host
//! user made for the test (useradd with a home, removed after) is bound
//! into bookworm guests (-x -U) under both launchers, side by side with
//! systemd-nspawn 252 with the same argv: what the guest's user database
//! (nss-systemd) says of the user, the id it runs as, the home's mount and
//! owner in the guest, the records in /run/host/userdb, and a file the
//! guest user writes in the home, owned by the host user on the host. The
//! bookworm fixture has no nss-systemd: both launchers get the host's
//! (bookworm's own) module and an nsswitch.conf naming it as read-only
//! binds, so the same argv serves both. Bad input: one line each; nothing
//! left behind (mounts, the test user).

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

/// A host user with its private group and a home, removed (with both) on
/// drop.
struct HostUser {
    name: String,
    home: PathBuf,
    uid: u32,
    gid: u32,
    _dir: tempfile::TempDir,
}

impl HostUser {
    fn new() -> HostUser {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let name = format!(
            "nbu{}x{}",
            std::process::id() % 100_000,
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        let out = Command::new("useradd")
            .args(["-m", "-U", "-s", "/bin/bash", "-d"])
            .arg(&home)
            .arg(&name)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "useradd {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let user = nix::unistd::User::from_name(&name).unwrap().unwrap();
        HostUser {
            name,
            home,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            _dir: dir,
        }
    }
}

impl Drop for HostUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg("-r").arg(&self.name).output();
    }
}

/// The read-only binds that give the fixture nss-systemd (the host's
/// module: the host is bookworm too), held in `dir`.
fn nss_args(dir: &Path) -> Vec<String> {
    let conf = dir.join("nsswitch.conf");
    std::fs::write(&conf, "passwd: files systemd\ngroup: files systemd\n").unwrap();
    vec![
        "--bind-ro=/lib/x86_64-linux-gnu/libnss_systemd.so.2".to_owned(),
        format!("--bind-ro={}:/etc/nsswitch.conf", conf.display()),
    ]
}

/// What the guest sees of the bound user NAME: its passwd and group
/// entries, the id it runs as, its id map line (the rest of the map names
/// each launcher's own range), the home's owner and mount options, the
/// records (names, modes, owners, link targets, contents); then it writes
/// FILE in its home as that user.
fn probe(name: &str, file: &str) -> String {
    format!(
        "getent passwd {name}; getent group {name}; \
         setpriv --reuid={name} --regid={name} --clear-groups id; \
         awk '$1==60514 {{print $1, $2, $3}}' /proc/self/uid_map /proc/self/gid_map; \
         stat -c '%u:%g %a' /run/host/home/{name}; \
         grep \" /run/host/home/{name} \" /proc/self/mountinfo | cut -d' ' -f5,6 | sort -u; \
         stat -c '%n %F %a %u:%g' /run/host/userdb /run/host/userdb/*; \
         for f in /run/host/userdb/*; do if [ -L $f ]; then echo \"$f -> $(readlink $f)\"; else echo \"$f:\"; cat $f; fi; done; \
         setpriv --reuid={name} --regid={name} --clear-groups sh -c 'echo hi > /run/host/home/{name}/{file}'; \
         stat -c '%u:%g' /run/host/home/{name}/{file}"
    )
}

/// Who owns `file` in the user's home on the host (and remove it).
fn host_owner(user: &HostUser, file: &str) -> (u32, u32) {
    let p = user.home.join(file);
    let m = std::fs::metadata(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    std::fs::remove_file(&p).unwrap();
    (m.uid(), m.gid())
}

#[test]
fn a_bound_user_is_seen_and_writes_as_itself_as_under_nspawn() {
    privileged!();
    require_nspawn();
    let tree = tree("bookworm");
    let user = HostUser::new();
    let tmp = tempfile::tempdir().unwrap();
    let bind = format!("--bind-user={}", user.name);
    let mut args = vec!["-x".to_owned(), "-U".to_owned(), bind];
    args.extend(nss_args(tmp.path()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let before = host_mounts();
    let mut answers = Vec::new();
    for launcher in [NIXSPAWN, NSPAWN] {
        let out = answer(launcher, &tree, &args, &probe(&user.name, "f"));
        assert_eq!(
            host_owner(&user, "f"),
            (user.uid, user.gid),
            "{launcher}: the guest user's file on the host"
        );
        answers.push(out);
    }
    assert_eq!(
        answers[0], answers[1],
        "nixspawn and systemd-nspawn differ for {args:?}"
    );
    let ours = &answers[0];
    let n = &user.name;
    for want in [
        format!("{n}:x:60514:60514:{n}:/run/host/home/{n}:"),
        format!("{n}:x:60514:"),
        format!("uid=60514({n}) gid=60514({n}) groups=60514({n})"),
        format!("60514 {} 1\n60514 {} 1\n", user.uid, user.gid),
        "60514:60514 755\n".to_owned(),
        format!("/run/host/home/{n} rw,relatime\n"),
        "{\"privileged\":{\"hashedPassword\":[\"!\"]}}".to_owned(),
        format!("/run/host/userdb/60514.user -> {n}.user"),
        format!("/run/host/userdb/{n}.user:\n{{\"userName\":\"{n}\""),
        "60514:60514\n".to_owned(),
    ] {
        assert!(ours.contains(&want), "{want:?} not in:\n{ours}");
    }
    assert_eq!(host_mounts(), before, "mounts left on the host");
}

/// Find the guest's PID 1 started by a launcher in `unit`: the process in
/// that cgroup whose innermost pid is 1.
fn leader_in(unit: &UnitCgroup) -> Option<i32> {
    let rel = unit.path.file_name()?.to_str()?.to_owned();
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        if !cg.lines().any(|l| l.starts_with("0::") && l.contains(&rel)) {
            continue;
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let nspid = status.lines().find_map(|l| l.strip_prefix("NSpid:"));
        if nspid.is_some_and(|v| {
            v.split_whitespace().count() > 1 && v.split_whitespace().last() == Some("1")
        }) {
            return Some(pid);
        }
    }
    None
}

/// `script` in all of the namespaces of `pid`.
fn nsenter(pid: i32, script: &str) -> (i32, String) {
    let out = Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-a", "/bin/sh", "-c", script])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn booted_guests_see_the_bound_user_as_under_nspawn() {
    privileged!();
    require_nspawn();
    let tree = tree("bookworm");
    let user = HostUser::new();
    let tmp = tempfile::tempdir().unwrap();
    let bind = format!("--bind-user={}", user.name);
    let mut args = vec![
        "-x".to_owned(),
        "-U".to_owned(),
        "-b".to_owned(),
        "--console=passive".to_owned(),
        bind,
    ];
    args.extend(nss_args(tmp.path()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let script = probe(&user.name, "b");
    let up = "systemctl is-system-running --wait >/dev/null 2>&1; systemctl is-system-running";

    let name = unique_name("nbuboot");
    let mut g = Guest::start(&tree, &name, &args);
    g.wait_ready();
    let state = g.exec(&["/bin/sh", "-c", up]).1;
    assert!(
        matches!(state.trim(), "running" | "degraded"),
        "our guest booted: {state}"
    );
    let ours = g.sh(&script);
    assert_eq!(host_owner(&user, "b"), (user.uid, user.gid));
    g.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(g.wait_exit(Duration::from_secs(60)), 0);
    assert_cleaned_up(&name, None);

    let unit = UnitCgroup::new("nbu");
    let mut cmd = unit.command(NSPAWN);
    cmd.args(["--register=no", "--keep-unit", "-D"]).arg(&tree);
    let mut theirs_guest = Guest::launch(cmd, &unique_name("nbunsp"), &args);
    let mut leader = None;
    wait_for("nspawn's guest to boot", Duration::from_secs(60), || {
        leader = leader.or_else(|| leader_in(&unit));
        // systemctl does not reach PID 1 through nsenter; its private
        // socket shows the manager up.
        leader.is_some_and(|pid| nsenter(pid, "test -S /run/systemd/private").0 == 0)
            || theirs_guest
                .child
                .as_mut()
                .unwrap()
                .try_wait()
                .unwrap()
                .is_some()
    });
    let pid = leader.unwrap_or_else(|| panic!("no leader:\n{}", theirs_guest.console()));
    let (code, theirs) = nsenter(pid, &script);
    assert_eq!(code, 0, "{theirs}");
    assert_eq!(host_owner(&user, "b"), (user.uid, user.gid));
    // A second SIGTERM makes nspawn end the guest at once (its halt is slow).
    theirs_guest.signal(nix::sys::signal::Signal::SIGTERM);
    std::thread::sleep(Duration::from_secs(2));
    theirs_guest.signal(nix::sys::signal::Signal::SIGTERM);
    theirs_guest.wait_exit(Duration::from_secs(60));
    remove_nspawn_leftovers(&tree);
    assert_eq!(ours, theirs, "booted: nixspawn and systemd-nspawn differ");
}

#[test]
fn bad_bind_users_fail_in_one_line_and_leave_nothing() {
    privileged!();
    require_nspawn();
    let tree = tree("bookworm");
    let user = HostUser::new();
    let before = host_mounts();
    let bind = format!("--bind-user={}", user.name);
    for (args, needle) in [
        (vec![bind.as_str()], "needs a user namespace"),
        (
            vec!["-U", "--bind-user=nbu-no-such-user"],
            "no such user on the host",
        ),
        (
            vec!["--private-users=identity", bind.as_str()],
            "inside the container's range",
        ),
        (vec!["-U", "--bind-user=root"], "root"),
        (
            vec!["-U", "--bind-user-shell=sh", bind.as_str()],
            "--bind-user-shell",
        ),
    ] {
        let mut full = vec!["-x"];
        full.extend(args.iter().copied());
        let (code, out, err) = beside(NIXSPAWN, &tree, &full, &[], "echo ran");
        assert_ne!(code, 0, "{full:?}: {out}");
        assert!(!out.contains("ran"), "{full:?} ran");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{full:?}: not one line: {err}");
        assert!(lines[0].contains(needle), "{full:?}: {err}");
        // nspawn refuses them too.
        let (their_code, their_out, their_err) = beside(NSPAWN, &tree, &full, &[], "echo ran");
        assert_ne!(their_code, 0, "nspawn {full:?}: {their_out}{their_err}");
    }
    assert_eq!(host_mounts(), before, "mounts left on the host");
}

#[test]
fn bind_user_shell_sets_the_records_shell() {
    privileged!();
    let tree = tree("bookworm");
    let user = HostUser::new();
    let tmp = tempfile::tempdir().unwrap();
    let bind = format!("--bind-user={}", user.name);
    for (shell, want) in [
        (None, String::new()),
        (Some("no"), String::new()),
        (Some("yes"), ",\"shell\":\"/bin/bash\"".to_owned()),
        (Some("/bin/dash"), ",\"shell\":\"/bin/dash\"".to_owned()),
    ] {
        let mut args = vec!["-x".to_owned(), "-U".to_owned(), bind.clone()];
        args.extend(shell.map(|s| format!("--bind-user-shell={s}")));
        args.extend(nss_args(tmp.path()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = answer(
            NIXSPAWN,
            &tree,
            &args,
            &format!(
                "cat /run/host/userdb/{}.user; getent passwd {}",
                user.name, user.name
            ),
        );
        assert!(
            out.contains(&format!("\"service\":\"io.systemd.NSpawn\"{want}}}")),
            "{shell:?}: {out}"
        );
        if let Some(s) = shell.filter(|s| s.starts_with('/')) {
            assert!(out.trim_end().ends_with(&format!(":{s}")), "{out}");
        }
    }
}

/// A settings file in /run/systemd/nspawn (trusted), removed on drop.
struct TrustedSettings(PathBuf);

impl TrustedSettings {
    fn write(machine: &str, text: &str) -> TrustedSettings {
        let dir = Path::new("/run/systemd/nspawn");
        std::fs::create_dir_all(dir).unwrap();
        let p = dir.join(format!("{machine}.nspawn"));
        std::fs::write(&p, text).unwrap();
        TrustedSettings(p)
    }
}

impl Drop for TrustedSettings {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn bind_user_from_a_trusted_settings_file_as_under_nspawn() {
    privileged!();
    require_nspawn();
    let tree = tree("bookworm");
    let user = HostUser::new();
    let tmp = tempfile::tempdir().unwrap();
    let machine = unique_name("nbuset");
    let mut args = vec![
        "-x".to_owned(),
        "-U".to_owned(),
        "-M".to_owned(),
        machine.clone(),
    ];
    args.extend(nss_args(tmp.path()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let n = &user.name;
    let script = format!("getent passwd {n}; stat -c '%u:%g' /run/host/home/{n}");
    let _file = TrustedSettings::write(&machine, &format!("[Files]\nBindUser={n}\n"));
    let got = same(&tree, &args, &script);
    assert_eq!(
        got,
        format!("{n}:x:60514:60514:{n}:/run/host/home/{n}:/bin/bash\n60514:60514\n")
    );
    // BindUserShell= (nspawn 258, so nixspawn alone): the path in the record.
    drop(_file);
    let _file = TrustedSettings::write(
        &machine,
        &format!("[Files]\nBindUser={n}\nBindUserShell=/bin/dash\n"),
    );
    let got = answer(NIXSPAWN, &tree, &args, &script);
    assert!(
        got.starts_with(&format!(
            "{n}:x:60514:60514:{n}:/run/host/home/{n}:/bin/dash\n"
        )),
        "{got}"
    );
}
