//! A synthetic recovery journal for the benchmarks (test build only): a
//! VPG of one volume whose history holds a given number of checkpoints
//! between 1 MiB writes adding up to a given size, written straight into
//! segments as the receiver would have, so a bench can measure what
//! readers cost at sizes the pipeline would take long to produce.

use super::error::JournalError;
use super::{vpg_dir, JournalMeta, JOURNAL_SEGMENT_BYTES};
use crate::io_failure::Doing;
use crate::record::{now_ms, Record, RecordBody};
use crate::segment::{create_segment, SegmentKind};
use crate::wire::message::VolumeInfo;
use std::io::Write;
use std::path::Path;

type Result<T> = std::result::Result<T, JournalError>;

/// What `write` made.
pub struct Synthesized {
    pub records: u64,
    pub segments: u64,
    pub bytes: u64,
}

const WRITE_BYTES: u64 = 1 << 20;

/// Writes VPG `vpg`'s journal under `journal_root`: a stream start, the
/// copy of its `volume_size` volume done, then `data_bytes` of 1 MiB
/// writes (cycling over the volume, each filled with its own pattern)
/// with `checkpoints` checkpoints spread evenly among them, the last
/// tagged "last"; checkpoint times end now, 1 ms apart.
pub fn write(
    journal_root: &Path,
    vpg: &str,
    volume_size: u64,
    data_bytes: u64,
    checkpoints: u64,
) -> Result<Synthesized> {
    if volume_size < WRITE_BYTES || !volume_size.is_multiple_of(WRITE_BYTES) || checkpoints == 0 {
        return Err(JournalError::Unavailable(
            "the volume must be a whole number of MiB and at least one checkpoint is needed".to_string(),
        ));
    }
    let dir = vpg_dir(journal_root, vpg);
    if dir.exists() {
        return Err(JournalError::Unavailable(format!(
            "{} exists; synthesize into an empty journal root",
            dir.display()
        )));
    }
    std::fs::create_dir_all(&dir).doing(|| format!("creating {}", dir.display()))?;
    let vpg_id = 0x5e1f_0001;
    let meta =
        JournalMeta { vpg: vpg.into(), vpg_id, volumes: vec![VolumeInfo { name: "disk0".into(), size: volume_size }] };
    meta.store(&dir)?;
    let writes = data_bytes / WRITE_BYTES;
    let start_ms = now_ms().saturating_sub(checkpoints);
    let mut bodies = SynthBodies { writes, checkpoints, written: 0, taken: 0, volume_size, start_ms };
    let mut out = Synthesized { records: 0, segments: 0, bytes: 0 };
    let mut seq = 1u64;
    let mut buf = Vec::with_capacity(JOURNAL_SEGMENT_BYTES as usize + (2 << 20));
    // Popped from the end: the stream start first.
    let mut pending =
        vec![RecordBody::CopyDone { volume: 0 }, RecordBody::StreamStart { time_ms: start_ms, stream_id: 1 }];
    loop {
        let (_, mut file) = create_segment(&dir, SegmentKind::Journal, vpg_id, seq)?;
        out.segments += 1;
        buf.clear();
        while (buf.len() as u64) < JOURNAL_SEGMENT_BYTES {
            let Some(body) = pending.pop().or_else(|| bodies.next()) else { break };
            Record { seq, vpg_id, body }.encode_into(&mut buf);
            seq += 1;
            out.records += 1;
        }
        file.write_all(&buf).doing(|| "writing a synthetic segment".to_string())?;
        out.bytes += buf.len() as u64;
        if bodies.done() && pending.is_empty() {
            return Ok(out);
        }
    }
}

struct SynthBodies {
    writes: u64,
    checkpoints: u64,
    written: u64,
    taken: u64,
    volume_size: u64,
    start_ms: u64,
}

impl SynthBodies {
    fn done(&self) -> bool {
        self.written == self.writes && self.taken == self.checkpoints
    }
}

impl Iterator for SynthBodies {
    type Item = RecordBody;

    /// A checkpoint is due once its share of the writes is in.
    fn next(&mut self) -> Option<RecordBody> {
        if self.done() {
            return None;
        }
        let due = self.writes * (self.taken + 1) / self.checkpoints;
        if self.written < due || self.taken == self.checkpoints {
            let offset = self.written * WRITE_BYTES % self.volume_size;
            let data = vec![(self.written % 251) as u8 + 1; WRITE_BYTES as usize];
            self.written += 1;
            return Some(RecordBody::Write { volume: 0, offset, data });
        }
        self.taken += 1;
        let tag = if self.taken == self.checkpoints { "last".to_string() } else { String::new() };
        Some(RecordBody::Checkpoint { time_ms: self.start_ms + self.taken, tag, resync: false })
    }
}
