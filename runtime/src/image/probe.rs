//! Which filesystem starts at an offset of an image: the superblock magics
//! of the filesystems nspawn mounts from images (ext2/3/4, btrfs, xfs,
//! squashfs, erofs; vfat for the ESP and XBOOTLDR partitions).
//!
//! Hand-written rather than libblkid (a C library and its bindings): we
//! need one answer for six formats, each a magic number at a fixed offset.

use std::fs::File;
use std::os::unix::fs::FileExt;

/// A filesystem type as the kernel names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsType {
    Ext4,
    Btrfs,
    Xfs,
    Squashfs,
    Erofs,
    Vfat,
}

impl FsType {
    pub fn kernel_name(self) -> &'static str {
        match self {
            FsType::Ext4 => "ext4",
            FsType::Btrfs => "btrfs",
            FsType::Xfs => "xfs",
            FsType::Squashfs => "squashfs",
            FsType::Erofs => "erofs",
            FsType::Vfat => "vfat",
        }
    }

    /// Filesystems that can only be mounted read-only.
    pub fn read_only(self) -> bool {
        matches!(self, FsType::Squashfs | FsType::Erofs)
    }
}

fn read_at(file: &File, offset: u64, buf: &mut [u8]) -> bool {
    file.read_exact_at(buf, offset).is_ok()
}

/// The filesystem whose superblock is at `offset`, if we know it.
pub fn probe(file: &File, offset: u64) -> Option<FsType> {
    let mut b = [0u8; 8];
    // ext2/3/4: s_magic 0xEF53 at 1024 + 56.
    if read_at(file, offset + 1080, &mut b[..2]) && b[..2] == [0x53, 0xEF] {
        return Some(FsType::Ext4);
    }
    // btrfs: "_BHRfS_M" at 64 KiB + 64.
    if read_at(file, offset + 0x10040, &mut b) && &b == b"_BHRfS_M" {
        return Some(FsType::Btrfs);
    }
    if read_at(file, offset, &mut b[..4]) {
        match &b[..4] {
            b"XFSB" => return Some(FsType::Xfs),
            b"hsqs" => return Some(FsType::Squashfs),
            _ => {}
        }
    }
    // erofs: 0xE0F5E1E2 (little-endian) at 1024.
    if read_at(file, offset + 1024, &mut b[..4]) && b[..4] == [0xE2, 0xE1, 0xF5, 0xE0] {
        return Some(FsType::Erofs);
    }
    // FAT: the boot sector's 0x55AA and a FAT type string.
    let mut sector = [0u8; 512];
    if read_at(file, offset, &mut sector)
        && sector[510..512] == [0x55, 0xAA]
        && (&sector[54..59] == b"FAT12"
            || &sector[54..59] == b"FAT16"
            || &sector[82..87] == b"FAT32")
    {
        return Some(FsType::Vfat);
    }
    None
}
