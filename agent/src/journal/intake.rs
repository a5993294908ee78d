//! What a batch from the link must meet before the journal takes it, and
//! the taking. Records at or below the durable end are replays and are
//! skipped. The first fresh record continues the journal's stream, from a
//! log of that stream, or starts the stream the sender announced (the only
//! place a gap in seqs is allowed); every later one follows it seq by seq,
//! and none starts a stream. Every record names a volume of the VPG and
//! stays inside it. Then the batch's raw bytes go to the segment files,
//! durably or not at all, and only then does the index move.
//!
//! `Journal::append` calls it with its cap; the simulator's link scenario
//! calls it on faulty storage, so both run the same rules.

use super::error::{JournalError, Refusal};
use super::index::JournalIndex;
use super::segments::SegmentFiles;
use super::JournalMeta;
use crate::record::RecordBody;
use crate::wire::batch::DecodedBatch;

type Result<T> = std::result::Result<T, JournalError>;

/// Asked for room for this many bytes before they are written; an error
/// refuses the batch (the journal's cap).
pub type Room<'a> = &'a mut dyn FnMut(u64) -> Result<()>;

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The journal holds every record through here, fsynced.
    pub durable_seq: u64,
    /// Bytes written (none for a batch of replays only).
    pub bytes: u64,
}

/// Appends a verified batch after `index.durable_seq` and fsyncs it.
/// `session_stream` is the stream the sender's log holds. The batch's raw
/// bytes are written as they are: they were checked record by record when
/// the batch was decoded. On an error nothing of the batch stays in the
/// journal and the index is as it was.
pub fn append(
    segments: &mut SegmentFiles,
    index: &mut JournalIndex,
    meta: &JournalMeta,
    batch: &DecodedBatch,
    session_stream: u32,
    room: Room<'_>,
) -> Result<Appended> {
    let Some(first_fresh) = batch.records.iter().position(|r| r.seq > index.durable_seq) else {
        return Ok(Appended { durable_seq: index.durable_seq, bytes: 0 });
    };
    check_fits(meta, batch, first_fresh)?;
    let first = &batch.records[first_fresh];
    match first.body {
        RecordBody::StreamStart { stream_id, .. } if stream_id != session_stream => {
            return Err(Refusal::Unannounced { started: stream_id, announced: session_stream }.into())
        }
        RecordBody::StreamStart { .. } => {}
        _ if index.stream_id != session_stream => {
            let refusal =
                Refusal::OtherStream { held: index.stream_id, durable: index.durable_seq, other: session_stream };
            return Err(refusal.into());
        }
        _ if first.seq != index.durable_seq + 1 => {
            return Err(Refusal::Gap { durable: index.durable_seq, first: first.seq }.into())
        }
        _ => {}
    }
    check_follows(batch, first_fresh)?;
    let bytes = &batch.raw[batch.offsets[first_fresh]..];
    room(bytes.len() as u64)?;
    segments.append(bytes, first.seq)?;
    let before = index.durable_seq;
    for rec in &batch.records[first_fresh..] {
        index.observe(rec);
    }
    let last = batch.records.last().expect("a fresh record").seq;
    // Past the checks, a batch cannot fail this (and a panic here would
    // poison the journal's lock): a test-build check.
    debug_assert!(
        index.durable_seq == last && last > before,
        "the index ends at {} after a batch to {last}",
        index.durable_seq
    );
    Ok(Appended { durable_seq: index.durable_seq, bytes: bytes.len() as u64 })
}

/// Every record after the first fresh one (`from`) follows the one
/// before it, seq by seq, in the same stream: a batch that reads on from
/// one stream into the next (a sender's cursor builds one when a new
/// stream starts under a session) would otherwise start a stream its
/// sender did not announce, or leave a hole.
fn check_follows(batch: &DecodedBatch, from: usize) -> std::result::Result<(), Refusal> {
    for pair in batch.records[from..].windows(2) {
        let (before, rec) = (&pair[0], &pair[1]);
        if let RecordBody::StreamStart { stream_id, .. } = rec.body {
            return Err(Refusal::StartInside { seq: rec.seq, stream: stream_id });
        }
        if rec.seq != before.seq + 1 {
            return Err(Refusal::GapInside { seq: rec.seq, before: before.seq });
        }
    }
    Ok(())
}

/// Every record from `from` on names a volume of this VPG and stays
/// inside it: checked on receipt, so a peer's bad record is refused with
/// its batch instead of stalling the applier later.
fn check_fits(meta: &JournalMeta, batch: &DecodedBatch, from: usize) -> std::result::Result<(), Refusal> {
    let volumes = &meta.volumes;
    for i in from..batch.records.len() {
        let seq = batch.records[i].seq;
        let (volume, end) = match (&batch.records[i].body, batch.extent(i)) {
            (_, Some((volume, offset, length))) => (volume, offset.checked_add(length)),
            (RecordBody::CopyDone { volume }, None) => (*volume, Some(0)),
            _ => continue,
        };
        let Some(v) = volumes.get(volume as usize) else {
            return Err(Refusal::NoSuchVolume { seq, volume, vpg: meta.vpg.clone(), count: volumes.len() });
        };
        if end.is_none_or(|e| e > v.size) {
            return Err(Refusal::PastEnd { seq, volume: v.name.clone(), size: v.size });
        }
    }
    Ok(())
}
