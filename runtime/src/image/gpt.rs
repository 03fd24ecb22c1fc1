//! The GUID partition table of a disk image: header and entries, checked
//! by their CRC32s, and the partition types of the Discoverable
//! Partitions Specification for this architecture.
//!
//! Hand-written rather than the `gpt` crate: we only read two structures
//! from a descriptor we already hold; the crate opens devices by path and
//! brings a writer, a logger and a UUID library along.

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::spec::image::Designator;

/// A partition type GUID as it is written (lower-case, with dashes).
pub type TypeGuid = String;

/// One used entry of the table.
#[derive(Debug, Clone)]
pub struct Entry {
    /// 1-based, as partition numbers are shown.
    pub number: u32,
    pub type_guid: TypeGuid,
    pub offset: u64,
    pub size: u64,
    pub attributes: u64,
    pub label: String,
}

/// GPT attribute bits of the DPS.
pub const ATTR_READ_ONLY: u64 = 1 << 60;
pub const ATTR_NO_AUTO: u64 = 1 << 63;
pub const ATTR_GROWFS: u64 = 1 << 59;

/// What the DPS type GUIDs mean on x86-64 (other architectures' root and
/// /usr types are not for us: the guest runs on this CPU).
pub fn designator(type_guid: &str) -> Option<Designator> {
    Some(match type_guid {
        "4f68bce3-e8cd-4db1-96e7-fbcaf984b709" => Designator::Root,
        "8484680c-9521-48c6-9c11-b0720656f69e" => Designator::Usr,
        "2c7357ed-ebd2-46d9-aec1-23d437ec2bf5" => Designator::RootVerity,
        "77ff5f63-e7b6-4633-acf4-1565b864c0e6" => Designator::UsrVerity,
        "41092b05-9fc8-4523-994f-2def0408b176" => Designator::RootVeritySig,
        "e7bb33fb-06cf-4e81-8273-e543b413e2e2" => Designator::UsrVeritySig,
        "933ac7e1-2eb4-4f13-b844-0e14e2aef915" => Designator::Home,
        "3b8f8425-20e0-4f3b-907f-1a25a76f98e8" => Designator::Srv,
        "4d21b016-b534-45c2-a9fb-5c16e091fd2d" => Designator::Var,
        "7ec6f557-3bc5-4aca-b293-16ef5df639d1" => Designator::Tmp,
        "c12a7328-f81f-11d2-ba4b-00a0c93ec93b" => Designator::Esp,
        XBOOTLDR => Designator::Xbootldr,
        "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f" => Designator::Swap,
        _ => return None,
    })
}

/// The "Linux filesystem data" type: a root when it is the only partition
/// nspawn could use.
pub const GENERIC_LINUX: &str = "0fc63daf-8483-4772-8e79-3d69d8477de4";

/// The DPS's XBOOTLDR type (the MBR's 0xEA means the same).
pub const XBOOTLDR: &str = "bc13c2ff-59e6-4262-a352-b275fd6f7172";

/// A GUID's mixed-endian on-disk form, written out.
fn guid(b: &[u8]) -> String {
    format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        b[3],
        b[2],
        b[1],
        b[0],
        b[5],
        b[4],
        b[7],
        b[6],
        b[8],
        b[9],
        b[10],
        b[11],
        b[12],
        b[13],
        b[14],
        b[15]
    )
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or_default())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or_default())
}

/// Whether `file` has a GPT signature at LBA 1 for this sector size.
fn has_signature(file: &File, sector: u64) -> bool {
    let mut sig = [0u8; 8];
    file.read_exact_at(&mut sig, sector).is_ok() && &sig == b"EFI PART"
}

/// The table, if the image has one (tried with 512- and 4096-byte
/// sectors); Err when there is a signature but the table is damaged.
pub fn read(file: &File, image_size: u64) -> Result<Option<Vec<Entry>>, String> {
    let Some(sector) = [512u64, 4096].into_iter().find(|&s| has_signature(file, s)) else {
        return Ok(None);
    };
    let mut header = [0u8; 92];
    file.read_exact_at(&mut header, sector)
        .map_err(|e| format!("reading the GPT header: {e}"))?;
    let header_size = u32_at(&header, 12) as usize;
    if !(92..=512).contains(&header_size) {
        return Err(format!("GPT header size {header_size} is invalid"));
    }
    let mut full = vec![0u8; header_size];
    file.read_exact_at(&mut full, sector)
        .map_err(|e| format!("reading the GPT header: {e}"))?;
    let stored_crc = u32_at(&full, 16);
    full[16..20].fill(0);
    if crc32fast::hash(&full) != stored_crc {
        return Err("the GPT header's checksum is wrong (damaged table)".into());
    }
    let entries_lba = u64_at(&header, 72);
    let count = u32_at(&header, 80);
    let entry_size = u32_at(&header, 84) as usize;
    if !(128..=4096).contains(&entry_size) || count > 1024 {
        return Err(format!(
            "GPT with {count} entries of {entry_size} bytes is not a table we read"
        ));
    }
    let mut table = vec![0u8; entry_size * count as usize];
    file.read_exact_at(&mut table, entries_lba.saturating_mul(sector))
        .map_err(|e| format!("reading the GPT entries: {e}"))?;
    if crc32fast::hash(&table) != u32_at(&header, 88) {
        return Err("the GPT entries' checksum is wrong (damaged table)".into());
    }
    let mut out = Vec::new();
    for (i, e) in table.chunks_exact(entry_size).enumerate() {
        if e[..16].iter().all(|&b| b == 0) {
            continue;
        }
        let (first, last) = (u64_at(e, 32), u64_at(e, 40));
        let offset = first.saturating_mul(sector);
        let end = last.saturating_add(1).saturating_mul(sector);
        if last < first || end > image_size {
            return Err(format!(
                "GPT partition {} lies outside the image (sectors {first}..{last})",
                i + 1
            ));
        }
        let name: Vec<u16> = e[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&c| c != 0)
            .collect();
        out.push(Entry {
            number: u32::try_from(i + 1).unwrap_or(u32::MAX),
            type_guid: guid(&e[..16]),
            offset,
            size: end - offset,
            attributes: u64_at(e, 48),
            label: String::from_utf16_lossy(&name),
        });
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_are_written_mixed_endian() {
        // The root type for x86-64, as it lies on disk.
        let raw = [
            0xe3, 0xbc, 0x68, 0x4f, 0xcd, 0xe8, 0xb1, 0x4d, 0x96, 0xe7, 0xfb, 0xca, 0xf9, 0x84,
            0xb7, 0x09,
        ];
        assert_eq!(guid(&raw), "4f68bce3-e8cd-4db1-96e7-fbcaf984b709");
        assert_eq!(designator(&guid(&raw)), Some(Designator::Root));
    }
}
