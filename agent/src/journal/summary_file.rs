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
use crate::error_chain::Chain;
use crate::record::{
    u32_at, u64_at, Record, RecordBody, CHECKPOINT_TAG_BYTES_MAX, RECORD_HEADER_BYTES, RECORD_PAYLOAD_BYTES_MAX,
};
use crate::segment::SEGMENT_HEADER_BYTES;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

type Result<T> = std::result::Result<T, JournalError>;

const MAGIC: &[u8; 8] = b"TMJRNIDX";
const VERSION: u32 = 1;
pub(super) const HEADER_BYTES: usize = 48;
pub(super) const SUMMARY_EXTENSION: &str = "idx";
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

    /// The length of the payload of the record this entry describes
    /// (`record::payload_len`).
    pub fn payload_len(&self) -> usize {
        match &self.kind {
            EntryKind::Write { len, .. } => *len as usize,
            EntryKind::Checkpoint { tag, .. } => 8 + tag.len(),
            EntryKind::StreamStart { stream_id: 0, .. } => 8,
            EntryKind::StreamStart { .. } => 12,
            EntryKind::Zero { .. } | EntryKind::CopyDone { .. } => 0,
        }
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

/// Where a reader of `segment` goes on past a record whose header is
/// damaged, when every record at or below `floor` may be passed over (it
/// is in the replica): the file offset of the segment's first record above
/// `floor` (its end when there is none), from the segment's valid summary.
/// None, and the damage stays damage, unless the summary describes the
/// segment record by record (each record's offset follows from the ones
/// before it, its Write payload lies where the entry says, the last one is
/// where the summary says and the records end at the segment's end) and
/// the damaged record at `damage_at` is one of them at or below `floor`.
///
/// A damaged header says nothing of where the next record starts, and a
/// search of the bytes after it could be fooled by a record's copy inside
/// a VM's data: the offsets come from the summary, written from the
/// segment read back with every checksum verified (review of helper-58).
pub fn resume_past_damage(segment: &Path, vpg_id: u32, first_seq: u64, damage_at: u64, floor: u64) -> Option<u64> {
    let summary = load_valid(segment, vpg_id, first_seq)?;
    let mut at = SEGMENT_HEADER_BYTES as u64;
    let mut damaged_seen = false;
    let mut resume = None;
    let mut last_at = 0;
    for entry in &summary.entries {
        if let EntryKind::Write { at: payload_at, .. } = entry.kind {
            if payload_at != at + RECORD_HEADER_BYTES as u64 {
                return None;
            }
        }
        if at == damage_at {
            damaged_seen = entry.seq <= floor;
        }
        if entry.seq > floor && resume.is_none() {
            resume = Some(at);
        }
        last_at = at;
        at += (RECORD_HEADER_BYTES + entry.payload_len()) as u64;
    }
    let whole = at == summary.segment_len && (summary.entries.is_empty() || last_at == summary.last_record_at);
    (whole && damaged_seen).then(|| resume.unwrap_or(summary.segment_len))
}
