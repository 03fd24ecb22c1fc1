//! Privileged: the closure-only /nix/store as one overlay mount. What the
//! guest sees (exactly the closure — directories, regular-file and symlink
//! store paths — and nothing else of the host store by name, `..` or
//! symlinks), that it is read-only whatever the guest does (also its root
//! with every capability, with and without a user namespace), that its
//! mount table holds one entry for the store at 1,000 paths while systemd
//! boots, live updates (exactly the new paths, from the launcher's record
//! and not from what the guest shows, one mount kept, the user's mounts on
//! the store carried over), ownership under `-U`, the GC root, and the
//! per-path fallback where the kernel refuses (a closure path that is a
//! mount point; a user namespace), each with its one-line notice.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

/// Nix's base-32 alphabet, for names that look like store paths.
const ALPHABET: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// Store paths this test makes in the host's /nix/store (not registered
/// with Nix: they are booted with --closure-file), removed on drop.
struct Synthetic {
    paths: Vec<PathBuf>,
    tag: String,
}

impl Synthetic {
    fn new(tag: &str) -> Synthetic {
        require_root();
        Synthetic {
            paths: Vec::new(),
            tag: format!("{tag}{}", std::process::id()),
        }
    }

    /// A fresh store path name: 32 hash characters, then what it is.
    fn name(&self, what: &str) -> String {
        let mut seed: u64 = 0xcbf2_9ce4_8422_2325;
        for b in format!("{}-{what}-{}", self.tag, self.paths.len()).bytes() {
            seed = (seed ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
        let hash: String = (0..32)
            .map(|i| {
                let x = seed.rotate_left(i * 7) ^ (u64::from(i) * 0x9e37_79b9);
                ALPHABET[(x % 32) as usize] as char
            })
            .collect();
        format!("{hash}-nixspawn-test-{}-{what}", self.tag)
    }

    fn take(&mut self, what: &str) -> PathBuf {
        let p = Path::new("/nix/store").join(self.name(what));
        let _ = std::fs::remove_dir_all(&p);
        let _ = std::fs::remove_file(&p);
        self.paths.push(p.clone());
        p
    }

    /// A directory path with these files (relative path, content, mode).
    fn dir(&mut self, what: &str, files: &[(&str, &str, u32)]) -> String {
        let p = self.take(what);
        std::fs::create_dir(&p).unwrap();
        for (rel, content, mode) in files {
            let f = p.join(rel);
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(&f, content).unwrap();
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(*mode)).unwrap();
        }
        p.display().to_string()
    }

    /// A directory path holding these symlinks (name, target).
    fn links(&mut self, what: &str, links: &[(&str, &str)]) -> String {
        let p = self.take(what);
        std::fs::create_dir(&p).unwrap();
        for (name, target) in links {
            std::os::unix::fs::symlink(target, p.join(name)).unwrap();
        }
        p.display().to_string()
    }

    /// A regular-file store path (as writeScript makes).
    fn file(&mut self, what: &str, content: &str, mode: u32) -> String {
        let p = self.take(what);
        std::fs::write(&p, content).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p.display().to_string()
    }

    /// A symlink store path.
    fn symlink(&mut self, what: &str, target: &str) -> String {
        let p = self.take(what);
        std::os::unix::fs::symlink(target, &p).unwrap();
        p.display().to_string()
    }

    /// `n` small directory paths, as integration/nixos/synthetic-closure.py
    /// makes them.
    fn many(&mut self, n: usize) -> Vec<String> {
        (0..n)
            .map(|i| self.dir(&format!("many-{i}"), &[("share/data", "x\n", 0o444)]))
            .collect()
    }
}

impl Drop for Synthetic {
    fn drop(&mut self) {
        for p in &self.paths {
            let _ = std::fs::remove_dir_all(p).or_else(|_| std::fs::remove_file(p));
        }
    }
}

fn entry(path: &str) -> String {
    path.trim_start_matches("/nix/store/").to_owned()
}

/// A closure file: `toplevel`'s closure (from the Nix database) and `extra`.
fn closure_file(dir: &Path, toplevel: &str, extra: &[String]) -> (PathBuf, BTreeSet<String>) {
    let mut names = closure_names(toplevel);
    names.extend(extra.iter().map(|p| entry(p)));
    let file = dir.join(format!("closure-{}", names.len()));
    let text: String = names.iter().map(|n| format!("/nix/store/{n}\n")).collect();
    std::fs::write(&file, text).unwrap();
    (file, names)
}

fn busybox(toplevel: &str) -> String {
    let name = closure_names(toplevel)
        .into_iter()
        .find(|n| n.ends_with("-busybox-static"))
        .expect("a busybox in the closure");
    format!("/nix/store/{name}/bin/busybox")
}

fn started(name: &str) {
    wait_for("the guest to start", Duration::from_secs(20), || {
        ctl(&["status", name]).status.success()
    });
}

/// Run a busybox shell script in the guest; its output.
fn guest_sh(name: &str, bb: &str, script: &str) -> String {
    let (code, out) = Guest::exec_in(name, &[bb, "sh", "-c", script]);
    assert_eq!(code, 0, "{script}\n---\n{out}");
    out
}

/// The value of `key=...` lines in `out`.
fn value<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in:\n{out}"))
}

/// The names in the `key=...` line of `out` (a listing).
fn listed(out: &str, key: &str) -> BTreeSet<String> {
    value(out, key)
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// Launch a nixspawn guest `name` with `args` then `opts`; once it runs.
fn launch_started(name: &str, args: &[&str], opts: &[&str]) -> Guest {
    let mut all = args.to_vec();
    all.extend_from_slice(opts);
    let guest = Guest::launch(Command::new(NIXSPAWN), name, &all);
    started(name);
    guest
}

/// Power the guest off: it exits 0 within `secs` and leaves nothing.
fn stop(guest: &mut Guest, name: &str, secs: u64) {
    guest.signal(Signal::SIGTERM);
    assert_eq!(guest.wait_exit(Duration::from_secs(secs)), 0);
    assert_cleaned_up(name, None);
}

/// `nixspawnctl update --action test` of guest `name` to `toplevel`, its
/// closure from `file`.
fn update_test(name: &str, toplevel: &str, file: &Path) -> std::process::Output {
    ctl_update(
        name,
        toplevel,
        &["--closure-file", file.to_str().unwrap(), "--action", "test"],
    )
}

/// The guest's mount table as the host reads it (its leader's mountinfo).
fn guest_mountinfo(name: &str) -> impl Fn() -> String {
    let leader = leader_of(name);
    move || std::fs::read_to_string(format!("/proc/{leader}/mountinfo")).unwrap()
}

/// A guest script: copy the store onto a tmpfs at /run/fake, `edit` the
/// copy, and bind it over /nix/store.
fn own_store(edit: &str) -> String {
    format!(
        "mkdir -p /run/fake && mount -t tmpfs fake /run/fake && cp -a /nix/store/. /run/fake/ && \
         {edit} && mount --bind /run/fake /nix/store"
    )
}

/// Lines of the guest's /proc/1/mountinfo whose mount point is the store or
/// below it.
const STORE_MOUNTS: &str =
    "awk '$5 == \"/nix/store\" || index($5, \"/nix/store/\") == 1' /proc/1/mountinfo";

const FALLBACK: &str = "one bind mount per store path";

/// The hostile pieces of the store: a decoy outside the closure, and
/// closure paths that try to lead to it.
struct Hostile {
    decoy: String,
    app: String,
    file: String,
    link: String,
    link_to_decoy: String,
    tricks: String,
}

fn hostile(s: &mut Synthetic, bb: &str) -> Hostile {
    let decoy = s.dir("decoy", &[("secret", "SECRET\n", 0o444)]);
    let decoy_name = entry(&decoy);
    let app = s.dir(
        "app",
        &[
            ("bin/hello", "#!/bin/sh\necho hello from app\n", 0o555),
            ("share/data", "app data\n", 0o444),
        ],
    );
    // writeScript's shape: the path itself is the executable.
    let file = s.file(
        "script",
        &format!("#!{bb} sh\necho hello from a file path\n"),
        0o555,
    );
    let link = s.symlink("link", &app);
    let link_to_decoy = s.symlink("link-to-decoy", &decoy);
    let tricks = s.links(
        "tricks",
        &[
            ("absolute", &format!("/nix/store/{decoy_name}/secret")),
            ("relative", &format!("../{decoy_name}/secret")),
            ("up", &format!("../../../nix/store/{decoy_name}")),
            ("dotdot", ".."),
        ],
    );
    Hostile {
        decoy,
        app,
        file,
        link,
        link_to_decoy,
        tricks,
    }
}

/// Everything the guest tries on its store, as `key=value` lines.
fn probe_script(h: &Hostile, remount: bool) -> String {
    let decoy = entry(&h.decoy);
    let (app, file) = (&h.app, &h.file);
    let mut s = String::new();
    let mut line = |key: &str, cmd: &str| {
        s.push_str(&format!("echo \"{key}=$({cmd} 2>/dev/null)\"\n"));
    };
    line("listing", "ls -A /nix/store | tr '\\n' ' '");
    line("mounts", &format!("{STORE_MOUNTS} | wc -l"));
    line("mount", &format!("{STORE_MOUNTS} | head -1"));
    line("app", &format!("sh {app}/bin/hello"));
    line("file", file);
    line("link", &format!("cat {}/share/data", h.link));
    line("file_stat", &format!("stat -c '%s %a' {file}"));
    line(
        "owners",
        &format!(
            "stat -c %u /nix/store {app} {app}/bin/hello {file} | tr '\\n' ' '; stat -L -c %u {}",
            h.link
        ),
    );
    // Every way toward the decoy; any of them printing SECRET is a leak.
    for (key, path) in [
        ("by_name", format!("/nix/store/{decoy}/secret")),
        ("dotdot", format!("{app}/../{decoy}/secret")),
        ("dotdot2", format!("{app}/bin/../../{decoy}/secret")),
        ("dotdot3", format!("/nix/store/../store/{decoy}/secret")),
        ("absolute", format!("{}/absolute", h.tricks)),
        ("relative", format!("{}/relative", h.tricks)),
        ("up", format!("{}/up/secret", h.tricks)),
        ("dotdot_link", format!("{}/dotdot/{decoy}/secret", h.tricks)),
        ("link_to_decoy", format!("{}/secret", h.link_to_decoy)),
        (
            "proc_root",
            format!("/proc/1/root/nix/store/{decoy}/secret"),
        ),
    ] {
        line(&format!("leak_{key}"), &format!("cat {path}"));
    }
    line(
        "dotdot_listing",
        &format!("ls -A {}/dotdot/ | tr '\\n' ' '", h.tricks),
    );
    // Writes, which must all fail.
    let writes = format!(
        "touch /nix/store/new && echo store; mkdir /nix/store/newdir && echo mkdir; \
         touch {app}/new && echo path; echo x >> {app}/share/data && echo append; \
         echo x >> {file} && echo filepath; chmod 777 {app} && echo chmod; \
         rm -f {app}/share/data && echo rm; ln -s x /nix/store/newlink && echo ln"
    );
    line("wrote", &format!("{{ {writes}; }} | tr '\\n' ' '"));
    if remount {
        // The guest's root tries to make it writable, then to write.
        line(
            "remount_bind",
            "mount -o remount,bind,rw /nix/store && echo REMOUNTED",
        );
        line(
            "remount_sb",
            "mount -o remount,rw /nix/store && echo REMOUNTED",
        );
        line(
            "remount_path",
            &format!("mount -o remount,bind,rw {app} && echo REMOUNTED"),
        );
        line(
            "wrote_after",
            &format!(
                "{{ touch /nix/store/new2 && echo store; touch {app}/new2 && echo path; }} | tr '\\n' ' '"
            ),
        );
    }
    s
}

fn check_probe(out: &str, h: &Hostile, expected: &BTreeSet<String>, what: &str) {
    let listing = listed(out, "listing");
    assert_eq!(
        &listing, expected,
        "{what}: the store is exactly the closure"
    );
    assert!(!listing.contains(&entry(&h.decoy)), "{what}: decoy listed");
    assert_eq!(value(out, "mounts"), "1", "{what}: one mount:\n{out}");
    let mount = value(out, "mount");
    assert!(
        mount.contains(" /nix/store ro,") && mount.contains(" - overlay nixspawn-store ro,"),
        "{what}: a read-only overlay: {mount}"
    );
    assert!(
        mount.contains("lowerdir+=/,lowerdir+=/"),
        "{what}: layers by descriptor, no host path named: {mount}"
    );
    assert_eq!(value(out, "app"), "hello from app", "{what}");
    assert_eq!(value(out, "file"), "hello from a file path", "{what}");
    assert_eq!(value(out, "link"), "app data", "{what}");
    let host = std::fs::metadata(&h.file).unwrap();
    assert_eq!(
        value(out, "file_stat"),
        format!("{} {:o}", host.len(), host.mode() & 0o7777),
        "{what}: a file path's size and mode are the host's"
    );
    for key in [
        "by_name",
        "dotdot",
        "dotdot2",
        "dotdot3",
        "absolute",
        "relative",
        "up",
        "dotdot_link",
        "link_to_decoy",
        "proc_root",
    ] {
        assert_eq!(
            value(out, &format!("leak_{key}")),
            "",
            "{what}: the decoy leaked through {key}"
        );
    }
    let through_dotdot = listed(out, "dotdot_listing");
    assert_eq!(
        &through_dotdot, expected,
        "{what}: `..` of a path is the store"
    );
    assert_eq!(value(out, "wrote").trim(), "", "{what}: a write succeeded");
}

/// Exact closure, read-only, one mount, ownership: without a user
/// namespace, with one (mapped ownership: the guest's root owns the
/// store), and with chown ownership (the store's paths stay the host's).
#[test]
fn the_guest_store_is_exactly_the_closure_one_read_only_mount() {
    privileged!();
    let fx = nixos();
    let mut s = Synthetic::new("exact");
    let bb = busybox(&fx.tiny);
    let h = hostile(&mut s, &bb);
    let scratch = tempfile::tempdir().unwrap();
    let extra = [&h.app, &h.file, &h.link, &h.link_to_decoy, &h.tricks].map(|p| p.to_string());
    let (file, expected) = closure_file(scratch.path(), &fx.tiny, &extra);
    let state = tempfile::tempdir().unwrap();
    let state_arg = state.path().to_str().unwrap();
    let variants: [(&str, Vec<&str>, &str); 3] = [
        ("no user namespace", vec![], "0 0 0 0 0"),
        ("-U", vec!["-U"], "0 0 0 0 0"),
        (
            "-U, chown ownership",
            vec!["-U", "--private-users-ownership=chown", "-D", state_arg],
            "0 65534 65534 65534 65534",
        ),
    ];
    for (what, opts, owners) in variants {
        let name = unique_name("st-exact");
        let closure = format!("--closure-file={}", file.display());
        let args = [
            "--pipe",
            "--capability=all",
            "--toplevel",
            &fx.tiny,
            &closure,
        ];
        let mut guest = launch_started(&name, &args, &opts);
        let out = guest_sh(&name, &bb, &probe_script(&h, true));
        stop(&mut guest, &name, 10);
        check_probe(&out, &h, &expected, what);
        assert_eq!(
            value(&out, "owners")
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
            owners,
            "{what}: owners of /nix/store, a path, a file in it, a file path, a symlink path's target"
        );
        // Under a user namespace the flags are locked; without one the
        // guest's root may flip the mount's flag, but the overlay's
        // superblock stays read-only: nothing is written either way.
        assert_eq!(
            value(&out, "remount_sb"),
            "",
            "{what}: superblock remounted rw"
        );
        assert_eq!(
            value(&out, "remount_path"),
            "",
            "{what}: a path is no mount"
        );
        if !opts.is_empty() {
            assert_eq!(value(&out, "remount_bind"), "", "{what}: remounted rw");
        }
        assert_eq!(
            value(&out, "wrote_after").trim(),
            "",
            "{what}: wrote after remounting"
        );
        assert!(
            !guest.console().contains(FALLBACK),
            "{what}: fell back:\n{}",
            guest.console()
        );
    }
    // The probe sees what is there: with the whole store shared, every
    // way to the decoy works.
    let name = unique_name("st-control");
    let mut guest = Guest::launch(
        Command::new(NIXSPAWN),
        &name,
        &["--pipe", "--toplevel", &fx.tiny, "--shared-store"],
    );
    started(&name);
    let out = guest_sh(&name, &bb, &probe_script(&h, false));
    guest.signal(Signal::SIGTERM);
    assert_eq!(guest.wait_exit(Duration::from_secs(10)), 0);
    for key in [
        "by_name",
        "dotdot",
        "absolute",
        "relative",
        "up",
        "link_to_decoy",
    ] {
        assert_eq!(
            value(&out, &format!("leak_{key}")),
            "SECRET",
            "control: {key}"
        );
    }
}

/// The NixOS-shaped systemd toplevel with 1,000 more store paths: one
/// mount under /nix/store in the guest's mount table, one mount unit for
/// it in systemd, and the guest reaches `running` and powers off.
#[test]
fn a_thousand_paths_are_one_mount_and_one_mount_unit() {
    privileged!();
    let fx = nixos();
    let mut s = Synthetic::new("thousand");
    let extra = s.many(1000);
    let scratch = tempfile::tempdir().unwrap();
    let (file, expected) = closure_file(scratch.path(), &fx.systemd, &extra);
    assert!(expected.len() > 1000);
    let name = unique_name("st-1000");
    let closure = format!("--closure-file={}", file.display());
    let mut guest = Guest::launch(
        Command::new(NIXSPAWN),
        &name,
        &["--toplevel", &fx.systemd, &closure],
    );
    guest.wait_ready();
    let (_, state) = guest.exec(&["systemctl", "is-system-running", "--wait"]);
    assert_eq!(state.trim(), "running", "{}", guest.console());
    let mounts = guest.sh(STORE_MOUNTS);
    assert_eq!(
        mounts.lines().count(),
        1,
        "one mount for the store:\n{mounts}"
    );
    let units = guest.sh("systemctl list-units --all --type=mount --plain --no-legend --no-pager");
    let store_units: Vec<&str> = units
        .lines()
        .filter(|l| l.starts_with("nix-store"))
        .collect();
    assert_eq!(store_units.len(), 1, "one mount unit: {store_units:?}");
    let listing: BTreeSet<String> = guest
        .sh("ls -A /nix/store")
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(listing, expected);
    assert_eq!(
        guest.sh(&format!("cat {}/share/data", extra[999])),
        "x\n",
        "the last path is there"
    );
    guest.signal(Signal::SIGTERM);
    assert_eq!(
        guest.wait_exit(Duration::from_secs(60)),
        0,
        "{}",
        guest.console()
    );
    assert_cleaned_up(&name, None);
}

/// `nixspawnctl update` gives a running guest exactly the new paths
/// (directory, regular file and symlink paths among them), which work at
/// once, keeps the old ones and what is open in them, carries the user's
/// mounts on the store over, and keeps the mount count: one overlay
/// without a user namespace, two with one (the launch-time store stays
/// locked below the newest).
#[test]
fn update_adds_exactly_the_new_paths_and_keeps_the_mount_count() {
    privileged!();
    let fx = nixos();
    let mut s = Synthetic::new("update");
    let base = s.dir("base", &[("share/data", "base\n", 0o444)]);
    let new_dir = s.dir(
        "new-app",
        &[("bin/hello", "#!/bin/sh\necho hello from new\n", 0o555)],
    );
    let new_file = s.file("new-script", "#!/bin/sh\necho new file path\n", 0o555);
    let new_link = s.symlink("new-link", &new_dir);
    let later = s.dir("later", &[("share/data", "later\n", 0o444)]);
    let bb = busybox(&fx.tiny);
    let h = hostile(&mut s, &bb);
    let scratch = tempfile::tempdir().unwrap();
    let (first, first_names) = closure_file(scratch.path(), &fx.tiny, std::slice::from_ref(&base));
    let (second, second_names) = closure_file(
        scratch.path(),
        &fx.tiny2,
        &[new_dir.clone(), new_file.clone(), new_link.clone()],
    );
    let (third, third_names) =
        closure_file(scratch.path(), &fx.tiny2, std::slice::from_ref(&later));
    let bind_src = tempfile::tempdir().unwrap();
    std::fs::write(bind_src.path().join("file"), "bound\n").unwrap();
    for (what, opts, overlays) in [("no user namespace", &[][..], 1), ("-U", &["-U"][..], 2)] {
        let name = unique_name("st-update");
        let closure = format!("--closure-file={}", first.display());
        let bind = format!(
            "--bind-ro={}:/nix/store/extra-mount",
            bind_src.path().display()
        );
        let args = [
            "--pipe",
            "--capability=all",
            "--toplevel",
            &fx.tiny,
            &closure,
            &bind,
        ];
        let mut guest = launch_started(&name, &args, opts);
        // A process working in a path of the old store.
        guest_sh(
            &name,
            &bb,
            &format!(
                "cd {base}/share && {{ {bb} sleep 300 </dev/null >/dev/null 2>&1 & echo $! > /run/worker; }}"
            ),
        );
        let mut expected = first_names.clone();
        expected.insert("extra-mount".into());
        for (file, names, toplevel) in [
            (&second, &second_names, &fx.tiny2),
            (&third, &third_names, &fx.tiny2),
        ] {
            let out = ctl_update(
                &name,
                toplevel,
                &[
                    "--closure-file",
                    file.to_str().unwrap(),
                    "--action",
                    "test",
                    "--json",
                ],
            );
            assert!(
                out.status.success(),
                "{what}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let added: BTreeSet<String> = report["added"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_owned())
                .collect();
            let want: BTreeSet<String> = names.difference(&expected).cloned().collect();
            assert_eq!(added, want, "{what}: exactly the missing paths");
            expected.extend(want);
            let out = guest_sh(
                &name,
                &bb,
                &format!(
                    "echo listing=$(ls -A /nix/store | tr '\\n' ' '); \
                     echo overlays=$({STORE_MOUNTS} | grep -c ' - overlay '); \
                     echo bound=$(cat /nix/store/extra-mount/file); \
                     echo cwd=$(cat /proc/$(cat /run/worker)/cwd/data); \
                     echo old=$(cat {base}/share/data); \
                     echo decoy=$(cat /nix/store/{}/secret 2>/dev/null)",
                    entry(&h.decoy)
                ),
            );
            assert_eq!(
                listed(&out, "listing"),
                expected,
                "{what}: old and new closures, nothing else"
            );
            assert_eq!(
                value(&out, "overlays"),
                overlays.to_string(),
                "{what}: {out}"
            );
            assert_eq!(
                value(&out, "bound"),
                "bound",
                "{what}: the --bind-ro on the store"
            );
            assert_eq!(
                value(&out, "cwd"),
                "base",
                "{what}: a working directory in the old store"
            );
            assert_eq!(value(&out, "old"), "base", "{what}");
            assert_eq!(value(&out, "decoy"), "", "{what}");
        }
        let out = guest_sh(
            &name,
            &bb,
            &format!(
                "sh {new_dir}/bin/hello; sh {new_file}; sh {new_link}/bin/hello; cat {later}/share/data; \
                 stat -c %u {new_dir} {new_file} {later}/share/data | tr '\\n' ' '"
            ),
        );
        assert_eq!(
            out, "hello from new\nnew file path\nhello from new\nlater\n0 0 0 ",
            "{what}: the new paths work and belong to the guest's root"
        );
        stop(&mut guest, &name, 10);
    }
}

/// A guest that mounts a directory of names over its /nix/store (a decoy's
/// name among them) gets none of them from an update: the launcher's
/// record of the closure is what the new overlay is built from.
#[test]
fn update_never_takes_names_from_the_guest() {
    privileged!();
    let fx = nixos();
    let mut s = Synthetic::new("inject");
    let bb = busybox(&fx.tiny);
    let h = hostile(&mut s, &bb);
    let scratch = tempfile::tempdir().unwrap();
    let (file, _) = closure_file(scratch.path(), &fx.tiny2, &[]);
    let union: BTreeSet<String> = closure_names(&fx.tiny)
        .union(&closure_names(&fx.tiny2))
        .cloned()
        .collect();
    let decoy = entry(&h.decoy);
    for opts in [&[][..], &["-U"][..]] {
        let name = unique_name("st-inject");
        let args = ["--pipe", "--capability=all", "--toplevel", &fx.tiny];
        let mut guest = launch_started(&name, &args, opts);
        guest_sh(&name, &bb, &own_store(&format!("mkdir /run/fake/{decoy}")));
        // It may say its mounts did not reach the guest (they went beneath
        // the guest's own); what matters is what they hold.
        let _ = update_test(&name, &fx.tiny2, &file);
        let out = guest_sh(
            &name,
            &bb,
            &format!(
                "echo before=$(ls -A /nix/store | tr '\\n' ' '); \
                 echo secret_before=$(cat /nix/store/{decoy}/secret 2>/dev/null); \
                 umount -l /nix/store 2>/dev/null; \
                 echo after=$(ls -A /nix/store | tr '\\n' ' '); \
                 echo secret=$(cat /nix/store/{decoy}/secret 2>/dev/null)"
            ),
        );
        stop(&mut guest, &name, 10);
        for key in ["secret_before", "secret"] {
            assert_eq!(value(&out, key), "", "{opts:?}: the decoy leaked: {out}");
        }
        // The update's store is on top once the guest's own is gone (under
        // a user namespace it went beneath the guest's; without one the
        // guest's went instead): exactly the two closures.
        let listings: Vec<BTreeSet<String>> = ["before", "after"]
            .iter()
            .map(|k| listed(&out, k))
            .collect();
        assert!(
            listings.contains(&union),
            "{opts:?}: no listing is the two closures: {out}"
        );
    }
}

/// Every file below `dir` with its contents (directories as `NAME/`).
fn tree_listing(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        let t = e.file_type().unwrap();
        if t.is_dir() {
            out.insert(format!("{}/", p.display()));
            out.extend(tree_listing(&p));
        } else if t.is_symlink() {
            out.insert(format!(
                "{} -> {}",
                p.display(),
                std::fs::read_link(&p).unwrap().display()
            ));
        } else {
            let data = std::fs::read_to_string(&p).unwrap_or_default();
            out.insert(format!("{}: {data}", p.display()));
        }
    }
    out
}

/// Mount points in `mountinfo` (the fifth field), sorted.
fn mount_points(mountinfo: &str) -> Vec<String> {
    let mut v: Vec<String> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(String::from))
        .collect();
    v.sort();
    v
}

/// The guest's root, as root, swaps its /nix for a symbolic link to a
/// directory that exists on the host at that absolute path (with a `store`
/// and a marker in it; the guest makes the same path in its own root), then
/// `nixspawnctl update` runs. The host directory and the host's mount
/// table must be untouched, and the update must either refuse in one line
/// having changed nothing in the guest's mount table, or have put the new
/// paths into the guest's real store only — never a mount at the link's
/// target, in the guest or on the host.
#[test]
fn update_does_not_follow_a_guest_s_nix_symlink() {
    privileged!();
    let fx = nixos();
    let bb = busybox(&fx.tiny);
    let moved_bb = bb.replacen("/nix/store/", "/nix.real/store/", 1);
    let host_dir = tempfile::tempdir().unwrap();
    let target = host_dir.path().to_str().unwrap().to_owned();
    std::fs::create_dir(host_dir.path().join("store")).unwrap();
    std::fs::write(host_dir.path().join("store/marker"), "host\n").unwrap();
    let host_before = tree_listing(host_dir.path());
    let host_mounts_at = || -> Vec<String> {
        host_mounts()
            .into_iter()
            .filter(|m| m.contains(&target))
            .collect()
    };
    let scratch = tempfile::tempdir().unwrap();
    let (file, new_names) = closure_file(scratch.path(), &fx.tiny2, &[]);
    let added: BTreeSet<String> = new_names
        .difference(&closure_names(&fx.tiny))
        .cloned()
        .collect();
    for opts in [&[][..], &["-U"][..]] {
        let name = unique_name("st-symlink");
        let mut guest = launch_started(&name, &["--pipe", "--toplevel", &fx.tiny], opts);
        guest_sh(
            &name,
            &bb,
            &format!(
                "mv /nix /nix.real && {moved_bb} mkdir -p {target}/store && \
                 {moved_bb} ln -s {target} /nix && {moved_bb} ls -ld /nix"
            ),
        );
        let mountinfo = guest_mountinfo(&name);
        let guest_mounts = || mount_points(&mountinfo());
        let guest_before = guest_mounts();
        let out = update_test(&name, &fx.tiny2, &file);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        let guest_after = guest_mounts();
        let listing = guest_sh(
            &name,
            &moved_bb,
            &format!(
                "echo real=$(ls -A /nix.real/store | tr '\\n' ' '); \
                 echo target=$(ls -A {target}/store | tr '\\n' ' ')"
            ),
        );
        guest.signal(Signal::SIGTERM);
        guest.wait_exit(Duration::from_secs(20));
        assert_cleaned_up(&name, None);
        eprintln!(
            "{opts:?}: update exit {:?}, stderr {err:?}; guest mounts {} -> {}; {listing}",
            out.status.code(),
            guest_before.len(),
            guest_after.len()
        );
        assert_eq!(
            tree_listing(host_dir.path()),
            host_before,
            "{opts:?}: the host directory the link names was changed"
        );
        assert_eq!(
            host_mounts_at(),
            Vec::<String>::new(),
            "{opts:?}: mounted on the host"
        );
        assert!(
            !guest_after.iter().any(|m| m.starts_with(&target)),
            "{opts:?}: the update mounted at the link's target in the guest: {guest_after:?}"
        );
        assert_eq!(
            value(&listing, "target"),
            "",
            "{opts:?}: the link's target in the guest got store paths"
        );
        if out.status.success() {
            let real = listed(&listing, "real");
            assert!(
                added.is_subset(&real),
                "{opts:?}: applied, but not to the guest's store: {listing}"
            );
        } else {
            assert_eq!(err.lines().count(), 1, "{opts:?}: one line: {err}");
            assert_eq!(
                guest_after, guest_before,
                "{opts:?}: refused, yet the guest's mount table changed"
            );
        }
    }
}

/// An update that fails while carrying the user's mounts over changes
/// nothing: the guest put its own store copy on top, with a directory and
/// a mount on it where the record has a regular-file path, so that mount
/// cannot go onto the new store. Before, the new store was already slid
/// beneath by then and stayed stacked there.
#[test]
fn an_update_that_cannot_carry_a_mount_leaves_the_store_as_it_was() {
    privileged!();
    let fx = nixos();
    let mut s = Synthetic::new("carry");
    let bb = busybox(&fx.tiny);
    let file_path = s.file("a-file", "#!/bin/sh\necho file\n", 0o555);
    // Two directories: the files are named by their length, which may match.
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (first, _) = closure_file(a.path(), &fx.tiny, std::slice::from_ref(&file_path));
    let (second, _) = closure_file(b.path(), &fx.tiny2, &[]);
    let f = entry(&file_path);
    let name = unique_name("st-carry");
    let closure = format!("--closure-file={}", first.display());
    let mut guest = launch_started(
        &name,
        &[
            "--pipe",
            "--capability=all",
            "--toplevel",
            &fx.tiny,
            &closure,
        ],
        &[],
    );
    let script = own_store(&format!("rm /run/fake/{f} && mkdir /run/fake/{f}"));
    guest_sh(
        &name,
        &bb,
        &format!(
            "{script} && mount -t tmpfs user /nix/store/{f} && echo mine > /nix/store/{f}/data"
        ),
    );
    let mountinfo = guest_mountinfo(&name);
    let store_mounts = || -> Vec<String> {
        mountinfo()
            .lines()
            .filter(|l| {
                l.split(' ')
                    .nth(4)
                    .is_some_and(|m| m == "/nix/store" || m.starts_with("/nix/store/"))
            })
            .map(|l| {
                // Mount ID, parent, mount point and filesystem type.
                let f: Vec<&str> = l.split(' ').collect();
                let fs = l.split(" - ").nth(1).unwrap_or("");
                format!(
                    "{} {} {} {}",
                    f[0],
                    f[1],
                    f[4],
                    fs.split(' ').next().unwrap_or("")
                )
            })
            .collect()
    };
    let before = store_mounts();
    let out = update_test(&name, &fx.tiny2, &second);
    let after = store_mounts();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let data = guest_sh(&name, &bb, &format!("cat /nix/store/{f}/data"));
    stop(&mut guest, &name, 20);
    eprintln!(
        "update exit {:?}: {err:?}\nstore mounts before: {before:?}\nafter: {after:?}",
        out.status.code()
    );
    assert!(!out.status.success(), "the mount cannot be carried: {err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains(&format!("/nix/store/{f}")), "{err}");
    assert_eq!(
        after, before,
        "the failed update left the store's mounts changed"
    );
    assert_eq!(data, "mine\n", "the guest's mount is untouched");
}

/// A closure path that is a mount point of its own (as every input is in
/// Nix's build sandbox), or holds one: an overlay layer would hide it, so
/// the launcher says so in one line and binds each path — recursively, so
/// the guest sees what is mounted there. Update works the per-path way.
#[test]
fn a_mount_in_a_closure_path_falls_back_to_per_path_binds() {
    privileged!();
    let fx = nixos();
    let mut s = Synthetic::new("fallback");
    let bb = busybox(&fx.tiny);
    let h = hostile(&mut s, &bb);
    let at = s.dir("mounted-at", &[("under", "host\n", 0o444)]);
    let below = s.dir("mounted-below", &[("sub/under", "host\n", 0o444)]);
    let scratch = tempfile::tempdir().unwrap();
    let extra = [&h.app, &h.file, &h.link, &at, &below].map(|p| p.to_string());
    let (file, expected) = closure_file(scratch.path(), &fx.tiny, &extra);
    let name = unique_name("st-fallback");
    // The launcher's own mount namespace has the mounts, the host's not.
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "mount -t tmpfs -o mode=0755 at {at} && echo mounted > {at}/file && \
             mount -t tmpfs -o mode=0755 below {below}/sub && echo mounted > {below}/sub/file && \
             exec \"$0\" \"$@\""
        ))
        .arg(NIXSPAWN);
    let closure = format!("--closure-file={}", file.display());
    let mut guest = Guest::launch(cmd, &name, &["--pipe", "--toplevel", &fx.tiny, &closure]);
    started(&name);
    let out = guest_sh(
        &name,
        &bb,
        &format!(
            "echo listing=$(ls -A /nix/store | tr '\\n' ' '); echo mounts=$({STORE_MOUNTS} | wc -l); \
             echo at=$(cat {at}/file); echo below=$(cat {below}/sub/file); \
             echo app=$(sh {}/bin/hello); echo decoy=$(cat /nix/store/{}/secret 2>/dev/null)",
            h.app,
            entry(&h.decoy)
        ),
    );
    let status = ctl(&["status", &name, "--json"]);
    let state: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let upd = ctl_update(&name, &fx.tiny2, &["--action", "test", "--json"]);
    let after = guest_sh(&name, &bb, "ls -A /nix/store");
    stop(&mut guest, &name, 10);
    let console = guest.console();
    let notice = format!(
        "nixspawn: closure-only /nix/store: {FALLBACK} ({} mounts), not one overlay: {at} is a mount point of its own, which an overlay layer would hide",
        // One per path but the symlink one.
        expected.len() - 1
    );
    assert_eq!(
        console
            .lines()
            .filter(|l| l.contains(FALLBACK))
            .collect::<Vec<_>>(),
        [notice.as_str()],
        "one line naming why:\n{console}"
    );
    assert_eq!(listed(&out, "listing"), expected);
    // The tmpfs, those binds, and the mount below a path, carried along.
    assert_eq!(
        value(&out, "mounts"),
        (expected.len() + 1).to_string(),
        "{out}"
    );
    assert_eq!(
        value(&out, "at"),
        "mounted",
        "the mount at a closure path is what the guest sees"
    );
    assert_eq!(
        value(&out, "below"),
        "mounted",
        "the mount below a closure path too"
    );
    assert_eq!(value(&out, "app"), "hello from app");
    assert_eq!(value(&out, "decoy"), "");
    assert_eq!(state["store_overlay"], false);
    assert!(
        upd.status.success(),
        "{}",
        String::from_utf8_lossy(&upd.stderr)
    );
    let after: BTreeSet<String> = after.lines().map(String::from).collect();
    let union: BTreeSet<String> = expected.union(&closure_names(&fx.tiny2)).cloned().collect();
    assert_eq!(after, union, "the per-path update added the new closure");
}

/// Inside a user namespace (as in Nix's build sandbox) the top layer
/// cannot carry trusted.* attributes: the overlay is not to be had, and the
/// notice says why. Runs the overlay builder itself in `unshare --user`
/// (the launcher as a whole needs more than such a namespace gives).
#[test]
fn in_a_user_namespace_the_overlay_is_refused_with_a_reason() {
    privileged!();
    let fx = nixos();
    let out = Command::new("unshare")
        .args([
            "--user",
            "--map-root-user",
            "--mount",
            "--propagation",
            "private",
        ])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "overlay_builder_in_this_namespace",
            "--ignored",
            "--nocapture",
        ])
        .env("NIXSPAWN_TEST_TOPLEVEL", &fx.tiny)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("NOTICE: "))
        .unwrap_or_else(|| panic!("no notice in:\n{text}"));
    assert_eq!(
        line,
        "closure-only /nix/store: one bind mount per store path (2 mounts), not one overlay: cannot set trusted.overlay.opaque on its top layer (Operation not permitted): not in the initial user namespace (Nix's build sandbox?)"
    );
}

/// Helper for the test above: run only by it, inside its namespace.
#[test]
#[ignore = "run by in_a_user_namespace_the_overlay_is_refused_with_a_reason"]
fn overlay_builder_in_this_namespace() {
    privileged!();
    use nixspawn_runtime::nixos::{closure, overlay};
    let Some(toplevel) = std::env::var_os("NIXSPAWN_TEST_TOPLEVEL") else {
        return;
    };
    let toplevel = PathBuf::from(toplevel);
    let paths = closure::compute(&toplevel, &closure::ClosureSource::Database).unwrap();
    let probe = Path::new(toplevel.file_name().unwrap()).join("init");
    let built = overlay::build(
        &overlay::Layout {
            paths: &paths,
            mount_points: &[],
        },
        &overlay::Options {
            idmap: None,
            owner: None,
            probe: &probe,
        },
    );
    match built {
        Ok(_) => println!("BUILT: the overlay was made inside a user namespace"),
        Err(why) => println!("NOTICE: {}", overlay::fallback_notice(paths.len(), &why)),
    }
}

/// While the guest runs, its toplevel is a root for the host's Nix garbage
/// collector (an indirect root in gcroots/auto, through the state
/// directory); when it ends — or its launcher is killed — the root goes.
#[test]
fn the_toplevel_is_a_gc_root_while_the_guest_runs() {
    privileged!();
    let fx = nixos();
    let auto = Path::new("/nix/var/nix/gcroots/auto");
    for kill in [false, true] {
        let name = unique_name("st-gcroot");
        let mut guest = Guest::launch(
            Command::new(NIXSPAWN),
            &name,
            &["--pipe", "--toplevel", &fx.tiny],
        );
        started(&name);
        let ours = |n: &str| -> Vec<PathBuf> {
            std::fs::read_dir(auto)
                .map(|rd| {
                    rd.flatten()
                        .filter(|e| {
                            e.file_name()
                                .to_string_lossy()
                                .starts_with(&format!("nixspawn-{n}-"))
                        })
                        .map(|e| e.path())
                        .collect()
                })
                .unwrap_or_default()
        };
        let roots = ours(&name);
        assert_eq!(roots.len(), 1, "one root: {roots:?}");
        // What Nix reads: auto link -> a link outside the store -> the store path.
        let outside = std::fs::read_link(&roots[0]).unwrap();
        assert!(
            outside.starts_with(format!("/run/nixspawn/{name}/")),
            "{outside:?}"
        );
        assert_eq!(std::fs::read_link(&outside).unwrap(), Path::new(&fx.tiny));
        if kill {
            guest.signal(Signal::SIGKILL);
            guest.wait_exit(Duration::from_secs(10));
            wait_for("the janitor", Duration::from_secs(15), || {
                !Path::new("/run/nixspawn").join(&name).exists()
            });
        } else {
            guest.signal(Signal::SIGTERM);
            assert_eq!(guest.wait_exit(Duration::from_secs(10)), 0);
        }
        assert_cleaned_up(&name, None);
        assert!(
            ours(&name).is_empty(),
            "kill={kill}: the root is left: {:?}",
            ours(&name)
        );
    }
}
