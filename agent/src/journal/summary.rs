//! The persisted journal index: one summary file per sealed journal
//! segment (`<segment>.idx`), listing what each record is and where its
//! data lies, without the data. Readers (`checkpoints`, export, test
//! failover, restore's resolve) read summaries instead of whole segments,
//! so they open in time that does not grow with the bytes journaled.
//!
//! A summary is a cache, never the truth:
//! - it is written only from a segment read back in full with every
//!   checksum verified, once the segment is sealed (a newer one exists),
//!   by the recovery agent's maintenance pass (`Summarizer`);
//! - it is trusted only while it matches its segment: its own crc, the
//!   VPG, the first seq, the segment's length, and the header of the
//!   segment's last record read back from the segment itself;
//! - anything else (missing, damaged, stale, from a crash mid-write) and
//!   the reader scans that segment as before, and the next pass rewrites it.
//!
//! Reads of data through a summary still verify it: a Write entry carries
//! its payload's crc and readers check it (`recovery::view`).
//!
//! Layout (little endian): header `magic [u8;8] "TMJRNIDX", version u32,
//! vpg_id u32, first_seq u64, segment_len u64, last_record_at u64,
//! last_header_crc u32, entry_count u32`, then the entries (kind u8, seq
//! u64, then by kind: Write `volume u32, offset u64, len u32, at u64,
//! crc u32`; Zero `volume u32, offset u64, length u64`; Checkpoint, and
//! kind 6, a checkpoint taken during a resync, `time_ms u64, tag_len u16,
//! tag`; CopyDone `volume u32`; StreamStart `time_ms u64, stream_id u32`),
//! then the crc32 of everything before it.

use super::error::JournalError;
use super::lease::ApplyLock;
use super::scan::{scan_segment, SegmentScan, Visit};
use crate::error_chain::Chain;
use crate::io_failure::Doing;
use crate::record::{
    u32_at, u64_at, Record, RecordBody, CHECKPOINT_TAG_BYTES_MAX, RECORD_HEADER_BYTES, RECORD_PAYLOAD_BYTES_MAX,
};
use crate::segment::{list_segments, SegmentKind, SEGMENT_HEADER_BYTES};
use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

type Result<T> = std::result::Result<T, JournalError>;

const MAGIC: &[u8; 8] = b"TMJRNIDX";
const VERSION: u32 = 1;
pub(super) const HEADER_BYTES: usize = 48;
const SUMMARY_EXTENSION: &str = "idx";
pub(super) const TEMP_EXTENSION: &str = "idx-new";

/// What one journal record is, without its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub kind: EntryKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// `len` bytes at file offset `at` of the segment, whose crc32 is `crc`.
    Write {
        volume: u32,
        offset: u64,
        len: u32,
        at: u64,
        crc: u32,
    },
    Zero {
        volume: u32,
        offset: u64,
        length: u64,
    },
    Checkpoint {
        time_ms: u64,
        tag: String,
        /// Taken during a resync: not a consistent image.
        resync: bool,
    },
    CopyDone {
        volume: u32,
    },
    StreamStart {
        time_ms: u64,
        stream_id: u32,
    },
}

impl Entry {
    /// The entry of a verified record whose header is at file offset `at`
    /// and whose payload's crc32 is `payload_crc`.
    pub fn of(rec: &Record, at: u64, payload_crc: u32) -> Entry {
        let kind = match &rec.body {
            RecordBody::Write { volume, offset, data } => EntryKind::Write {
                volume: *volume,
                offset: *offset,
                len: data.len() as u32,
                at: at + RECORD_HEADER_BYTES as u64,
                crc: payload_crc,
            },
            RecordBody::Zero { volume, offset, length } => {
                EntryKind::Zero { volume: *volume, offset: *offset, length: *length }
            }
            RecordBody::Checkpoint { time_ms, tag, resync } => {
                EntryKind::Checkpoint { time_ms: *time_ms, tag: tag.clone(), resync: *resync }
            }
            RecordBody::CopyDone { volume } => EntryKind::CopyDone { volume: *volume },
            RecordBody::StreamStart { time_ms, stream_id } => {
                EntryKind::StreamStart { time_ms: *time_ms, stream_id: *stream_id }
            }
        };
        Entry { seq: rec.seq, kind }
    }

    /// The range of a volume a Write or Zero changes: (volume, offset, length).
    pub fn extent(&self) -> Option<(u32, u64, u64)> {
        match self.kind {
            EntryKind::Write { volume, offset, len, .. } => Some((volume, offset, len as u64)),
            EntryKind::Zero { volume, offset, length } => Some((volume, offset, length)),
            _ => None,
        }
    }
}

/// A sealed segment's summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentSummary {
    pub vpg_id: u32,
    pub first_seq: u64,
    /// The segment's length when summarized; sealed segments never change.
    pub segment_len: u64,
    /// File offset and header crc of the last record (0, 0: no records).
    pub last_record_at: u64,
    pub last_header_crc: u32,
    pub entries: Vec<Entry>,
}

const KIND_WRITE: u8 = 1;
const KIND_ZERO: u8 = 2;
const KIND_CHECKPOINT: u8 = 3;
const KIND_COPY_DONE: u8 = 4;
const KIND_STREAM_START: u8 = 5;
/// A checkpoint taken during a resync (a kind of its own here, so
/// summaries written before it existed still read as version 1).
const KIND_RESYNC_CHECKPOINT: u8 = 6;

impl SegmentSummary {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_BYTES + self.entries.len() * 37 + 4);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&self.vpg_id.to_le_bytes());
        out.extend_from_slice(&self.first_seq.to_le_bytes());
        out.extend_from_slice(&self.segment_len.to_le_bytes());
        out.extend_from_slice(&self.last_record_at.to_le_bytes());
        out.extend_from_slice(&self.last_header_crc.to_le_bytes());
        out.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        debug_assert_eq!(out.len(), HEADER_BYTES);
        let mut last_seq = self.first_seq.saturating_sub(1);
        for e in &self.entries {
            // What `from_bytes` refuses is never written.
            assert!(e.seq > last_seq, "summary entries ascend from the segment's first seq");
            last_seq = e.seq;
            let mut put = |kind: u8| {
                out.push(kind);
                out.extend_from_slice(&e.seq.to_le_bytes());
            };
            match &e.kind {
                EntryKind::Write { volume, offset, len, at, crc } => {
                    assert!(
                        *len as usize <= RECORD_PAYLOAD_BYTES_MAX
                            && at.checked_add(*len as u64).is_some_and(|end| end <= self.segment_len),
                        "a summarized write lies inside its segment"
                    );
                    put(KIND_WRITE);
                    for field in [&volume.to_le_bytes()[..], &offset.to_le_bytes(), &len.to_le_bytes()] {
                        out.extend_from_slice(field);
                    }
                    out.extend_from_slice(&at.to_le_bytes());
                    out.extend_from_slice(&crc.to_le_bytes());
                }
                EntryKind::Zero { volume, offset, length } => {
                    put(KIND_ZERO);
                    out.extend_from_slice(&volume.to_le_bytes());
                    out.extend_from_slice(&offset.to_le_bytes());
                    out.extend_from_slice(&length.to_le_bytes());
                }
                EntryKind::Checkpoint { time_ms, tag, resync } => {
                    assert!(tag.len() <= CHECKPOINT_TAG_BYTES_MAX, "a journaled tag is within the record limit");
                    put(if *resync { KIND_RESYNC_CHECKPOINT } else { KIND_CHECKPOINT });
                    out.extend_from_slice(&time_ms.to_le_bytes());
                    out.extend_from_slice(&(tag.len() as u16).to_le_bytes());
                    out.extend_from_slice(tag.as_bytes());
                }
                EntryKind::CopyDone { volume } => {
                    put(KIND_COPY_DONE);
                    out.extend_from_slice(&volume.to_le_bytes());
                }
                EntryKind::StreamStart { time_ms, stream_id } => {
                    put(KIND_STREAM_START);
                    out.extend_from_slice(&time_ms.to_le_bytes());
                    out.extend_from_slice(&stream_id.to_le_bytes());
                }
            }
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes a summary, refusing anything that is not exactly one.
    pub fn from_bytes(buf: &[u8]) -> Result<SegmentSummary> {
        if buf.len() < HEADER_BYTES + 4 {
            return Err(JournalError::Summary(format!("summary of {} bytes is too short", buf.len())));
        }
        let (body, trailer) = buf.split_at(buf.len() - 4);
        if crc32fast::hash(body) != u32_at(trailer, 0) {
            return Err(JournalError::Summary("summary checksum mismatch".to_string()));
        }
        if &body[..8] != MAGIC || u32_at(body, 8) != VERSION {
            return Err(JournalError::Summary(format!("not a version {VERSION} journal summary")));
        }
        let mut summary = SegmentSummary {
            vpg_id: u32_at(body, 12),
            first_seq: u64_at(body, 16),
            segment_len: u64_at(body, 24),
            last_record_at: u64_at(body, 32),
            last_header_crc: u32_at(body, 40),
            entries: Vec::new(),
        };
        let count = u32_at(body, 44) as usize;
        let mut r = Cursor { buf: body, at: HEADER_BYTES };
        let mut last_seq = summary.first_seq.saturating_sub(1);
        for _ in 0..count {
            let kind_byte = r.u8()?;
            let seq = r.u64()?;
            if seq <= last_seq {
                return Err(JournalError::Summary(format!("summary entry seq {seq} does not follow {last_seq}")));
            }
            last_seq = seq;
            let kind = match kind_byte {
                KIND_WRITE => {
                    let (volume, offset, len) = (r.u32()?, r.u64()?, r.u32()?);
                    let (at, crc) = (r.u64()?, r.u32()?);
                    if len as usize > RECORD_PAYLOAD_BYTES_MAX
                        || at.checked_add(len as u64).is_none_or(|e| e > summary.segment_len)
                    {
                        return Err(JournalError::Summary(format!(
                            "summary entry seq {seq} points outside its segment"
                        )));
                    }
                    EntryKind::Write { volume, offset, len, at, crc }
                }
                KIND_ZERO => EntryKind::Zero { volume: r.u32()?, offset: r.u64()?, length: r.u64()? },
                KIND_CHECKPOINT | KIND_RESYNC_CHECKPOINT => {
                    let time_ms = r.u64()?;
                    let len = u16::from_le_bytes(r.take(2)?.try_into().expect("2 bytes")) as usize;
                    if len > CHECKPOINT_TAG_BYTES_MAX {
                        return Err(JournalError::Summary(format!("summary entry seq {seq}: tag of {len} bytes")));
                    }
                    let Ok(tag) = std::str::from_utf8(r.take(len)?) else {
                        return Err(JournalError::Summary("summary tag is not UTF-8".to_string()));
                    };
                    let tag = tag.to_string();
                    EntryKind::Checkpoint { time_ms, tag, resync: kind_byte == KIND_RESYNC_CHECKPOINT }
                }
                KIND_COPY_DONE => EntryKind::CopyDone { volume: r.u32()? },
                KIND_STREAM_START => EntryKind::StreamStart { time_ms: r.u64()?, stream_id: r.u32()? },
                other => return Err(JournalError::Summary(format!("summary entry seq {seq}: unknown kind {other}"))),
            };
            summary.entries.push(Entry { seq, kind });
        }
        if r.at != body.len() {
            return Err(JournalError::Summary(format!("summary has {} bytes after its last entry", body.len() - r.at)));
        }
        Ok(summary)
    }

    /// The seq of the segment's last record (None: it holds none).
    pub fn last_seq(&self) -> Option<u64> {
        self.entries.last().map(|e| e.seq)
    }
}

struct Cursor<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let Some(end) = self.at.checked_add(n).filter(|e| *e <= self.buf.len()) else {
            return Err(JournalError::Summary("summary cut short".to_string()));
        };
        let out = &self.buf[self.at..end];
        self.at = end;
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32_at(self.take(4)?, 0))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64_at(self.take(8)?, 0))
    }
}

/// Where the summary of `segment` lives.
pub fn summary_path(segment: &Path) -> PathBuf {
    let mut name = segment.as_os_str().to_owned();
    name.push(".");
    name.push(SUMMARY_EXTENSION);
    PathBuf::from(name)
}

/// Builds the summary of a sealed segment by reading it in full; None
/// when the segment is damaged (readers then scan it and meet the damage).
pub fn build(segment: &Path, vpg_id: u32, first_seq: u64) -> Result<Option<SegmentSummary>> {
    build_above(segment, vpg_id, first_seq, 0)
}

/// Whether the damage of a segment is only in records at or below
/// `in_replica`, which no reader needs any more (every reader starts from
/// the replica or a lease's base, and neither goes back; a reader from
/// before scans and meets it). Such a segment keeps no new summary (a
/// summary is whole or none), and is not reported.
fn damage_is_harmless(segment: &Path, vpg_id: u32, first_seq: u64, in_replica: u64) -> bool {
    in_replica > 0 && matches!(build_above(segment, vpg_id, first_seq, in_replica), Ok(Some(_)))
}

/// The summary of the records above `in_replica` (all: 0).
fn build_above(segment: &Path, vpg_id: u32, first_seq: u64, in_replica: u64) -> Result<Option<SegmentSummary>> {
    let mut entries = Vec::new();
    let mut last = (0u64, 0u32);
    let outcome = scan_segment(segment, vpg_id, first_seq, in_replica, |rec, at, crcs| {
        entries.push(Entry::of(rec, at, crcs.payload));
        last = (at, crcs.header);
        Visit::Continue
    })?;
    let SegmentScan::Whole { len } = outcome else { return Ok(None) };
    Ok(Some(SegmentSummary {
        vpg_id,
        first_seq,
        segment_len: len,
        last_record_at: last.0,
        last_header_crc: last.1,
        entries,
    }))
}

/// The summary of `segment` if there is one and it still describes it;
/// None otherwise (the caller scans the segment).
pub fn load_valid(segment: &Path, vpg_id: u32, first_seq: u64) -> Option<SegmentSummary> {
    let file = File::open(segment).ok()?;
    let segment_len = file.metadata().ok()?.len();
    // An entry is never longer than the record it describes, so a summary
    // longer than its segment (plus its own header) is not read at all.
    let mut summary_file = File::open(summary_path(segment)).ok()?;
    if summary_file.metadata().ok()?.len() > segment_len + HEADER_BYTES as u64 + 8 {
        return None;
    }
    let mut bytes = Vec::new();
    summary_file.read_to_end(&mut bytes).ok()?;
    let summary = match SegmentSummary::from_bytes(&bytes) {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!("{}: ignoring summary: {e_chain}", segment.display(), e_chain = Chain(&e));
            return None;
        }
    };
    if summary.vpg_id != vpg_id || summary.first_seq != first_seq || summary.segment_len != segment_len {
        return None;
    }
    // The last record read back from the segment itself: a summary of an
    // earlier file of the same name and length does not match it. A
    // summary of no records is only valid for a segment of no records.
    if summary.last_seq().is_none() && segment_len != SEGMENT_HEADER_BYTES as u64 {
        return None;
    }
    if let Some(last_seq) = summary.last_seq() {
        let mut h = [0u8; RECORD_HEADER_BYTES];
        file.read_exact_at(&mut h, summary.last_record_at).ok()?;
        if u32_at(&h, 48) != summary.last_header_crc
            || u64_at(&h, 8) != last_seq
            || crc32fast::hash(&h[..48]) != u32_at(&h, 48)
        {
            return None;
        }
    }
    Some(summary)
}

/// Writes a summary next to its segment: temporary name, then rename. No
/// fsync: a summary lost or torn by a power cut fails `load_valid` and is
/// built again.
fn store(segment: &Path, summary: &SegmentSummary) -> Result<()> {
    let path = summary_path(segment);
    let temp = path.with_extension(TEMP_EXTENSION);
    let bytes = summary.to_bytes();
    // What a power cut can leave, as summaries are not fsynced: the new
    // name with part of the bytes.
    fail::fail_point!("summary-store-torn", |_| {
        let _ = std::fs::write(&path, &bytes[..bytes.len() / 2]);
        std::process::abort()
    });
    std::fs::write(&temp, &bytes).doing(|| format!("writing {}", temp.display()))?;
    fail::fail_point!("summary-store-before-rename", |_| std::process::abort());
    Ok(std::fs::rename(&temp, &path).doing(|| format!("renaming {}", temp.display()))?)
}

/// Removes the summary of a segment that is removed, cut or moved.
pub fn forget(segment: &Path) -> Result<()> {
    forget_file(&summary_path(segment))
}

/// The recovery agent's maintenance of one journal's summaries (it is
/// their only writer). Each pass writes the summary of sealed segments
/// that lack a valid one, a few per pass so the applier stays prompt, and
/// removes summaries whose segment is gone and temporaries a crash left.
/// A summary checked once is checked again only when its file changes; a
/// segment that cannot be summarized (damaged, unreadable) is tried again
/// only when it changes, and never stops the others.
///
/// A pass holds the apply lock shared: a failover (which sets segments
/// aside under it exclusively) or a retire never interleaves with it, so
/// no summary is written for a segment that is going away.
///
/// Each pass also re-reads some summarized segments (`SCRUB_BYTES_PER_PASS`
/// on average, round robin): readers trust a summary, so damage that came
/// after it was written (bit rot) would go unseen by them. A segment found
/// damaged, unreadable or no longer matching its summary loses the
/// summary (readers then scan it and stop at the damage) and is reported
/// in `damage` until it is gone (the agent's start quarantines it).
#[derive(Default)]
pub struct Summarizer {
    seen: HashMap<PathBuf, (u64, SystemTime)>,
    failed: HashMap<PathBuf, (u64, SystemTime)>,
    scrub_budget: u64,
    scrub_next: u64,
    /// The damaged segment and what to tell the operator.
    pub damage: Option<(PathBuf, String)>,
    /// The last pass's `in_replica`.
    in_replica: u64,
    /// The damaged segment's first seq, and `in_replica` when it was last
    /// found damaged.
    damage_at: (u64, u64),
}

impl Summarizer {
    /// Summaries written (or rewritten) in one pass, at most.
    pub const PER_PASS: usize = 4;
    /// Bytes of summarized segments re-verified per pass (once a second),
    /// on average: a 20 GiB journal is checked every 45 minutes.
    pub const SCRUB_BYTES_PER_PASS: u64 = 8 << 20;

    fn report_damage(&mut self, segment: &Path, first_seq: u64, why: &str) {
        let message = format!(
            "journal segment {} {why}; readers now stop there and later checkpoints cannot be restored \
             until the recovery agent restarts and quarantines it (see docs/runbook.md)",
            segment.display()
        );
        tracing::error!("{message}");
        self.damage = Some((segment.to_path_buf(), message));
        self.damage_at = (first_seq, self.in_replica);
    }

    /// The damage reported is forgotten once the replica (and every
    /// lease) passed it: no reader needs those records any more.
    fn forget_passed_damage(&mut self, vpg_id: u32) {
        let Some((path, _)) = &self.damage else { return };
        let (first_seq, floor) = self.damage_at;
        if self.in_replica <= floor {
            return;
        }
        if damage_is_harmless(path, vpg_id, first_seq, self.in_replica) {
            tracing::info!(
                "{}: its damage is now all in records the replica holds; no reader needs them",
                path.display()
            );
            self.failed.remove(path);
            self.damage = None;
        } else {
            self.damage_at.1 = self.in_replica;
        }
    }

    /// Re-verifies summarized segments, round robin, as far as this pass's
    /// share of the budget goes (a budget saved up over passes covers one
    /// segment of the largest size).
    fn scrub(&mut self, sealed: &[(u64, PathBuf)], vpg_id: u32) -> Result<()> {
        self.scrub_budget = (self.scrub_budget + Self::SCRUB_BYTES_PER_PASS)
            .min(super::JOURNAL_SEGMENT_BYTES.max(Self::SCRUB_BYTES_PER_PASS));
        for _ in 0..sealed.len() {
            let summarized = |p: &PathBuf| self.seen.contains_key(p);
            let Some((first_seq, path)) = sealed
                .iter()
                .find(|(f, p)| *f >= self.scrub_next && summarized(p))
                .or_else(|| sealed.iter().find(|(_, p)| summarized(p)))
                .cloned()
            else {
                self.scrub_budget = 0;
                return Ok(());
            };
            let Ok(len) = std::fs::metadata(&path).map(|m| m.len()) else { return Ok(()) };
            if self.scrub_budget < len {
                return Ok(());
            }
            self.scrub_budget -= len;
            self.scrub_next = first_seq + 1;
            self.scrub_one(&path, first_seq, vpg_id)?;
        }
        Ok(())
    }

    fn scrub_one(&mut self, path: &Path, first_seq: u64, vpg_id: u32) -> Result<()> {
        let why = match (build(path, vpg_id, first_seq), load_valid(path, vpg_id, first_seq)) {
            (Ok(Some(fresh)), Some(stored)) if fresh == stored => return Ok(()),
            (_, _) if !path.exists() => return Ok(()),
            // A sound segment its summary no longer describes: summarize
            // it again (readers already refuse the old one).
            (Ok(Some(fresh)), _) => {
                tracing::warn!("{}: its summary no longer described it; rewritten", path.display());
                store(path, &fresh)?;
                self.seen.extend(stamp(&summary_path(path)).map(|s| (path.to_path_buf(), s)));
                return Ok(());
            }
            // The summary made before the rot still serves every reader
            // (each reads the entries above where it starts).
            (Ok(None), _) if damage_is_harmless(path, vpg_id, first_seq, self.in_replica) => return Ok(()),
            (Ok(None), _) => "is damaged (found by the background check)".to_string(),
            // The storage failed, not the data: tried again at a later pass.
            (Err(e), _) if e.is_storage() => {
                tracing::warn!("{}: checking it failed, tried again later: {}", path.display(), Chain(&e));
                return Ok(());
            }
            (Err(e), _) => format!("cannot be read (found by the background check): {e_chain}", e_chain = Chain(&e)),
        };
        forget(path)?;
        self.seen.remove(path);
        self.failed.extend(stamp(path).map(|s| (path.to_path_buf(), s)));
        self.report_damage(path, first_seq, &why);
        Ok(())
    }

    /// Returns how many summaries it wrote. Records at or below
    /// `in_replica` (the replica's seq, or an older lease's base) are
    /// needed by no reader: damage in them is not reported.
    pub fn pass(&mut self, dir: &Path, vpg_id: u32, in_replica: u64) -> Result<usize> {
        self.in_replica = in_replica;
        let _lock = ApplyLock::shared(dir)?;
        self.forget_passed_damage(vpg_id);
        if dir.join(super::FAILOVER_RECORD_FILE).exists() {
            return Ok(0);
        }
        let segments = list_segments(dir, SegmentKind::Journal)?;
        let mut written = 0;
        if let Some((_, sealed)) = segments.split_last() {
            for (first_seq, path) in sealed {
                if written == Self::PER_PASS {
                    break;
                }
                let before = stamp(&summary_path(path));
                if before.is_some() && self.seen.get(path) == before.as_ref() {
                    continue;
                }
                let segment_stamp = stamp(path);
                if segment_stamp.is_some() && self.failed.get(path) == segment_stamp.as_ref() {
                    continue;
                }
                if load_valid(path, vpg_id, *first_seq).is_none() {
                    match build(path, vpg_id, *first_seq).and_then(|s| s.map(|s| store(path, &s)).transpose()) {
                        Ok(Some(())) => written += 1,
                        Ok(None) if damage_is_harmless(path, vpg_id, *first_seq, in_replica) => {
                            // Readers scan it, passing over the rot.
                            self.failed.extend(segment_stamp.map(|s| (path.clone(), s)));
                            continue;
                        }
                        Ok(None) => {
                            self.report_damage(path, *first_seq, "is damaged (found while summarizing it)");
                            self.failed.extend(segment_stamp.map(|s| (path.clone(), s)));
                            continue;
                        }
                        // Retired since the listing: nothing to do.
                        Err(_) if !path.exists() => continue,
                        // The storage failed, not the data: tried again
                        // at the next pass.
                        Err(e) if e.is_storage() => {
                            tracing::warn!(
                                "{}: summarizing it failed, tried again later: {}",
                                path.display(),
                                Chain(&e)
                            );
                            continue;
                        }
                        Err(e) => {
                            self.report_damage(
                                path,
                                *first_seq,
                                &format!("cannot be read (found while summarizing it): {e_chain}", e_chain = Chain(&e)),
                            );
                            self.failed.extend(segment_stamp.map(|s| (path.clone(), s)));
                            continue;
                        }
                    }
                }
                if let Some(s) = stamp(&summary_path(path)) {
                    self.seen.insert(path.clone(), s);
                }
            }
        }
        if let Some((_, sealed)) = segments.split_last() {
            self.scrub(sealed, vpg_id)?;
        }
        self.seen.retain(|p, _| p.exists());
        self.failed.retain(|p, _| p.exists());
        if self.damage.as_ref().is_some_and(|(p, _)| !p.exists()) {
            self.damage = None;
        }
        for entry in std::fs::read_dir(dir).doing(|| format!("listing {}", dir.display()))? {
            let path = entry.doing(|| format!("listing {}", dir.display()))?.path();
            let ext = path.extension().and_then(|e| e.to_str());
            let orphan = ext == Some(SUMMARY_EXTENSION) && !path.with_extension("").exists();
            if ext == Some(TEMP_EXTENSION) || orphan {
                forget_file(&path)?;
            }
        }
        Ok(written)
    }
}

/// A summary file's length and modification time, if it exists.
fn stamp(path: &Path) -> Option<(u64, SystemTime)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok()?))
}

fn forget_file(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Ok(Err(e).doing(|| format!("removing {}", path.display()))?)
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn kind_strategy() -> impl Strategy<Value = EntryKind> {
        prop_oneof![
            (any::<u32>(), any::<u64>(), 0u32..4096, 0u64..1 << 20, any::<u32>())
                .prop_map(|(volume, offset, len, at, crc)| EntryKind::Write { volume, offset, len, at, crc }),
            (any::<u32>(), any::<u64>(), any::<u64>()).prop_map(|(volume, offset, length)| EntryKind::Zero {
                volume,
                offset,
                length
            }),
            // Up to 63 characters of any script: at most 252 bytes of UTF-8.
            (any::<u64>(), "\\PC{0,63}", any::<bool>()).prop_map(|(time_ms, tag, resync)| EntryKind::Checkpoint {
                time_ms,
                tag,
                resync
            }),
            any::<u32>().prop_map(|volume| EntryKind::CopyDone { volume }),
            (any::<u64>(), any::<u32>()).prop_map(|(time_ms, stream_id)| EntryKind::StreamStart { time_ms, stream_id }),
        ]
    }

    proptest! {
        #[test]
        fn every_summary_the_encoder_writes_decodes_to_itself(
            first_seq in 1u64..u64::MAX / 2,
            kinds in prop::collection::vec((1u64..1000, kind_strategy()), 0..40),
        ) {
            let mut seq = first_seq - 1;
            let entries = kinds
                .into_iter()
                .map(|(step, kind)| {
                    seq += step;
                    Entry { seq, kind }
                })
                .collect();
            let summary = SegmentSummary {
                vpg_id: 3,
                first_seq,
                segment_len: 2 << 20,
                last_record_at: 77,
                last_header_crc: 5,
                entries,
            };
            let bytes = summary.to_bytes();
            prop_assert_eq!(SegmentSummary::from_bytes(&bytes).unwrap(), summary);
        }
    }
}
