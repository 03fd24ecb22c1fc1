//! PID 1's environment, built as systemd-nspawn builds it: built-ins, then
//! the host's os-release identity, then the user's `-E` values (later wins).

use std::path::Path;

use crate::guest::apifs::runhost::CONTAINER_MANAGER;
use crate::spec::Spec;
use crate::spec::environment::parse_os_release;

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The host's os-release as the guest's PID 1 finds it: the read-only bind
/// of the host's file at /run/host/os-release (read after the pivot, where
/// /etc/os-release would be the guest's own).
pub(crate) const HOST_OS_RELEASE: &str = "/run/host/os-release";

/// The environment PID 1 starts with; `host_os_release` is the text of
/// the host's os-release.
pub fn for_pid1(spec: &Spec, host_os_release: &str) -> Vec<(String, String)> {
    for_pid1_as(spec, host_os_release, None)
}

/// [`for_pid1`] for a payload run as `--user`: `(name as given, home)`
/// sets HOME, USER and LOGNAME as nspawn does (before `-E`, which wins).
pub fn for_pid1_as(
    spec: &Spec,
    host_os_release: &str,
    user: Option<(&str, &Path)>,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: String| {
        env.retain(|(key, _)| key != k);
        env.push((k.to_owned(), v));
    };
    set("PATH", DEFAULT_PATH.to_owned());
    set("container", CONTAINER_MANAGER.to_owned());
    set("container_uuid", spec.uuid.to_string());
    set("NOTIFY_SOCKET", "/run/host/notify".to_owned());
    let (name, home) = user.map_or(("root".to_owned(), "/root".to_owned()), |(n, h)| {
        (n.to_owned(), h.to_string_lossy().into_owned())
    });
    set("HOME", home);
    set("USER", name.clone());
    set("LOGNAME", name);
    // As nspawn: the caller's $TERM in every console mode, none without one.
    if let Some(term) = &spec.term {
        set("TERM", term.clone());
    }
    if !spec.is_boot() {
        set("LANG", "C.UTF-8".to_owned());
    }
    let host = parse_os_release(host_os_release);
    for (key, var) in [
        ("ID", "id"),
        ("VERSION_ID", "version_id"),
        ("BUILD_ID", "build_id"),
        ("VARIANT_ID", "variant_id"),
    ] {
        if let Some((_, v)) = host.iter().find(|(k, _)| k == key) {
            set(&format!("container_host_{var}"), v.clone());
        }
    }
    if !spec.credentials.is_empty() {
        set(
            "CREDENTIALS_DIRECTORY",
            crate::guest::credentials::GUEST_DIR.to_owned(),
        );
    }
    if spec.store.as_ref().is_some_and(|s| s.nix_daemon) {
        set("NIX_REMOTE", "daemon".to_owned());
    }
    for (k, v) in &spec.environment {
        set(k, v.clone());
    }
    env
}

/// Does the tree look like an OS (systemd's os-release test)?
pub fn tree_os_release(root: &Path) -> Option<std::path::PathBuf> {
    ["/etc/os-release", "/usr/lib/os-release"]
        .iter()
        .map(Path::new)
        .find(|p| crate::guest::rootfs::resolve::exists_in_root(root, p))
        .map(|p| root.join(p.strip_prefix("/").unwrap_or(p)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_identity_comes_from_the_text_given_not_the_guests_files() {
        let spec = crate::spec::tests::minimal();
        let env = for_pid1(&spec, "ID=arch\nVERSION_ID=\"7\"\nBUILD_ID=rolling\n");
        let get = |k: &str| {
            env.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("container_host_id"), Some("arch"));
        assert_eq!(get("container_host_version_id"), Some("7"));
        assert_eq!(get("container_host_build_id"), Some("rolling"));
        assert_eq!(get("container_host_variant_id"), None);
        let env = for_pid1(&spec, "");
        assert!(!env.iter().any(|(k, _)| k.starts_with("container_host_")));
    }
}
