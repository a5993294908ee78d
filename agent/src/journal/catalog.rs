//! Reads what a journal holds, record by record, without its data: from a
//! sealed segment's summary when it has a valid one (`summary.rs`), by
//! scanning the segment otherwise (the newest, one not summarized yet, one
//! whose summary is stale or damaged). Readers use it to list checkpoints
//! and to map a point in time; the data they then read is verified
//! against the crc each Write entry carries.

use super::scan::{retired_since_listing, scan_segment, Damage, SegmentScan, SeqOrder, Visit};
use super::summary::{self, Entry};
use crate::segment::{list_segments, SegmentKind};
use anyhow::Result;
use std::path::Path;

#[derive(Debug, Default)]
pub struct WalkOutcome {
    pub last_seq: u64,
    /// Damage met in a scanned segment (nothing after it was visited).
    pub damage: Option<Damage>,
    /// Segments read from their summary, and segments scanned whole.
    pub summarized: usize,
    pub scanned: usize,
    pub scanned_bytes: u64,
}

/// Calls `visit` for every entry with a seq above `after`, in order, with
/// the path of the segment that holds it. Segments whose records are all
/// at or below `after` are not read. Stops at damage, `Visit::Stop` or
/// the end.
pub fn walk_journal(
    dir: &Path,
    vpg_id: u32,
    after: u64,
    mut visit: impl FnMut(&Entry, &Path) -> Visit,
) -> Result<WalkOutcome> {
    let segments = list_segments(dir, SegmentKind::Journal)?;
    let mut out = WalkOutcome::default();
    let mut order = SeqOrder::default();
    for (i, (first_seq, path)) in segments.iter().enumerate() {
        let next_first = segments.get(i + 1).map(|(s, _)| *s);
        if next_first.is_some_and(|n| n.saturating_sub(1) <= after) {
            continue;
        }
        let is_newest = next_first.is_none();
        if let Some(found) = (!is_newest).then(|| summary::load_valid(path, vpg_id, *first_seq)).flatten() {
            out.summarized += 1;
            for entry in found.entries.iter().filter(|e| e.seq > after) {
                if let Some(d) = order.check(entry.seq, path, 0) {
                    out.damage = Some(d);
                    return Ok(finish(out, &order));
                }
                if let Visit::Stop = visit(entry, path) {
                    return Ok(finish(out, &order));
                }
            }
            continue;
        }
        let mut damage = None;
        let scanned = scan_segment(path, vpg_id, *first_seq, |rec, at, crcs| {
            damage = order.check(rec.seq, path, at);
            if damage.is_some() {
                return Visit::Stop;
            }
            if rec.seq <= after {
                return Visit::Continue;
            }
            visit(&Entry::of(rec, at, crcs.payload), path)
        });
        out.scanned += 1;
        match scanned {
            Err(_) if retired_since_listing(path, is_newest) => continue,
            Err(e) => return Err(e),
            Ok(SegmentScan::Whole { len }) => out.scanned_bytes += len,
            Ok(SegmentScan::Stopped) => {
                out.damage = damage;
                return Ok(finish(out, &order));
            }
            Ok(SegmentScan::Damaged(d)) => {
                out.damage = Some(d);
                return Ok(finish(out, &order));
            }
        }
    }
    Ok(finish(out, &order))
}

fn finish(mut out: WalkOutcome, order: &SeqOrder) -> WalkOutcome {
    out.last_seq = order.last_seq;
    out
}
