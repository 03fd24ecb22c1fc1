//! The MBR ("dos") partition table of a disk image: the four primary
//! entries and the logical partitions chained through an extended
//! partition's boot records, numbered as Linux and libblkid number them
//! (primaries 1–4, logical ones from 5), checked for partitions that lie
//! outside the image or on top of each other.
//!
//! What systemd-nspawn 252 makes of them (its image dissection, read for
//! the facts): a Linux partition (type 0x83) with the bootable flag is a
//! generic root candidate — one is the root, several are ambiguous and
//! refused, a non-bootable one is ignored; type 0xEA is XBOOTLDR (the
//! first one); every other type is ignored. A table whose boot indicator
//! bytes are not 0 or 0x80, or one with a protective 0xEE entry, is not an
//! MBR table to it.
//!
//! Hand-written, as the GPT reader beside it: sixteen-byte entries in one
//! or a few sectors we read from a descriptor we already hold.

use std::collections::BTreeSet;
use std::fs::File;
use std::os::unix::fs::FileExt;

/// Sector size of an MBR table in an image file (libblkid's 512-byte
/// units; a loop device over a file has 512-byte sectors).
const SECTOR: u64 = 512;

/// The Linux native partition type, the one nspawn boots.
pub const LINUX: u8 = 0x83;
/// The Boot Loader Specification's extended boot partition.
pub const XBOOTLDR: u8 = 0xEA;
/// A GPT's protective entry.
const PROTECTIVE: u8 = 0xEE;
/// The bootable flag of an entry's boot indicator.
pub const BOOTABLE: u8 = 0x80;

/// Boot records followed down an extended partition's chain at most (as
/// many logical partitions as anyone makes; a cycle stops here too).
const MAX_LOGICAL: usize = 128;

/// One partition of the table (extended containers not included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// 1–4 for primary partitions, 5 and up for logical ones.
    pub number: u32,
    pub kind: u8,
    pub boot_indicator: u8,
    /// In bytes from the start of the image.
    pub offset: u64,
    pub size: u64,
}

impl Partition {
    pub fn bootable(&self) -> bool {
        self.boot_indicator == BOOTABLE
    }
}

fn is_extended(kind: u8) -> bool {
    matches!(kind, 0x05 | 0x0F | 0x85)
}

/// One raw 16-byte entry: (boot indicator, type, first sector, sectors).
fn entry(sector: &[u8; 512], i: usize) -> (u8, u8, u64, u64) {
    let e = &sector[446 + 16 * i..446 + 16 * (i + 1)];
    let le32 = |at: usize| u64::from(u32::from_le_bytes([e[at], e[at + 1], e[at + 2], e[at + 3]]));
    (e[0], e[4], le32(8), le32(12))
}

fn read_sector(file: &File, lba: u64) -> Result<[u8; 512], String> {
    let mut s = [0u8; 512];
    file.read_exact_at(&mut s, lba * SECTOR)
        .map_err(|e| format!("reading the MBR boot record at sector {lba}: {e}"))?;
    Ok(s)
}

fn signed(sector: &[u8; 512]) -> bool {
    sector[510..512] == [0x55, 0xAA]
}

/// The partitions of the image's MBR table, or None when sector 0 holds
/// none (no 0x55AA signature). Err names what is wrong with a table that
/// is there: a bad boot indicator, a protective entry with no GPT behind
/// it, a partition outside the image or overlapping another.
pub fn read(file: &File, image_size: u64) -> Result<Option<Vec<Partition>>, String> {
    let Ok(mbr) = read_sector(file, 0) else {
        return Ok(None);
    };
    if !signed(&mbr) {
        return Ok(None);
    }
    let sectors = image_size / SECTOR;
    let mut out = Vec::new();
    // Ranges in sectors [start, end) of the primaries, extended ones too.
    let mut primaries: Vec<(String, u64, u64)> = Vec::new();
    let mut extended = None;
    for (i, number) in (1..=4u32).enumerate() {
        let (boot, kind, start, count) = entry(&mbr, i);
        if boot != 0 && boot != BOOTABLE {
            return Err(format!(
                "MBR entry {number} has boot indicator {boot:#04x} (only 0x00 or 0x80 make a partition table)"
            ));
        }
        if kind == PROTECTIVE {
            return Err(
                "has a protective MBR (type 0xee) but no valid GPT header behind it (damaged GPT)"
                    .into(),
            );
        }
        if count == 0 {
            continue;
        }
        check_range(number, start, count, 1, sectors)?;
        primaries.push((format!("partition {number}"), start, start + count));
        if is_extended(kind) {
            if extended.is_some() {
                return Err(format!(
                    "MBR partition {number} is a second extended partition (a table has one)"
                ));
            }
            extended = Some((start, count));
        } else {
            out.push(Partition {
                number,
                kind,
                boot_indicator: boot,
                offset: start * SECTOR,
                size: count * SECTOR,
            });
        }
    }
    check_overlaps(&primaries)?;
    if let Some((ext_start, ext_count)) = extended {
        out.extend(logical(file, ext_start, ext_count)?);
    }
    Ok(Some(out))
}

/// A partition must start after the table's own sector and end inside
/// the image (or its extended partition).
fn check_range(number: u32, start: u64, count: u64, first: u64, end: u64) -> Result<(), String> {
    let last = start.saturating_add(count);
    if start < first || last > end {
        return Err(format!(
            "MBR partition {number} (sectors {start}..{}) lies outside {} (sectors {first}..{})",
            last.saturating_sub(1),
            if first == 1 {
                "the image"
            } else {
                "its extended partition"
            },
            end.saturating_sub(1),
        ));
    }
    Ok(())
}

/// Ranges of sectors [start, end), each named, that must not overlap.
fn check_overlaps(ranges: &[(String, u64, u64)]) -> Result<(), String> {
    for (i, a) in ranges.iter().enumerate() {
        for b in &ranges[i + 1..] {
            if a.1 < b.2 && b.1 < a.2 {
                return Err(format!(
                    "MBR {} and {} overlap (sectors {}..{} and {}..{})",
                    a.0,
                    b.0,
                    a.1,
                    a.2 - 1,
                    b.1,
                    b.2 - 1
                ));
            }
        }
    }
    Ok(())
}

/// The logical partitions in the extended partition at `ext_start`: each
/// boot record holds a data entry (its start relative to that record) and
/// a link to the next record (relative to the extended partition). Each
/// record's sector and its data must lie inside the extended partition,
/// apart from each other.
fn logical(file: &File, ext_start: u64, ext_count: u64) -> Result<Vec<Partition>, String> {
    let ext_end = ext_start + ext_count;
    let mut out = Vec::new();
    let mut used: Vec<(String, u64, u64)> = Vec::new();
    let mut seen = BTreeSet::new();
    let mut record = ext_start;
    let mut number = 5u32;
    loop {
        if !seen.insert(record) || seen.len() > MAX_LOGICAL {
            return Err(format!(
                "the extended partition's chain of boot records loops or passes {MAX_LOGICAL} logical partitions"
            ));
        }
        let ebr = read_sector(file, record)?;
        if !signed(&ebr) {
            // An unwritten record ends the chain, as for libblkid.
            break;
        }
        let mut next = None;
        for i in 0..4 {
            let (boot, kind, start, count) = entry(&ebr, i);
            if count == 0 {
                continue;
            }
            if is_extended(kind) {
                // The first link is the chain; others are junk.
                if next.is_none() {
                    next = Some(ext_start.saturating_add(start));
                }
                continue;
            }
            // Data beyond the first two slots only if it really fits (the
            // rule libblkid applies to OS/2's four-entry records).
            let abs = record.saturating_add(start);
            if i >= 2 && (abs < ext_start || abs.saturating_add(count) > ext_end) {
                continue;
            }
            if boot != 0 && boot != BOOTABLE {
                return Err(format!(
                    "MBR logical partition {number} has boot indicator {boot:#04x} (only 0x00 or 0x80)"
                ));
            }
            check_range(number, abs, count, ext_start + 1, ext_end)?;
            if abs <= record {
                return Err(format!(
                    "MBR logical partition {number} (sector {abs}) starts before its own boot record (sector {record})"
                ));
            }
            used.push((format!("logical partition {number}"), abs, abs + count));
            out.push(Partition {
                number,
                kind,
                boot_indicator: boot,
                offset: abs * SECTOR,
                size: count * SECTOR,
            });
            number += 1;
        }
        used.push((
            format!("boot record at sector {record}"),
            record,
            record + 1,
        ));
        check_overlaps(&used)?;
        match next {
            Some(n) if n >= ext_start && n < ext_end => record = n,
            Some(n) => {
                return Err(format!(
                    "the extended partition's link to sector {n} lies outside it (sectors {ext_start}..{})",
                    ext_end - 1
                ));
            }
            None => break,
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn put(sector: &mut [u8], i: usize, boot: u8, kind: u8, start: u32, count: u32) {
        let e = &mut sector[446 + 16 * i..446 + 16 * (i + 1)];
        e[0] = boot;
        e[4] = kind;
        e[8..12].copy_from_slice(&start.to_le_bytes());
        e[12..16].copy_from_slice(&count.to_le_bytes());
        sector[510] = 0x55;
        sector[511] = 0xAA;
    }

    fn image(sectors: &[(u64, [u8; 512])], total: u64) -> (tempfile::NamedTempFile, u64) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(total * SECTOR).unwrap();
        for (lba, s) in sectors {
            f.as_file().write_all_at(s, lba * SECTOR).unwrap();
        }
        f.flush().unwrap();
        (f, total * SECTOR)
    }

    #[test]
    fn primaries_and_logicals_are_numbered_as_linux_does() {
        let mut mbr = [0u8; 512];
        put(&mut mbr, 0, BOOTABLE, LINUX, 2048, 1000);
        put(&mut mbr, 2, 0, 0x05, 4096, 4096);
        let mut ebr1 = [0u8; 512];
        put(&mut ebr1, 0, 0, XBOOTLDR, 1, 100);
        put(&mut ebr1, 1, 0, 0x05, 1024, 1000);
        let mut ebr2 = [0u8; 512];
        put(&mut ebr2, 0, 0, 0x82, 1, 50);
        let (f, size) = image(&[(0, mbr), (4096, ebr1), (5120, ebr2)], 9000);
        let parts = read(f.as_file(), size).unwrap().unwrap();
        let got: Vec<(u32, u8, u64)> = parts
            .iter()
            .map(|p| (p.number, p.kind, p.offset / SECTOR))
            .collect();
        assert_eq!(
            got,
            vec![(1, LINUX, 2048), (5, XBOOTLDR, 4097), (6, 0x82, 5121)]
        );
        assert!(parts[0].bootable());
    }

    /// (boot indicator, type, first sector, sectors) of an entry.
    type Raw = (u8, u8, u32, u32);

    #[test]
    fn bad_tables_are_named() {
        let cases: Vec<(Vec<Raw>, &str)> = vec![
            (vec![(0, LINUX, 2048, 100_000)], "lies outside the image"),
            (vec![(0, LINUX, 0, 100)], "lies outside the image"),
            (
                vec![(0, LINUX, 2048, 1000), (0, LINUX, 2500, 1000)],
                "MBR partition 1 and partition 2 overlap",
            ),
            (vec![(0x12, LINUX, 2048, 100)], "boot indicator 0x12"),
            (vec![(0, 0xEE, 1, 100)], "protective MBR"),
        ];
        for (entries, want) in cases {
            let mut mbr = [0u8; 512];
            for (i, (b, k, s, c)) in entries.iter().enumerate() {
                put(&mut mbr, i, *b, *k, *s, *c);
            }
            let (f, size) = image(&[(0, mbr)], 8192);
            let err = read(f.as_file(), size).unwrap_err();
            assert!(err.contains(want), "{entries:?}: {err}");
        }
        // A chain that links back to itself.
        let mut mbr = [0u8; 512];
        put(&mut mbr, 0, 0, 0x05, 2048, 4096);
        let mut ebr = [0u8; 512];
        put(&mut ebr, 0, 0, LINUX, 1, 10);
        put(&mut ebr, 1, 0, 0x05, 0, 100);
        let (f, size) = image(&[(0, mbr), (2048, ebr)], 8192);
        let err = read(f.as_file(), size).unwrap_err();
        assert!(err.contains("loops"), "{err}");
        // No signature: no table.
        let (f, size) = image(&[], 8192);
        assert_eq!(read(f.as_file(), size).unwrap(), None);
    }
}
