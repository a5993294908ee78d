//! Reads a journal's segments in order and stops at the first record that
//! fails a check. Used to rebuild the index at start, to list checkpoints
//! and to restore; it never returns a record it could not verify.

use super::error::JournalError;
use super::summary_file::resume_past_damage;
use crate::record::Record;
use crate::segment::{list_segments_on, RecordCrcs, SegmentDamage, SegmentError, SegmentKind, SegmentReader};
use crate::storage::{Storage, REAL};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

type Result<T> = std::result::Result<T, JournalError>;

#[derive(Debug, Clone)]
pub struct Damage {
    pub path: PathBuf,
    pub offset: u64,
    /// Cut short (writer died mid-append) rather than corrupt.
    pub torn: bool,
    pub reason: String,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = if self.torn { "torn record" } else { "corrupt record" };
        write!(f, "{}: {what} at offset {}: {}", self.path.display(), self.offset, self.reason)
    }
}

pub struct ScanOutcome {
    pub segments: Vec<(u64, PathBuf)>,
    pub last_seq: u64,
    pub damage: Option<Damage>,
}

/// Where a record lies: its segment and the file offset of its header
/// (a Write's data follows the header).
pub struct RecordAt<'a> {
    pub path: &'a Path,
    pub offset: u64,
}

/// Which records `scan_journal` hands to its visitor.
pub enum Visit {
    Continue,
    Stop,
}

/// How reading one segment ended.
pub enum SegmentScan {
    /// Every record read and verified; `len` bytes in all.
    Whole {
        len: u64,
    },
    /// The visitor said stop.
    Stopped,
    Damaged(Damage),
}

/// Calls `visit` for every verified record of one journal segment, with
/// its file offset and its checksums, until the end, damage or a stop.
/// `first_seq` is the one its name says. Records at or below `in_replica`
/// are passed over unchecked (`SegmentReader::skip_through`). The storage
/// failing is an error, never damage.
pub fn scan_segment(
    path: &Path,
    vpg_id: u32,
    first_seq: u64,
    in_replica: u64,
    visit: impl FnMut(&Record, u64, RecordCrcs) -> Visit,
) -> Result<SegmentScan> {
    let segment = SegmentAt { path, first_seq };
    scan_segment_from(&REAL, Source::PageCache, segment, vpg_id, in_replica, visit)
}

/// A segment and the first seq its name says.
#[derive(Clone, Copy)]
struct SegmentAt<'a> {
    path: &'a Path,
    first_seq: u64,
}

/// Where a scan reads a segment from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    PageCache,
    /// What the disk holds (`Storage::open_direct`): after a failed fsync
    /// the page cache shows bytes the disk never got.
    Disk,
}

fn scan_segment_from(
    fs: &dyn Storage,
    source: Source,
    SegmentAt { path, first_seq }: SegmentAt<'_>,
    vpg_id: u32,
    in_replica: u64,
    mut visit: impl FnMut(&Record, u64, RecordCrcs) -> Visit,
) -> Result<SegmentScan> {
    let (mut reader, header_seq) = open_segment(fs, source, path, vpg_id)?;
    if header_seq != first_seq {
        return Err(JournalError::Misnamed { path: path.to_path_buf(), header: header_seq, name: first_seq });
    }
    reader.skip_through(in_replica);
    loop {
        match reader.next_record() {
            Ok(Some((rec, at))) => {
                if let Visit::Stop = visit(&rec, at, reader.last_crcs()) {
                    return Ok(SegmentScan::Stopped);
                }
            }
            Ok(None) => return Ok(SegmentScan::Whole { len: reader.offset() }),
            // The storage failed: nothing is known about the records,
            // so nothing may be cut or quarantined on it.
            Err(e @ SegmentError::Io { .. }) => return Err(JournalError::Read(e)),
            Err(SegmentError::Damage(d)) if !d.error.is_incomplete() && in_replica > 0 => {
                // A damaged record the replica holds: on past it, where the
                // segment's summary says the next record is needed, if the
                // rest of the segment is whole.
                let segment = SegmentAt { path, first_seq };
                if let Some(next) = past_damage(fs, source, segment, vpg_id, d.offset, in_replica)? {
                    warn_once_passed_over(&d, next);
                    reader.resume_at(next);
                    continue;
                }
                return Ok(SegmentScan::Damaged(Damage {
                    path: d.path,
                    offset: d.offset,
                    torn: false,
                    reason: d.error.to_string(),
                }));
            }
            Err(SegmentError::Damage(d)) => {
                return Ok(SegmentScan::Damaged(Damage {
                    path: d.path,
                    offset: d.offset,
                    torn: d.error.is_incomplete(),
                    reason: d.error.to_string(),
                }))
            }
        }
    }
}

fn open_segment(fs: &dyn Storage, source: Source, path: &Path, vpg_id: u32) -> Result<(SegmentReader, u64)> {
    Ok(match source {
        Source::PageCache => SegmentReader::open_on(fs, path, SegmentKind::Journal, vpg_id)?,
        Source::Disk => SegmentReader::open_direct_on(fs, path, SegmentKind::Journal, vpg_id)?,
    })
}

/// Where a scan with floor `in_replica` goes on past the damaged record at
/// `damage_at`: the segment's first record above the floor, by its summary
/// (`resume_past_damage`), if every record from there to the segment's
/// end is whole. Otherwise None, and the scan reports the first damage:
/// a start then cuts the segment there, as before. Cut at later damage,
/// the segment would become the newest again, be appended to and lose its
/// summary, and the next start would cut it at the first damage, with
/// records acknowledged since (review of helper-59).
fn past_damage(
    fs: &dyn Storage,
    source: Source,
    SegmentAt { path, first_seq }: SegmentAt<'_>,
    vpg_id: u32,
    damage_at: u64,
    in_replica: u64,
) -> Result<Option<u64>> {
    let Some(next) = resume_past_damage(path, vpg_id, first_seq, damage_at, in_replica) else { return Ok(None) };
    let (mut rest, _) = open_segment(fs, source, path, vpg_id)?;
    rest.skip_through(in_replica);
    rest.resume_at(next);
    loop {
        match rest.next_record() {
            Ok(Some(_)) => {}
            Ok(None) => return Ok(Some(next)),
            Err(e @ SegmentError::Io { .. }) => return Err(JournalError::Read(e)),
            Err(SegmentError::Damage(_)) => return Ok(None),
        }
    }
}

/// Logs, once per damaged record and process, that a scan went past it.
fn warn_once_passed_over(d: &SegmentDamage, next: u64) {
    static WARNED: Mutex<BTreeSet<(PathBuf, u64)>> = Mutex::new(BTreeSet::new());
    let mut warned = WARNED.lock().unwrap_or_else(|p| p.into_inner());
    if warned.insert((d.path.clone(), d.offset)) {
        tracing::warn!(
            "{}: the record at offset {} is damaged ({}) but already in the replica: read on from offset {next}, \
             where the segment's summary puts the next record needed",
            d.path.display(),
            d.offset,
            d.error
        );
    }
}

/// Checks the seqs a reader meets ascend across the whole journal.
#[derive(Default)]
pub struct SeqOrder {
    pub last_seq: u64,
}

impl SeqOrder {
    /// Damage at `path`/`offset` when `seq` does not follow the last one.
    pub fn check(&mut self, seq: u64, path: &Path, offset: u64) -> Option<Damage> {
        if seq <= self.last_seq {
            let reason = format!("seq {seq} does not follow {}", self.last_seq);
            return Some(Damage { path: path.to_path_buf(), offset, torn: false, reason });
        }
        self.last_seq = seq;
        None
    }
}

/// A segment listed but gone when opened was retired by the applier since
/// the listing (its records are all in the replica); the newest is never
/// retired, so its absence is an error.
pub fn retired_since_listing(path: &Path, is_newest: bool) -> bool {
    retired_since_listing_on(&REAL, path, is_newest)
}

fn retired_since_listing_on(fs: &dyn Storage, path: &Path, is_newest: bool) -> bool {
    !is_newest && !fs.exists(path)
}

/// Calls `visit` for every verified record above `in_replica` in order,
/// with where it lies; the records at or below it are in the replica and
/// are neither visited nor checked (bit rot in them harms nothing), and
/// segments that hold only such records are not read. Stops at the first
/// damage, at `Visit::Stop`, or at the end.
pub fn scan_journal_until(
    dir: &Path,
    vpg_id: u32,
    in_replica: u64,
    visit: impl FnMut(&Record, RecordAt) -> Visit,
) -> Result<ScanOutcome> {
    scan_journal_with(&REAL, Source::PageCache, dir, vpg_id, in_replica, visit)
}

/// `scan_journal_until`, the newest segment read from `newest_from`.
fn scan_journal_with(
    fs: &dyn Storage,
    newest_from: Source,
    dir: &Path,
    vpg_id: u32,
    in_replica: u64,
    mut visit: impl FnMut(&Record, RecordAt) -> Visit,
) -> Result<ScanOutcome> {
    let segments = list_segments_on(fs, dir, SegmentKind::Journal)?;
    let mut order = SeqOrder::default();
    for (i, (first_seq, path)) in segments.iter().enumerate() {
        if segments.get(i + 1).is_some_and(|(next, _)| next.saturating_sub(1) <= in_replica) {
            continue;
        }
        let mut damage = None;
        let source = if i + 1 == segments.len() { newest_from } else { Source::PageCache };
        let segment = SegmentAt { path, first_seq: *first_seq };
        let scanned = scan_segment_from(fs, source, segment, vpg_id, in_replica, |rec, at, _| {
            damage = order.check(rec.seq, path, at);
            if damage.is_some() {
                return Visit::Stop;
            }
            visit(rec, RecordAt { path, offset: at })
        });
        let damage = match scanned {
            Err(_) if retired_since_listing_on(fs, path, i + 1 == segments.len()) => continue,
            Err(e) => return Err(e),
            Ok(SegmentScan::Whole { .. }) => continue,
            Ok(SegmentScan::Stopped) => damage,
            Ok(SegmentScan::Damaged(d)) => Some(d),
        };
        return Ok(ScanOutcome { segments, last_seq: order.last_seq, damage });
    }
    Ok(ScanOutcome { segments, last_seq: order.last_seq, damage: None })
}

/// The scan of a journal that opens: its newest segment, the only one a
/// failed fsync can have left bytes in that the disk never got (each
/// batch is fsynced before it is acknowledged, and a segment is closed
/// only after its last batch was), is read from the disk, not the page
/// cache, so the journal never acknowledges records it does not hold.
pub fn scan_journal_on(
    fs: &dyn Storage,
    dir: &Path,
    vpg_id: u32,
    in_replica: u64,
    mut visit: impl FnMut(&Record, RecordAt),
) -> Result<ScanOutcome> {
    scan_journal_with(fs, Source::Disk, dir, vpg_id, in_replica, |rec, at| {
        visit(rec, at);
        Visit::Continue
    })
}
