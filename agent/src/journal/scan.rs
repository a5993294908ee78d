//! Reads a journal's segments in order and stops at the first record that
//! fails a check. Used to rebuild the index at start, to list checkpoints
//! and to restore; it never returns a record it could not verify.

use crate::record::Record;
use crate::segment::{list_segments, SegmentError, SegmentKind, SegmentReader};
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

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

/// Calls `visit` for every verified record in order, with where it lies.
/// Stops at the first damage, at `Visit::Stop`, or at the end.
pub fn scan_journal_until(
    dir: &Path,
    vpg_id: u32,
    mut visit: impl FnMut(&Record, RecordAt) -> Visit,
) -> Result<ScanOutcome> {
    let segments = list_segments(dir, SegmentKind::Journal)?;
    let mut last_seq = 0;
    for (i, (first_seq, path)) in segments.iter().enumerate() {
        let (mut reader, header_seq) = match SegmentReader::open(path, SegmentKind::Journal, vpg_id) {
            Ok(opened) => opened,
            // Retired by the applier since the listing: its records are
            // all in the replica.
            Err(_) if !path.exists() && i + 1 < segments.len() => continue,
            Err(e) => return Err(e),
        };
        if header_seq != *first_seq {
            bail!("{}: header says first seq {header_seq}, name says {first_seq}", path.display());
        }
        loop {
            match reader.next_record() {
                Ok(Some((rec, at))) => {
                    if rec.seq <= last_seq {
                        let reason = format!("seq {} does not follow {last_seq}", rec.seq);
                        let damage = Damage { path: path.clone(), offset: at, torn: false, reason };
                        return Ok(ScanOutcome { segments, last_seq, damage: Some(damage) });
                    }
                    last_seq = rec.seq;
                    if let Visit::Stop = visit(&rec, RecordAt { path, offset: at }) {
                        return Ok(ScanOutcome { segments, last_seq, damage: None });
                    }
                }
                Ok(None) => break,
                // The storage failed: nothing is known about the records,
                // so nothing may be cut or quarantined on it.
                Err(e @ SegmentError::Io { .. }) => return Err(anyhow::Error::new(e).context("reading the journal")),
                Err(SegmentError::Damage(d)) => {
                    let damage = Damage {
                        path: d.path,
                        offset: d.offset,
                        torn: d.error.is_incomplete(),
                        reason: d.error.to_string(),
                    };
                    return Ok(ScanOutcome { segments, last_seq, damage: Some(damage) });
                }
            }
        }
    }
    Ok(ScanOutcome { segments, last_seq, damage: None })
}

pub fn scan_journal(dir: &Path, vpg_id: u32, mut visit: impl FnMut(&Record, RecordAt)) -> Result<ScanOutcome> {
    scan_journal_until(dir, vpg_id, |rec, at| {
        visit(rec, at);
        Visit::Continue
    })
}
