//! The protected-side log: an append-only, bounded list of segment files
//! holding a VPG's write stream until the recovery site has acknowledged
//! it. Appends are ordered by the caller (one writer at a time per VPG);
//! durability is group-committed by one thread that fsyncs on demand; the
//! sender reads the stream back with a `LogCursor`. When the log is full,
//! `append` waits: a full log applies back-pressure and never drops data.

mod cursor;
pub mod state;

pub use cursor::LogCursor;
pub use state::CaptureState;

use crate::record::{encode_parts, now_ms, payload_len, RecordBody, RECORD_HEADER_BYTES};
use crate::segment::{create_segment, list_segments, SegmentError, SegmentKind, SegmentReader};
use anyhow::{bail, Context, Result};
use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Instant;
use tokio::sync::{watch, Notify};

/// Segments are a fraction of the capacity so retiring frees space early.
const LOG_SEGMENTS_PER_CAPACITY: u64 = 16;
const LOG_SEGMENT_BYTES_MIN: u64 = 4 << 20;
/// A new stream's first seq is the wall clock in ms times this.
const STREAM_SEQS_PER_MS: u64 = 1000;
/// Resolution of the lag-in-seconds estimate.
const LAG_SAMPLE_INTERVAL_MS: u128 = 50;

pub struct ProtectedLog {
    dir: PathBuf,
    vpg_id: u32,
    capacity_bytes: u64,
    segment_bytes: u64,
    inner: Mutex<Inner>,
    appended: watch::Sender<u64>,
    synced: watch::Sender<u64>,
    acked: watch::Sender<u64>,
    space: Notify,
    sync_wake: Mutex<mpsc::Sender<()>>,
}

struct Segment {
    first_seq: u64,
    path: PathBuf,
    bytes: u64,
}

struct Inner {
    /// Closed segments, oldest first; the current one is not in here.
    closed: VecDeque<Segment>,
    current: Segment,
    current_file: Arc<File>,
    /// Closed segments whose data the sync thread has not fsynced yet.
    unsynced_closed: Vec<Arc<File>>,
    next_seq: u64,
    bytes_total: u64,
    /// Bytes ever appended by this process, for the lag estimate.
    appended_bytes: u64,
    /// Sampled appends not yet acknowledged: (seq, when, `appended_bytes`
    /// before it). Lag is measured from the oldest.
    lag_samples: VecDeque<(u64, Instant, u64)>,
}

/// What opening the log found on disk.
pub struct LogOpenReport {
    /// True when no log existed: a new stream starts (full initial copy).
    pub fresh: bool,
    /// A torn tail that was cut off, if any (`file: offset: reason`).
    pub truncated_tail: Option<String>,
    pub next_seq: u64,
    /// The volume range of the newest record, if it changed a volume. The
    /// volume may or may not hold that change (the agent may have died
    /// between logging it and writing it), so it is re-read at start.
    pub last_update: Option<(u32, u64, u64)>,
}

/// Where the published end of the log is, for readers.
#[derive(Clone, Copy)]
pub(crate) struct LogEnd {
    pub current_first_seq: u64,
    pub current_len: u64,
}

impl ProtectedLog {
    pub fn open(dir: &Path, vpg_id: u32, capacity_bytes: u64) -> Result<(Arc<Self>, LogOpenReport)> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating log directory {}", dir.display()))?;
        let segment_bytes = (capacity_bytes / LOG_SEGMENTS_PER_CAPACITY).max(LOG_SEGMENT_BYTES_MIN);
        let found = list_segments(dir, SegmentKind::ProtectedLog)?;
        let mut closed = VecDeque::new();
        let mut truncated_tail = None;
        let mut next_seq = 0;
        let mut last_update = None;
        let fresh = found.is_empty();
        // Closed segments are verified record by record when the sender
        // reads them; at open only the newest can have a torn tail, so only
        // it (and, if it is empty, the one before) is scanned.
        for (i, (first_seq, path)) in found.iter().enumerate() {
            let (_, header_seq) = SegmentReader::open(path, SegmentKind::ProtectedLog, vpg_id)?;
            if header_seq != *first_seq {
                bail!("{}: header says first seq {header_seq}, name says {first_seq}", path.display());
            }
            let bytes = std::fs::metadata(path).with_context(|| format!("sizing {}", path.display()))?.len();
            closed.push_back(Segment { first_seq: *first_seq, path: path.clone(), bytes });
            if i + 1 == found.len() {
                next_seq = *first_seq;
            }
        }
        if let Some(last) = closed.back_mut() {
            let tail = scan_segment(&last.path, vpg_id)?;
            if let Some(damage) = tail.damage {
                // The writer died mid-append: cut the tail it left.
                truncated_tail = Some(damage);
            }
            last.bytes = tail.end;
            next_seq = next_seq.max(tail.last_seq.map_or(0, |s| s + 1));
            last_update = tail.last_update;
            if tail.last_seq.is_none() && closed.len() > 1 {
                let previous = scan_segment(&closed[closed.len() - 2].path, vpg_id)?;
                if let Some(damage) = previous.damage {
                    bail!("protected log is damaged before its tail: {damage}");
                }
                last_update = previous.last_update;
            }
        }
        let (current, current_file) = match closed.pop_back() {
            Some(seg) => {
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .append(true)
                    .open(&seg.path)
                    .with_context(|| format!("opening {}", seg.path.display()))?;
                if truncated_tail.is_some() {
                    file.set_len(seg.bytes).with_context(|| format!("truncating {}", seg.path.display()))?;
                    file.sync_all()?;
                }
                (seg, file)
            }
            None => {
                // A new stream starts at a seq above any earlier stream's
                // (unless one wrote over 1000 records per ms of its life),
                // so the recovery side does not mistake it for a replay;
                // the sender checks the rest. Seqs stay below 2^53, exact
                // in JSON for the tools that read status and checkpoints.
                next_seq = now_ms() * STREAM_SEQS_PER_MS;
                let (path, file) = create_segment(dir, SegmentKind::ProtectedLog, vpg_id, next_seq)?;
                let bytes = file.metadata()?.len();
                (Segment { first_seq: next_seq, path, bytes }, file)
            }
        };
        let bytes_total = closed.iter().map(|s| s.bytes).sum::<u64>() + current.bytes;
        let (sync_tx, sync_rx) = mpsc::channel();
        let log = Arc::new(ProtectedLog {
            dir: dir.to_path_buf(),
            vpg_id,
            capacity_bytes,
            segment_bytes,
            inner: Mutex::new(Inner {
                closed,
                current,
                current_file: Arc::new(current_file),
                unsynced_closed: Vec::new(),
                next_seq,
                bytes_total,
                appended_bytes: 0,
                lag_samples: VecDeque::new(),
            }),
            appended: watch::channel(next_seq.saturating_sub(1)).0,
            synced: watch::channel(next_seq.saturating_sub(1)).0,
            acked: watch::channel(0).0,
            space: Notify::new(),
            sync_wake: Mutex::new(sync_tx),
        });
        let weak = Arc::downgrade(&log);
        std::thread::Builder::new()
            .name("log-sync".into())
            .spawn(move || group_commit_loop(weak, sync_rx))
            .context("starting the log sync thread")?;
        if fresh {
            log.append_now(&RecordBody::StreamStart { time_ms: now_ms() })?;
        }
        Ok((log, LogOpenReport { fresh, truncated_tail, next_seq, last_update }))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends a record, waiting while the log is full. Returns its seq.
    /// Callers serialise appends per VPG; the seq order is the write order.
    pub async fn append(&self, body: &RecordBody) -> Result<u64> {
        body.check().context("refusing to log a record its readers would refuse")?;
        let needed = (RECORD_HEADER_BYTES + payload_len(body)) as u64;
        loop {
            let notified = self.space.notified();
            {
                let inner = self.inner.lock().expect("log lock");
                if inner.bytes_total + needed <= self.capacity_bytes || inner.closed.is_empty() {
                    drop(inner);
                    return self.append_now(body);
                }
            }
            notified.await;
        }
    }

    fn append_now(&self, body: &RecordBody) -> Result<u64> {
        let mut inner = self.inner.lock().expect("log lock");
        let seq = inner.next_seq;
        let mut bytes = Vec::with_capacity(RECORD_HEADER_BYTES + payload_len(body));
        encode_parts(seq, self.vpg_id, body, &mut bytes);
        (&*inner.current_file)
            .write_all(&bytes)
            .with_context(|| format!("appending seq {seq} to {}", inner.current.path.display()))?;
        inner.next_seq = seq + 1;
        inner.current.bytes += bytes.len() as u64;
        inner.bytes_total += bytes.len() as u64;
        let now = Instant::now();
        let sample_due = inner
            .lag_samples
            .back()
            .is_none_or(|(_, t, _)| now.duration_since(*t).as_millis() >= LAG_SAMPLE_INTERVAL_MS);
        if sample_due {
            let before = inner.appended_bytes;
            inner.lag_samples.push_back((seq, now, before));
        }
        inner.appended_bytes += bytes.len() as u64;
        if inner.current.bytes >= self.segment_bytes {
            self.roll(&mut inner)?;
        }
        drop(inner);
        self.appended.send_replace(seq);
        Ok(seq)
    }

    fn roll(&self, inner: &mut Inner) -> Result<()> {
        let first_seq = inner.next_seq;
        let (path, file) = create_segment(&self.dir, SegmentKind::ProtectedLog, self.vpg_id, first_seq)?;
        let bytes = file.metadata()?.len();
        let old = std::mem::replace(&mut inner.current, Segment { first_seq, path, bytes });
        let old_file = std::mem::replace(&mut inner.current_file, Arc::new(file));
        inner.unsynced_closed.push(old_file);
        inner.closed.push_back(old);
        inner.bytes_total += bytes;
        Ok(())
    }

    /// Makes the next record's seq at least `min_seq` (a new stream must
    /// start above whatever the recovery journal already holds).
    pub fn advance_seq_to(&self, min_seq: u64) {
        let mut inner = self.inner.lock().expect("log lock");
        inner.next_seq = inner.next_seq.max(min_seq);
    }

    /// Last seq appended (0 when the stream is empty).
    pub fn appended_seq(&self) -> u64 {
        *self.appended.borrow()
    }

    pub fn watch_appended(&self) -> watch::Receiver<u64> {
        self.appended.subscribe()
    }

    pub fn acked_seq(&self) -> u64 {
        *self.acked.borrow()
    }

    pub fn watch_acked(&self) -> watch::Receiver<u64> {
        self.acked.subscribe()
    }

    /// Waits until every record up to `seq` is fsynced in this log.
    pub async fn sync_to(&self, seq: u64) -> Result<()> {
        let mut rx = self.synced.subscribe();
        if *rx.borrow() >= seq {
            return Ok(());
        }
        let _ = self.sync_wake.lock().expect("sync wake lock").send(());
        rx.wait_for(|s| *s >= seq).await.context("log sync thread stopped")?;
        Ok(())
    }

    /// The recovery site has `seq` and everything before it durable:
    /// retire segments that hold nothing newer.
    pub fn ack(&self, seq: u64) {
        let mut retired = Vec::new();
        {
            let mut inner = self.inner.lock().expect("log lock");
            if seq >= inner.next_seq {
                // An ack beyond what we wrote: the journal is ahead of a log
                // that was rebuilt. Never retire on it.
                tracing::warn!(seq, next = inner.next_seq, "peer acknowledged a seq this log never wrote");
                return;
            }
            while !inner.closed.is_empty() {
                let next_first = inner.closed.get(1).map_or(inner.current.first_seq, |s| s.first_seq);
                if next_first > seq + 1 {
                    break;
                }
                let seg = inner.closed.pop_front().expect("non-empty");
                inner.bytes_total -= seg.bytes;
                retired.push(seg.path);
            }
            while inner.lag_samples.front().is_some_and(|(s, _, _)| *s <= seq) {
                inner.lag_samples.pop_front();
            }
        }
        for path in &retired {
            if let Err(e) = std::fs::remove_file(path) {
                tracing::error!("retiring log segment {}: {e}", path.display());
            }
        }
        self.acked.send_if_modified(|a| {
            let moved = seq > *a;
            *a = (*a).max(seq);
            moved
        });
        if !retired.is_empty() {
            self.space.notify_waiters();
        }
    }

    /// Bytes not yet acknowledged by the recovery site, and for how long
    /// the oldest of them has waited. Sampled every `LAG_SAMPLE_INTERVAL_MS`,
    /// so both may read high by up to that much appending.
    pub fn lag(&self) -> (u64, f64) {
        let inner = self.inner.lock().expect("log lock");
        if self.appended_seq() <= self.acked_seq() {
            return (0, 0.0);
        }
        match inner.lag_samples.front() {
            Some((_, t, before)) => (inner.appended_bytes - before, t.elapsed().as_secs_f64()),
            // Unacked records from before this process started.
            None => (inner.bytes_total, 0.0),
        }
    }

    pub(crate) fn end(&self) -> LogEnd {
        let inner = self.inner.lock().expect("log lock");
        LogEnd { current_first_seq: inner.current.first_seq, current_len: inner.current.bytes }
    }

    /// First seqs of every segment, oldest first, current last.
    pub(crate) fn segment_starts(&self) -> Vec<u64> {
        let inner = self.inner.lock().expect("log lock");
        inner.closed.iter().map(|s| s.first_seq).chain([inner.current.first_seq]).collect()
    }

    pub fn vpg_id(&self) -> u32 {
        self.vpg_id
    }

    pub fn cursor(self: &Arc<Self>, from_seq: u64) -> LogCursor {
        LogCursor::new(self.clone(), from_seq)
    }
}

struct SegmentScan {
    end: u64,
    last_seq: Option<u64>,
    last_update: Option<(u32, u64, u64)>,
    damage: Option<String>,
}

/// Reads one segment to its end or first bad record.
fn scan_segment(path: &Path, vpg_id: u32) -> Result<SegmentScan> {
    let (mut reader, _) = SegmentReader::open(path, SegmentKind::ProtectedLog, vpg_id)?;
    let mut scan = SegmentScan { end: reader.offset(), last_seq: None, last_update: None, damage: None };
    loop {
        match reader.next_record() {
            Ok(Some((rec, _))) => {
                if scan.last_seq.is_some_and(|s| rec.seq <= s) {
                    bail!("{}: sequence goes backwards at seq {}", path.display(), rec.seq);
                }
                scan.last_seq = Some(rec.seq);
                scan.last_update = rec.body.extent();
                scan.end = reader.offset();
            }
            Ok(None) => return Ok(scan),
            Err(e @ SegmentError::Io { .. }) => return Err(anyhow::Error::new(e).context("opening the protected log")),
            Err(SegmentError::Damage(damage)) => {
                scan.damage = Some(damage.to_string());
                return Ok(scan);
            }
        }
    }
}

/// Group commit: one fsync covers every append made before it started.
fn group_commit_loop(log: std::sync::Weak<ProtectedLog>, wake: mpsc::Receiver<()>) {
    while wake.recv().is_ok() {
        while wake.try_recv().is_ok() {}
        let Some(log) = log.upgrade() else { return };
        let (target, files) = {
            let mut inner = log.inner.lock().expect("log lock");
            let mut files = std::mem::take(&mut inner.unsynced_closed);
            files.push(inner.current_file.clone());
            (inner.next_seq - 1, files)
        };
        for file in files {
            if let Err(e) = file.sync_data() {
                // Durability can no longer be promised: stop rather than lie.
                tracing::error!("fsync of the protected log failed: {e}; stopping");
                std::process::exit(70);
            }
        }
        log.synced.send_if_modified(|s| {
            let moved = target > *s;
            *s = (*s).max(target);
            moved
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(i: u64, size: usize) -> RecordBody {
        RecordBody::Write { volume: 0, offset: i * 4096, data: vec![i as u8; size] }
    }

    #[tokio::test]
    async fn reopen_resumes_after_last_record_and_cursor_reads_all() {
        let dir = tempfile::tempdir().unwrap();
        let (log, report) = ProtectedLog::open(dir.path(), 1, 64 << 20).unwrap();
        assert!(report.fresh);
        let mut seqs = vec![];
        for i in 0..100 {
            seqs.push(log.append(&write(i, 4096)).await.unwrap());
        }
        log.sync_to(*seqs.last().unwrap()).await.unwrap();
        drop(log);
        let (log, report) = ProtectedLog::open(dir.path(), 1, 64 << 20).unwrap();
        assert!(!report.fresh);
        assert_eq!(report.next_seq, seqs.last().unwrap() + 1);
        let mut cursor = log.cursor(seqs[10]);
        let mut got = Vec::new();
        cursor.fill(&mut got, usize::MAX, 1000).unwrap();
        assert_eq!(got.iter().map(|r| r.seq).collect::<Vec<_>>(), seqs[10..].to_vec());
    }

    #[tokio::test]
    async fn batches_never_exceed_the_receivers_limit() {
        use crate::record::RECORD_PAYLOAD_BYTES_MAX;
        use crate::wire::batch::{BATCH_RAW_BYTES_TARGET, BATCH_RECORDS_MAX};
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = ProtectedLog::open(dir.path(), 1, 256 << 20).unwrap();
        // Small writes ending 28 bytes short of the batch target, then one
        // of the largest size: the big one must travel alone, not on top of
        // a nearly full batch (together they are over the receiver's limit).
        for i in 0..63 {
            log.append(&write(i, 64 << 10)).await.unwrap();
        }
        log.append(&write(63, 62_120)).await.unwrap();
        let big = RecordBody::Write { volume: 0, offset: 0, data: vec![7; RECORD_PAYLOAD_BYTES_MAX] };
        let last = log.append(&big).await.unwrap();
        let mut cursor = log.cursor(0);
        let mut seen = 0;
        loop {
            // As the sender does: a batch, then a second look (its linger).
            let mut batch = Vec::new();
            cursor.fill(&mut batch, BATCH_RAW_BYTES_TARGET, BATCH_RECORDS_MAX).unwrap();
            if batch.is_empty() {
                break;
            }
            cursor.fill(&mut batch, BATCH_RAW_BYTES_TARGET, BATCH_RECORDS_MAX).unwrap();
            seen += batch.len();
            let encoded = crate::wire::batch::encode(&batch);
            crate::wire::batch::decode(&encoded.bytes, 1).expect("the receiver takes every batch the cursor makes");
            assert!(batch.last().unwrap().seq <= last);
        }
        assert_eq!(seen, 66, "stream start, 64 writes and the big one");
    }

    #[tokio::test]
    async fn a_record_its_readers_would_refuse_is_never_logged() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = ProtectedLog::open(dir.path(), 1, 64 << 20).unwrap();
        let before = log.appended_seq();
        let tag = RecordBody::Checkpoint { time_ms: 1, tag: "€".repeat(100) };
        let err = log.append(&tag).await.unwrap_err();
        assert!(format!("{err:#}").contains("300 bytes"), "{err:#}");
        assert_eq!(log.appended_seq(), before);
        // The log goes on, and reopens without cutting anything.
        let seq = log.append(&write(1, 512)).await.unwrap();
        log.sync_to(seq).await.unwrap();
        drop(log);
        let (_, report) = ProtectedLog::open(dir.path(), 1, 64 << 20).unwrap();
        assert!(report.truncated_tail.is_none());
        assert_eq!(report.next_seq, seq + 1);
    }

    #[tokio::test]
    async fn torn_tail_is_cut_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = ProtectedLog::open(dir.path(), 1, 64 << 20).unwrap();
        let last = log.append(&write(1, 512)).await.unwrap();
        drop(log);
        let seg = list_segments(dir.path(), SegmentKind::ProtectedLog).unwrap().pop().unwrap().1;
        let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[0x43, 0x52]).unwrap();
        let (log, report) = ProtectedLog::open(dir.path(), 1, 64 << 20).unwrap();
        assert!(report.truncated_tail.is_some());
        assert_eq!(report.next_seq, last + 1);
        assert_eq!(log.append(&write(2, 512)).await.unwrap(), last + 1);
    }

    #[tokio::test]
    async fn full_log_waits_until_acked() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = ProtectedLog::open(dir.path(), 1, 64 << 20).unwrap();
        let mut last = 0;
        // 64 MiB capacity, 4 MiB segments: fill it with 1 MiB writes.
        for i in 0..63 {
            last = log.append(&write(i, 1 << 20)).await.unwrap();
        }
        let blocked =
            tokio::time::timeout(std::time::Duration::from_millis(300), log.append(&write(99, 1 << 20))).await;
        assert!(blocked.is_err(), "append must wait on a full log");
        log.ack(last);
        let seq = tokio::time::timeout(std::time::Duration::from_secs(5), log.append(&write(99, 1 << 20)))
            .await
            .expect("space after ack")
            .unwrap();
        assert_eq!(seq, last + 1);
    }
}

/// Storage faults at exact points (`--features failpoints`, one at a time).
#[cfg(all(test, feature = "failpoints"))]
mod failpoints {
    use super::*;

    #[tokio::test]
    async fn a_read_error_at_open_is_reported_and_cuts_nothing() {
        let scenario = fail::FailScenario::setup();
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = ProtectedLog::open(dir.path(), 1, 64 << 20).unwrap();
        let mut last = 0;
        for i in 0..3 {
            last = log.append(&RecordBody::Write { volume: 0, offset: i * 512, data: vec![1; 512] }).await.unwrap();
        }
        log.sync_to(last).await.unwrap();
        drop(log);
        let (_, path) = list_segments(dir.path(), SegmentKind::ProtectedLog).unwrap().pop().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        fail::cfg("segment-read", "2*off->return").unwrap();
        let err = ProtectedLog::open(dir.path(), 1, 64 << 20).err().expect("an I/O error must fail the open");
        assert!(format!("{err:#}").contains("read error"), "{err:#}");
        fail::remove("segment-read");
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "the log was cut on a read error");
        let (_, report) = ProtectedLog::open(dir.path(), 1, 64 << 20).unwrap();
        assert_eq!(report.next_seq, last + 1);
        scenario.teardown();
    }
}
