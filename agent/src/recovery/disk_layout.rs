//! What a volume holds, read from its first sectors without any tool: a
//! partition table (MBR or GPT) and, in each partition (or in the whole
//! volume when there is no table), which file system its superblock names.
//! `fs_check` then runs the file system's own checker on each region it
//! can check. Parsing only: the caller hands in a reader, so every branch
//! is unit-tested on bytes built here.
//!
//! Sectors are taken as 512 bytes, what every volume served over NBD or as
//! an iSCSI LUN here has. A table that contradicts itself (a partition past
//! the end of the volume, a GPT header whose CRC is wrong) is a finding,
//! not an error: a damaged table is what verification is for.

use super::RecoveryError;

type Result<T, E = RecoveryError> = std::result::Result<T, E>;

pub const SECTOR_BYTES: u64 = 512;
/// GPT allows more; 128 is what every partitioning tool writes.
const GPT_ENTRIES_MAX: u32 = 128;
const GPT_ENTRY_BYTES_MAX: u32 = 1024;
/// The MBR partition type that says "a GPT follows".
const MBR_PROTECTIVE: u8 = 0xee;
/// Extended partitions (CHS, LBA, Linux): logical partitions inside them
/// are not followed.
const MBR_EXTENDED: [u8; 3] = [0x05, 0x0f, 0x85];

/// One stretch of a volume that holds (or should hold) one file system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    /// "whole volume", "partition 2".
    pub name: String,
    pub offset: u64,
    pub bytes: u64,
}

/// How a volume is laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// No partition table: the volume itself is one region.
    Whole(Region),
    /// A partition table ("MBR" or "GPT") and its partitions.
    Table { kind: &'static str, regions: Vec<Region>, skipped: Vec<String> },
    /// A partition table that cannot be right.
    Damaged(String),
}

/// What a region's first bytes say it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileSystem {
    /// ext2, ext3 or ext4; `needs_recovery`: its journal was not replayed
    /// (the checkpoint was taken while it was mounted).
    Ext {
        needs_recovery: bool,
    },
    Xfs,
    /// Recognised, but no checker runs here.
    Unchecked(&'static str),
    /// Nothing but zeros where a superblock would be.
    Empty,
    Unknown,
}

impl FileSystem {
    pub fn name(&self) -> &'static str {
        match self {
            FileSystem::Ext { .. } => "ext4",
            FileSystem::Xfs => "XFS",
            FileSystem::Unchecked(name) => name,
            FileSystem::Empty => "empty (zeros)",
            FileSystem::Unknown => "unknown contents",
        }
    }
}

/// Reads `buf.len()` bytes at an offset of the volume.
pub type ReadAt<'a> = &'a dyn Fn(&mut [u8], u64) -> Result<()>;

fn read(read_at: ReadAt, offset: u64, len: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    read_at(&mut buf, offset)?;
    Ok(buf)
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// What the first bytes of a region hold (`head` is its first 64 KiB, or
/// all of it if it is smaller).
pub fn probe(head: &[u8]) -> FileSystem {
    let at = |offset: usize, magic: &[u8]| head.get(offset..offset + magic.len()) == Some(magic);
    if at(1024 + 56, &[0x53, 0xef]) {
        // s_feature_incompat, EXT3_FEATURE_INCOMPAT_RECOVER.
        let incompat = head.get(1024 + 0x60..1024 + 0x64).map_or(0, |b| le_u32(b, 0));
        return FileSystem::Ext { needs_recovery: incompat & 0x4 != 0 };
    }
    if at(0, b"XFSB") {
        return FileSystem::Xfs;
    }
    let known: [(usize, &[u8], &'static str); 8] = [
        (3, b"NTFS    ", "NTFS"),
        (0, b"LUKS\xba\xbe", "LUKS (encrypted)"),
        (512, b"LABELONE", "LVM physical volume"),
        (0x10040, b"_BHRfS_M", "btrfs"),
        (4086, b"SWAPSPACE2", "swap"),
        (3, b"-FVE-FS-", "BitLocker (encrypted)"),
        (82, b"FAT32   ", "FAT32"),
        (54, b"FAT1", "FAT"),
    ];
    if let Some((_, _, name)) = known.iter().find(|(offset, magic, _)| at(*offset, magic)) {
        return FileSystem::Unchecked(name);
    }
    if head.iter().all(|&b| b == 0) {
        return FileSystem::Empty;
    }
    FileSystem::Unknown
}

/// How many bytes `probe` looks at.
pub const PROBE_BYTES: u64 = 0x10048;

/// Reads the volume's partition table, if it has one. A volume whose start
/// already probes as a file system has none (a FAT or NTFS boot sector
/// carries the MBR's 0x55AA too).
pub fn layout(read_at: ReadAt, volume_bytes: u64) -> Result<Layout> {
    let whole = || Region { name: "whole volume".into(), offset: 0, bytes: volume_bytes };
    let head_len = PROBE_BYTES.min(volume_bytes) as usize;
    let head = read(read_at, 0, head_len)?;
    if !matches!(probe(&head), FileSystem::Unknown) || head.len() < 2 * SECTOR_BYTES as usize {
        return Ok(Layout::Whole(whole()));
    }
    let mbr = &head[..SECTOR_BYTES as usize];
    if mbr[510..512] != [0x55, 0xaa] {
        return Ok(Layout::Whole(whole()));
    }
    let entries: Vec<&[u8]> = (0..4).map(|i| &mbr[446 + 16 * i..446 + 16 * (i + 1)]).collect();
    if entries.iter().any(|e| e[4] == MBR_PROTECTIVE) {
        return gpt(read_at, &head[SECTOR_BYTES as usize..2 * SECTOR_BYTES as usize], volume_bytes);
    }
    let (mut regions, mut skipped) = (Vec::new(), Vec::new());
    for (i, e) in entries.iter().enumerate() {
        let (kind, start, sectors) = (e[4], le_u32(e, 8) as u64, le_u32(e, 12) as u64);
        let name = format!("partition {}", i + 1);
        if kind == 0 || sectors == 0 {
            continue;
        }
        if MBR_EXTENDED.contains(&kind) {
            skipped.push(format!("{name}: an extended partition (logical partitions are not checked)"));
            continue;
        }
        let bytes = sectors * SECTOR_BYTES;
        let Some(offset) = sectors_inside(start, bytes, volume_bytes).filter(|_| start > 0) else {
            return Ok(Layout::Damaged(format!(
                "MBR {name} (sectors {start}..{}) lies outside the volume ({volume_bytes} bytes)",
                start + sectors
            )));
        };
        regions.push(Region { name, offset, bytes });
    }
    Ok(Layout::Table { kind: "MBR", regions, skipped })
}

/// The byte offset of sector `first` when `bytes` from there fit inside
/// the volume; None when they do not (or the arithmetic would overflow).
fn sectors_inside(first: u64, bytes: u64, volume_bytes: u64) -> Option<u64> {
    let offset = first.checked_mul(SECTOR_BYTES)?;
    (offset.checked_add(bytes)? <= volume_bytes).then_some(offset)
}

/// The GPT whose header is `header` (LBA 1).
fn gpt(read_at: ReadAt, header: &[u8], volume_bytes: u64) -> Result<Layout> {
    if &header[..8] != b"EFI PART" {
        return Ok(Layout::Damaged("a protective MBR, but no GPT header at sector 1".into()));
    }
    let header_bytes = le_u32(header, 12) as usize;
    if !(92..=SECTOR_BYTES as usize).contains(&header_bytes) {
        return Ok(Layout::Damaged(format!("GPT header size {header_bytes} is not plausible")));
    }
    let mut copy = header[..header_bytes].to_vec();
    copy[16..20].fill(0);
    if crc32fast::hash(&copy) != le_u32(header, 16) {
        return Ok(Layout::Damaged("the GPT header's CRC does not match".into()));
    }
    let (entries_lba, count, entry_bytes) = (le_u64(header, 72), le_u32(header, 80), le_u32(header, 84));
    if count > GPT_ENTRIES_MAX || !(128..=GPT_ENTRY_BYTES_MAX).contains(&entry_bytes) || entry_bytes % 8 != 0 {
        return Ok(Layout::Damaged(format!("GPT lists {count} entries of {entry_bytes} bytes")));
    }
    let table_bytes = count as u64 * entry_bytes as u64;
    // Guest bytes: every product and sum is checked, never wrapped.
    let Some(table_at) = sectors_inside(entries_lba, table_bytes, volume_bytes).filter(|_| entries_lba >= 2) else {
        return Ok(Layout::Damaged(format!("the GPT's entries at sector {entries_lba} lie outside the volume")));
    };
    let table = read(read_at, table_at, table_bytes as usize)?;
    if crc32fast::hash(&table) != le_u32(header, 88) {
        return Ok(Layout::Damaged("the GPT partition entries' CRC does not match".into()));
    }
    let mut regions = Vec::new();
    for (i, e) in table.chunks(entry_bytes as usize).enumerate() {
        if e[..16].iter().all(|&b| b == 0) {
            continue;
        }
        let (first, last) = (le_u64(e, 32), le_u64(e, 40));
        let name = format!("partition {}", i + 1);
        let bytes = last.checked_sub(first).and_then(|n| n.checked_add(1)).and_then(|n| n.checked_mul(SECTOR_BYTES));
        let offset = bytes.and_then(|b| sectors_inside(first, b, volume_bytes));
        let (Some(offset), Some(bytes)) = (offset.filter(|_| first >= 2), bytes) else {
            return Ok(Layout::Damaged(format!(
                "GPT {name} (sectors {first}..={last}) lies outside the volume ({volume_bytes} bytes)"
            )));
        };
        regions.push(Region { name, offset, bytes });
    }
    Ok(Layout::Table { kind: "GPT", regions, skipped: Vec::new() })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn reader(disk: &[u8]) -> impl Fn(&mut [u8], u64) -> Result<()> + '_ {
        move |buf: &mut [u8], offset: u64| {
            buf.copy_from_slice(&disk[offset as usize..offset as usize + buf.len()]);
            Ok(())
        }
    }

    fn ext_superblock(disk: &mut [u8], at: usize, recover: bool) {
        disk[at + 1024 + 56..at + 1024 + 58].copy_from_slice(&[0x53, 0xef]);
        disk[at + 1024 + 0x60] = if recover { 0x46 } else { 0x42 };
    }

    fn mbr_entry(disk: &mut [u8], i: usize, kind: u8, start: u32, sectors: u32) {
        let e = 446 + 16 * i;
        disk[e + 4] = kind;
        disk[e + 8..e + 12].copy_from_slice(&start.to_le_bytes());
        disk[e + 12..e + 16].copy_from_slice(&sectors.to_le_bytes());
        disk[510..512].copy_from_slice(&[0x55, 0xaa]);
    }

    /// A GPT with `parts` (first, last sector) at LBA 1, entries at LBA 2.
    fn gpt_disk(size: usize, parts: &[(u64, u64)]) -> Vec<u8> {
        let mut disk = vec![0u8; size];
        mbr_entry(&mut disk, 0, MBR_PROTECTIVE, 1, (size / 512 - 1) as u32);
        let mut table = vec![0u8; 128 * 128];
        for (i, (first, last)) in parts.iter().enumerate() {
            let e = &mut table[i * 128..(i + 1) * 128];
            e[..16].copy_from_slice(&[0x0f; 16]);
            e[32..40].copy_from_slice(&first.to_le_bytes());
            e[40..48].copy_from_slice(&last.to_le_bytes());
        }
        disk[1024..1024 + table.len()].copy_from_slice(&table);
        let h = &mut disk[512..1024];
        h[..8].copy_from_slice(b"EFI PART");
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[72..80].copy_from_slice(&2u64.to_le_bytes());
        h[80..84].copy_from_slice(&128u32.to_le_bytes());
        h[84..88].copy_from_slice(&128u32.to_le_bytes());
        h[88..92].copy_from_slice(&crc32fast::hash(&table).to_le_bytes());
        let crc = crc32fast::hash(&h[..92]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        disk
    }

    #[test]
    fn a_file_system_on_the_whole_volume_has_no_table() {
        let mut disk = vec![0u8; 4 * MIB as usize];
        ext_superblock(&mut disk, 0, false);
        let found = layout(&reader(&disk), disk.len() as u64).unwrap();
        assert_eq!(found, Layout::Whole(Region { name: "whole volume".into(), offset: 0, bytes: 4 * MIB }));
        assert_eq!(probe(&disk), FileSystem::Ext { needs_recovery: false });
        ext_superblock(&mut disk, 0, true);
        assert_eq!(probe(&disk), FileSystem::Ext { needs_recovery: true });
        // An NTFS boot sector carries 0x55AA but is not a partition table.
        let mut ntfs = vec![0u8; MIB as usize];
        ntfs[3..11].copy_from_slice(b"NTFS    ");
        mbr_entry(&mut ntfs, 0, 0x07, 0x1234_5678, 0x7fff_ffff);
        assert!(matches!(layout(&reader(&ntfs), MIB).unwrap(), Layout::Whole(_)));
        assert_eq!(probe(&ntfs), FileSystem::Unchecked("NTFS"));
        assert_eq!(probe(&vec![0u8; 70_000]), FileSystem::Empty);
    }

    #[test]
    fn mbr_partitions_are_found_and_ones_outside_the_volume_are_damage() {
        let mut disk = vec![0u8; 8 * MIB as usize];
        mbr_entry(&mut disk, 0, 0x83, 2048, 4096);
        mbr_entry(&mut disk, 1, 0x05, 8192, 2048);
        let Layout::Table { kind, regions, skipped } = layout(&reader(&disk), 8 * MIB).unwrap() else { panic!() };
        assert_eq!(kind, "MBR");
        assert_eq!(regions, [Region { name: "partition 1".into(), offset: MIB, bytes: 2 * MIB }]);
        assert_eq!(skipped.len(), 1, "{skipped:?}");
        mbr_entry(&mut disk, 2, 0x83, 10_000, 10_000);
        assert!(matches!(layout(&reader(&disk), 8 * MIB).unwrap(), Layout::Damaged(m) if m.contains("partition 3")));
    }

    #[test]
    fn gpt_partitions_are_found_and_a_bad_crc_is_damage() {
        let disk = gpt_disk(8 * MIB as usize, &[(2048, 6143), (6144, 16383)]);
        let Layout::Table { kind, regions, .. } = layout(&reader(&disk), 8 * MIB).unwrap() else { panic!() };
        assert_eq!(kind, "GPT");
        assert_eq!(regions[0], Region { name: "partition 1".into(), offset: MIB, bytes: 2 * MIB });
        assert_eq!(regions[1].offset + regions[1].bytes, 8 * MIB);
        let mut bad = disk.clone();
        bad[1024 + 40] ^= 1;
        assert!(matches!(layout(&reader(&bad), 8 * MIB).unwrap(), Layout::Damaged(m) if m.contains("entries' CRC")));
        let mut bad = disk.clone();
        bad[512 + 80] = 200;
        assert!(matches!(layout(&reader(&bad), 8 * MIB).unwrap(), Layout::Damaged(m) if m.contains("header's CRC")));
        let outside = gpt_disk(8 * MIB as usize, &[(2048, 16384)]);
        assert!(matches!(layout(&reader(&outside), 8 * MIB).unwrap(), Layout::Damaged(m) if m.contains("outside")));
        // Sector numbers whose byte offsets overflow u64 are damage, never
        // a wrapped region inside the volume (or a panic).
        for (first, last) in
            [(2048, (1u64 << 55) - 1), (2048, u64::MAX), (u64::MAX, u64::MAX), ((1 << 55) + 2, (1 << 55) + 4)]
        {
            let crafted = gpt_disk(8 * MIB as usize, &[(first, last)]);
            assert!(
                matches!(layout(&reader(&crafted), 8 * MIB).unwrap(), Layout::Damaged(m) if m.contains("outside")),
                "{first}..={last}"
            );
        }
        let mut crafted = disk.clone();
        crafted[512 + 72..512 + 80].copy_from_slice(&((1u64 << 55) + 2).to_le_bytes());
        crafted[512 + 16..512 + 20].fill(0);
        let crc = crc32fast::hash(&crafted[512..512 + 92]);
        crafted[512 + 16..512 + 20].copy_from_slice(&crc.to_le_bytes());
        assert!(
            matches!(layout(&reader(&crafted), 8 * MIB).unwrap(), Layout::Damaged(m) if m.contains("entries at sector"))
        );
    }
}
