//! Reads a protected log's stream back in order, from a given seq, only up
//! to what has been fully appended. The sender owns one cursor per link.

use super::ProtectedLog;
use crate::record::Record;
use crate::segment::{segment_path, SegmentKind, SegmentReader};
use anyhow::{bail, Result};
use std::sync::Arc;

pub struct LogCursor {
    log: Arc<ProtectedLog>,
    /// Next seq the caller wants.
    want_seq: u64,
    open: Option<(u64, SegmentReader)>,
}

impl LogCursor {
    pub(super) fn new(log: Arc<ProtectedLog>, from_seq: u64) -> Self {
        LogCursor { log, want_seq: from_seq, open: None }
    }

    /// Records from the cursor's position that are already appended, up to
    /// `max_bytes` of encoded size (at least one) or `max_records`.
    pub fn read_available(&mut self, max_bytes: usize, max_records: usize) -> Result<Vec<Record>> {
        let mut out = Vec::new();
        let mut bytes = 0;
        while out.len() < max_records && (out.is_empty() || bytes < max_bytes) {
            if self.open.is_none() && !self.open_segment_for_want()? {
                break;
            }
            let end = self.log.end();
            let (first_seq, reader) = self.open.as_mut().expect("opened above");
            let is_current = *first_seq == end.current_first_seq;
            if is_current && reader.offset() >= end.current_len {
                break;
            }
            match reader.next_record() {
                Ok(Some((rec, _))) => {
                    if rec.seq < self.want_seq {
                        continue;
                    }
                    self.want_seq = rec.seq + 1;
                    bytes += rec.encoded_len();
                    out.push(rec);
                }
                Ok(None) if !is_current => self.open = None,
                Ok(None) => break,
                Err(damage) => bail!("reading the protected log: {damage}"),
            }
        }
        Ok(out)
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
        let (reader, _) = SegmentReader::open(&path, SegmentKind::ProtectedLog, self.log.vpg_id())?;
        self.open = Some((first_seq, reader));
        Ok(true)
    }
}
