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
//! File: a slot file (`crate::slot_file`, rewritten in place: a full disk
//! still takes a mark), whose payload is (little endian) a header `magic
//! [u8;8] "TMACTLOG", version u32, flags u32, boot_id [u8;16],
//! durable_through u64, reserved u32, crc u32` (crc32 of the 44 bytes
//! before it), then entries `volume u32, extent u32, crc u32`. Each mark
//! writes the whole payload again; a write waits for it. A file from
//! before slot files is that payload alone (entries were appended, a torn
//! last one ignored): it is read, and replaced by a slot file at the
//! first write.

use super::error::CaptureError;
use crate::slot_file::{Contents, SlotFile};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

type Result<T, E = CaptureError> = std::result::Result<T, E>;

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
/// Slots with room for eight times the marks an epoch allows, so the file
/// is rewritten in place while every mark is kept for a while (a start's
/// marks until its first epoch). More marks make a larger file.
const SLOT_MIN: u64 = (HEADER_BYTES + 8 * ACTIVITY_EXTENTS_MAX * ENTRY_BYTES) as u64 + 64;
/// The marked extents must be read again at the next start, even on the
/// same boot: a start's re-reading is not done yet, or a write's outcome on
/// its volume is unknown.
const FLAG_RESYNC: u32 = 1;
/// Nothing is known (the file was unreadable, or the log lost records it
/// had made durable): the next start begins a new stream and its copy.
const FLAG_NEW_STREAM: u32 = 2;

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
    /// Nothing is known: a new stream (and its copy) must start.
    pub unknown: bool,
}

/// The header of the file on disk, as last written.
#[derive(Clone, Copy)]
struct Header {
    flags: u32,
    boot_id: [u8; 16],
    durable_through: u64,
}

pub struct ActivityLog {
    path: PathBuf,
    /// None until the file is a slot file (missing, unreadable, or from
    /// before slot files): the next write makes it one.
    file: Option<SlotFile>,
    boot_id: [u8; 16],
    /// What the file's header says now.
    header: Header,
    /// Marked extents, with the generation of the last write to each.
    marked: HashMap<Extent, u64>,
    generation: u64,
    /// The extents found unclean at open are not read again yet.
    start_resync_pending: bool,
    /// A write's outcome on its volume is unknown (until a restart).
    write_failed: bool,
    /// The generation at which bitmap mode last began (`use_map`): an
    /// epoch planned before it must not clear the resync flag, whatever
    /// its plan said.
    map_since: u64,
}

impl ActivityLog {
    pub fn open(dir: &Path) -> Result<(ActivityLog, ActivityFound)> {
        let path = dir.join(ACTIVITY_FILE);
        let boot_id = current_boot_id();
        let mut found = ActivityFound::default();
        let mut marked = HashMap::new();
        let mut header = Header { flags: 0, boot_id, durable_through: 0 };
        let mut write_fresh = false;
        let (contents, file) = SlotFile::open(&path)?;
        let bytes = match contents {
            Contents::Missing => None,
            Contents::Slots(bytes) | Contents::Other(bytes) => Some(bytes),
            // Read as unreadable below.
            Contents::Damaged(_) => Some(Vec::new()),
        };
        match bytes {
            Some(bytes) => match parse(&bytes) {
                Some((on_disk, extents)) => {
                    header = on_disk;
                    found.durable_through = on_disk.durable_through;
                    let why = if on_disk.flags & FLAG_RESYNC != 0 {
                        Some("bitmap mode, the previous start's re-reading, or a failed volume write, is unfinished")
                    } else if on_disk.boot_id != boot_id {
                        Some("the machine restarted without a clean stop (power cut or crash)")
                    } else {
                        None
                    };
                    if on_disk.flags & FLAG_NEW_STREAM != 0 {
                        found.unknown = true;
                        found.why = Some("a new stream was due and has not been started yet".into());
                    } else if let Some(why) = why.filter(|_| !extents.is_empty()) {
                        found.unclean = extents.clone();
                        found.why = Some(why.to_string());
                    }
                    marked = extents.into_iter().map(|e| (e, 0)).collect();
                }
                None => {
                    tracing::error!("{} is unreadable: every volume is copied again", path.display());
                    found.unknown = true;
                    found.why = Some(format!("{} is unreadable", path.display()));
                    header = Header { flags: FLAG_NEW_STREAM, boot_id, durable_through: 0 };
                    write_fresh = true;
                }
            },
            None => write_fresh = true,
        }
        let start_resync_pending = !found.unclean.is_empty() || found.unknown;
        let mut log = ActivityLog {
            path,
            file,
            boot_id,
            header,
            marked,
            generation: 1,
            start_resync_pending,
            write_failed: false,
            map_since: 0,
        };
        // Until an epoch after the start's work, the file keeps its header
        // (and so says "unclean" again if this run stops before then).
        if write_fresh {
            log.rewrite()?;
        }
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
        for e in &new {
            self.marked.insert(*e, self.generation);
        }
        if let Err(e) = self.rewrite() {
            // Not marked durably: the write it guards does not happen.
            for e in &new {
                self.marked.remove(e);
            }
            return Err(e);
        }
        Ok(())
    }

    /// Marking `[offset, offset + length)` of `volume` would add extents
    /// beyond the limit: an epoch must come first. Never while marks must
    /// all be kept (then the log grows instead).
    pub fn would_overflow(&self, volume: u32, offset: u64, length: u64) -> bool {
        if self.keeps_every_mark() {
            return false;
        }
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

    fn keeps_every_mark(&self) -> bool {
        self.write_failed || self.start_resync_pending
    }

    /// The volumes and the log were fsynced through `durable_through`,
    /// holding every write marked up to generation `upto`: only extents
    /// written since stay marked. `start_work_done` once a start's work
    /// (re-reading unclean extents, or a new stream) is durable; until
    /// then, and while a failed write awaits a restart, every mark stays
    /// and the file asks the next start to re-read them.
    /// `map_in_use`: the dirty map, stored before this call, covers every
    /// unlogged write up to `upto`; the file keeps asking the next start to
    /// read the extents marked after it again (see `use_map`). So does a
    /// `use_map` after generation `upto`, whatever `map_in_use` says.
    pub fn finish_epoch(
        &mut self,
        durable_through: u64,
        upto: u64,
        start_work_done: bool,
        map_in_use: bool,
    ) -> Result<()> {
        if start_work_done {
            self.start_resync_pending = false;
        }
        let map_in_use = map_in_use || self.map_since > upto;
        let keep_all = self.keeps_every_mark();
        self.marked.retain(|_, g| keep_all || *g > upto);
        let new_stream = if start_work_done { 0 } else { self.header.flags & FLAG_NEW_STREAM };
        let flags = if keep_all || map_in_use { FLAG_RESYNC } else { 0 } | new_stream;
        self.header = Header { flags, boot_id: self.boot_id, durable_through };
        self.rewrite()
    }

    /// The next start must read `ranges` of the volumes again, even on the
    /// same boot (the newest record's range after a process kill): they
    /// are marked, durably, before the exports are served.
    pub fn require_start_resync(&mut self, ranges: &[(u32, u64, u64)]) -> Result<()> {
        for (volume, offset, length) in ranges {
            for extent in extents_of(*offset, *length) {
                self.marked.entry((*volume, extent)).or_insert(0);
            }
        }
        self.start_resync_pending = true;
        self.header.flags |= FLAG_RESYNC;
        self.rewrite()
    }

    /// The next start must begin a new stream (the log lost records it had
    /// made durable): said durably before anything else happens.
    pub fn require_new_stream(&mut self) -> Result<()> {
        self.start_resync_pending = true;
        self.header.flags |= FLAG_NEW_STREAM;
        self.rewrite()
    }

    /// A write's outcome on its volume is unknown: the next start must read
    /// every marked extent again, even if the machine did not restart.
    pub fn require_resync(&mut self) -> Result<()> {
        self.write_failed = true;
        self.header.flags |= FLAG_RESYNC;
        self.rewrite()
    }

    /// Bitmap mode begins: from now on every extent marked is read again
    /// at the next start, whatever kind of stop it was. Durable before the
    /// first write that is not logged.
    /// Always rewrites: the header in memory may be ahead of the file (a
    /// failed rewrite), and this is rare (once per switch).
    pub fn use_map(&mut self) -> Result<()> {
        self.generation += 1;
        self.map_since = self.generation;
        self.header.flags |= FLAG_RESYNC;
        self.rewrite()
    }

    /// Writes the header and every mark, durably, in place of what the
    /// file held (a slot file: no new block once it is one).
    fn rewrite(&mut self) -> Result<()> {
        let mut bytes = header_bytes(&self.header).to_vec();
        for e in self.marked.keys() {
            bytes.extend_from_slice(&entry_bytes(*e));
        }
        match &mut self.file {
            Some(file) => file.write(&bytes)?,
            None => self.file = Some(SlotFile::create(&self.path, &bytes, SLOT_MIN)?),
        }
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

fn header_bytes(header: &Header) -> [u8; HEADER_BYTES] {
    let mut h = [0u8; HEADER_BYTES];
    h[0..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&header.flags.to_le_bytes());
    h[16..32].copy_from_slice(&header.boot_id);
    h[32..40].copy_from_slice(&header.durable_through.to_le_bytes());
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

    /// Gives the file the header another boot would have left, and
    /// `extra` bytes after its entries.
    fn as_if_on_another_boot(dir: &Path, durable_through: u64, extra: &[u8]) {
        let path = dir.join(ACTIVITY_FILE);
        let (Contents::Slots(mut bytes), Some(mut file)) = SlotFile::open(&path).unwrap() else {
            panic!("not a slot file")
        };
        let header = Header { flags: 0, boot_id: [9; 16], durable_through };
        bytes[..HEADER_BYTES].copy_from_slice(&header_bytes(&header));
        bytes.extend_from_slice(extra);
        file.write(&bytes).unwrap();
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
        al.finish_epoch(77, upto, false, false).unwrap();
        assert_eq!(al.marked_count(), 1);
        let (_, found) = reopen(dir.path());
        assert_eq!(found.durable_through, 77);
    }

    #[test]
    fn in_bitmap_mode_a_kill_reads_the_marks_since_the_maps_store_again() {
        let dir = tempfile::tempdir().unwrap();
        let (mut al, _) = reopen(dir.path());
        al.mark(0, 0, 4096).unwrap();
        al.use_map().unwrap();
        // A kill now (same boot): the extent marked before is read again.
        assert_eq!(reopen(dir.path()).1.unclean, vec![(0, 0)]);
        let upto = al.generation();
        al.mark(0, 3 * ACTIVITY_EXTENT_BYTES, 1).unwrap();
        // The map was stored through `upto`: only the newer mark is left,
        // and a kill still reads it again.
        al.finish_epoch(8, upto, true, true).unwrap();
        assert_eq!(reopen(dir.path()).1.unclean, vec![(0, 3)]);
        // Back to logging: a kill reads nothing again.
        let upto = al.generation();
        al.finish_epoch(9, upto, true, false).unwrap();
        let (_, found) = reopen(dir.path());
        assert!(found.unclean.is_empty() && found.why.is_none());
    }

    #[test]
    fn an_epoch_planned_before_bitmap_mode_keeps_its_flag() {
        let dir = tempfile::tempdir().unwrap();
        let (mut al, _) = reopen(dir.path());
        al.mark(0, 0, 4096).unwrap();
        // Planned while logging ...
        let upto = al.generation();
        // ... then bitmap mode begins and a write is marked ...
        al.use_map().unwrap();
        al.mark(0, 5 * ACTIVITY_EXTENT_BYTES, 1).unwrap();
        // ... and the epoch finishes as planned: a kill still finds it.
        al.finish_epoch(3, upto, true, false).unwrap();
        assert_eq!(reopen(dir.path()).1.unclean, vec![(0, 5)]);
    }

    #[test]
    fn another_boot_makes_every_marked_extent_unclean() {
        let dir = tempfile::tempdir().unwrap();
        let (mut al, _) = reopen(dir.path());
        al.mark(2, 5 * ACTIVITY_EXTENT_BYTES, 100).unwrap();
        drop(al);
        // And a torn last entry (a file from before slot files), which
        // never guarded a write.
        as_if_on_another_boot(dir.path(), 5, &entry_bytes((3, 3))[..7]);
        let (mut al, found) = reopen(dir.path());
        assert_eq!(found.unclean, vec![(2, 5)]);
        assert!(found.why.unwrap().contains("restarted"));
        // Still unclean until an epoch after the resync.
        let (_, again) = reopen(dir.path());
        assert_eq!(again.unclean, vec![(2, 5)]);
        let upto = al.generation();
        al.finish_epoch(9, upto, true, false).unwrap();
        let (_, found) = reopen(dir.path());
        assert!(found.unclean.is_empty());
    }

    #[test]
    fn a_failed_write_asks_for_a_resync_on_the_same_boot() {
        let dir = tempfile::tempdir().unwrap();
        let (mut al, _) = reopen(dir.path());
        al.mark(0, 0, 1).unwrap();
        al.require_resync().unwrap();
        // No epoch forgets a mark until the restart.
        al.mark(0, ACTIVITY_EXTENT_BYTES, 1).unwrap();
        let upto = al.generation();
        al.finish_epoch(3, upto, false, false).unwrap();
        let (_, found) = reopen(dir.path());
        assert_eq!(found.unclean, vec![(0, 0), (0, 1)], "the failed write's extent is kept");
        assert!(found.why.unwrap().contains("failed volume write"));
    }

    #[test]
    fn a_start_resync_keeps_its_marks_until_it_is_done() {
        let dir = tempfile::tempdir().unwrap();
        let (mut al, _) = reopen(dir.path());
        // The newest record's range after a process kill, same boot.
        al.require_start_resync(&[(1, 0, 10)]).unwrap();
        assert!(!al.would_overflow(0, 0, (ACTIVITY_EXTENTS_MAX as u64 + 9) * ACTIVITY_EXTENT_BYTES));
        let upto = al.generation();
        // An epoch before the re-reading is done (a forced one) forgets nothing.
        al.finish_epoch(5, upto, false, false).unwrap();
        let (_, found) = reopen(dir.path());
        assert_eq!(found.unclean, vec![(1, 0)]);
        al.finish_epoch(6, upto, true, false).unwrap();
        let (_, found) = reopen(dir.path());
        assert!(found.unclean.is_empty());
    }

    #[test]
    fn a_new_stream_that_is_due_survives_a_second_stop() {
        let dir = tempfile::tempdir().unwrap();
        let (mut al, _) = reopen(dir.path());
        al.require_new_stream().unwrap();
        let (mut al, found) = reopen(dir.path());
        assert!(found.unknown, "a stop before the new stream keeps asking for it");
        al.mark(0, 0, 1).unwrap();
        let upto = al.generation();
        al.finish_epoch(9, upto, false, false).unwrap();
        assert!(reopen(dir.path()).1.unknown);
        al.finish_epoch(9, upto, true, false).unwrap();
        assert!(!reopen(dir.path()).1.unknown);
    }

    #[test]
    fn a_file_from_before_slot_files_is_read_and_then_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(ACTIVITY_FILE);
        let mut bytes = header_bytes(&Header { flags: 0, boot_id: [9; 16], durable_through: 4 }).to_vec();
        bytes.extend_from_slice(&entry_bytes((1, 2)));
        std::fs::write(&path, &bytes).unwrap();
        let (mut al, found) = reopen(dir.path());
        assert_eq!(found.unclean, vec![(1, 2)]);
        assert_eq!(found.durable_through, 4);
        al.mark(0, 0, 1).unwrap();
        assert!(std::fs::read(&path).unwrap().starts_with(crate::slot_file::SLOT_MAGIC));
        assert_eq!(reopen(dir.path()).1.unclean, vec![(0, 0), (1, 2)]);
    }

    #[test]
    fn an_unreadable_file_means_nothing_is_known() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(ACTIVITY_FILE), b"garbage").unwrap();
        let (_, found) = reopen(dir.path());
        assert!(found.unknown);
        let (_, found) = reopen(dir.path());
        assert!(found.unknown, "still unknown until the new stream is done");
    }

    /// Storage faults at exact points (`--features test-build`).
    #[cfg(feature = "test-build")]
    mod failpoints {
        use super::*;

        /// ENOSPC half way through a mark's write: the marks before it are
        /// read back, and so are the ones after it (a torn appended entry
        /// once hid them all).
        #[test]
        fn a_failed_mark_hides_nothing_after_it() {
            let scenario = fail::FailScenario::setup();
            let dir = tempfile::tempdir().unwrap();
            let (mut al, _) = reopen(dir.path());
            al.mark(0, 0, 1).unwrap();
            fail::cfg("slot-write-torn", "1*return").unwrap();
            assert!(al.mark(0, ACTIVITY_EXTENT_BYTES, 1).is_err());
            fail::remove("slot-write-torn");
            assert_eq!(al.marked_count(), 1, "a mark whose write failed is not kept");
            {
                let (_, found) = reopen(dir.path());
                assert!(found.unclean.is_empty() && !found.unknown, "the torn write left the file whole");
            }
            as_if_on_another_boot(dir.path(), 0, &[]);
            assert_eq!(reopen(dir.path()).1.unclean, vec![(0, 0)]);
            let (mut al, _) = reopen(dir.path());
            al.mark(0, 2 * ACTIVITY_EXTENT_BYTES, 1).unwrap();
            drop(al);
            as_if_on_another_boot(dir.path(), 0, &[]);
            assert_eq!(reopen(dir.path()).1.unclean, vec![(0, 0), (0, 2)]);
            scenario.teardown();
        }
    }
}
