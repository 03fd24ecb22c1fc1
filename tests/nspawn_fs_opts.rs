//! Privileged: systemd-nspawn's filesystem options (issue 16) —
//! `--read-only`, `--volatile=`, `--overlay`/`--overlay-ro`,
//! `--inaccessible`, `--template`, `--pivot-root` and their settings keys —
//! each inside a real guest, side by side with systemd-nspawn 252 on the
//! same tree with the same argv, asserting the same answer (the mount
//! table rows with their options, writes that fail with EROFS, file
//! contents, node types). Where an answer holds a path that must differ
//! (where a launcher keeps its private upper layers) it is normalised, and
//! the test says why. Bad values: one line each; nothing left behind.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::*;

/// A busybox tree with the applets and the top directories the probes
/// need (nspawn creates no mount point in a read-only tree either), and a
/// few files and nodes to mask and overlay.
fn fs_tree() -> tempfile::TempDir {
    let tree = busybox_tree();
    let p = tree.path();
    for applet in ["sed", "cut", "sort", "mkdir", "head", "readlink", "rm"] {
        std::os::unix::fs::symlink("busybox", p.join("usr/bin").join(applet)).unwrap();
    }
    for d in [
        "tmp", "run", "proc", "sys", "dev", "var", "root", "srv/d", "srv/in", "usr/lib", "mnt",
    ] {
        std::fs::create_dir_all(p.join(d)).unwrap();
    }
    std::os::unix::fs::symlink("usr/lib", p.join("lib")).unwrap();
    std::fs::write(p.join("srv/f"), "secret\n").unwrap();
    std::fs::write(p.join("srv/in/f"), "inside\n").unwrap();
    nix::unistd::mkfifo(
        &p.join("srv/p"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    tree
}

/// `script` under both launchers with `args`; both must succeed. Their
/// stdouts (ours, nspawn's).
fn both(tree: &Path, args: &[&str], script: &str) -> (String, String) {
    both_with(NSPAWN, tree, args, script)
}

fn both_with(nspawn: &str, tree: &Path, args: &[&str], script: &str) -> (String, String) {
    let run = |launcher: &str| {
        let (code, out, err) = beside(launcher, tree, args, &[], script);
        assert_eq!(code, 0, "{launcher} {args:?}: {err}\n{out}");
        out
    };
    (run(NIXSPAWN), run(nspawn))
}

/// Both answers equal; the answer.
fn same(tree: &Path, args: &[&str], script: &str) -> String {
    let (ours, theirs) = both(tree, args, script);
    assert_eq!(
        ours, theirs,
        "nixspawn and systemd-nspawn differ for {args:?}"
    );
    ours
}

/// The mountinfo rows of these guest mount points: mount point, per-mount
/// options, fstype and superblock options.
fn rows(targets: &str) -> String {
    // Matched on the mount point field; the optional (propagation) fields
    // before " - " are dropped, as they differ with how each launcher
    // shares its mounts.
    format!(
        "for t in {targets}; do grep -E \"^([^ ]+ ){{4}}$t \" /proc/self/mountinfo \
         | sed -E 's/^([^ ]+ ){{4}}([^ ]+ [^ ]+) .*- ([^ ]+) [^ ]+ ([^ ]+)$/\\2 \\3 \\4/'; done; "
    )
}

/// The root field of the mount at `target` (which part of its filesystem).
fn mount_root(target: &str) -> String {
    format!("grep -E '^([^ ]+ ){{4}}{target} ' /proc/self/mountinfo | cut -d' ' -f4,5")
}

/// Replace the value of `key=` in mount options with `with`.
fn blank_option(text: &str, key: &str, with: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find(key) {
        out.push_str(&rest[..i + key.len()]);
        out.push_str(with);
        rest = &rest[i + key.len()..];
        let end = rest.find([',', ' ', '\n']).unwrap_or(rest.len());
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// No mount below `dir` is left in our mount namespace, and no entry of
/// `dir` matches `leftover` (a work directory, a partial copy).
fn nothing_left(dir: &Path, leftover: &str) {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&*dir.to_string_lossy()),
        "a mount below {} was left:\n{mounts}",
        dir.display()
    );
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(leftover))
        .collect();
    assert!(left.is_empty(), "left in {}: {left:?}", dir.display());
}

/// Removes a settings file on drop.
struct SettingsFile(PathBuf);

impl SettingsFile {
    /// `<tree>.nspawn` beside the tree (untrusted: as nspawn, only the
    /// unprivileged settings apply from it).
    fn beside(tree: &Path, text: &str) -> SettingsFile {
        let name = tree.file_name().unwrap().to_string_lossy().into_owned();
        let path = tree.parent().unwrap().join(format!("{name}.nspawn"));
        std::fs::write(&path, text).unwrap();
        SettingsFile(path)
    }
}

impl Drop for SettingsFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn read_only_seals_the_tree_not_the_api_filesystems() {
    privileged!();
    require_nspawn();
    let tree = fs_tree();
    let script = format!(
        "{}touch /x 2>&1; touch /tmp/y && echo tmp writable; touch /run/y && echo run writable; mkdir /var/q 2>&1; true",
        rows("/ /tmp /run")
    );
    let out = same(tree.path(), &["--read-only"], &script);
    assert!(out.starts_with("/ ro,relatime "), "{out}");
    assert!(
        out.contains("touch: /x: Read-only file system")
            && out.contains("can't create directory '/var/q': Read-only file system")
            && out.contains("tmp writable")
            && out.contains("run writable"),
        "{out}"
    );
    // ReadOnly= from a file beside the tree (not privileged: it applies
    // from an untrusted file too, in both).
    let _file = SettingsFile::beside(tree.path(), "[Files]\nReadOnly=yes\n");
    assert_eq!(same(tree.path(), &[], &script), out);
    // The tree itself was never written.
    assert!(!tree.path().join("x").exists() && !tree.path().join("var/q").exists());
}

#[test]
fn volatile_modes_lay_out_the_root_as_nspawn() {
    privileged!();
    require_nspawn();
    let tree = fs_tree();
    let probe = format!(
        "{}touch /x 2>&1 && echo root writable; touch /var/x && echo var writable; touch /usr/x 2>&1; \
         ls -la / | while read mode links o g size m d t name rest; do echo \"$mode $name $rest\"; done; true",
        rows("/ /usr /var")
    );
    // yes: a tmpfs root (a quarter of the RAM, strictatime), the tree's
    // /usr read-only, systemd's base directories and links.
    let yes = same(tree.path(), &["--volatile=yes"], &probe);
    assert!(yes.starts_with("/ rw tmpfs rw,size="), "{yes}");
    assert!(yes.contains("\n/usr ro,relatime "), "{yes}");
    assert!(yes.contains("root writable\nvar writable\ntouch: /usr/x: Read-only file system"));
    assert!(yes.contains("lrwxrwxrwx bin -> usr/bin") && yes.contains("drwxr-x--- root"));
    // A bare --volatile is yes.
    assert_eq!(same(tree.path(), &["--volatile"], &probe), yes);
    // state: the tree read-only, a tmpfs /var.
    let state = same(tree.path(), &["--volatile=state"], &probe);
    assert!(state.starts_with("/ ro,relatime "), "{state}");
    assert!(state.contains("\n/var rw tmpfs rw,size="), "{state}");
    assert!(
        state.contains("touch: /x: Read-only file system\nvar writable"),
        "{state}"
    );
    // overlay: the tree below a private upper layer. Where that layer
    // lives differs by launcher (nspawn: a host /tmp/nspawn-volatile-*
    // tmpfs; nixspawn: the tmpfs on its own mount point), so the paths
    // of upperdir/workdir are blanked.
    let (ours, theirs) = both(tree.path(), &["--volatile=overlay"], &probe);
    let norm = |s: &str| blank_option(&blank_option(s, "upperdir=", "U"), "workdir=", "W");
    assert_eq!(norm(&ours), norm(&theirs));
    assert!(
        ours.starts_with("/ rw,relatime overlay rw,lowerdir="),
        "{ours}"
    );
    assert!(ours.contains("root writable\nvar writable\n"), "{ours}");
    // With -x (nspawn: volatile on top of its copy of the tree) the
    // guest sees the same.
    assert_eq!(
        same(tree.path(), &["-x", "--volatile=state"], &probe),
        state
    );
    // Volatile= from a file beside the tree.
    let _file = SettingsFile::beside(tree.path(), "[Files]\nVolatile=state\n");
    assert_eq!(same(tree.path(), &[], &probe), state);
    // Under a user namespace (ours alone: the ids differ by range) the
    // tmpfs root belongs to the guest's root and /usr comes idmapped.
    let (code, out, err) = beside(
        NIXSPAWN,
        tree.path(),
        &["-U", "--volatile=yes"],
        &[],
        "stat -c '%u %n' / /usr /usr/bin/busybox; touch /x && echo root writable; touch /usr/x 2>&1; true",
    );
    assert_eq!(
        (code, out.as_str()),
        (
            0,
            "0 /\n0 /usr\n0 /usr/bin/busybox\nroot writable\ntouch: /usr/x: Read-only file system\n"
        ),
        "{err}"
    );
    // Nothing written to the tree by any of them.
    for p in ["x", "var/x", "usr/x"] {
        assert!(!tree.path().join(p).exists(), "{p} written to the tree");
    }
}

/// A systemd unit, bound in under /run/systemd/system (a tmpfs in every
/// mode, so read-only trees take it as well), that waits for the boot to
/// settle, records the state, failed units and mounts into a bound
/// directory and powers the guest off.
const BOOT_PROBE: &str = "[Unit]\nDescription=fs-opts probe\n[Service]\nType=simple\n\
ExecStart=/bin/sh -c 'systemctl is-system-running --wait > /run/probe-out/state 2>&1; \
systemctl --failed --no-legend --plain > /run/probe-out/failed; \
for m in / /usr /var; do findmnt -rn -o TARGET,FSTYPE,OPTIONS $m; done > /run/probe-out/mounts; \
systemctl poweroff'\n";

/// The bookworm fixture seen through an overlay with a private upper
/// layer: a tree both launchers may be pointed at with no -x, that the
/// fixture is never written through. Unmounted on drop.
struct TreeView {
    dir: tempfile::TempDir,
}

impl TreeView {
    fn of(fixture: &Path) -> TreeView {
        let dir = tempfile::Builder::new()
            .prefix("nixspawn-fsopts-")
            .tempdir()
            .unwrap();
        for d in ["up", "work", "tree"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        let data = format!(
            "lowerdir={},upperdir={},workdir={}",
            fixture.display(),
            dir.path().join("up").display(),
            dir.path().join("work").display()
        );
        nix::mount::mount(
            Some("overlay"),
            &dir.path().join("tree"),
            Some("overlay"),
            nix::mount::MsFlags::empty(),
            Some(data.as_str()),
        )
        .unwrap();
        TreeView { dir }
    }

    fn tree(&self) -> PathBuf {
        self.dir.path().join("tree")
    }
}

impl Drop for TreeView {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.tree(), nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Boot `tree` under `launcher` with `args` and the probe; its answers
/// (state, failed units, mounts).
fn boot_probe(launcher: &str, tree: &Path, args: &[&str]) -> (String, String, String) {
    let work = tempfile::tempdir().unwrap();
    let units = work.path().join("units");
    let out = work.path().join("out");
    std::fs::create_dir_all(units.join("multi-user.target.wants")).unwrap();
    std::fs::create_dir(&out).unwrap();
    std::fs::write(units.join("fsopts-probe.service"), BOOT_PROBE).unwrap();
    std::os::unix::fs::symlink(
        "../fsopts-probe.service",
        units.join("multi-user.target.wants/fsopts-probe.service"),
    )
    .unwrap();
    let unit = UnitCgroup::new("fsopts");
    let name = unique_name("fsopts");
    let mut cmd = unit.command(launcher);
    cmd.args(["-q", "--register=no", "--keep-unit", "--console=pipe", "-M"])
        .arg(&name)
        .arg("-D")
        .arg(tree)
        .arg(format!("--bind-ro={}:/run/systemd/system", units.display()))
        .arg(format!("--bind={}:/run/probe-out", out.display()))
        .args(args)
        .arg("-b")
        .stdin(Stdio::null());
    let run = cmd.output().unwrap();
    remove_nspawn_leftovers(tree);
    let read = |f: &str| std::fs::read_to_string(out.join(f)).unwrap_or_default();
    assert_eq!(
        run.status.code(),
        Some(0),
        "{launcher} {args:?}: {}\n{}",
        String::from_utf8_lossy(&run.stderr),
        String::from_utf8_lossy(&run.stdout)
    );
    (read("state"), read("failed"), read("mounts"))
}

#[test]
fn a_bookworm_guest_boots_alike_under_each_mode() {
    privileged!();
    require_nspawn();
    let view = TreeView::of(&tree("bookworm"));
    for args in [
        &["--volatile=yes"][..],
        &["--volatile=state"],
        &["--volatile=overlay"],
        &["--read-only"],
    ] {
        let (state, failed, mounts) = boot_probe(NIXSPAWN, &view.tree(), args);
        let (their_state, their_failed, their_mounts) = boot_probe(NSPAWN, &view.tree(), args);
        assert!(
            ["running\n", "degraded\n"].contains(&state.as_str()),
            "{args:?}: {state:?}"
        );
        assert_eq!(
            (&state, &failed),
            (&their_state, &their_failed),
            "{args:?}: the boot ended differently"
        );
        // The volatile overlay's upper layer lives where each launcher
        // keeps it (see volatile_modes_lay_out_the_root_as_nspawn).
        let norm = |s: &str| blank_option(&blank_option(s, "upperdir=", "U"), "workdir=", "W");
        assert_eq!(norm(&mounts), norm(&their_mounts), "{args:?}");
    }
}

#[test]
fn overlays_stack_as_nspawn_and_leave_nothing() {
    privileged!();
    require_nspawn();
    let tree = fs_tree();
    let layers = tempfile::tempdir().unwrap();
    let l = |n: &str| layers.path().join(n).to_string_lossy().into_owned();
    for (dir, files) in [
        ("lo1", &[("a", "a1"), ("only1", "o1")][..]),
        ("lo2", &[("a", "a2"), ("b", "b2")]),
    ] {
        std::fs::create_dir(layers.path().join(dir)).unwrap();
        for (f, text) in files {
            std::fs::write(layers.path().join(dir).join(f), text).unwrap();
        }
    }
    let probe = format!(
        "{}cat /mnt/a /mnt/b /mnt/only1; echo; (echo new > /mnt/n) 2>&1 && cat /mnt/n; ls /mnt; true",
        rows("/mnt")
    );
    // Three paths and more: lowers (bottom first), upper, destination.
    // The work directory's name is each launcher's own (a random suffix
    // in nspawn), so it is blanked.
    let norm = |s: &str| blank_option(s, "workdir=", "W");
    for launcher in [NIXSPAWN, NSPAWN] {
        let up = l(&format!("up-{}", launcher.len()));
        std::fs::create_dir(&up).unwrap();
        let arg = format!("--overlay={}:{}:{up}:/mnt", l("lo1"), l("lo2"));
        let (code, out, err) = beside(launcher, tree.path(), &[&arg], &[], &probe);
        assert_eq!(code, 0, "{err}");
        let expected = format!(
            "/mnt rw,relatime overlay rw,lowerdir={}:{},upperdir={up},workdir=W,uuid=on\na2b2o1\nnew\na\nb\nn\nonly1\n",
            l("lo2"),
            l("lo1")
        );
        assert_eq!(norm(&out), expected, "{launcher}");
        assert_eq!(std::fs::read_to_string(format!("{up}/n")).unwrap(), "new\n");
    }
    nothing_left(layers.path(), ".#");
    // Read-only: the last host path is the top layer, nothing is written.
    let ro = format!("--overlay-ro={}:{}:/mnt", l("lo1"), l("lo2"));
    let out = same(tree.path(), &[&ro], &probe);
    assert!(
        out.starts_with(&format!(
            "/mnt ro,relatime overlay ro,lowerdir={}:{}",
            l("lo2"),
            l("lo1")
        )) && out.contains("/mnt/n: Read-only file system"),
        "{out}"
    );
    // An empty upper: a throw-away upper layer (nspawn's under the host's
    // /var/tmp, ours a private tmpfs), so its paths are blanked.
    let tmp_upper = format!("--overlay={}::/mnt", l("lo1"));
    let (ours, theirs) = both(tree.path(), &[&tmp_upper], &probe);
    let norm_tmp = |s: &str| blank_option(&blank_option(s, "upperdir=", "U"), "workdir=", "W");
    assert_eq!(norm_tmp(&ours), norm_tmp(&theirs));
    assert!(ours.contains("\nnew\n"), "{ours}");
    // `+`: a path inside the container's root (whose host path differs:
    // nspawn names the tree, nixspawn its assembled root), written to a
    // throw-away upper, never to the tree.
    let plus = "--overlay=+/srv/in::/srv/in";
    let probe_in = format!(
        "{}cat /srv/in/f; echo changed > /srv/in/f; cat /srv/in/f",
        rows("/srv/in")
    );
    let (ours, theirs) = both(tree.path(), &[plus], &probe_in);
    let norm_plus = |s: &str| blank_option(&norm_tmp(s), "lowerdir=", "L");
    assert_eq!(norm_plus(&ours), norm_plus(&theirs));
    assert!(ours.ends_with("inside\nchanged\n"), "{ours}");
    assert_eq!(
        std::fs::read_to_string(tree.path().join("srv/in/f")).unwrap(),
        "inside\n"
    );
    // Overlay= and OverlayReadOnly= are privileged: ignored from a file
    // beside the tree, with nspawn's warning.
    let _file = SettingsFile::beside(
        tree.path(),
        &format!("[Files]\nOverlayReadOnly={}:/mnt\n", l("lo2")),
    );
    let (code, out, err) = beside(NIXSPAWN, tree.path(), &[], &[], "ls /mnt | wc -l");
    assert_eq!((code, out.trim()), (0, "0"), "{err}");
    assert!(err.contains("is not trusted"), "{err}");
    nothing_left(layers.path(), ".#");
}

#[test]
fn an_overlay_work_directory_goes_even_after_sigkill() {
    privileged!();
    let tree = fs_tree();
    let layers = tempfile::tempdir().unwrap();
    for d in ["lo", "up"] {
        std::fs::create_dir(layers.path().join(d)).unwrap();
    }
    let name = unique_name("fsopts-kill");
    let arg = format!(
        "--overlay={}:{}:/mnt",
        layers.path().join("lo").display(),
        layers.path().join("up").display()
    );
    let mut guest = Guest::start(
        tree.path(),
        &name,
        &["--register=no", "--console=pipe", &arg, "/bin/sleep", "600"],
    );
    let work = layers.path().join(format!(".#up.nixspawn-{name}"));
    wait_for(
        "the work directory",
        std::time::Duration::from_secs(20),
        || work.join("work").exists(),
    );
    guest.signal(nix::sys::signal::Signal::SIGKILL);
    assert_ne!(guest.wait_exit(std::time::Duration::from_secs(20)), 0);
    wait_for(
        "the janitor's cleanup",
        std::time::Duration::from_secs(20),
        || !work.exists(),
    );
    assert_cleaned_up(&name, None);
}

/// systemd-nspawn masks with /run/systemd/inaccessible/*, which only a
/// systemd host has: this wrapper gives it the nodes in a private mount
/// namespace (a tmpfs over /run/systemd there, so it also keeps its lock
/// files to itself) and runs it.
fn nspawn_with_inaccessible_nodes(dir: &Path) -> PathBuf {
    let script = dir.join("nspawn-inaccessible.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\nexec unshare -m --propagation private /bin/sh -ec '\
mount -t tmpfs -o mode=0755 tmpfs /run/systemd\n\
mkdir -p /run/systemd/inaccessible /run/systemd/nspawn/locks\n\
cd /run/systemd/inaccessible\n\
mkdir -m 0 dir; touch reg; chmod 0 reg; mkfifo -m 0 fifo; mknod -m 0 chr c 0 0; mknod -m 0 blk b 0 0\n\
exec systemd-nspawn \"$@\"' sh \"$@\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    script
}

#[test]
fn inaccessible_paths_are_covered_by_a_node_of_their_type() {
    privileged!();
    require_nspawn();
    let tree = fs_tree();
    let tools = tempfile::tempdir().unwrap();
    let nspawn = nspawn_with_inaccessible_nodes(tools.path());
    let nspawn = nspawn.to_str().unwrap();
    let args = [
        "--inaccessible=/srv/d",
        "--inaccessible=/srv/f",
        "--inaccessible=/srv/p",
    ];
    // The mount options beyond "ro" follow where each launcher keeps its
    // nodes (a systemd host's /run tmpfs, nodev,nosuid; here a plain
    // tmpfs for nspawn): only the first option is compared.
    let probe = "for p in d f p; do stat -c '%n %A %F %s' /srv/$p; \
                 grep \" /srv/$p \" /proc/self/mountinfo | cut -d' ' -f6 | cut -d, -f1; done; \
                 ls /srv/d | wc -l; cat /srv/f; (echo x > /srv/f) 2>&1; true";
    let (ours, theirs) = both_with(nspawn, tree.path(), &args, probe);
    assert_eq!(ours, theirs);
    assert_eq!(
        ours,
        "/srv/d d--------- directory 40\nro\n/srv/f ---------- regular empty file 0\nro\n\
         /srv/p p--------- fifo 0\nro\n0\n/bin/sh: can't create /srv/f: Read-only file system\n",
    );
    // A path that does not exist is an error under both.
    for launcher in [NIXSPAWN, nspawn] {
        let (code, _, err) = beside(
            launcher,
            tree.path(),
            &["--inaccessible=/srv/none"],
            &[],
            "true",
        );
        assert_ne!(code, 0, "{launcher}: {err}");
    }
    assert_eq!(
        std::fs::read_to_string(tree.path().join("srv/f")).unwrap(),
        "secret\n"
    );
}

#[test]
fn a_template_populates_a_missing_directory_only() {
    privileged!();
    require_nspawn();
    let template = fs_tree();
    std::fs::write(
        template.path().join("etc/machine-id"),
        "0123456789abcdef0123456789abcdef\n",
    )
    .unwrap();
    std::fs::write(template.path().join("etc/marker"), "template\n").unwrap();
    let parent = tempfile::tempdir().unwrap();
    let tpl = format!("--template={}", template.path().display());
    let probe = "cat /etc/marker /etc/machine-id; ls /srv | sort | head -3";
    let mut answers = Vec::new();
    for launcher in [NIXSPAWN, NSPAWN] {
        let dir = parent.path().join(format!("made-{}", launcher.len()));
        let (code, out, err) = beside(launcher, &dir, &[&tpl], &[], probe);
        assert_eq!(code, 0, "{launcher}: {err}");
        // The copy keeps the template's identity, as nspawn's manual says.
        assert_eq!(
            std::fs::read_to_string(dir.join("etc/machine-id")).unwrap(),
            "0123456789abcdef0123456789abcdef\n"
        );
        // An existing directory is not populated again.
        std::fs::write(dir.join("etc/marker"), "kept\n").unwrap();
        let (code, again, err) = beside(launcher, &dir, &[&tpl], &[], "cat /etc/marker");
        assert_eq!((code, again.as_str()), (0, "kept\n"), "{launcher}: {err}");
        answers.push(out);
    }
    assert_eq!(answers[0], answers[1]);
    assert_eq!(
        answers[0],
        "template\n0123456789abcdef0123456789abcdef\nd\nf\nin\n"
    );
    // A template that is not there: refused in one line by us, an error
    // under nspawn too, and no directory or partial copy left.
    let missing = parent.path().join("missing");
    for launcher in [NIXSPAWN, NSPAWN] {
        let (code, _, err) = beside(
            launcher,
            &missing,
            &["--template=/nonexistent-fsopts"],
            &[],
            "true",
        );
        assert_ne!(code, 0, "{launcher}");
        if launcher == NIXSPAWN {
            assert_eq!(err.trim().lines().count(), 1, "{err}");
            assert!(err.contains("--template=/nonexistent-fsopts"), "{err}");
        }
        assert!(!missing.exists());
    }
    nothing_left(parent.path(), "nixspawn-template");
}

#[test]
fn pivot_root_makes_a_directory_of_the_tree_the_root() {
    privileged!();
    require_nspawn();
    let tree = fs_tree();
    let alt = tree.path().join("alt");
    for d in [
        "usr/bin", "old", "proc", "sys", "dev", "run", "tmp", "etc", "var", "root",
    ] {
        std::fs::create_dir_all(alt.join(d)).unwrap();
    }
    std::fs::copy(
        tree.path().join("usr/bin/busybox"),
        alt.join("usr/bin/busybox"),
    )
    .unwrap();
    for a in ["sh", "cat", "ls", "grep", "cut"] {
        std::os::unix::fs::symlink("busybox", alt.join("usr/bin").join(a)).unwrap();
    }
    std::os::unix::fs::symlink("usr/bin", alt.join("bin")).unwrap();
    std::fs::write(alt.join("etc/marker"), "alt\n").unwrap();
    let out = same(
        tree.path(),
        &["--pivot-root=/alt"],
        &format!("cat /etc/marker; ls /old | wc -l; {}", mount_root("/")),
    );
    assert_eq!(out, format!("alt\n0\n{} /\n", alt.display()));
    // NEW:OLD keeps the old root at OLD. systemd-nspawn 252 cannot do it
    // on this host (its MS_MOVE of the old root fails with EINVAL), so
    // this half is ours alone.
    let (code, out, err) = beside(
        NIXSPAWN,
        tree.path(),
        &["--pivot-root=/alt:/old"],
        &[],
        "cat /etc/marker /old/srv/f",
    );
    assert_eq!((code, out.as_str()), (0, "alt\nsecret\n"), "{err}");
    // PivotRoot= from a file beside the tree.
    let _file = SettingsFile::beside(tree.path(), "[Exec]\nPivotRoot=/alt\n");
    assert_eq!(same(tree.path(), &[], "cat /etc/marker"), "alt\n");
}

#[test]
fn bad_values_are_refused_in_one_line_by_both() {
    privileged!();
    require_nspawn();
    let tree = fs_tree();
    for (arg, needle) in [
        (&["--volatile=sometimes"][..], "--volatile"),
        (&["--overlay=/only"], "--overlay"),
        (&["--overlay-ro=/a:/b:rel"], "--overlay-ro"),
        (&["--inaccessible=relative"], "--inaccessible"),
        (&["--pivot-root=relative"], "--pivot-root"),
    ] {
        let (code, out, err) = beside(NIXSPAWN, tree.path(), arg, &[], "echo ran");
        assert_ne!(code, 0, "{arg:?}");
        assert!(!out.contains("ran"), "{arg:?}");
        assert_eq!(err.trim().lines().count(), 1, "{arg:?}: {err}");
        assert!(err.contains(needle), "{arg:?}: {err}");
        let (code, out, _) = beside(NSPAWN, tree.path(), arg, &[], "echo ran");
        assert!(code != 0 && !out.contains("ran"), "nspawn took {arg:?}");
    }
    // A bad Volatile= in a file: one line naming file, line and key.
    let _file = SettingsFile::beside(tree.path(), "[Files]\nVolatile=sometimes\n");
    let (code, _, err) = beside(NIXSPAWN, tree.path(), &[], &[], "true");
    assert_ne!(code, 0);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains(".nspawn:2: invalid Volatile="), "{err}");
}

/// A hostile tree: its `+` upper layer's path leads out of it through a
/// link to a host directory. The work directory (made and removed by the
/// launcher on the host, beside the upper) must not follow it there.
#[test]
fn a_plus_upper_may_not_lead_out_of_the_tree() {
    privileged!();
    let tree = fs_tree();
    let outside = tempfile::tempdir().unwrap();
    std::fs::create_dir(outside.path().join("up")).unwrap();
    std::os::unix::fs::symlink(outside.path(), tree.path().join("srv/evil")).unwrap();
    let (code, out, err) = beside(
        NIXSPAWN,
        tree.path(),
        &["--overlay=+/srv/in:+/srv/evil/up:/mnt"],
        &[],
        "echo ran",
    );
    assert_ne!(code, 0);
    assert!(!out.contains("ran"));
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("is not inside the tree"), "{err}");
    nothing_left(outside.path(), ".#");
}
