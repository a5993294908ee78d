//! Reads what a journal holds, record by record, without its data: from a
//! sealed segment's summary when it has a valid one (`summary.rs`), by
//! scanning the segment otherwise (the newest, one not summarized yet, one
//! whose summary is stale or damaged). Readers use it to list checkpoints
//! and to map a point in time; the data they then read is verified
//! against the crc each Write entry carries.

use super::error::JournalError;
use super::scan::{retired_since_listing, scan_segment, Damage, SegmentScan, SeqOrder, Visit};
use super::summary::{self, Entry};
use crate::segment::{list_segments, SegmentKind};
use std::path::Path;

type Result<T> = std::result::Result<T, JournalError>;

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
        let scanned = scan_segment(path, vpg_id, *first_seq, after, |rec, at, crcs| {
            damage = order.check(rec.seq, path, at);
            if damage.is_some() {
                return Visit::Stop;
            }
            // (Records at or below `after` are passed by the scan.)
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

#[cfg(test)]
mod tests {
    //! The summaries and the walk that reads them, together.
    use super::summary::*;
    use super::*;
    use crate::journal::summary_file::{HEADER_BYTES, TEMP_EXTENSION};
    use crate::record::{Record, RecordBody};
    use crate::segment::create_segment;
    use std::io::Write;
    use std::path::PathBuf;

    const VPG_ID: u32 = 41;

    fn body_at(seq: u64) -> RecordBody {
        match seq % 5 {
            0 => RecordBody::Checkpoint { time_ms: seq, tag: format!("t-{seq}-é"), resync: false },
            1 => RecordBody::Zero { volume: 0, offset: seq * 16, length: 512 },
            2 if seq == 2 => RecordBody::StreamStart { time_ms: 1, stream_id: 9 },
            3 if seq == 3 => RecordBody::CopyDone { volume: 0 },
            _ => RecordBody::Write { volume: 0, offset: seq * 8, data: vec![seq as u8; 700 + seq as usize % 300] },
        }
    }

    /// Segments holding `per` records each, `count` of them.
    fn journal(count: u64, per: u64) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..count {
            let first = 1 + i * per;
            let (_, mut f) = create_segment(dir.path(), SegmentKind::Journal, VPG_ID, first).unwrap();
            for seq in first..first + per {
                f.write_all(&Record { seq, vpg_id: VPG_ID, body: body_at(seq) }.encode()).unwrap();
            }
        }
        dir
    }

    fn entries(dir: &Path) -> (Vec<Entry>, (usize, usize)) {
        let mut out = Vec::new();
        let o = walk_journal(dir, VPG_ID, 0, |e, _| {
            out.push(e.clone());
            Visit::Continue
        })
        .unwrap();
        assert!(o.damage.is_none());
        (out, (o.summarized, o.scanned))
    }

    /// Flips a bit of record `seq`'s byte `at` (from its header's start)
    /// in `segment`.
    fn rot(segment: &Path, seq: u64, at: usize) {
        let mut bytes = std::fs::read(segment).unwrap();
        let record = Record { seq, vpg_id: VPG_ID, body: body_at(seq) }.encode();
        let start = bytes.windows(record.len()).position(|w| w == record.as_slice()).unwrap();
        bytes[start + at] ^= 0x40;
        std::fs::write(segment, &bytes).unwrap();
    }

    fn sealed(dir: &Path) -> Vec<PathBuf> {
        let mut all: Vec<PathBuf> =
            list_segments(dir, SegmentKind::Journal).unwrap().into_iter().map(|(_, p)| p).collect();
        all.pop();
        all
    }

    #[test]
    fn a_summary_round_trips_and_refuses_every_damaged_byte() {
        let dir = journal(2, 20);
        let first = &sealed(dir.path())[0];
        let summary = build(first, VPG_ID, 1).unwrap().unwrap();
        assert_eq!(summary.entries.len(), 20);
        let bytes = summary.to_bytes();
        assert_eq!(SegmentSummary::from_bytes(&bytes).unwrap(), summary);
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert!(SegmentSummary::from_bytes(&bad).is_err(), "byte {i} flipped was accepted");
        }
        for cut in [0, 10, HEADER_BYTES, bytes.len() - 1] {
            assert!(SegmentSummary::from_bytes(&bytes[..cut]).is_err(), "cut at {cut} accepted");
        }
    }

    #[test]
    fn readers_use_summaries_and_see_exactly_what_a_scan_sees() {
        let dir = journal(4, 30);
        let (scanned, how) = entries(dir.path());
        assert_eq!(how, (0, 4));
        let mut keeper = Summarizer::default();
        assert_eq!(keeper.pass(dir.path(), VPG_ID, 0, 0).unwrap(), 3, "the newest segment is not sealed");
        assert_eq!(keeper.pass(dir.path(), VPG_ID, 0, 0).unwrap(), 0, "a valid summary is not rewritten");
        let (summarized, how) = entries(dir.path());
        assert_eq!(how, (3, 1));
        assert_eq!(summarized, scanned);
        // Past a seq: whole segments below it are not read.
        let o = walk_journal(dir.path(), VPG_ID, 65, |e, _| {
            assert!(e.seq > 65);
            Visit::Continue
        })
        .unwrap();
        assert_eq!((o.summarized, o.scanned), (1, 1));
    }

    #[test]
    fn a_deleted_damaged_or_stale_summary_is_not_trusted_and_is_rebuilt() {
        let dir = journal(3, 25);
        let (scanned, _) = entries(dir.path());
        let mut keeper = Summarizer::default();
        keeper.pass(dir.path(), VPG_ID, 0, 0).unwrap();
        let segs = sealed(dir.path());
        // Deleted.
        std::fs::remove_file(summary_path(&segs[0])).unwrap();
        assert_eq!(entries(dir.path()), (scanned.clone(), (1, 2)));
        // Damaged: one byte flipped.
        let path = summary_path(&segs[1]);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[HEADER_BYTES + 3] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(entries(dir.path()), (scanned.clone(), (0, 3)));
        assert_eq!(keeper.pass(dir.path(), VPG_ID, 0, 0).unwrap(), 2);
        assert_eq!(entries(dir.path()), (scanned.clone(), (2, 1)));
        // Stale: the segment replaced by another of the same name and
        // length whose last record differs.
        let mut seg = std::fs::read(&segs[0]).unwrap();
        let n = seg.len();
        let last = Record {
            seq: 25,
            vpg_id: VPG_ID,
            body: RecordBody::Checkpoint { time_ms: 25, tag: "x-25-é".into(), resync: false },
        }
        .encode();
        let prev = Record { seq: 25, vpg_id: VPG_ID, body: body_at(25) }.encode();
        assert_eq!(last.len(), prev.len());
        seg[n - last.len()..].copy_from_slice(&last);
        std::fs::write(&segs[0], &seg).unwrap();
        assert!(load_valid(&segs[0], VPG_ID, 1).is_none());
        // A crash mid-write leaves a temporary; orphans go too.
        std::fs::write(summary_path(&segs[1]).with_extension(TEMP_EXTENSION), b"half").unwrap();
        std::fs::write(dir.path().join("00000000000000000999.tmjrn.idx"), b"orphan").unwrap();
        keeper.pass(dir.path(), VPG_ID, 0, 0).unwrap();
        let left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".idx"))
            .collect();
        assert_eq!(left.len(), 2, "{left:?}");
    }

    #[test]
    fn damage_after_the_summary_was_written_is_found_and_the_summary_dropped() {
        let dir = journal(3, 25);
        let mut keeper = Summarizer::default();
        keeper.pass(dir.path(), VPG_ID, 0, 0).unwrap();
        let segs = sealed(dir.path());
        // The header of seq 31 (a Zero: no data crc for a reader to check),
        // in the middle of the second segment.
        rot(&segs[1], 31, 20);
        assert!(load_valid(&segs[1], VPG_ID, 26).is_some(), "the summary alone cannot see it");
        for _ in 0..4 {
            keeper.pass(dir.path(), VPG_ID, 0, 0).unwrap();
        }
        let (path, message) = keeper.damage.clone().expect("the background check found the damage");
        assert_eq!(path, segs[1]);
        assert!(message.contains("is damaged"), "{message}");
        assert!(!summary_path(&segs[1]).exists(), "the summary of a damaged segment is dropped");
        let walked = walk_journal(dir.path(), VPG_ID, 0, |_, _| Visit::Continue).unwrap();
        assert!(walked.damage.is_some(), "readers now meet the damage");
        // Not summarized again while it stays damaged.
        keeper.pass(dir.path(), VPG_ID, 0, 0).unwrap();
        assert!(!summary_path(&segs[1]).exists());
    }

    #[test]
    fn damage_in_records_no_reader_needs_is_not_reported() {
        // Seq 29 (a Write in the second segment, 26-50) rots before it
        // is summarized; the replica (and the oldest lease) is at 30.
        // Nothing is reported, and readers from there on scan past it.
        let dir = journal(3, 25);
        let segs = sealed(dir.path());
        rot(&segs[1], 29, crate::record::RECORD_HEADER_BYTES + 100);
        let mut keeper = Summarizer::default();
        keeper.pass(dir.path(), VPG_ID, 30, 30).unwrap();
        assert!(keeper.damage.is_none(), "{:?}", keeper.damage);
        assert!(!summary_path(&segs[1]).exists(), "a summary is whole or none");
        assert!(summary_path(&segs[0]).exists());
        let walked = walk_journal(dir.path(), VPG_ID, 30, |_, _| Visit::Continue).unwrap();
        assert!(walked.damage.is_none() && walked.last_seq == 75, "{walked:?}");
        // A reader from before the damage still meets it.
        assert!(walk_journal(dir.path(), VPG_ID, 0, |_, _| Visit::Continue).unwrap().damage.is_some());
        // With a lease from before it (floor 20), the same rot is reported;
        // once the floor passes it, the report goes.
        let mut keeper = Summarizer::default();
        keeper.pass(dir.path(), VPG_ID, 20, 20).unwrap();
        assert!(keeper.damage.is_some());
        keeper.pass(dir.path(), VPG_ID, 30, 30).unwrap();
        assert!(keeper.damage.is_none(), "{:?}", keeper.damage);
    }

    #[test]
    fn rot_only_an_older_reader_needs_is_reported_and_its_summary_kept() {
        // The replica is at 30, a lease's base at 20: seq 29's rot fails
        // that reader only. The scrub dropped the summary, and with it the
        // only map a start has past the rot once the lease is gone (review
        // of helper-59).
        let (dir, mut keeper, segs) = rot_29_after_its_summary(20);
        let reported = keeper.damage.as_ref().is_some_and(|(_, why)| why.contains("only an open reader"));
        assert!(reported, "{:?}", keeper.damage);
        assert!(load_valid(&segs[1], VPG_ID, 26).is_some(), "the scrub dropped the summary");
        keeper.pass(dir.path(), VPG_ID, 30, 30).unwrap();
        assert!(keeper.damage.is_none(), "{:?}", keeper.damage);
    }

    /// Seq 29 (second segment) rots after every segment was summarized;
    /// then enough passes for the scrub to read it, the replica at 30 and
    /// the oldest reader at `in_replica`.
    fn rot_29_after_its_summary(in_replica: u64) -> (tempfile::TempDir, Summarizer, Vec<PathBuf>) {
        let dir = journal(3, 25);
        let mut keeper = Summarizer::default();
        keeper.pass(dir.path(), VPG_ID, 30, 30).unwrap();
        let segs = sealed(dir.path());
        rot(&segs[1], 29, crate::record::RECORD_HEADER_BYTES + 100);
        for _ in 0..8 {
            keeper.pass(dir.path(), VPG_ID, 30, in_replica).unwrap();
        }
        (dir, keeper, segs)
    }

    #[test]
    fn a_summary_made_before_rot_in_records_no_reader_needs_is_kept() {
        let (dir, keeper, segs) = rot_29_after_its_summary(30);
        assert!(keeper.damage.is_none(), "{:?}", keeper.damage);
        assert!(load_valid(&segs[1], VPG_ID, 26).is_some(), "the scrub kept the summary");
        let walked = walk_journal(dir.path(), VPG_ID, 30, |_, _| Visit::Continue).unwrap();
        assert_eq!((walked.summarized, walked.scanned, walked.last_seq), (1, 1, 75), "the second from its summary");
    }

    #[test]
    fn a_hostile_summary_is_refused_without_being_read_whole() {
        let dir = journal(3, 25);
        Summarizer::default().pass(dir.path(), VPG_ID, 0, 0).unwrap();
        let segs = sealed(dir.path());
        let good = load_valid(&segs[0], VPG_ID, 1).unwrap();
        // Far longer than its segment (sparse): refused before reading.
        let path = summary_path(&segs[0]);
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(1 << 40).unwrap();
        assert!(load_valid(&segs[0], VPG_ID, 1).is_none());
        // A valid summary of no records for a segment that has some.
        let empty = SegmentSummary { entries: Vec::new(), ..good };
        std::fs::write(&path, empty.to_bytes()).unwrap();
        assert!(load_valid(&segs[0], VPG_ID, 1).is_none());
    }
}
