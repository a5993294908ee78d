//! What opening a protected log finds on disk after any stop, clean or not,
//! and how it is made whole again before anything is appended:
//!
//! 1. every segment is fsynced, and then the directory: a killed
//!    predecessor's appends, and the name of a segment it created, may be
//!    only in the page cache, and nothing may be sent or acknowledged that
//!    a power cut could still take away (records fsynced into a segment
//!    whose name was never made durable vanish with the name);
//! 2. segments of any stream but the newest segment's are dropped: those
//!    of a stream that an interrupted `start_stream` replaced (they
//!    precede the newest stream's segments), and the first segment of a
//!    stream whose start failed and left it named (the log went on in
//!    its old stream, whose later segments follow it). Before segments
//!    holding records go, the caller is told (`BeforeDroppingStream`);
//! 3. the segments that can hold records written after `durable_through`
//!    (a seq known fsynced, from the activity log; all segments when it is
//!    unknown) are read record by record, and seqs must follow each other
//!    across segments; at the first bad record or gap the log is cut there
//!    and every later segment dropped. They are read from the disk, past
//!    the page cache: after a failed fsync Linux keeps showing bytes it
//!    never wrote, and the fsync of step 1 succeeds without writing them.
//!    A log that then ends before
//!    `durable_through` lost records it had made durable, and the caller
//!    starts the stream over; what is cut after it is the torn end of
//!    writes a crash cut short.
//!
//! Segments before those are read (and checked) by the sender's cursor.

use super::error::{CallerError, LogError};
use crate::error_chain::Chain;
use crate::io_failure::Doing;
use crate::segment::{
    list_segments_on, remove_unfinished_creations_on, SegmentError, SegmentKind, SegmentReader, SEGMENT_HEADER_BYTES,
};
use crate::storage::Storage;
use std::path::{Path, PathBuf};

type Result<T> = std::result::Result<T, LogError>;

/// What opening the log found and did.
pub struct LogOpenReport {
    /// True when no log existed: a new stream starts (full initial copy).
    pub fresh: bool,
    /// Bad records that were cut off, if any.
    pub cut: Option<LogCut>,
    pub next_seq: u64,
    /// The volume range of the newest record, if it changed a volume. The
    /// volume may or may not hold that change (the agent may have died
    /// between logging it and writing it), so it is re-read at start.
    pub last_update: Option<(u32, u64, u64)>,
}

/// Called by an open before it drops segments of another stream than the
/// newest segment's that hold records, with what they are. They are left
/// either by a stream start that a stop cut short before it removed them,
/// or by a start that failed after its segment was named, where the log
/// went on in the old stream: records made durable after that are among
/// them. The two cannot be told apart, so the caller must start a new
/// stream (and copy again) in both, and make that durable here: an error
/// fails the open before anything is dropped, and a stop right after the
/// drop finds nothing left to tell it.
pub type BeforeDroppingStream<'a> = &'a mut dyn FnMut(&str) -> std::result::Result<(), CallerError>;

/// Records cut at open.
#[derive(Debug, Clone)]
pub struct LogCut {
    /// What was found (file, offset, reason).
    pub damage: String,
    /// The last good record before the damage (0: none was read).
    pub after_seq: u64,
    /// Segments after the damaged one that were dropped with it.
    pub segments_dropped: usize,
}

pub(super) struct Recovered {
    /// (first seq, path, bytes), oldest first; empty for a new log.
    pub segments: Vec<(u64, PathBuf, u64)>,
    pub next_seq: u64,
    pub stream_id: u32,
    pub cut: Option<LogCut>,
    pub last_update: Option<(u32, u64, u64)>,
}

struct Found {
    first_seq: u64,
    path: PathBuf,
    stream_id: u32,
}

pub(super) fn recover(
    fs: &dyn Storage,
    dir: &Path,
    vpg_id: u32,
    durable_through: u64,
    before_dropping: BeforeDroppingStream<'_>,
) -> Result<Recovered> {
    remove_unfinished_creations_on(fs, dir)?;
    let listed = list_segments_on(fs, dir, SegmentKind::ProtectedLog)?;
    let mut found = Vec::with_capacity(listed.len());
    for (i, (first_seq, path)) in listed.iter().enumerate() {
        fs.open_read(path)
            .and_then(|f| f.sync_all())
            .doing(|| format!("syncing {} (written before this start)", path.display()))?;
        match SegmentReader::open_on(fs, path, SegmentKind::ProtectedLog, vpg_id) {
            Ok((reader, header_seq)) => {
                if header_seq != *first_seq {
                    return Err(LogError::Misnamed { path: path.clone(), header: header_seq, name: *first_seq });
                }
                found.push(Found { first_seq: *first_seq, path: path.clone(), stream_id: reader.stream_id() });
            }
            // A newest segment without a whole header is a creation that a
            // crash cut short (earlier builds named it before writing it).
            Err(e) if i + 1 == listed.len() && file_len(fs, path)? < SEGMENT_HEADER_BYTES as u64 => {
                tracing::warn!("protected log: removing {}, created without its header: {}", path.display(), Chain(&e));
                remove(fs, path)?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    fs.sync_dir(dir).doing(|| format!("syncing directory {} (named before this start)", dir.display()))?;
    let Some(newest) = found.last() else {
        return Ok(Recovered { segments: Vec::new(), next_seq: 0, stream_id: 0, cut: None, last_update: None });
    };
    let (stream_id, newest_first_seq) = (newest.stream_id, newest.first_seq);
    let (current, other): (Vec<Found>, Vec<Found>) = found.into_iter().partition(|f| f.stream_id == stream_id);
    let mut holding = Vec::new();
    for old in &other {
        if holds_records(fs, &old.path, vpg_id) {
            holding.push(old.path.display().to_string());
        }
    }
    if !holding.is_empty() {
        let what = format!(
            "the protected log held records of another stream than its newest segment's (at seq {}): {}",
            newest_first_seq,
            holding.join(", ")
        );
        before_dropping(&what).map_err(LogError::BeforeDropping)?;
    }
    for old in other {
        tracing::warn!(
            "protected log: dropping {}, of a stream a new one replaced, or of a new one that failed to start",
            old.path.display()
        );
        remove(fs, &old.path)?;
    }
    let found = current;
    // The segment holding `durable_through` and every later one; all of
    // them when it is unknown or older than the oldest (acks retired it).
    let start_at = found.iter().rposition(|f| f.first_seq <= durable_through).unwrap_or(0);
    let tail = scan_from(fs, &found, start_at, vpg_id)?;
    let mut segments = Vec::with_capacity(found.len());
    for (i, f) in found.iter().enumerate() {
        let scanned = i.checked_sub(start_at).and_then(|k| tail.ends.get(k)).copied();
        let bytes = match scanned {
            Some(end) => end,
            None => file_len(fs, &f.path)?,
        };
        segments.push((f.first_seq, f.path.clone(), bytes));
    }
    if let Some((index, offset)) = tail.cut_at {
        cut_file(fs, &segments[index].1, offset)?;
        for (_, later, _) in segments.drain(index + 1..) {
            remove(fs, &later)?;
        }
        fs.sync_dir(dir).doing(|| format!("syncing directory {}", dir.display()))?;
    } else if let Some((_, path, end)) = segments.last() {
        // Past the newest segment's end marker, the file may go on with
        // bytes of its earlier use, and the page cache with bytes a failed
        // fsync never wrote: the next append, writing into their page,
        // would write them back to the disk. Neither is kept.
        if file_len(fs, path)? > *end {
            cut_file(fs, path, *end)?;
        }
    }
    Ok(Recovered { segments, next_seq: tail.next_seq, stream_id, cut: tail.cut, last_update: tail.last_update })
}

/// The records of segments `start..`, read in order up to the first bad one.
struct TailScan {
    /// The seq the next record must have (after the last good one).
    next_seq: u64,
    last_update: Option<(u32, u64, u64)>,
    /// End of the good records of each scanned segment.
    ends: Vec<u64>,
    cut: Option<LogCut>,
    /// (segment index, offset) where the log is to be cut; later segments go.
    cut_at: Option<(usize, u64)>,
}

/// Reads segments `start..` record by record. Seqs must follow each other
/// without a gap, across segments too: a segment that ends short of the
/// next one's first seq lost its unsynced end in a power cut (a roll makes
/// the new segment durable, not the old one's tail), and the log is cut
/// there.
fn scan_from(fs: &dyn Storage, found: &[Found], start: usize, vpg_id: u32) -> Result<TailScan> {
    let mut scan =
        TailScan { next_seq: found[start].first_seq, last_update: None, ends: Vec::new(), cut: None, cut_at: None };
    for (i, f) in found.iter().enumerate().skip(start) {
        if f.first_seq != scan.next_seq {
            let damage = format!(
                "{}: the log holds seqs up to {}, the next segment starts at {}",
                f.path.display(),
                scan.next_seq - 1,
                f.first_seq
            );
            let kept = i - 1;
            scan.cut_at = Some((kept, scan.ends[kept - start]));
            scan.cut = Some(LogCut { damage, after_seq: scan.next_seq - 1, segments_dropped: found.len() - i });
            return Ok(scan);
        }
        // From the disk, not the page cache: after a failed fsync (this
        // process's or a killed predecessor's) the page cache shows bytes
        // the disk never got, and the fsync above succeeded without them.
        let (mut reader, _) = SegmentReader::open_direct_on(fs, &f.path, SegmentKind::ProtectedLog, vpg_id)?;
        loop {
            let at = reader.offset();
            match reader.next_record() {
                Ok(Some((rec, _))) if rec.seq == scan.next_seq => {
                    scan.next_seq = rec.seq + 1;
                    scan.last_update = rec.body.extent();
                }
                Ok(Some((rec, _))) => {
                    let damage =
                        format!("{}: seq {} at offset {at} where {} was due", f.path.display(), rec.seq, scan.next_seq);
                    return Ok(cut_here(scan, found, i, at, damage));
                }
                Ok(None) => break,
                Err(e @ SegmentError::Io { .. }) => return Err(LogError::Read(e)),
                Err(SegmentError::Damage(damage)) => {
                    let offset = damage.offset;
                    return Ok(cut_here(scan, found, i, offset, damage.to_string()));
                }
            }
        }
        scan.ends.push(reader.offset());
    }
    Ok(scan)
}

/// Ends a scan at a bad record: segment `i` is cut at `offset`.
fn cut_here(mut scan: TailScan, found: &[Found], i: usize, offset: u64, damage: String) -> TailScan {
    scan.ends.push(offset);
    scan.cut_at = Some((i, offset));
    scan.cut = Some(LogCut { damage, after_seq: scan.next_seq - 1, segments_dropped: found.len() - i - 1 });
    scan
}

/// Whether a segment holds any record but a StreamStart: read, not judged
/// by its size (a Zero, a CopyDone or a short checkpoint is no larger than
/// a StreamStart). One that cannot be read, or is damaged, counts as
/// holding records: what it held is not known.
fn holds_records(fs: &dyn Storage, path: &Path, vpg_id: u32) -> bool {
    let Ok((mut reader, _)) = SegmentReader::open_on(fs, path, SegmentKind::ProtectedLog, vpg_id) else {
        return true;
    };
    loop {
        match reader.next_record() {
            Ok(Some((rec, _))) if matches!(rec.body, crate::record::RecordBody::StreamStart { .. }) => {}
            Ok(None) => return false,
            Ok(Some(_)) | Err(_) => return true,
        }
    }
}

/// Cuts the file at `path` to `len` bytes, durably.
fn cut_file(fs: &dyn Storage, path: &Path, len: u64) -> Result<()> {
    let file = fs.open_append(path).doing(|| format!("opening {}", path.display()))?;
    file.set_len(len).doing(|| format!("cutting {}", path.display()))?;
    file.sync_all().doing(|| format!("syncing {}", path.display()))?;
    Ok(())
}

fn file_len(fs: &dyn Storage, path: &Path) -> Result<u64> {
    Ok(fs.size_of(path).doing(|| format!("sizing {}", path.display()))?)
}

fn remove(fs: &dyn Storage, path: &Path) -> Result<()> {
    Ok(fs.remove_file(path).doing(|| format!("removing {}", path.display()))?)
}
