//! Which host UID/GID range a guest's user namespace gets, and the lock
//! that holds the range for the guest's life. Picking follows
//! systemd-nspawn's rules and shares its lock files
//! (/run/systemd/nspawn-uid/BASE, OFD write locks), so nixspawn and
//! systemd-nspawn never hand out the same range.

use std::fs::File;
use std::hash::Hasher;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::launcher::janitor::claim::{Claim, JanitorLink};
use crate::spec::userns::{RANGE, UidRange};

/// Where `pick` looks, as systemd's container-uid-base-min/max.
pub const PICK_MIN: u32 = 0x0008_0000;
pub const PICK_MAX: u32 = 0x6FFF_0000;
pub const LOCK_DIR: &str = "/run/systemd/nspawn-uid";
/// systemd-nspawn's key for hashing machine names into a first candidate.
const HASH_KEY: [u8; 16] = [
    0xe1, 0x56, 0xe0, 0xf0, 0x4a, 0xf0, 0x41, 0xaf, 0x96, 0x41, 0xcf, 0x41, 0x33, 0x94, 0xff, 0x72,
];

/// An exclusive hold on the 64K blocks of a range, shared with
/// systemd-nspawn's. Dropping it removes the lock files.
#[derive(Debug)]
pub struct RangeLock {
    held: Vec<(PathBuf, File)>,
}

impl Drop for RangeLock {
    fn drop(&mut self) {
        // Unlinked while still held, as systemd does, so nobody can lock
        // a file that is about to disappear (they check st_nlink).
        for (p, f) in self.held.drain(..) {
            crate::state::lockfile::release(&p, f);
        }
    }
}

/// Try to lock one block's file: Ok(None) if another holder has it. The
/// janitor hears of the attempt before and of the lock after.
fn lock_block(base: u32, janitor: &JanitorLink) -> Result<Option<(PathBuf, File)>> {
    let dir = crate::state::run_path(LOCK_DIR);
    crate::state::ensure_root_dir(&dir, 0o755, crate::state::Existing::KeepMode)?;
    let path = dir.join(base.to_string());
    janitor.note(&Claim::Range { path: path.clone() }, None)?;
    let Some(f) = crate::state::lockfile::acquire(&path)? else {
        return Ok(None);
    };
    janitor.note(&Claim::RangeHeld { path: path.clone() }, Some(f.as_fd()))?;
    Ok(Some((path, f)))
}

/// Lock every 64K block of `range`; Ok(None) if any is taken.
pub(crate) fn lock(range: UidRange, janitor: &JanitorLink) -> Result<Option<RangeLock>> {
    let mut held = Vec::new();
    for block in (0..range.range / RANGE).map(|i| range.shift + i * RANGE) {
        match lock_block(block, janitor)? {
            Some(h) => held.push(h),
            // Dropping what we hold so far unlinks only our own files.
            None => return Ok(None),
        }
    }
    Ok(Some(RangeLock { held }))
}

/// systemd-nspawn's first candidate for a machine: its name hashed into the window.
pub fn hashed_candidate(machine: &str) -> u32 {
    let k0 = u64::from_le_bytes(HASH_KEY[..8].try_into().expect("8 bytes"));
    let k1 = u64::from_le_bytes(HASH_KEY[8..].try_into().expect("8 bytes"));
    #[allow(deprecated)] // SipHash-2-4 with explicit keys, exactly what nspawn uses
    let mut h = std::hash::SipHasher::new_with_keys(k0, k1);
    h.write(machine.as_bytes());
    // nspawn keeps the hash in a uid_t: the low 32 bits.
    fold(low_half(h.finish()))
}

/// The low 32 bits, as systemd keeps of its 64-bit hash.
fn low_half(h: u64) -> u32 {
    let b = h.to_le_bytes();
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn fold(value: u32) -> u32 {
    (value % (PICK_MAX - PICK_MIN) + PICK_MIN) & 0xFFFF_0000
}

/// Is any id of the range's ends known to the user database?
fn in_user_database(base: u32) -> bool {
    use nix::unistd::{Gid, Group, Uid, User};
    [base, base + 0xFFFE].iter().any(|&id| {
        User::from_uid(Uid::from_raw(id)).ok().flatten().is_some()
            || Group::from_gid(Gid::from_raw(id)).ok().flatten().is_some()
    })
}

/// One line of /proc/PID/uid_map: ids [inside, inside+count) are the
/// parent namespace's [outside, outside+count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Extent {
    pub inside: u32,
    pub outside: u32,
    pub count: u32,
}

/// The ids our own user namespace has: where a guest's range must lie
/// (the kernel refuses a child map naming ids the writer's namespace
/// lacks). On the host the map is the whole 32-bit space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OwnMap {
    pub uid: Vec<Extent>,
    pub gid: Vec<Extent>,
    /// The text of uid_map, for messages.
    pub shown: String,
}

fn parse_map(text: &str) -> Vec<Extent> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace().map(|x| x.parse::<u32>().ok());
            Some(Extent {
                inside: f.next()??,
                outside: f.next()??,
                count: f.next()??,
            })
        })
        .collect()
}

impl OwnMap {
    pub fn parse(uid_map: &str, gid_map: &str) -> OwnMap {
        OwnMap {
            uid: parse_map(uid_map),
            gid: parse_map(gid_map),
            shown: uid_map.split_whitespace().collect::<Vec<_>>().join(" "),
        }
    }

    pub fn read() -> Result<OwnMap> {
        let read = |p: &str| std::fs::read_to_string(p).map_err(|e| Error::io("reading", p, e));
        Ok(OwnMap::parse(
            &read("/proc/self/uid_map")?,
            &read("/proc/self/gid_map")?,
        ))
    }

    /// The initial user namespace's map: every id.
    pub fn is_initial(&self) -> bool {
        let all = [Extent {
            inside: 0,
            outside: 0,
            count: u32::MAX,
        }];
        self.uid == all && self.gid == all
    }

    /// Every id of `range` exists here, as uid and as gid.
    pub fn holds(&self, range: UidRange) -> bool {
        let within = |ext: &[Extent]| {
            ext.iter().any(|e| {
                u64::from(range.shift) >= u64::from(e.inside)
                    && u64::from(range.shift) + u64::from(range.range)
                        <= u64::from(e.inside) + u64::from(e.count)
            })
        };
        within(&self.uid) && within(&self.gid)
    }

    /// The 64K blocks a picked range may use in a nested user namespace:
    /// every aligned block inside the map but block 0 (our own root's),
    /// those in systemd's window first.
    pub fn pickable_blocks(&self, limit: usize) -> Vec<u32> {
        let mut blocks: Vec<u32> = Vec::new();
        for e in &self.uid {
            let first = u64::from(e.inside).div_ceil(u64::from(RANGE)) * u64::from(RANGE);
            let end = u64::from(e.inside) + u64::from(e.count);
            let mut b = first.max(u64::from(RANGE));
            while b + u64::from(RANGE) <= end && blocks.len() < limit * 4 {
                let base = u32::try_from(b).unwrap_or(u32::MAX);
                if self.holds(UidRange {
                    shift: base,
                    range: RANGE,
                }) {
                    blocks.push(base);
                }
                b += u64::from(RANGE);
            }
        }
        blocks.sort_by_key(|b| !(PICK_MIN..=PICK_MAX).contains(b));
        blocks.truncate(limit);
        blocks
    }

    /// Why `range` cannot be used here, and what can.
    pub fn refusal(&self, value: String) -> Error {
        let fits = if self.pickable_blocks(1).is_empty() {
            "only --private-users=identity fits".to_owned()
        } else {
            "pick a range inside it, or --private-users=pick".to_owned()
        };
        Error::InvalidValue {
            what: "--private-users",
            value,
            reason: format!(
                "this user namespace has only the ids of /proc/self/uid_map ({}); {fits}",
                self.shown
            ),
        }
    }
}

/// Pick and lock a free 64K range: the tree's own shift if it is free, then
/// the machine name's hash, then random candidates (100 tries in all). In a
/// nested user namespace (a Nix uid-range builder's has 65536 ids), only
/// blocks inside our own map are candidates.
pub(crate) fn pick(
    machine: &str,
    tree_shift: Option<u32>,
    janitor: &JanitorLink,
) -> Result<(UidRange, RangeLock)> {
    let own = OwnMap::read()?;
    if !own.is_initial() {
        let candidates = tree_shift
            .into_iter()
            .filter(|&b| b != 0 && b % RANGE == 0)
            .chain(own.pickable_blocks(100));
        for base in candidates {
            let range = UidRange {
                shift: base,
                range: RANGE,
            };
            if !own.holds(range) {
                continue;
            }
            if let Some(lock) = lock(range, janitor)? {
                return Ok((range, lock));
            }
        }
        return Err(own.refusal("pick".into()));
    }
    let mut candidates: Vec<u32> = tree_shift
        .into_iter()
        .chain([hashed_candidate(machine)])
        .collect();
    let mut random = [0u8; 4 * 100];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut random))
        .map_err(|e| Error::io("reading", "/dev/urandom", e))?;
    candidates.extend(
        random
            .chunks(4)
            .map(|c| fold(u32::from_le_bytes(c.try_into().expect("4 bytes")))),
    );
    for base in candidates.into_iter().take(100) {
        if !(PICK_MIN..=PICK_MAX).contains(&base) || base % RANGE != 0 {
            continue;
        }
        let range = UidRange {
            shift: base,
            range: RANGE,
        };
        if let Some(lock) = lock(range, janitor)? {
            if in_user_database(base) {
                continue;
            }
            return Ok((range, lock));
        }
    }
    Err(Error::InvalidValue {
        what: "--private-users",
        value: "pick".into(),
        reason: format!(
            "no free 64K range found between {PICK_MIN:#x} and {PICK_MAX:#x} after 100 tries"
        ),
    })
}

/// The shift a tree is owned by (`--private-users=yes`): its root
/// directory's owner, which must be 64K-aligned.
pub fn tree_shift(tree: &Path) -> Result<u32> {
    let uid = std::fs::metadata(tree)
        .map_err(|e| Error::io("stat", tree, e))?
        .uid();
    if uid % RANGE != 0 {
        return Err(Error::BadTree {
            path: tree.to_path_buf(),
            reason: format!(
                "its owner {uid} is not a multiple of 65536, so it names no UID range (--private-users=yes)"
            ),
        });
    }
    Ok(uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_a_uid_range_builder_only_identity_fits() {
        // What a Nix 2.34 uid-range build sees.
        let m = OwnMap::parse("         0  872415232      65536\n", "0 872415232 65536\n");
        assert!(!m.is_initial());
        assert!(m.pickable_blocks(100).is_empty());
        assert!(m.holds(UidRange {
            shift: 0,
            range: RANGE
        }));
        assert!(!m.holds(UidRange {
            shift: RANGE,
            range: RANGE
        }));
        let e = m.refusal("pick".into()).to_string();
        assert!(e.contains("0 872415232 65536"), "{e}");
        assert!(e.contains("only --private-users=identity fits"), "{e}");
    }

    #[test]
    fn a_larger_nested_map_offers_its_aligned_blocks_but_our_own_root() {
        let m = OwnMap::parse("0 100000 65536\n65536 300000 196608\n", "0 100000 262144\n");
        assert_eq!(m.pickable_blocks(100), vec![65536, 131072, 196608]);
        assert!(
            m.refusal("1:2".into())
                .to_string()
                .contains("--private-users=pick")
        );
        // A gid map narrower than the uid map limits the blocks.
        let m = OwnMap::parse("0 100000 262144\n", "0 100000 131072\n");
        assert_eq!(m.pickable_blocks(100), vec![65536]);
        let host = OwnMap::parse("0 0 4294967295\n", "0 0 4294967295\n");
        assert!(host.is_initial());
        assert!(host.holds(UidRange {
            shift: PICK_MAX,
            range: RANGE
        }));
    }

    #[test]
    fn the_machine_name_hash_matches_systemd_nspawn() {
        // systemd-nspawn 252 picked this base for a machine named "bbt"
        // whose tree gave no usable shift.
        assert_eq!(hashed_candidate("bbt"), 839_647_232);
        let c = hashed_candidate("anything");
        assert!((PICK_MIN..=PICK_MAX).contains(&c) && c.is_multiple_of(RANGE));
    }
}
