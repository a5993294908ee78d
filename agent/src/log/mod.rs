//! The protected-side log: an append-only, bounded list of segment files
//! holding a VPG's write stream until the recovery site has acknowledged
//! it. Appends are ordered by the caller (one writer at a time per VPG);
//! durability is group-committed by one thread that fsyncs on demand; the
//! sender reads the stream back with a `LogCursor`, and only what is
//! fsynced: the recovery journal must never hold a record this log could
//! lose in a power cut.
//!
//! Space is reserved before the caller takes its write-order lock
//! (`reserve`), so a full log makes writers wait without holding up
//! anything else; a full log applies back-pressure and never drops data.
//!
//! A *stream* is the sequence of records from one StreamStart on; each has
//! a random id, in its StreamStart and in the header of each of its
//! segments. `start_stream` begins a new one and drops every older
//! segment: a stream the recovery journal cannot continue is worth nothing.

mod cursor;
mod error;
mod open;
mod prepare;
mod spares;
pub mod state;

pub use cursor::LogCursor;
pub use error::LogError;
pub use open::{BeforeDroppingStream, LogCut, LogOpenReport};
pub use prepare::{Preallocation, Prepared, FS_RESERVE_PERCENT};
pub use state::CaptureState;

use crate::clock::{Clock, SystemClock};
use crate::error_chain::Chain;
use crate::io_failure::{Doing, IoFailure};
use crate::record::{encode_parts, encode_split, payload_len, RecordBody, RECORD_HEADER_BYTES};
use crate::segment::{create_segment_on, recycle_segment_on, SegmentKind, END_MARKER, SEGMENT_HEADER_BYTES};
use crate::storage::{RealStorage, Storage, StorageFile};
use spares::{Spare, SPARES_MAX};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Instant;
use tokio::sync::{watch, Notify};

type Result<T> = std::result::Result<T, LogError>;

/// Segments are a fraction of the capacity so retiring frees space early.
const LOG_SEGMENTS_PER_CAPACITY: u64 = 16;
const LOG_SEGMENT_BYTES_MIN: u64 = 4 << 20;
const _: () = assert!(LOG_SEGMENT_BYTES_MIN > SEGMENT_HEADER_BYTES as u64);
/// A new stream's first seq is at least the wall clock in ms times this.
const STREAM_SEQS_PER_MS: u64 = 1000;
/// Resolution of the lag-in-seconds estimate.
const LAG_SAMPLE_INTERVAL_MS: u128 = 50;

/// How much a log holds, in segments of what size, and whether it claims
/// that space ahead of need.
#[derive(Debug, Clone, Copy)]
pub struct LogSize {
    pub capacity_bytes: u64,
    /// A segment is closed once it holds this much (one record may take
    /// it over).
    pub segment_bytes: u64,
    pub preallocation: Preallocation,
}

impl LogSize {
    /// Segments a fraction of `capacity_bytes`, so retiring frees space early.
    pub fn for_capacity(capacity_bytes: u64, preallocation: Preallocation) -> Self {
        LogSize {
            capacity_bytes,
            segment_bytes: (capacity_bytes / LOG_SEGMENTS_PER_CAPACITY).max(LOG_SEGMENT_BYTES_MIN),
            preallocation,
        }
    }
}

/// What a log reaches the world through: its files and the time.
#[derive(Clone)]
pub struct LogEnv {
    pub storage: Arc<dyn Storage>,
    pub clock: Arc<dyn Clock>,
}

impl LogEnv {
    /// The kernel's file system and the wall clock.
    pub fn real() -> Self {
        LogEnv { storage: Arc::new(RealStorage), clock: Arc::new(SystemClock) }
    }
}

pub struct ProtectedLog {
    fs: Arc<dyn Storage>,
    clock: Arc<dyn Clock>,
    dir: PathBuf,
    vpg_id: u32,
    capacity_bytes: u64,
    segment_bytes: u64,
    preallocation: Preallocation,
    inner: Mutex<Inner>,
    appended: watch::Sender<u64>,
    synced: watch::Sender<u64>,
    acked: watch::Sender<u64>,
    /// The seq of the current stream's StreamStart once this process
    /// started it (0: the stream was open before, all its seqs are older
    /// than anything waited for), and how far the stream before it was
    /// acknowledged. An ack is of the current stream only.
    stream_start: watch::Sender<(u64, u64)>,
    space: Notify,
    sync_wake: Mutex<mpsc::Sender<()>>,
    /// Held through an ack's retirement of segments, so that segments go
    /// oldest first and a failed removal is put back at the front, and
    /// through a stream start, so that what is put back is of the stream
    /// it was taken from, and while a spare is added, so that the room it
    /// was checked to have is not given to another first. Taken before
    /// `inner`, never while holding it.
    retiring: Mutex<()>,
    /// Wakes the thread that makes spares (`Preallocation::Background`).
    prepare_wake: Option<Mutex<mpsc::Sender<()>>>,
    /// Held through the making of a spare: one at a time.
    preparing: Mutex<()>,
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
    current_file: Arc<dyn StorageFile>,
    /// Closed segments whose data the sync thread has not fsynced yet.
    unsynced_closed: Vec<Arc<dyn StorageFile>>,
    /// Files of retired segments, for the next rolls (`spares.rs`).
    spares: Vec<Spare>,
    /// Kept for a roll on a disk with no free block (`spares::reserve`).
    reserve: Option<Spare>,
    next_seq: u64,
    stream_id: u32,
    bytes_total: u64,
    /// Space promised to appends that have not happened yet.
    reserved_bytes: u64,
    /// A record written before the next one appended, whichever that is,
    /// and the bytes it takes (`precede_next_append`).
    first: Option<(RecordBody, u64)>,
    /// Bytes ever appended by this process, for the lag estimate.
    appended_bytes: u64,
    /// Sampled appends not yet acknowledged: (seq, when, `appended_bytes`
    /// before it). Lag is measured from the oldest.
    lag_samples: VecDeque<(u64, Instant, u64)>,
    /// Set when a failed append could not be undone: nothing more may be
    /// appended until the log is opened again (which cuts the damage).
    broken: Option<String>,
    /// A roll after a full disk failed (`leave_full_segment`): the next
    /// append rolls first, as it would with the segment full, so a file
    /// the failed roll may have left under the next seq's name is
    /// removed before any record with that seq goes elsewhere.
    roll_due: bool,
}

impl Inner {
    fn spare_bytes(&self) -> u64 {
        self.spares.iter().map(|s| s.bytes).sum()
    }

    /// What the log holds and has promised: reservations, and the record
    /// that precedes the next append.
    fn committed_bytes(&self) -> u64 {
        self.bytes_total + self.reserved_bytes + self.first.as_ref().map_or(0, |(_, bytes)| *bytes)
    }
}

/// What an append does after the disk did not take its record.
enum AfterFullDisk {
    /// Room was made: the record is written again.
    WriteAgain,
    /// Everything is acknowledged, the current segment closed if it held
    /// records: the closed segments are retired (outside the log's lock)
    /// to free their space, and the record written again.
    Retire,
    Fail,
}

/// The disk (or the user's quota on it) has no room for a write.
fn is_disk_full(e: &std::io::Error) -> bool {
    [rustix::io::Errno::NOSPC, rustix::io::Errno::DQUOT].iter().any(|n| e.raw_os_error() == Some(n.raw_os_error()))
}

/// What a protected log holds of its capacity, and what it keeps in spare
/// files, zero-filled ahead of need or retired, for its next segments.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct LogSpaceStatus {
    pub held_bytes: u64,
    pub spare_bytes: u64,
    pub capacity_bytes: u64,
    /// Set by the VPG while the log's disk did not take a record: what its
    /// high-water mark is capped to (docs/bitmap-mode.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_full_cap_bytes: Option<u64>,
}

/// Where a segment is, for a reader: records may be read from a current
/// segment up to `len`, from a closed one to its end; a retired one's file
/// may have been reused (written over) and nothing read from it counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SegmentPlace {
    Current { len: u64 },
    Closed,
    Retired,
}

/// Room in the log for one record, taken before the write-order lock.
/// Dropped unused, it is given back.
pub struct LogSpace<'a> {
    log: &'a ProtectedLog,
    bytes: u64,
}

/// Bytes `body` takes in the log, once it is known its readers accept it.
pub fn encoded_bytes(body: &RecordBody) -> Result<u64> {
    body.check().map_err(LogError::Unloggable)?;
    Ok((RECORD_HEADER_BYTES + payload_len(body)) as u64)
}

impl<'a> LogSpace<'a> {
    /// Takes `bytes` of this room for a record of its own (several records
    /// appended under one hold of the write-order lock).
    pub fn split(&mut self, bytes: u64) -> LogSpace<'a> {
        assert!(bytes <= self.bytes, "{bytes} bytes split off a reservation of {}", self.bytes);
        self.bytes -= bytes;
        LogSpace { log: self.log, bytes }
    }
}

impl Drop for LogSpace<'_> {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.log.inner.lock().expect("log lock").reserved_bytes -= self.bytes;
            self.log.space.notify_waiters();
        }
    }
}

impl ProtectedLog {
    /// Stops the process (`Storage::stop_process`): a failure that leaves
    /// this site nothing true to say, such as a fsync that failed.
    pub fn stop_process(&self, why: &str) {
        self.fs.stop_process(why);
    }

    /// Opens the log in `dir`, or starts one. `durable_through` is a seq
    /// known to have been fsynced with everything before it (0: unknown);
    /// damage found after it is a torn tail, cut without a word (see
    /// `open.rs`). `before_dropping` is told of another stream's records
    /// before they are dropped (see `BeforeDroppingStream`).
    pub fn open(
        dir: &Path,
        vpg_id: u32,
        size: LogSize,
        durable_through: u64,
        before_dropping: BeforeDroppingStream<'_>,
    ) -> Result<(Arc<Self>, LogOpenReport)> {
        Self::open_on(LogEnv::real(), dir, vpg_id, size, durable_through, before_dropping)
    }

    /// `open` in `env`.
    pub fn open_on(
        env: LogEnv,
        dir: &Path,
        vpg_id: u32,
        size: LogSize,
        durable_through: u64,
        before_dropping: BeforeDroppingStream<'_>,
    ) -> Result<(Arc<Self>, LogOpenReport)> {
        let LogSize { capacity_bytes, segment_bytes, preallocation } = size;
        let LogEnv { storage: fs, clock } = env;
        // A segment holding its header only never rolls: the roll would
        // name its new segment as the empty one is named.
        assert!(segment_bytes > SEGMENT_HEADER_BYTES as u64 && segment_bytes <= capacity_bytes, "{size:?}");
        fs.create_dir_all(dir).doing(|| format!("creating log directory {}", dir.display()))?;
        let found = open::recover(&*fs, dir, vpg_id, durable_through, before_dropping)?;
        let found_spares = spares::left_behind(&*fs, dir, preallocation != Preallocation::Off)?;
        let reserve = spares::reserve(&*fs, dir)
            .inspect_err(|e| {
                tracing::warn!(
                    "protected log {}: no roll reserve ({}): on a full disk its resync may wait for room",
                    dir.display(),
                    Chain(e)
                )
            })
            .ok();
        let fresh = found.segments.is_empty();
        let (closed, current, current_file, next_seq, stream_id) = if fresh {
            // A new stream starts at a seq above any earlier stream's
            // (unless one wrote over 1000 records per ms of its life), so
            // the recovery side does not mistake it for a replay; its id
            // tells the rest. Seqs stay below 2^53, exact in JSON.
            let (segment, file, stream_id) =
                create_stream_segment(&*fs, dir, vpg_id, clock.now_ms() * STREAM_SEQS_PER_MS, clock.now_ms())?;
            let next_seq = segment.first_seq + 1;
            (VecDeque::new(), segment, file, next_seq, stream_id)
        } else {
            let mut segments: VecDeque<Segment> =
                found.segments.into_iter().map(|(first_seq, path, bytes)| Segment { first_seq, path, bytes }).collect();
            let current = segments.pop_back().expect("not fresh");
            let file = fs.open_rw(&current.path).doing(|| format!("opening {}", current.path.display()))?;
            (segments, current, file, found.next_seq, found.stream_id)
        };
        let bytes_total = closed.iter().map(|s| s.bytes).sum::<u64>() + current.bytes;
        let (sync_tx, sync_rx) = mpsc::channel();
        let (prepare_tx, prepare_rx) = mpsc::channel();
        let log = Arc::new(ProtectedLog {
            fs,
            clock,
            dir: dir.to_path_buf(),
            vpg_id,
            capacity_bytes,
            segment_bytes,
            preallocation,
            inner: Mutex::new(Inner {
                closed,
                current,
                current_file,
                unsynced_closed: Vec::new(),
                spares: found_spares,
                reserve,
                next_seq,
                stream_id,
                bytes_total,
                reserved_bytes: 0,
                first: None,
                appended_bytes: 0,
                lag_samples: VecDeque::new(),
                broken: None,
                roll_due: false,
            }),
            // Everything found at open was fsynced there (`open.rs`).
            appended: watch::channel(next_seq - 1).0,
            synced: watch::channel(next_seq - 1).0,
            acked: watch::channel(0).0,
            stream_start: watch::channel((if fresh { next_seq - 1 } else { 0 }, 0)).0,
            space: Notify::new(),
            sync_wake: Mutex::new(sync_tx),
            retiring: Mutex::new(()),
            prepare_wake: (preallocation == Preallocation::Background).then(|| Mutex::new(prepare_tx)),
            preparing: Mutex::new(()),
        });
        // Spares past the room the log leaves them (a smaller capacity
        // than when they were made) go, as a roll would give them up.
        log.drop_outgrown_spares(&mut log.inner.lock().expect("log lock"));
        let weak = Arc::downgrade(&log);
        std::thread::Builder::new()
            .name("log-sync".into())
            .spawn(move || group_commit_loop(weak, sync_rx))
            .doing(|| "starting the log sync thread".to_string())?;
        if preallocation == Preallocation::Background {
            let weak = Arc::downgrade(&log);
            std::thread::Builder::new()
                .name("log-prepare".into())
                .spawn(move || preparation_loop(weak, prepare_rx))
                .doing(|| "starting the log's preparation thread".to_string())?;
            log.wake_preparer();
        }
        let report = LogOpenReport { fresh, cut: found.cut, next_seq, last_update: found.last_update };
        Ok((log, report))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn storage(&self) -> &dyn Storage {
        &*self.fs
    }

    /// Waits until the log has room for `body`, and holds it. Call before
    /// taking the write-order lock, so a full log holds up only writers.
    pub async fn reserve(&self, body: &RecordBody) -> Result<LogSpace<'_>> {
        self.reserve_bytes(encoded_bytes(body)?).await
    }

    /// Like `reserve`, for a record of up to `bytes` encoded (`encoded_bytes`).
    pub async fn reserve_bytes(&self, bytes: u64) -> Result<LogSpace<'_>> {
        loop {
            let notified = self.space.notified();
            {
                let mut inner = self.inner.lock().expect("log lock");
                if let Some(why) = &inner.broken {
                    return Err(LogError::Broken(why.clone()));
                }
                // With no closed segment nothing can be retired: one more
                // record is let in rather than waiting for ever.
                let fits = inner.committed_bytes() + bytes <= self.capacity_bytes;
                if fits || (inner.closed.is_empty() && inner.reserved_bytes == 0) {
                    inner.reserved_bytes += bytes;
                    return Ok(LogSpace { log: self, bytes });
                }
            }
            notified.await;
        }
    }

    /// Room for a record of up to `bytes` encoded if the log has it now
    /// (for callers that hold the write-order lock and must not wait).
    pub fn try_reserve_bytes(&self, bytes: u64) -> Option<LogSpace<'_>> {
        self.try_reserve_below(bytes, self.capacity_bytes)
    }

    /// Room for a record of up to `bytes` encoded if the log, with it and
    /// every other reservation, stays at or under `limit` bytes (bitmap
    /// mode's high-water mark). Never waits.
    pub fn try_reserve_below(&self, bytes: u64, limit: u64) -> Option<LogSpace<'_>> {
        let mut inner = self.inner.lock().expect("log lock");
        let fits = inner.committed_bytes() + bytes <= limit.min(self.capacity_bytes);
        (inner.broken.is_none() && fits).then(|| {
            inner.reserved_bytes += bytes;
            LogSpace { log: self, bytes }
        })
    }

    /// Has `body` written before the next record appended, whichever it
    /// is, in the same write: from now on nothing is appended without it
    /// before it. For a mark that must precede everything logged from
    /// here (a start's resync mark that had no room, or that the disk did
    /// not take, docs/bitmap-mode.md). Its room counts against the
    /// capacity from now on; one still pending is replaced. A new stream
    /// (`start_stream`) drops it, as it drops every record before.
    pub fn precede_next_append(&self, body: RecordBody) -> Result<()> {
        let bytes = encoded_bytes(&body)?;
        self.inner.lock().expect("log lock").first = Some((body, bytes));
        Ok(())
    }

    /// The record set by `precede_next_append`, no longer to be written
    /// (its room given back), for a caller that appends one in its place.
    pub fn take_preceding(&self) -> Option<RecordBody> {
        // No waiter is woken: the caller reserves the room for its own
        // record at once (review of helper-48).
        self.inner.lock().expect("log lock").first.take().map(|(body, _)| body)
    }

    /// Whether a record set by `precede_next_append` is still to be written.
    pub fn next_append_preceded(&self) -> bool {
        self.inner.lock().expect("log lock").first.is_some()
    }

    /// Appends a record in space reserved for it (after the record
    /// `precede_next_append` set, if one is pending). Returns its seq.
    /// Callers serialise appends per VPG; the seq order is the write
    /// order. On an error the record was not appended (a partial write is
    /// undone; if even the undo fails, the log is broken, and the pending
    /// record, whole before a torn one, may be found at the next open).
    pub fn append_reserved(&self, mut space: LogSpace<'_>, body: &RecordBody) -> Result<u64> {
        let body_len = RECORD_HEADER_BYTES + payload_len(body);
        assert!(body_len as u64 <= space.bytes, "a record of {body_len} bytes in a reservation of {}", space.bytes);
        let mut inner = self.inner.lock().expect("log lock");
        if let Some(why) = &inner.broken {
            return Err(LogError::Broken(why.clone()));
        }
        // A full segment is closed before the next record, not after the
        // last one: a failure here leaves nothing half done.
        if inner.current.bytes >= self.segment_bytes || inner.roll_due {
            self.roll(&mut inner)?;
        }
        let seq = inner.next_seq;
        // Left pending until the write succeeds (it counts against the
        // capacity meanwhile, also while `ack` runs without the lock below).
        let first = inner.first.clone();
        let first_parts = first.as_ref().map(|(b, _)| encode_split(seq, self.vpg_id, b));
        let body_seq = seq + first.is_some() as u64;
        let (header, payload) = encode_split(body_seq, self.vpg_id, body);
        let mut parts: Vec<&[u8]> = Vec::with_capacity(4);
        if let Some((h, p)) = &first_parts {
            parts.extend([&h[..], &p[..]]);
        }
        parts.extend([&header[..], &payload[..]]);
        let len: usize = parts.iter().map(|p| p.len()).sum();
        // Accounting that went wrong would wrap here, silently, in a
        // release build: the log would then never find itself full.
        assert!(inner.reserved_bytes >= space.bytes, "{} reserved, {} released", inner.reserved_bytes, space.bytes);
        inner.reserved_bytes -= space.bytes;
        let unused = std::mem::take(&mut space.bytes) - body_len as u64;
        // Room made on a full disk (`leave_full_segment`), at most twice: a
        // segment retired may stay as a spare, given back on the next try.
        let mut tries = 0;
        loop {
            let at = inner.current.bytes;
            let written = (|| {
                // Half a record reaches the file, then the disk is full.
                fail::fail_point!("log-append-torn", |_| {
                    let mut torn = parts[..parts.len() - 1].to_vec();
                    torn.push(&payload[..payload.len() / 2]);
                    let _ = inner.current_file.write_at(&torn, at);
                    Err(std::io::Error::from_raw_os_error(28))
                });
                // The end marker after it: the file may go on with bytes of
                // its earlier use (`spares.rs`), which a reader must not take
                // for records. The next record is written over it. The marker
                // first, beyond the last one: a write cut short then never
                // leaves a whole record, with or without its marker.
                inner.current_file.write_at(&[&END_MARKER], at + len as u64)?;
                inner.current_file.write_at(&parts, at)
            })();
            let Err(e) = written else { break };
            let path = inner.current.path.display().to_string();
            // Undo a partial write, so later records never follow garbage.
            let good = inner.current.bytes;
            if let Err(undo) = inner.current_file.set_len(good) {
                let why = format!("appending seq {body_seq} to {path} failed ({e}) and could not be undone ({undo})");
                tracing::error!("{why}");
                inner.broken = Some(why);
            } else if tries < 2 && is_disk_full(&e) {
                tries += 1;
                match self.leave_full_segment(&mut inner, len as u64) {
                    AfterFullDisk::WriteAgain => continue,
                    AfterFullDisk::Retire => {
                        // (`ack` takes the retiring lock, then the log's.)
                        drop(inner);
                        self.ack(self.acked_seq());
                        inner = self.inner.lock().expect("log lock");
                        // Appends are serialised by the caller: the seq is
                        // still the next.
                        debug_assert_eq!(inner.next_seq, seq);
                        if inner.broken.is_none() {
                            continue;
                        }
                    }
                    AfterFullDisk::Fail => {}
                }
            }
            drop(inner);
            self.space.notify_waiters();
            return Err(LogError::Append { seq: body_seq, path, source: e });
        }
        inner.next_seq = body_seq + 1;
        inner.first = None;
        inner.current.bytes += len as u64;
        inner.bytes_total += len as u64;
        let now = Instant::now();
        let sample_due = inner
            .lag_samples
            .back()
            .is_none_or(|(_, t, _)| now.duration_since(*t).as_millis() >= LAG_SAMPLE_INTERVAL_MS);
        if sample_due {
            let before = inner.appended_bytes;
            inner.lag_samples.push_back((seq, now, before));
        }
        inner.appended_bytes += len as u64;
        drop(inner);
        self.appended.send_replace(body_seq);
        // The reservation is gone: room (or "no reservation left") for a
        // writer that waits.
        let _ = unused;
        self.space.notify_waiters();
        Ok(body_seq)
    }

    /// Reserves and appends (for callers that hold no lock while waiting).
    pub async fn append(&self, body: &RecordBody) -> Result<u64> {
        let space = self.reserve(body).await?;
        self.append_reserved(space, body)
    }

    /// The disk did not take a record of `len` bytes in the current
    /// segment: what to do. With a spare that holds it (the largest, at
    /// the size a roll cuts it to), a segment that holds records is closed
    /// short, to be retired and its space freed once the recovery side has
    /// it, and the record goes into the spare, whose blocks are on the disk
    /// already. Otherwise the largest spare is given back to the disk, for
    /// the current segment to grow into (its file stays the one the sender
    /// reads). With no spare, a segment whose records are all acknowledged
    /// (the log holds nothing else: one that never filled on a small disk)
    /// is closed and retired at once, and the record written again; otherwise
    /// nothing is done: a new file would take what the failed record's undo
    /// gave back, which bitmap mode needs for its own files.
    fn leave_full_segment(&self, inner: &mut Inner, len: u64) -> AfterFullDisk {
        let holds_records = inner.current.bytes > SEGMENT_HEADER_BYTES as u64;
        let Some(i) = (0..inner.spares.len()).max_by_key(|i| inner.spares[*i].bytes) else {
            // Everything acknowledged: what the log holds can go. A closed
            // segment an ack has not retired yet (the roll before this
            // record closed it) goes as the current one would.
            let acked = inner.next_seq - 1 <= self.acked_seq();
            if acked && holds_records {
                // The new segment's header over the reserve: a disk with
                // no free block takes it (`roll` takes the last spare).
                let reserve = inner.reserve.as_ref().map(|r| r.path.clone());
                inner.spares.extend(inner.reserve.take());
                return match self.roll(inner) {
                    Ok(()) => AfterFullDisk::Retire,
                    Err(e) => {
                        tracing::warn!("closing an acknowledged segment after its disk was full: {}", Chain(&e));
                        // Not taken (the roll failed before it): still the reserve, not a spare.
                        if inner.spares.last().is_some_and(|s| Some(&s.path) == reserve.as_ref()) {
                            inner.reserve = inner.spares.pop();
                        }
                        inner.roll_due = true;
                        AfterFullDisk::Fail
                    }
                };
            }
            if acked && !inner.closed.is_empty() {
                return AfterFullDisk::Retire;
            }
            return AfterFullDisk::Fail;
        };
        let need = SEGMENT_HEADER_BYTES as u64 + len + END_MARKER.len() as u64;
        let spare = inner.spares.remove(i);
        if holds_records && spare.bytes.min(self.segment_bytes) >= need {
            // `roll` takes the last.
            inner.spares.push(spare);
            let path = inner.current.path.clone();
            return match self.roll(inner) {
                Ok(()) => AfterFullDisk::WriteAgain,
                Err(e) => {
                    tracing::warn!("closing {} short after its disk was full: {}", path.display(), Chain(&e));
                    inner.roll_due = true;
                    AfterFullDisk::Fail
                }
            };
        }
        match self.fs.remove_file(&spare.path) {
            Ok(()) => {
                tracing::warn!(
                    "protected log: its disk is full; spare segment {} ({} bytes) given back to it",
                    spare.path.display(),
                    spare.bytes
                );
                AfterFullDisk::WriteAgain
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => AfterFullDisk::WriteAgain,
            Err(e) => {
                tracing::warn!("removing spare segment {}: {}", spare.path.display(), Chain(&e));
                // Still on the disk: still counted.
                inner.spares.push(spare);
                AfterFullDisk::Fail
            }
        }
    }

    fn roll(&self, inner: &mut Inner) -> Result<()> {
        let first_seq = inner.next_seq;
        assert!(first_seq > inner.current.first_seq, "rolling an empty segment (named {first_seq})");
        remove_failed_creation(&*self.fs, &self.dir, first_seq)?;
        let stream_id = inner.stream_id;
        let (path, file) = match inner.spares.pop() {
            Some(spare) => {
                let kind = SegmentKind::ProtectedLog;
                // A segment ends past its size by up to one record, and a
                // reused file would keep the largest length it ever had,
                // uncounted: it is cut to the size. A segment written over
                // it reaches the size before it is closed, so no closed
                // segment holds bytes of an earlier use.
                let spare_path = &spare.path;
                let keep = self.segment_bytes;
                match recycle_segment_on(&*self.fs, spare_path, keep, kind, self.vpg_id, first_seq, stream_id) {
                    Ok(made) => made,
                    Err(e) => {
                        tracing::warn!(
                            "protected log: reusing {}: {}; creating a new file",
                            spare.path.display(),
                            Chain(&e)
                        );
                        let _ = self.fs.remove_file(&spare.path);
                        new_segment(&*self.fs, &self.dir, self.vpg_id, first_seq, stream_id, &[])?
                    }
                }
            }
            None => new_segment(&*self.fs, &self.dir, self.vpg_id, first_seq, stream_id, &[])?,
        };
        let bytes = SEGMENT_HEADER_BYTES as u64;
        let old = std::mem::replace(&mut inner.current, Segment { first_seq, path, bytes });
        inner.roll_due = false;
        let old_file = std::mem::replace(&mut inner.current_file, file);
        inner.unsynced_closed.push(old_file);
        inner.closed.push_back(old);
        inner.bytes_total += bytes;
        self.drop_outgrown_spares(inner);
        Ok(())
    }

    /// Starts a new stream at a seq of at least `min_seq` (above anything
    /// the recovery journal holds): its StreamStart, under a new stream id,
    /// is made durable as the first record of a new segment, and every
    /// older segment is dropped. Returns the StreamStart's seq. Call under
    /// the write-order lock.
    pub fn start_stream(&self, min_seq: u64) -> Result<u64> {
        let _retiring = self.retiring.lock().expect("retiring lock");
        let mut inner = self.inner.lock().expect("log lock");
        // Above the current segment's name too: an empty current segment
        // (a stop right after a roll) is named after the next seq.
        let seq = inner.next_seq.max(min_seq).max(inner.current.first_seq + 1);
        remove_failed_creation(&*self.fs, &self.dir, seq)?;
        let (segment, file, stream_id) =
            create_stream_segment(&*self.fs, &self.dir, self.vpg_id, seq, self.clock.now_ms())?;
        let size = segment.bytes;
        let mut dropped: Vec<Segment> = inner.closed.drain(..).collect();
        dropped.push(std::mem::replace(&mut inner.current, segment));
        inner.current_file = file;
        inner.unsynced_closed.clear();
        inner.next_seq = seq + 1;
        inner.stream_id = stream_id;
        inner.bytes_total = size;
        inner.lag_samples.clear();
        inner.broken = None;
        inner.roll_due = false;
        inner.first = None;
        drop(inner);
        // The new stream is in place: what follows may fail without undoing
        // it (an old segment left behind is dropped at the next open). A
        // log that preallocates keeps the files as spares, as it keeps
        // retired ones, rather than zero-fill them again.
        for seg in &dropped {
            if self.preallocation != Preallocation::Off && self.keep_as_spare(seg) {
                continue;
            }
            if let Err(e) = self.fs.remove_file(&seg.path) {
                tracing::error!("dropping log segment {} of the old stream: {e}", seg.path.display());
            }
        }
        if let Err(e) = self.fs.sync_dir(&self.dir) {
            tracing::error!("syncing directory {}: {e}", self.dir.display());
        }
        self.appended.send_replace(seq);
        self.synced.send_if_modified(|s| std::mem::replace(s, seq) != seq);
        self.stream_start.send_replace((seq, self.acked_seq()));
        self.space.notify_waiters();
        self.wake_preparer();
        tracing::info!(stream_id, seq, dropped = dropped.len(), "protected log: a new stream starts");
        Ok(seq)
    }

    /// The id of the stream the log holds now.
    pub fn stream_id(&self) -> u32 {
        self.inner.lock().expect("log lock").stream_id
    }

    /// Last seq appended (0 when the stream is empty).
    pub fn appended_seq(&self) -> u64 {
        *self.appended.borrow()
    }

    pub fn watch_appended(&self) -> watch::Receiver<u64> {
        self.appended.subscribe()
    }

    /// Last seq fsynced with everything before it.
    pub fn synced_seq(&self) -> u64 {
        *self.synced.borrow()
    }

    pub fn watch_synced(&self) -> watch::Receiver<u64> {
        self.synced.subscribe()
    }

    pub fn acked_seq(&self) -> u64 {
        *self.acked.borrow()
    }

    pub fn watch_acked(&self) -> watch::Receiver<u64> {
        self.acked.subscribe()
    }

    /// Waits until the recovery side acknowledged `seq`: true; or until a
    /// new stream started past it, so its record will never be
    /// acknowledged: false. (An ack of the new stream's seqs says nothing
    /// about a dropped record with a smaller seq.)
    pub async fn wait_acked(&self, seq: u64) -> Result<bool> {
        let mut acked = self.acked.subscribe();
        let mut started = self.stream_start.subscribe();
        loop {
            let (start, acked_before) = *started.borrow_and_update();
            if start > seq {
                return Ok(acked_before >= seq);
            }
            if *acked.borrow_and_update() >= seq {
                return Ok(true);
            }
            tokio::select! {
                r = acked.changed() => r.map_err(|_| LogError::Closed)?,
                r = started.changed() => r.map_err(|_| LogError::Closed)?,
            }
        }
    }

    /// Waits until every record up to `seq` is fsynced in this log.
    pub async fn sync_to(&self, seq: u64) -> Result<()> {
        let mut rx = self.synced.subscribe();
        if *rx.borrow() >= seq {
            return Ok(());
        }
        let _ = self.sync_wake.lock().expect("sync wake lock").send(());
        rx.wait_for(|s| *s >= seq).await.map_err(|_| LogError::Closed)?;
        Ok(())
    }

    /// The recovery site has `seq` and everything before it durable:
    /// retire segments that hold nothing newer.
    pub fn ack(&self, seq: u64) {
        let _retiring = self.retiring.lock().expect("retiring lock");
        let mut retired = VecDeque::new();
        {
            let mut inner = self.inner.lock().expect("log lock");
            if seq >= inner.next_seq || seq > self.synced_seq() {
                // An ack beyond what this log holds durably: the journal is
                // ahead of a log that was rebuilt. Never retire on it.
                tracing::warn!(seq, next = inner.next_seq, "peer acknowledged a seq this log does not hold durably");
                return;
            }
            while !inner.closed.is_empty() {
                let next_first = inner.closed.get(1).map_or(inner.current.first_seq, |s| s.first_seq);
                if next_first > seq + 1 {
                    break;
                }
                let seg = inner.closed.pop_front().expect("non-empty");
                assert!(inner.bytes_total >= seg.bytes, "{} bytes in all, {} retired", inner.bytes_total, seg.bytes);
                inner.bytes_total -= seg.bytes;
                retired.push_back(seg);
            }
            while inner.lag_samples.front().is_some_and(|(s, _, _)| *s <= seq) {
                inner.lag_samples.pop_front();
            }
        }
        let any_retired = !retired.is_empty();
        while let Some(seg) = retired.pop_front() {
            if self.keep_as_spare(&seg) {
                continue;
            }
            let removed = match self.fs.remove_file(&seg.path) {
                // Gone already (by hand, or a removal whose success was
                // not reported): retired all the same.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    tracing::warn!("retiring log segment {}: it is gone already", seg.path.display());
                    Ok(())
                }
                other => other,
            };
            if let Err(e) = removed {
                // Kept, with every later one: a segment left on disk that
                // the log forgot would sit before a gap at the next open,
                // which would cut the log there.
                tracing::error!(
                    "retiring log segment {}: {e}; retried at the next acknowledgement",
                    seg.path.display()
                );
                let mut inner = self.inner.lock().expect("log lock");
                for kept in std::iter::once(seg).chain(retired.drain(..)).rev() {
                    inner.bytes_total += kept.bytes;
                    inner.closed.push_front(kept);
                }
            }
        }
        self.acked.send_if_modified(|a| {
            let moved = seq > *a;
            *a = (*a).max(seq);
            moved
        });
        if any_retired {
            self.space.notify_waiters();
            self.wake_preparer();
            self.remake_reserve();
        }
    }

    /// Makes the roll reserve again once a roll took it, when segments
    /// were retired (the disk may have room again). Quiet: tried at each
    /// retire until it is made.
    fn remake_reserve(&self) {
        let kept = self.inner.lock().expect("log lock").reserve.as_ref().map(|r| r.path.clone());
        if kept.is_some_and(|path| self.fs.exists(&path)) {
            return;
        }
        if let Ok(reserve) = spares::reserve(&*self.fs, &self.dir) {
            self.inner.lock().expect("log lock").reserve = Some(reserve);
        }
    }

    /// Renames a retired segment's file into the spares, if the log has
    /// room for it (`spares.rs`); false if it did not (remove it then).
    /// Called under `retiring`, so only a roll takes spares meanwhile.
    fn keep_as_spare(&self, seg: &Segment) -> bool {
        // Counted at its length, which may pass the segment size by up to
        // a record until a roll cuts it (see `roll`): spares never take
        // the log past its capacity on disk.
        let Ok(bytes) = self.fs.size_of(&seg.path) else { return false };
        {
            let inner = self.inner.lock().expect("log lock");
            let counted = self.preallocation == Preallocation::Off && inner.spares.len() >= SPARES_MAX;
            if counted || self.spare_room(&inner) < bytes {
                return false;
            }
        }
        let path = spares::spare_path(&self.dir, seg.first_seq);
        if let Err(e) = self.fs.rename(&seg.path, &path) {
            tracing::warn!("protected log: keeping {} for reuse: {e}", seg.path.display());
            return false;
        }
        self.inner.lock().expect("log lock").spares.push(Spare { path, bytes });
        true
    }

    /// Bytes the log leaves for more spares: its capacity less what it
    /// holds, the unwritten rest of its current segment (a reused file is
    /// that long already) and its spares.
    fn spare_room(&self, inner: &Inner) -> u64 {
        self.capacity_bytes.saturating_sub(self.held_with_spares(inner))
    }

    /// Whether the log is broken, or its capacity leaves no room for
    /// another spare segment.
    fn has_no_room_for_a_spare(&self, inner: &Inner) -> bool {
        inner.broken.is_some() || self.spare_room(inner) < self.segment_bytes
    }

    /// What the log's files take on disk, or will once its current
    /// segment is full. Reservations are not in it: a record reserved goes
    /// into the rest of the current segment or into a spare, both counted
    /// already (counted twice, a roll would give up spares still needed).
    fn held_with_spares(&self, inner: &Inner) -> u64 {
        let rest_of_current = self.segment_bytes.saturating_sub(inner.current.bytes);
        inner.bytes_total + rest_of_current + inner.spare_bytes()
    }

    /// Removes spares the log has outgrown: its segments pass their size by
    /// up to a record each, so a log that takes a spare at each roll can
    /// still grow into space its spares were counted in.
    fn drop_outgrown_spares(&self, inner: &mut Inner) {
        while self.held_with_spares(inner) > self.capacity_bytes {
            let Some(spare) = inner.spares.pop() else { return };
            if !spares::remove(&*self.fs, &spare.path) {
                // Still on disk: still counted, tried again at the next roll.
                inner.spares.push(spare);
                return;
            }
        }
    }

    /// Makes one zero-filled spare (`prepare.rs`) if the log and its file
    /// system have room for it. Called by the log's own
    /// thread with `Preallocation::Background`, by its owner with
    /// `ByCaller`; never with `Off`.
    pub fn prepare_spare(&self) -> Result<Prepared> {
        assert_ne!(self.preallocation, Preallocation::Off, "a spare prepared for a log that does not preallocate");
        let _one = self.preparing.lock().expect("preparing lock");
        let bytes = self.segment_bytes;
        let name = {
            let inner = self.inner.lock().expect("log lock");
            if self.has_no_room_for_a_spare(&inner) {
                return Ok(Prepared::LogFull);
            }
            (0..).find(|n| {
                let (_, spare) = spares::prepared_names(&self.dir, *n);
                !inner.spares.iter().any(|s| s.path == spare)
            })
        };
        let (tmp, spare) = spares::prepared_names(&self.dir, name.expect("a free name"));
        {
            let _turn = prepare::disk_claim();
            // The wait for the turn may be long: the log may have filled
            // (or broken) meanwhile, and a file made for nothing would
            // hold the other logs' turns.
            if self.has_no_room_for_a_spare(&self.inner.lock().expect("log lock")) {
                return Ok(Prepared::LogFull);
            }
            if !prepare::fs_has_room(&*self.fs, &self.dir, bytes)? {
                return Ok(Prepared::DiskReserve);
            }
            prepare::zero_fill(&*self.fs, &tmp, bytes)?;
        }
        let named = {
            // Named under `retiring`, as a retired segment is kept: the
            // room checked cannot go to a retired segment meanwhile.
            let _retiring = self.retiring.lock().expect("retiring lock");
            let mut inner = self.inner.lock().expect("log lock");
            if self.spare_room(&inner) < bytes {
                Ok(Prepared::LogFull)
            } else {
                // Its name needs no directory sync here: a roll syncs the
                // directory before it writes a spare (`recycle_segment_on`),
                // and a power cut before that leaves a temporary file,
                // removed at open.
                self.fs
                    .rename(&tmp, &spare)
                    .map(|()| inner.spares.push(Spare { path: spare.clone(), bytes }))
                    .map(|()| Prepared::Made)
            }
        };
        // A file not named is removed with no lock held: a stream start
        // or an ack does not wait for it.
        if !matches!(named, Ok(Prepared::Made)) {
            spares::remove(&*self.fs, &tmp);
        }
        named.map_err(|e| IoFailure::new(format!("naming {}", spare.display()), e).into())
    }

    fn wake_preparer(&self) {
        if let Some(wake) = &self.prepare_wake {
            let _ = wake.lock().expect("prepare wake lock").send(());
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

    /// Why the log takes no more records, if it does not.
    pub fn broken(&self) -> Option<String> {
        self.inner.lock().expect("log lock").broken.clone()
    }

    /// Bytes the log holds on disk, and its capacity.
    pub fn usage(&self) -> (u64, u64) {
        (self.inner.lock().expect("log lock").bytes_total, self.capacity_bytes)
    }

    /// How much the log could hold with its disk as it is now: what it
    /// holds, its spares, and the file system's free space beyond the
    /// reserve spares leave (`prepare::FS_RESERVE_PERCENT`).
    pub fn disk_takes(&self) -> Result<u64> {
        let space = self
            .fs
            .space(&self.dir)
            .doing(|| format!("asking the file system of {} for its free space", self.dir.display()))?;
        let reserve = space.total / 100 * prepare::FS_RESERVE_PERCENT;
        let status = self.space_status();
        Ok(status.held_bytes + status.spare_bytes + space.available.saturating_sub(reserve))
    }

    /// What the log holds, what its spares hold, and its capacity.
    pub fn space_status(&self) -> LogSpaceStatus {
        let inner = self.inner.lock().expect("log lock");
        LogSpaceStatus {
            held_bytes: inner.bytes_total,
            spare_bytes: inner.spare_bytes(),
            capacity_bytes: self.capacity_bytes,
            disk_full_cap_bytes: None,
        }
    }

    /// Where the segment named `first_seq` is now (see `SegmentPlace`).
    pub(crate) fn place_of(&self, first_seq: u64) -> SegmentPlace {
        let inner = self.inner.lock().expect("log lock");
        if inner.current.first_seq == first_seq {
            SegmentPlace::Current { len: inner.current.bytes }
        } else if inner.closed.binary_search_by_key(&first_seq, |s| s.first_seq).is_ok() {
            SegmentPlace::Closed
        } else {
            SegmentPlace::Retired
        }
    }

    /// First seqs of every segment, oldest first, current last.
    pub(crate) fn segment_starts(&self) -> Vec<u64> {
        let inner = self.inner.lock().expect("log lock");
        inner.closed.iter().map(|s| s.first_seq).chain([inner.current.first_seq]).collect()
    }

    pub fn vpg_id(&self) -> u32 {
        self.vpg_id
    }

    /// Whether a receiver that holds stream `their_stream` through seq
    /// `their_seq` can be sent this log from `their_seq + 1` on: it holds
    /// this log's stream and the log goes on right after it, or this log's
    /// stream begins after what it holds. Makes everything appended durable
    /// first (only that is sent). An error that `is_damage` means the log
    /// cannot be read there.
    pub async fn continues(self: &Arc<Self>, their_seq: u64, their_stream: u32) -> Result<bool> {
        self.sync_to(self.appended_seq()).await?;
        let same_stream = their_stream == self.stream_id();
        let mut cursor = self.cursor(their_seq + 1);
        Ok(match cursor.peek()? {
            Some(rec) => match rec.body {
                RecordBody::StreamStart { stream_id, .. } => stream_id == cursor.stream_id(),
                _ => same_stream && rec.seq == their_seq + 1,
            },
            // Nothing unsent: fine if the receiver is exactly at the end.
            None => same_stream && self.synced_seq() == their_seq,
        })
    }

    pub fn cursor(self: &Arc<Self>, from_seq: u64) -> LogCursor {
        LogCursor::new(self.clone(), from_seq)
    }
}

/// Removes a segment named `first_seq` (at or past the next seq, so it
/// holds no record of the log) that a failed roll or stream start of this
/// process left behind, so the next one does not find its name taken.
fn remove_failed_creation(fs: &dyn Storage, dir: &Path, first_seq: u64) -> Result<()> {
    let path = crate::segment::segment_path(dir, SegmentKind::ProtectedLog, first_seq);
    if fs.exists(&path) {
        tracing::warn!("protected log: removing {}, left by a creation that failed", path.display());
        fs.remove_file(&path).doing(|| format!("removing {}", path.display()))?;
    }
    Ok(())
}

/// A random, non-zero stream id.
fn new_stream_id() -> u32 {
    let mut b = [0u8; 4];
    loop {
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).expect("system randomness");
        let id = u32::from_le_bytes(b);
        if id != 0 {
            return id;
        }
    }
}

/// The first segment of a new stream, durable with its StreamStart at
/// `seq` (taken at `time_ms`), under a new stream id.
fn create_stream_segment(
    fs: &dyn Storage,
    dir: &Path,
    vpg_id: u32,
    seq: u64,
    time_ms: u64,
) -> Result<(Segment, Arc<dyn StorageFile>, u32)> {
    let stream_id = new_stream_id();
    let mut bytes = Vec::new();
    encode_parts(seq, vpg_id, &RecordBody::StreamStart { time_ms, stream_id }, &mut bytes);
    let (path, file) = new_segment(fs, dir, vpg_id, seq, stream_id, &bytes)?;
    let size = (SEGMENT_HEADER_BYTES + bytes.len()) as u64;
    Ok((Segment { first_seq: seq, path, bytes: size }, file, stream_id))
}

/// A new segment file holding `first` (see `create_segment_on`), opened to
/// be written in place (the log writes at its own offsets). A failure after
/// the segment was named leaves it for `remove_failed_creation`.
fn new_segment(
    fs: &dyn Storage,
    dir: &Path,
    vpg_id: u32,
    first_seq: u64,
    stream_id: u32,
    first: &[u8],
) -> Result<(PathBuf, Arc<dyn StorageFile>)> {
    let (path, _) = create_segment_on(fs, dir, SegmentKind::ProtectedLog, vpg_id, first_seq, stream_id, first)?;
    let file = fs.open_rw(&path).doing(|| format!("opening {}", path.display()))?;
    Ok((path, file))
}

/// Makes spares while there is room, each time it is woken (at open, and
/// when segments are retired or dropped). A failure is said once until a
/// spare is made again: the log works without spares.
fn preparation_loop(log: std::sync::Weak<ProtectedLog>, wake: mpsc::Receiver<()>) {
    let mut failing = false;
    while wake.recv().is_ok() {
        while wake.try_recv().is_ok() {}
        let started = Instant::now();
        let mut made = 0u64;
        loop {
            let Some(log) = log.upgrade() else { return };
            match log.prepare_spare() {
                Ok(Prepared::Made) => {
                    made += 1;
                    failing = false;
                }
                Ok(stop) => {
                    if made > 0 {
                        let why = match stop {
                            Prepared::DiskReserve => "; stopped short of the capacity to keep the disk's reserve free",
                            _ => "",
                        };
                        tracing::info!(
                            "protected log {}: {made} spare segment(s) of {} MiB zero-filled ahead of need in {:.1} s{why}",
                            log.dir.display(),
                            log.segment_bytes >> 20,
                            started.elapsed().as_secs_f64()
                        );
                    }
                    break;
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(
                            "protected log {}: making a spare segment ahead of need: {}; the log goes on without",
                            log.dir.display(),
                            Chain(&e)
                        );
                    }
                    failing = true;
                    break;
                }
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
                log.fs.stop_process(&format!("fsync of the protected log failed: {e}"));
                return;
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
mod tests;
