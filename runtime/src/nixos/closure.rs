//! A NixOS toplevel and its closure: the store paths the guest's
//! /nix/store holds when the store is closure-only.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::spec::closure::{Entry, EntryKind};

pub const STORE: &str = "/nix/store";

/// Where the closure comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClosureSource {
    /// The host's Nix database (what `nix-store --query --requisites` reads).
    Database,
    /// A closureInfo `store-paths` file: one store path per line.
    File(PathBuf),
}

fn toplevel_error(path: &Path, reason: impl Into<String>) -> Error {
    Error::Toplevel {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The entry name of a direct child of /nix/store (`HASH-name`), if `path`
/// is one.
pub fn store_entry(path: &Path) -> Option<OsString> {
    let rest = path.strip_prefix(STORE).ok()?;
    let mut parts = rest.components();
    let first = parts.next()?;
    if parts.next().is_some() {
        return None;
    }
    let name = first.as_os_str();
    // A store path name starts with a 32-character base-32 hash and a dash.
    let bytes = name.as_bytes();
    let valid = bytes.len() > 33
        && bytes[32] == b'-'
        && bytes[..32]
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && !bytes.contains(&b'/');
    valid.then(|| name.to_os_string())
}

/// Resolve and check a toplevel: a store path (a `result` symlink to one is
/// fine) with an executable `init`.
pub fn resolve_toplevel(path: &Path) -> Result<PathBuf> {
    let resolved = std::fs::canonicalize(path).map_err(|e| toplevel_error(path, e.to_string()))?;
    if store_entry(&resolved).is_none() {
        return Err(toplevel_error(
            path,
            format!(
                "{} is not a path in {STORE} (expected {STORE}/HASH-name)",
                resolved.display()
            ),
        ));
    }
    let init = resolved.join("init");
    if !nix::unistd::access(&init, nix::unistd::AccessFlags::X_OK).is_ok_and(|()| init.is_file()) {
        return Err(toplevel_error(
            path,
            format!(
                "{} has no executable init; is it a NixOS system toplevel?",
                resolved.display()
            ),
        ));
    }
    Ok(resolved)
}

/// The closure of `toplevel`, sorted by name, each path checked to exist.
pub fn compute(toplevel: &Path, source: &ClosureSource) -> Result<Vec<Entry>> {
    let paths = match source {
        ClosureSource::Database => query_database(toplevel)?,
        ClosureSource::File(file) => {
            let text = std::fs::read_to_string(file)
                .map_err(|e| Error::io("reading the closure file", file, e))?;
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(PathBuf::from)
                .collect()
        }
    };
    let mut entries = BTreeMap::new();
    for p in &paths {
        let name = store_entry(p).ok_or_else(|| Error::Closure {
            toplevel: toplevel.to_path_buf(),
            reason: format!("{} is not a store path", p.display()),
        })?;
        let missing = || Error::Closure {
            toplevel: toplevel.to_path_buf(),
            reason: format!("{} is in the closure but missing from {STORE}", p.display()),
        };
        let meta = std::fs::symlink_metadata(p).map_err(|_| missing())?;
        let kind = if meta.file_type().is_symlink() {
            EntryKind::Symlink(std::fs::read_link(p).map_err(|_| missing())?)
        } else if meta.is_dir() {
            EntryKind::Directory
        } else {
            EntryKind::File
        };
        entries.insert(name, kind);
    }
    let own = store_entry(toplevel).expect("resolved toplevels are store entries");
    if !entries.contains_key(&own) {
        return Err(Error::Closure {
            toplevel: toplevel.to_path_buf(),
            reason: "the closure does not contain the toplevel itself (wrong closure file?)".into(),
        });
    }
    Ok(entries
        .into_iter()
        .map(|(name, kind)| Entry { name, kind })
        .collect())
}

/// The Nix database, read directly (about 1 ms); `nix-store` (about 20 ms)
/// is the fallback when the database cannot be read as expected.
fn query_database(toplevel: &Path) -> Result<Vec<PathBuf>> {
    match read_database(Path::new(NIX_DB), toplevel) {
        Ok(paths) if !paths.is_empty() => Ok(paths),
        Ok(_) | Err(_) => query_nix_store(toplevel),
    }
}

pub const NIX_DB: &str = "/nix/var/nix/db/db.sqlite";

/// The requisites of `toplevel` from Nix's SQLite database: the transitive
/// closure over the Refs table. Empty if the path is not registered.
pub fn read_database(db: &Path, toplevel: &Path) -> rusqlite::Result<Vec<PathBuf>> {
    match read_database_with(db, toplevel, false) {
        // A WAL-mode database whose directory we cannot write (a read-only
        // bind of /nix, as in a container) cannot create its -shm file; as
        // nobody can write it there either, it may be read as immutable.
        Err(_) if !db.parent().is_some_and(writable) => read_database_with(db, toplevel, true),
        other => other,
    }
}

fn writable(dir: &Path) -> bool {
    nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK).is_ok()
        && !nix::sys::statvfs::statvfs(dir)
            .is_ok_and(|st| st.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY))
}

fn read_database_with(
    db: &Path,
    toplevel: &Path,
    immutable: bool,
) -> rusqlite::Result<Vec<PathBuf>> {
    use rusqlite::OpenFlags;
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = if immutable {
        let uri = format!("file:{}?immutable=1", db.display());
        rusqlite::Connection::open_with_flags(uri, flags | OpenFlags::SQLITE_OPEN_URI)?
    } else {
        rusqlite::Connection::open_with_flags(db, flags)?
    };
    // Nix may be writing; wait for its lock rather than fail.
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let mut stmt = conn.prepare(
        "WITH RECURSIVE closure(id) AS (
             SELECT id FROM ValidPaths WHERE path = ?1
             UNION SELECT reference FROM Refs JOIN closure ON referrer = closure.id)
         SELECT path FROM ValidPaths JOIN closure USING (id)",
    )?;
    let rows = stmt.query_map([toplevel.to_string_lossy()], |row| row.get::<_, String>(0))?;
    rows.map(|r| r.map(PathBuf::from)).collect()
}

fn query_nix_store(toplevel: &Path) -> Result<Vec<PathBuf>> {
    let out = std::process::Command::new("nix-store")
        .arg("--query")
        .arg("--requisites")
        .arg(toplevel)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| Error::Closure {
            toplevel: toplevel.to_path_buf(),
            reason: format!(
                "cannot run nix-store ({e}); install Nix (Debian: apt-get install nix-bin) or pass --closure-file"
            ),
        })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(Error::Closure {
            toplevel: toplevel.to_path_buf(),
            reason: format!(
                "nix-store --query --requisites failed: {} (is the path registered in the Nix database? else pass --closure-file)",
                stderr.trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(PathBuf::from)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database with Nix's two tables: t -> a -> b, a -> a (self), c apart.
    fn fake_db(dir: &Path) -> PathBuf {
        let db = dir.join("db.sqlite");
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(
            "CREATE TABLE ValidPaths (id integer primary key autoincrement not null, path text unique not null,
                 hash text not null, registrationTime integer not null, deriver text, narSize integer,
                 ultimate integer, sigs text, ca text);
             CREATE TABLE Refs (referrer integer not null, reference integer not null, primary key (referrer, reference));
             INSERT INTO ValidPaths (path, hash, registrationTime) VALUES
                 ('/nix/store/t', 'h', 0), ('/nix/store/a', 'h', 0), ('/nix/store/b', 'h', 0), ('/nix/store/c', 'h', 0);
             INSERT INTO Refs VALUES (1, 2), (2, 2), (2, 3), (4, 1);",
        )
        .unwrap();
        db
    }

    #[test]
    fn database_closure_follows_references() {
        let dir = tempfile::tempdir().unwrap();
        let db = fake_db(dir.path());
        let mut got = read_database(&db, Path::new("/nix/store/t")).unwrap();
        got.sort();
        assert_eq!(
            got,
            ["/nix/store/a", "/nix/store/b", "/nix/store/t"].map(PathBuf::from)
        );
        assert!(
            read_database(&db, Path::new("/nix/store/unknown"))
                .unwrap()
                .is_empty()
        );
        assert!(
            read_database(
                &dir.path().join("missing.sqlite"),
                Path::new("/nix/store/t")
            )
            .is_err()
        );
    }

    #[test]
    fn store_entries() {
        let ok = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-hello-2.12";
        assert_eq!(
            store_entry(Path::new(ok)).unwrap(),
            "0123456789abcdfghijklmnpqrsvwxyz-hello-2.12"
        );
        for bad in [
            "/nix/store",
            "/nix/store/short-name",
            "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-hello/bin",
            "/tmp/0123456789abcdfghijklmnpqrsvwxyz-hello",
            "/nix/store/0123456789ABCDFGHIJKLMNPQRSVWXYZ-upper",
            "/nix/store/0123456789abcdfghijklmnpqrsvwxyzXhello",
        ] {
            assert!(store_entry(Path::new(bad)).is_none(), "{bad}");
        }
    }
}
