//! Reads a protected log's stream back in order, from a given seq, only up
//! to what is fsynced (a record a power cut could take must not reach the
//! recovery side), and only the log's current stream. The sender owns one
//! cursor per link.

use super::LogError;
use super::{ProtectedLog, SegmentPlace};
use crate::record::Record;
use crate::record::RecordError;
use crate::segment::{segment_path, SegmentDamage, SegmentError, SegmentKind, SegmentReader};
use crate::wire::batch::BatchBuilder;
use std::sync::Arc;

type Result<T> = std::result::Result<T, LogError>;

pub struct LogCursor {
    log: Arc<ProtectedLog>,
    /// The stream being read; a new stream makes the cursor start over.
    stream_id: u32,
    /// Next seq the caller wants.
    want_seq: u64,
    open: Option<(u64, SegmentReader)>,
    /// A record read that did not fit the last batch (the next one starts
    /// with it), or was only peeked at: what it is, and its bytes, in
    /// `held_bytes[..len]`.
    held: Option<(Record, usize)>,
    /// Reused from record to record: a record's bytes are read into it
    /// and copied once more, into the batch.
    held_bytes: Vec<u8>,
}

impl LogCursor {
    pub(super) fn new(log: Arc<ProtectedLog>, from_seq: u64) -> Self {
        let stream_id = log.stream_id();
        LogCursor { log, stream_id, want_seq: from_seq, open: None, held: None, held_bytes: Vec::new() }
    }

    /// The stream this cursor reads.
    pub fn stream_id(&self) -> u32 {
        self.stream_id
    }

    /// The next record available (fsynced), if any, with a Write's data
    /// left empty; it is not consumed.
    pub fn peek(&mut self) -> Result<Option<&Record>> {
        let stream_id = self.log.stream_id();
        if stream_id != self.stream_id {
            // The records held or half read belong to a dropped stream.
            self.stream_id = stream_id;
            self.open = None;
            self.held = None;
        }
        if self.held.is_none() {
            self.held = self.read_one()?;
        }
        let synced = self.log.synced_seq();
        Ok(self.held.as_ref().map(|(r, _)| r).filter(|r| r.seq <= synced))
    }

    /// Adds records available from the cursor's position to `batch` while
    /// the batch stays within `max_bytes` of records and `max_records`.
    /// A record larger than `max_bytes` goes alone into an empty batch, so
    /// a batch is either one record or at most `max_bytes`.
    pub fn fill(&mut self, batch: &mut BatchBuilder, max_bytes: usize, max_records: usize) -> Result<()> {
        while batch.count() < max_records {
            let Some(next) = self.peek()? else { break };
            let seq = next.seq;
            let len = self.held.as_ref().expect("peeked above").1;
            if !batch.is_empty() && batch.raw_len() + len > max_bytes {
                break;
            }
            self.held = None;
            batch.push_verified(seq, &self.held_bytes[..len]);
            // One large write leaves no large buffer behind (nothing is held).
            crate::wire::batch::trim_buffer(&mut self.held_bytes, crate::wire::batch::BUSY_BUFFER_BYTES);
        }
        Ok(())
    }

    /// Lets go of the record buffer's memory while nothing is held in it.
    pub fn trim_idle(&mut self) {
        if self.held.is_none() {
            crate::wire::batch::trim_buffer(&mut self.held_bytes, crate::wire::batch::IDLE_BUFFER_BYTES);
        }
    }

    /// The next appended record at or after `want_seq`, if any.
    fn read_one(&mut self) -> Result<Option<(Record, usize)>> {
        loop {
            if self.open.is_none() && !self.open_segment_for_want()? {
                return Ok(None);
            }
            let first_seq = self.open.as_ref().expect("opened above").0;
            // Acknowledged, and its file perhaps reused: go on from the
            // oldest segment left (`open_segment_for_want`).
            let Some(place) = self.unless_retired(first_seq) else {
                self.open = None;
                continue;
            };
            let (_, reader) = self.open.as_mut().expect("opened above");
            let is_current = match place {
                // Past its published end the bytes may still change.
                SegmentPlace::Current { len } if reader.offset() >= len => return Ok(None),
                SegmentPlace::Current { len } => {
                    reader.set_limit(len);
                    true
                }
                SegmentPlace::Closed | SegmentPlace::Retired => {
                    reader.set_limit(u64::MAX);
                    false
                }
            };
            let read = reader.next_record_into(&mut self.held_bytes);
            // Retired while it was read: its file may have been reused and
            // written over, so nothing read from it counts.
            if self.unless_retired(first_seq).is_none() {
                self.open = None;
                continue;
            }
            match read {
                Ok(Some((rec, len, _))) => {
                    if rec.seq < self.want_seq {
                        continue;
                    }
                    self.want_seq = rec.seq + 1;
                    return Ok(Some((rec, len)));
                }
                Ok(None) if !is_current => {
                    // The next segment must go on where this one ended.
                    let (first_seq, reader) = self.open.take().expect("opened above");
                    let next = self.log.segment_starts().into_iter().find(|s| *s > first_seq);
                    // (A segment an ack retired ahead of the cursor, the
                    // recovery side holding more than this session sent
                    // it, is skipped above: the check after the read.)
                    if next.is_some_and(|n| self.want_seq < n) {
                        let damage = SegmentDamage {
                            path: reader.path().to_path_buf(),
                            offset: reader.offset(),
                            error: RecordError::Malformed("the next segment does not go on where this one ends"),
                        };
                        return Err(LogError::Read(SegmentError::Damage(damage)));
                    }
                }
                Ok(None) => return Ok(None),
                // Kept typed: the sender starts the stream over on damage.
                Err(e) => return Err(LogError::Read(e)),
            }
        }
    }

    /// Where segment `first_seq` is, unless an ack retired it.
    fn unless_retired(&self, first_seq: u64) -> Option<SegmentPlace> {
        let place = self.log.place_of(first_seq);
        (place != SegmentPlace::Retired).then_some(place)
    }

    /// Opens the segment that holds `want_seq`; false if none exists yet.
    fn open_segment_for_want(&mut self) -> Result<bool> {
        let starts = self.log.segment_starts();
        let Some(first_seq) = starts.iter().rev().find(|s| **s <= self.want_seq).copied() else {
            match starts.first() {
                // Everything before the oldest segment was acked: skip ahead.
                Some(oldest) => {
                    self.want_seq = *oldest;
                    return self.open_segment_for_want();
                }
                None => return Ok(false),
            }
        };
        let path = segment_path(self.log.dir(), SegmentKind::ProtectedLog, first_seq);
        match SegmentReader::open_on(self.log.storage(), &path, SegmentKind::ProtectedLog, self.log.vpg_id()) {
            Ok((reader, _)) => {
                self.open = Some((first_seq, reader));
                Ok(true)
            }
            // Retired since it was listed (its file removed or kept for
            // reuse under another name): the oldest one left is next.
            Err(_) if self.unless_retired(first_seq).is_none() => self.open_segment_for_want(),
            Err(e) => Err(e.into()),
        }
    }
}
