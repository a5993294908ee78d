//! The activity log: which coarse extents of a VPG's volumes may hold writes
//! that are not yet durable in both places they go, the volume and the
//! protected log (DRBD's activity-log idea).
//!
//! A write is logged (page cache), then written to the volume (page cache);
//! either can reach the disk first, and a power cut can leave the volume
//! without logged writes or with writes whose records were lost. So before
//! a write touches an extent, the extent is marked here durably (one small
//! append and fdatasync the first time an extent is touched after an
//! epoch). An *epoch* fsyncs the volumes and the log, then rewrites this
//! file with only the extents written since. After a power cut, every
//! marked extent is read again from the volume and appended to the stream,
//! so the recovery side ends equal to what the volume holds.
//!
//! A process kill keeps the page cache: then only the newest record's range
//! can differ (`LogOpenReport::last_update`). The boot id in the header
//! tells the two apart.
//!
//! File (little endian): header `magic [u8;8] "TMACTLOG", version u32,
//! flags u32, boot_id [u8;16], durable_through u64, reserved u32, crc u32`
//! (crc32 of the 44 bytes before it), then entries `volume u32,
//! extent u32, crc u32`. The header is only ever replaced whole
//! (`durable::replace_file`); entries are appended, a torn last one ignored
//! (its write never started: a write waits for its entry's fdatasync).

use crate::durable::{replace_file, FileMode};
use anyhow::{Context, Result};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Granularity of the activity log.
pub const ACTIVITY_EXTENT_BYTES: u64 = 4 << 20;
/// Extents marked before an epoch is forced (1 GiB of volume re-read at
/// most after a power cut).
pub const ACTIVITY_EXTENTS_MAX: usize = 256;
const ACTIVITY_FILE: &str = "activity.log";
const MAGIC: &[u8; 8] = b"TMACTLOG";
const VERSION: u32 = 1;
const HEADER_BYTES: usize = 48;
const ENTRY_BYTES: usize = 12;
/// Set when a write's outcome on its volume is unknown: the next start
/// re-reads every marked extent even on the same boot.
const FLAG_RESYNC: u32 = 1;

/// (volume, extent index)
pub type Extent = (u32, u32);

/// What the file said when it was opened.
#[derive(Debug, Default)]
pub struct ActivityFound {
    /// Extents whose writes may differ between volume and log: to be read
    /// again from the volume. Empty after a clean stop or a process kill.
    pub unclean: Vec<Extent>,
    /// Why they are unclean ("the machine restarted", ...).
    pub why: Option<String>,
    /// The log was fsynced through this seq at the last epoch (0: unknown).
    pub durable_through: u64,
    /// The file was unreadable: nothing is known, everything must be
    /// compared again.
    pub unknown: bool,
}

pub struct ActivityLog {
    path: PathBuf,
    file: File,
    boot_id: [u8; 16],
    /// Marked extents, with the generation of the last write to each.
    marked: HashMap<Extent, u64>,
    generation: u64,
    /// A write's outcome is unknown: kept through epochs until a restart.
    resync_required: bool,
}

impl ActivityLog {
    pub fn open(dir: &Path) -> Result<(ActivityLog, ActivityFound)> {
        let path = dir.join(ACTIVITY_FILE);
        let boot_id = current_boot_id();
        let mut found = ActivityFound::default();
        let mut marked = HashMap::new();
        match std::fs::read(&path) {
            Ok(bytes) => match parse(&bytes) {
                Some((header, extents)) => {
                    found.durable_through = header.durable_through;
                    let why = if header.flags & FLAG_RESYNC != 0 {
                        Some("a write failed on its volume")
                    } else if header.boot_id != boot_id {
                        Some("the machine restarted without a clean stop (power cut or crash)")
                    } else {
                        None
                    };
                    if let Some(why) = why.filter(|_| !extents.is_empty()) {
                        found.unclean = extents.clone();
                        found.why = Some(why.to_string());
                    }
                    marked = extents.into_iter().map(|e| (e, 0)).collect();
                }
                None => {
                    tracing::error!("{} is unreadable: every volume is compared again", path.display());
                    found.unknown = true;
                    found.why = Some(format!("{} is unreadable", path.display()));
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        }
        let write_fresh = found.unknown || !path.exists();
        if write_fresh {
            replace_file(&path, &header_bytes(&boot_id, 0, found.durable_through), FileMode::Public)?;
        }
        // Until an epoch after the resync, the file keeps its header (and
        // so says "unclean" again if this run stops before then).
        let file =
            OpenOptions::new().append(true).open(&path).with_context(|| format!("opening {}", path.display()))?;
        let log = ActivityLog { path, file, boot_id, marked, generation: 1, resync_required: false };
        Ok((log, found))
    }

    /// Marks every extent `[offset, offset + length)` of `volume` touches,
    /// durably, before a write to it. No I/O for extents already marked.
    pub fn mark(&mut self, volume: u32, offset: u64, length: u64) -> Result<()> {
        self.generation += 1;
        let mut new = Vec::new();
        for extent in extents_of(offset, length) {
            match self.marked.get_mut(&(volume, extent)) {
                Some(generation) => *generation = self.generation,
                None => new.push((volume, extent)),
            }
        }
        if new.is_empty() {
            return Ok(());
        }
        let mut bytes = Vec::with_capacity(new.len() * ENTRY_BYTES);
        for e in &new {
            bytes.extend_from_slice(&entry_bytes(*e));
        }
        self.file
            .write_all(&bytes)
            .and_then(|()| self.file.sync_data())
            .with_context(|| format!("marking {} extents active in {}", new.len(), self.path.display()))?;
        for e in new {
            self.marked.insert(e, self.generation);
        }
        Ok(())
    }

    /// Marking `[offset, offset + length)` of `volume` would add extents
    /// beyond the limit: an epoch must come first.
    pub fn would_overflow(&self, volume: u32, offset: u64, length: u64) -> bool {
        let new = extents_of(offset, length).filter(|e| !self.marked.contains_key(&(volume, *e))).count();
        new > 0 && self.marked.len() + new > ACTIVITY_EXTENTS_MAX
    }

    pub fn marked_count(&self) -> usize {
        self.marked.len()
    }

    /// The generation of the newest mark (for `finish_epoch`).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The volumes and the log were fsynced through `durable_through`,
    /// holding every write marked up to generation `upto`: only extents
    /// written since stay marked. `resync_done` after a start's re-reading
    /// of unclean extents (its header said unclean until now).
    pub fn finish_epoch(&mut self, durable_through: u64, upto: u64, resync_done: bool) -> Result<()> {
        // While a failed write awaits its resync, every mark stays.
        let keep_all = self.resync_required && !resync_done;
        let keep: Vec<Extent> = self.marked.iter().filter(|(_, g)| keep_all || **g > upto).map(|(e, _)| *e).collect();
        let flags = if keep_all { FLAG_RESYNC } else { 0 };
        let mut bytes = header_bytes(&self.boot_id, flags, durable_through).to_vec();
        for e in &keep {
            bytes.extend_from_slice(&entry_bytes(*e));
        }
        replace_file(&self.path, &bytes, FileMode::Public)?;
        self.file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .with_context(|| format!("opening {}", self.path.display()))?;
        self.marked.retain(|_, g| keep_all || *g > upto);
        Ok(())
    }

    /// A write's outcome on its volume is unknown: the next start must read
    /// every marked extent again, even if the machine did not restart.
    pub fn require_resync(&mut self) -> Result<()> {
        self.resync_required = true;
        let mut bytes = header_bytes(&self.boot_id, FLAG_RESYNC, 0).to_vec();
        for e in self.marked.keys() {
            bytes.extend_from_slice(&entry_bytes(*e));
        }
        replace_file(&self.path, &bytes, FileMode::Public)?;
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        Ok(())
    }
}

/// The byte range of an extent.
pub fn extent_range(extent: u32) -> (u64, u64) {
    (extent as u64 * ACTIVITY_EXTENT_BYTES, ACTIVITY_EXTENT_BYTES)
}

fn extents_of(offset: u64, length: u64) -> impl Iterator<Item = u32> {
    let first = offset / ACTIVITY_EXTENT_BYTES;
    let last = (offset + length.max(1) - 1) / ACTIVITY_EXTENT_BYTES;
    (first..=last).map(|e| u32::try_from(e).expect("volumes are under 16 PiB"))
}

struct Header {
    flags: u32,
    boot_id: [u8; 16],
    durable_through: u64,
}

fn header_bytes(boot_id: &[u8; 16], flags: u32, durable_through: u64) -> [u8; HEADER_BYTES] {
    let mut h = [0u8; HEADER_BYTES];
    h[0..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&flags.to_le_bytes());
    h[16..32].copy_from_slice(boot_id);
    h[32..40].copy_from_slice(&durable_through.to_le_bytes());
    let crc = crc32fast::hash(&h[..44]);
    h[44..48].copy_from_slice(&crc.to_le_bytes());
    h
}

fn entry_bytes((volume, extent): Extent) -> [u8; ENTRY_BYTES] {
    let mut e = [0u8; ENTRY_BYTES];
    e[0..4].copy_from_slice(&volume.to_le_bytes());
    e[4..8].copy_from_slice(&extent.to_le_bytes());
    let crc = crc32fast::hash(&e[..8]);
    e[8..12].copy_from_slice(&crc.to_le_bytes());
    e
}

/// The header and the whole entries; None if the header is not good.
fn parse(bytes: &[u8]) -> Option<(Header, Vec<Extent>)> {
    let h = bytes.get(..HEADER_BYTES)?;
    let u32_at = |b: &[u8], i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4"));
    if &h[0..8] != MAGIC || u32_at(h, 8) != VERSION || crc32fast::hash(&h[..44]) != u32_at(h, 44) {
        return None;
    }
    let header = Header {
        flags: u32_at(h, 12),
        boot_id: h[16..32].try_into().expect("16"),
        durable_through: u64::from_le_bytes(h[32..40].try_into().expect("8")),
    };
    let mut extents = Vec::new();
    for e in bytes[HEADER_BYTES..].chunks_exact(ENTRY_BYTES) {
        if crc32fast::hash(&e[..8]) != u32_at(e, 8) {
            break;
        }
        extents.push((u32_at(e, 0), u32_at(e, 4)));
    }
    extents.sort_unstable();
    extents.dedup();
    Some((header, extents))
}

/// This boot's id (the kernel's random boot_id); a random one if it cannot
/// be read, so that every start then counts as after a power cut.
fn current_boot_id() -> [u8; 16] {
    let text = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let digits: Vec<u8> = text.bytes().filter(u8::is_ascii_hexdigit).collect();
    let mut id = [0u8; 16];
    if digits.len() == 32 {
        for (b, pair) in id.iter_mut().zip(digits.chunks_exact(2)) {
            let hex = std::str::from_utf8(pair).expect("ascii");
            *b = u8::from_str_radix(hex, 16).expect("hex digits");
        }
    } else {
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id).expect("system randomness");
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reopen(dir: &Path) -> (ActivityLog, ActivityFound) {
        ActivityLog::open(dir).unwrap()
    }

    #[test]
    fn marks_survive_and_an_epoch_keeps_only_newer_writes() {
        let dir = tempfile::tempdir().unwrap();
        let (mut al, found) = reopen(dir.path());
        assert!(found.unclean.is_empty() && !found.unknown);
        al.mark(0, 0, 4096).unwrap();
        al.mark(1, ACTIVITY_EXTENT_BYTES - 1, 2).unwrap(); // two extents
        let upto = al.generation();
        al.mark(0, 10 * ACTIVITY_EXTENT_BYTES, 1).unwrap();
        assert_eq!(al.marked_count(), 4);
        // Same boot: nothing is unclean, but the marks are kept.
        let (al2, found) = reopen(dir.path());
        assert!(found.unclean.is_empty());
        assert_eq!(al2.marked_count(), 4);
        drop(al2);
        al.finish_epoch(77, upto, false).unwrap();
        assert_eq!(al.marked_count(), 1);
        let (_, found) = reopen(dir.path());
        assert_eq!(found.durable_through, 77);
    }

    #[test]
    fn another_boot_makes_every_marked_extent_unclean() {
        let dir = tempfile::tempdir().unwrap();
        let (mut al, _) = reopen(dir.path());
        al.mark(2, 5 * ACTIVITY_EXTENT_BYTES, 100).unwrap();
        drop(al);
        // As if written on another boot.
        let path = dir.path().join(ACTIVITY_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[..HEADER_BYTES].copy_from_slice(&header_bytes(&[9; 16], 0, 5));
        // And a torn last entry, which never guarded a write.
        bytes.extend_from_slice(&entry_bytes((3, 3))[..7]);
        std::fs::write(&path, &bytes).unwrap();
        let (mut al, found) = reopen(dir.path());
        assert_eq!(found.unclean, vec![(2, 5)]);
        assert!(found.why.unwrap().contains("restarted"));
        // Still unclean until an epoch after the resync.
        let (_, again) = reopen(dir.path());
        assert_eq!(again.unclean, vec![(2, 5)]);
        let upto = al.generation();
        al.finish_epoch(9, upto, true).unwrap();
        let (_, found) = reopen(dir.path());
        assert!(found.unclean.is_empty());
    }

    #[test]
    fn a_failed_write_asks_for_a_resync_on_the_same_boot() {
        let dir = tempfile::tempdir().unwrap();
        let (mut al, _) = reopen(dir.path());
        al.mark(0, 0, 1).unwrap();
        al.require_resync().unwrap();
        // An ordinary epoch does not clear the request.
        al.mark(0, ACTIVITY_EXTENT_BYTES, 1).unwrap();
        let upto = al.generation();
        al.finish_epoch(3, upto, false).unwrap();
        let (_, found) = reopen(dir.path());
        assert_eq!(found.unclean, vec![(0, 0), (0, 1)], "the failed write's extent is kept");
        assert!(found.why.unwrap().contains("write failed"));
    }

    #[test]
    fn an_unreadable_file_means_nothing_is_known() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(ACTIVITY_FILE), b"garbage").unwrap();
        let (_, found) = reopen(dir.path());
        assert!(found.unknown);
        let (_, found) = reopen(dir.path());
        assert!(!found.unknown, "rewritten whole after the first open");
    }
}
