//! The link scenario: both sides in one process, each on a faulty storage
//! of its own.
//! - The protected log takes writes and fsyncs them.
//! - A sender's session says hello, learns the journal's durable seq and
//!   stream (what the recovery side's welcome says), and streams the log
//!   from just after it as framed batches: the real cursor, batch encoder,
//!   frame header and checksum.
//! - The link carries the batches one way and the journal's answers the
//!   other. It may reorder, duplicate, drop or garble any of them, or be
//!   cut, which ends the session.
//! - The recovery side reads each frame, decodes its batch and appends it
//!   through `journal::intake` (the rules `Journal::append` runs), then
//!   answers with an ack of its durable seq or a refusal.
//! - Either side is killed or loses power at any step, and may die inside
//!   a step or while it opens.
//!
//! After each step, what must hold:
//! - the journal takes only records the protected side appended and
//!   fsynced, each byte for byte; it refuses a batch only for a fault (of
//!   its storage, or of the link in that session);
//! - a frame the sender built is taken by the receiver unless the link
//!   garbled it; an answer the receiver sent reaches the sender likewise;
//! - an ack never runs ahead of what the journal holds;
//! - after any stop each side opens again (at worst once faults stop): the
//!   journal holds every record it acknowledged, and the log every record
//!   it fsynced, in its stream, and continues the journal's stream:
//!   replication never starts over (no new stream, no new copy);
//! - at the end, once faults stop and the link heals, the journal catches
//!   up with the log: every record fsynced on the protected side is in the
//!   journal, as it was appended.

use super::harness::{wait_unless_died, Checked, Harness, Stop, Waited, OPEN_ATTEMPTS};
use super::harness::{DEATH_PER_MILLE, FAULT_PER_MILLE, OPEN_DEATH_PER_MILLE};
use super::rng::SimRng;
use super::{short, SeedReport, Violation};
use crate::clock::ManualClock;
use crate::error_chain::Chain;
use crate::journal::index::JournalIndex;
use crate::journal::segments::{Rolling, SegmentFiles};
use crate::journal::{intake, JournalError, JournalMeta, Refusal};
use crate::log::{encoded_bytes, LogCursor, LogEnv, LogError, LogSize, Preallocation, ProtectedLog};
use crate::record::{Record, RecordBody};
use crate::storage::sim::SimStorage;
use crate::storage::Storage;
use crate::transfer::{recv_control, send_control};
use crate::wire::batch::{BatchBuilder, BatchDecoder, BatchEncoder, BATCH_RAW_BYTES_TARGET, BATCH_RECORDS_MAX};
use crate::wire::frame::{frame_header, read_frame_into, FrameKind};
use crate::wire::message::{ControlMessage, VolumeInfo};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

const VPG_ID: u32 = 0x11_5EED;
const STEPS: u64 = 300;
const LOG_SIZE: LogSize =
    LogSize { capacity_bytes: 8 << 20, segment_bytes: 64 << 10, preallocation: Preallocation::Off };
/// Small journal segments, so that a batch often starts a new one.
const ROLLING: Rolling = Rolling { segment_bytes: 48 << 10, segment_age: Duration::from_secs(1 << 30) };
const VOLUMES: usize = 3;
/// Small volumes, so that writes overlap and a restore compares quickly.
const VOLUME_BYTES: u64 = 4 << 20;
/// Batches in flight before the sender waits for acks.
const INFLIGHT_FRAMES_MAX: usize = 8;
/// While link faults are on, the chance a delivery goes wrong (dropped,
/// duplicated, reordered, garbled: one in four each).
const LINK_FAULT_PER_MILLE: u64 = 250;
/// One welcome in this many is stale (see `welcome_seq`).
const STALE_WELCOME_ONE_IN: u64 = 3;
/// Sends and deliveries the healed link gets at the end to catch up.
const CATCH_UP_ROUNDS: usize = 2000;

pub(super) fn run(seed: u64) -> Result<SeedReport, Box<Violation>> {
    let mut run = Run::new(seed);
    let out = runtime().block_on(run.go());
    out.map(|()| run.report())
}

pub(super) fn trace_of(seed: u64) -> Vec<String> {
    let mut run = Run::new(seed);
    let _ = runtime().block_on(run.go());
    run.h.trace
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime")
}

/// A frame on the link, and whether the link garbled it.
#[derive(Clone)]
struct Frame {
    bytes: Vec<u8>,
    garbled: bool,
}

/// A sender's session: what the hello announced, where its cursor is, and
/// the link's two directions.
struct Session {
    stream: u32,
    cursor: LogCursor,
    to_recovery: VecDeque<Frame>,
    to_protected: VecDeque<Frame>,
    /// The recovery side refused a batch and hung up: nothing more of
    /// this session reaches it.
    recovery_hung_up: bool,
}

/// What the simulator knows must be true of both sides.
#[derive(Default)]
struct Model {
    /// The log's stream, which never changes.
    stream: u32,
    /// Every record of the stream the log holds or held, by seq: its
    /// encoding (None for the StreamStart the log writes itself).
    appended: BTreeMap<u64, Option<Vec<u8>>>,
    /// The seqs of the checkpoints among them.
    checkpoints: BTreeSet<u64>,
    next_seq: u64,
    /// The log fsynced every record through here.
    durable_seq: u64,
    /// What the agent's activity log last stored as fsynced, which the
    /// next open gets: it lags `durable_seq`.
    durable_hint: u64,
    /// The journal said it holds every record through here (an ack, or a
    /// welcome after an open).
    journal_acked: u64,
}

/// The recovery side: the journal's segment files and index.
struct RecoverySide {
    fs: SimStorage,
    dir: PathBuf,
    meta: JournalMeta,
    files: Option<SegmentFiles>,
    index: JournalIndex,
}

struct Run {
    /// The protected side's storage is `h.fs`.
    h: Harness,
    clock: Arc<ManualClock>,
    log_dir: PathBuf,
    log: Option<Arc<ProtectedLog>>,
    rec: RecoverySide,
    session: Option<Session>,
    link_faults_on: bool,
    model: Model,
}

impl Run {
    fn new(seed: u64) -> Self {
        let rng = SimRng::new(seed ^ 0x11E4_7A11_5EED_0003);
        let volumes = (0..VOLUMES).map(|i| VolumeInfo { name: format!("v{i}"), size: VOLUME_BYTES }).collect();
        Run {
            h: Harness::new(seed, rng, SimStorage::new(seed ^ 0x11E4), "link: "),
            clock: Arc::new(ManualClock::starting_at(1_700_000_000_000)),
            log_dir: PathBuf::from("/sim/log"),
            log: None,
            rec: RecoverySide {
                fs: SimStorage::new(seed ^ 0x11E5),
                dir: PathBuf::from("/sim/journal"),
                meta: JournalMeta { vpg: "sim".into(), vpg_id: VPG_ID, volumes },
                files: None,
                index: JournalIndex::new(VOLUMES),
            },
            session: None,
            link_faults_on: false,
            model: Model::default(),
        }
    }

    /// Both sides' counts.
    fn report(&self) -> SeedReport {
        let mut report = self.h.report();
        let rec = self.rec.fs.stats();
        report.faults += rec.faults;
        report.crashes += rec.crashes;
        report.power_cuts += rec.power_cuts;
        report.torn_tails += rec.torn_tails;
        report.failed_syncs += rec.failed_syncs;
        report.failed_removals += rec.failed_removals;
        report
    }

    fn log(&self) -> Arc<ProtectedLog> {
        self.log.clone().expect("the log is open")
    }

    async fn go(&mut self) -> Checked {
        self.open_first().await?;
        while self.h.step < STEPS {
            self.h.step += 1;
            self.h.report.steps += 1;
            self.clock.advance_ms(self.h.rng.below(50));
            if let Some(why) = self.log().broken() {
                self.h.note(format!("the log is broken ({why}): kill the protected process"));
                self.restart_protected(Stop::Crash).await?;
                continue;
            }
            // A death inside the step, on one side or the other (each as
            // often as in the one-sided scenarios would leave a session
            // too few steps to carry anything).
            if self.h.rng.below(2) == 0 {
                self.h.maybe_die();
            } else {
                self.maybe_recovery_dies();
            }
            match self.h.rng.below(100) {
                0..=27 => self.append_write()?,
                28..=31 => self.append_marker()?,
                32..=41 => self.sync().await?,
                42..=56 => self.send().await?,
                57..=74 => self.deliver_batch().await?,
                75..=84 => self.deliver_answer().await?,
                85 => self.end_session("the link is cut"),
                86..=88 => self.toggle_faults(),
                89..=92 => self.toggle_link_faults(),
                93..=94 => self.restart_protected(Stop::Crash).await?,
                95 => self.restart_protected(Stop::PowerCut).await?,
                96..=97 => self.restart_recovery(Stop::Crash)?,
                _ => self.restart_recovery(Stop::PowerCut)?,
            }
            if self.h.fs.is_dead() {
                let stop = self.h.stop_after_death();
                self.restart_protected(stop).await?;
            }
            if self.rec.fs.is_dead() {
                self.h.note("the recovery process died in the middle of that step".into());
                let stop = if self.h.rng.below(2) == 0 { Stop::Crash } else { Stop::PowerCut };
                self.restart_recovery(stop)?;
            }
        }
        self.catch_up().await
    }

    async fn open_first(&mut self) -> Checked {
        self.rec.fs.create_dir_all(&self.rec.dir).expect("a new simulated directory");
        self.reopen_recovery()?;
        let env = LogEnv { storage: Arc::new(self.h.fs.clone()), clock: self.clock.clone() };
        let opened = ProtectedLog::open_on(env, &self.log_dir, VPG_ID, LOG_SIZE, 0, &mut |what| {
            Err(format!("a new log dropped another stream: {what}").into())
        });
        let (log, report) = opened.map_err(|e| self.h.violation("a new log opens", Chain(&e).to_string()))?;
        let start = log.appended_seq();
        self.model = Model {
            stream: log.stream_id(),
            appended: BTreeMap::from([(start, None)]),
            next_seq: start + 1,
            durable_seq: start,
            journal_acked: 0,
            ..Model::default()
        };
        self.h.check(report.fresh, "a new log opens as new", || "it found a log".into())?;
        self.h.note(format!("open a new log: its stream starts at seq {start}"));
        self.log = Some(log);
        // The volumes start as zeros: the new stream's initial copy has
        // nothing to send, and its checkpoints are complete images.
        for volume in 0..VOLUMES as u32 {
            self.append(RecordBody::CopyDone { volume })?;
        }
        self.sync().await
    }

    fn append_write(&mut self) -> Checked {
        let len = match self.h.rng.below(10) {
            0 => 1 + self.h.rng.below(200 << 10) as usize,
            1..=3 => 4096,
            _ => 1 + self.h.rng.below(16 << 10) as usize,
        };
        let mut data = vec![0u8; len];
        self.h.rng.fill(&mut data);
        let volume = self.h.rng.below(VOLUMES as u64) as u32;
        let offset = self.any_offset(len as u64);
        self.append(RecordBody::Write { volume, offset, data })
    }

    fn append_marker(&mut self) -> Checked {
        let volume = self.h.rng.below(VOLUMES as u64) as u32;
        let body = match self.h.rng.below(3) {
            0 => RecordBody::Zero { volume, offset: self.any_offset(4096), length: 4096 },
            _ => RecordBody::Checkpoint {
                time_ms: crate::clock::Clock::now_ms(&*self.clock),
                tag: format!("t{}", self.h.step),
                resync: false,
            },
        };
        self.append(body)
    }

    /// Where `len` bytes fit in a volume, at a sector boundary.
    fn any_offset(&mut self, len: u64) -> u64 {
        self.h.rng.below((VOLUME_BYTES - len) / 512 + 1) * 512
    }

    fn append(&mut self, body: RecordBody) -> Checked {
        let log = self.log();
        let bytes = encoded_bytes(&body).expect("the scenario's records are valid");
        let Some(space) = log.try_reserve_bytes(bytes) else {
            self.h.note("append: the log is full".into());
            return Ok(());
        };
        match log.append_reserved(space, &body) {
            Ok(seq) => {
                let due = self.model.next_seq;
                self.h.check(seq == due, "seqs follow each other", || format!("appended {seq} where {due} was due"))?;
                self.model.next_seq = seq + 1;
                if matches!(body, RecordBody::Checkpoint { .. }) {
                    self.model.checkpoints.insert(seq);
                }
                self.model.appended.insert(seq, Some(Record { seq, vpg_id: VPG_ID, body }.encode()));
                self.h.report.records_appended += 1;
                self.h.note(format!("append seq {seq} ({bytes} bytes)"));
            }
            Err(e) => {
                let may_fail = self.h.may_fail();
                self.h.check(may_fail, "an append fails only on an injected fault", || Chain(&e).to_string())?;
                self.h.note(format!("append: failed: {e_chain}", e_chain = crate::error_chain::Chain(&e)));
            }
        }
        Ok(())
    }

    async fn sync(&mut self) -> Checked {
        let log = self.log();
        self.h.sync_log(&log, &mut self.model.durable_seq, &mut self.model.durable_hint).await
    }

    /// With no session, the sender connects; with one, it sends a batch.
    async fn send(&mut self) -> Checked {
        let Some(s) = self.session.as_mut() else { return self.connect().await };
        if s.to_recovery.len() >= INFLIGHT_FRAMES_MAX {
            self.h.note("send: waits for acks".into());
            return Ok(());
        }
        let budget = match self.h.rng.below(3) {
            0 => BATCH_RAW_BYTES_TARGET,
            _ => 1 + self.h.rng.below(64 << 10) as usize,
        };
        let mut batch = BatchBuilder::default();
        if let Err(e) = s.cursor.fill(&mut batch, budget, BATCH_RECORDS_MAX) {
            self.check_read_error(&e)?;
            self.end_session(&format!("send: the read failed ({e_chain})", e_chain = crate::error_chain::Chain(&e)));
            return Ok(());
        }
        if batch.is_empty() {
            self.h.note("send: nothing durable to send".into());
            return Ok(());
        }
        let (count, raw) = (batch.count(), batch.raw_len());
        self.h.report.records_sent += count as u64;
        let mut encoder = BatchEncoder::default();
        let encoded = encoder.encode(&mut batch);
        let mut bytes = frame_header(FrameKind::Batch, encoded.bytes, encoded.crc).to_vec();
        bytes.extend_from_slice(encoded.bytes);
        s.to_recovery.push_back(Frame { bytes, garbled: false });
        self.h.note(format!("send a batch of {count} records ({raw} bytes)"));
        Ok(())
    }

    /// A session starts: hello, the recovery side's welcome (its journal's
    /// durable seq and stream), and where the sender resumes.
    async fn connect(&mut self) -> Checked {
        let log = self.log();
        let (held, journal_stream) = (self.rec.index.durable_seq, self.rec.index.stream_id);
        // What a welcome advertises, the protected side may retire.
        self.model.journal_acked = self.model.journal_acked.max(held);
        let durable = self.welcome_seq(&log, held);
        // It fsyncs what was appended first.
        let appended = log.appended_seq();
        let continues = match wait_unless_died(&self.h.fs, log.continues(durable, journal_stream)).await {
            Waited::Done(Ok(c)) => {
                self.model.durable_seq = self.model.durable_seq.max(appended);
                c
            }
            Waited::Done(Err(e)) => {
                self.check_read_error(&e)?;
                self.h.note(format!(
                    "connect: the log could not say where to resume ({e_chain})",
                    e_chain = crate::error_chain::Chain(&e)
                ));
                return Ok(());
            }
            Waited::Died => {
                self.h.note("connect: the protected process died".into());
                return Ok(());
            }
            Waited::Hung => {
                return Err(self.h.violation("the sender reads the log without error", "continues hangs".into()))
            }
        };
        let stream = log.stream_id();
        self.h.check(continues, "the log continues the journal's stream: replication never starts over", || {
            format!(
                "the journal holds stream {journal_stream:#x} through {durable}; the log (stream {stream:#x}) holds \
                 segments {:?}, fsynced through {}",
                log.segment_starts(),
                log.synced_seq()
            )
        })?;
        if journal_stream == stream {
            log.ack(durable);
        }
        self.session = Some(Session {
            stream,
            cursor: log.cursor(durable + 1),
            to_recovery: VecDeque::new(),
            to_protected: VecDeque::new(),
            recovery_hung_up: false,
        });
        self.h.report.sessions += 1;
        self.h.note(format!("connect: the welcome says seq {durable}, the sender resumes after it"));
        Ok(())
    }

    /// The seq a welcome says the journal holds: now and then less than it
    /// does, as when a replaced session's last batch lands after the
    /// welcome was read (anything from what the log has acknowledged, and
    /// still holds, on): the sender then sends records the journal has,
    /// which it must skip, and its acks overtake the sender's cursor.
    fn welcome_seq(&mut self, log: &ProtectedLog, held: u64) -> u64 {
        if self.h.rng.below(STALE_WELCOME_ONE_IN) != 0 {
            return held;
        }
        let oldest_held = log.segment_starts()[0].saturating_sub(1);
        let least = log.acked_seq().max(oldest_held).min(held);
        let stale = least + self.h.rng.below(held - least + 1);
        if stale != held {
            self.h.report.stale_welcomes += 1;
            self.h.note(format!("connect: a stale welcome says {stale}; the journal holds {held}"));
        }
        stale
    }

    /// A read of the log fails only on an injected fault, and never finds
    /// damage: only fsynced records are read, and a fault never changes
    /// them (a new stream, with a full copy, would start).
    fn check_read_error(&mut self, e: &LogError) -> Checked {
        let may_fail = self.h.may_fail() && !e.is_damage();
        self.h
            .check(may_fail, "the sender reads the log without error, and never finds damage", || Chain(e).to_string())
    }

    /// The next frame the link delivers from `queue`, with what the link
    /// did to it, if anything.
    fn next_frame(&mut self, batches: bool) -> Option<(Frame, &'static str)> {
        let faulty = self.link_faults_on && self.h.rng.chance(LINK_FAULT_PER_MILLE);
        let fault = if faulty { self.h.rng.below(4) } else { 4 };
        let rng_pick = self.h.rng.below(1 << 16) as usize;
        let s = self.session.as_mut()?;
        let queue = if batches { &mut s.to_recovery } else { &mut s.to_protected };
        if queue.is_empty() {
            return None;
        }
        let (frame, what) = match fault {
            0 => {
                queue.pop_front();
                (None, "dropped a frame")
            }
            1 => (queue.front().cloned(), "duplicated a frame"),
            2 => (queue.remove(rng_pick % queue.len()), "took a frame out of order"),
            3 => {
                let mut f = queue.pop_front().expect("not empty");
                let at = rng_pick % f.bytes.len();
                f.bytes[at] ^= 1 << (rng_pick % 8);
                f.garbled = true;
                (Some(f), "garbled a frame")
            }
            _ => (queue.pop_front(), ""),
        };
        if faulty {
            self.h.report.link_faults += 1;
            self.h.note(format!("the link {what}"));
        }
        frame.map(|f| (f, what))
    }

    /// The recovery side takes the next batch the link delivers.
    async fn deliver_batch(&mut self) -> Checked {
        let Some((frame, _)) = self.next_frame(true) else {
            self.h.note("deliver a batch: none on the link".into());
            return Ok(());
        };
        let s = self.session.as_ref().expect("a frame came from a session");
        if s.recovery_hung_up {
            self.h.note("deliver a batch: the recovery side hung up".into());
            return Ok(());
        }
        let stream = s.stream;
        let mut payload = Vec::new();
        let mut decoder = BatchDecoder::default();
        let decoded = match read_frame_into(&mut &frame.bytes[..], &mut payload).await {
            Ok(FrameKind::Batch) => decoder.decode(&payload, VPG_ID).map_err(|e| Chain(&e).to_string()),
            Ok(kind) => Err(format!("a {kind:?} frame on the data link")),
            Err(e) => Err(Chain(&e).to_string()),
        };
        let decoded = match decoded {
            Ok(d) => d,
            Err(e) => {
                let garbled = frame.garbled;
                self.h.check(garbled, "the receiver takes every frame the sender built", || format!("{e:#}"))?;
                self.end_session(&format!("deliver a batch: refused ({e:#}), the recovery side hangs up"));
                return Ok(());
            }
        };
        // Whatever the link did, the journal takes only what was appended
        // and fsynced, as it was.
        for (i, record) in decoded.records.iter().enumerate() {
            let end = decoded.offsets.get(i + 1).copied().unwrap_or(decoded.raw.len());
            self.check_sent(record, &decoded.raw[decoded.offsets[i]..end])?;
        }
        let first = decoded.records[0].seq;
        let last = decoded.records.last().expect("a batch holds records").seq;
        let rec = &mut self.rec;
        let fresh = decoded.records.iter().filter(|r| r.seq > rec.index.durable_seq).count() as u64;
        // What the intake's rules say of the batch: a gap before its first
        // fresh record (a batch the link dropped or reordered came before)
        // is refused; anything else is taken unless the storage fails.
        let first_fresh = decoded.records.iter().find(|r| r.seq > rec.index.durable_seq);
        let starts_stream = |r: &Record| matches!(r.body, RecordBody::StreamStart { .. });
        let gap = first_fresh.is_some_and(|r| r.seq != rec.index.durable_seq + 1 && !starts_stream(r));
        let faults_before = rec.fs.stats().faults;
        let files = rec.files.as_mut().expect("the journal is open");
        let appended = intake::append(files, &mut rec.index, &rec.meta, &decoded, stream, &mut |_| Ok(()));
        let storage_failed = rec.fs.stats().faults > faults_before || rec.fs.is_dead();
        drop(decoded);
        if gap {
            let taken = appended.as_ref().ok().map(|a| a.durable_seq);
            self.h.check(taken.is_none(), "the journal refuses a batch after a gap", || {
                format!("seqs {first}..={last} taken through {taken:?}")
            })?;
        }
        let answer = match appended {
            Ok(a) => {
                self.model.journal_acked = self.model.journal_acked.max(a.durable_seq);
                self.h.report.journal_records += fresh;
                self.h.note(format!("deliver seqs {first}..={last}: the journal holds {}, acks it", a.durable_seq));
                ControlMessage::Ack { seq: a.durable_seq }
            }
            Err(e) => {
                // Its kind says which: a refusal names the gap (or, in a
                // journal that holds no stream yet, says the batch cannot
                // continue one); any other error is its storage's.
                let expected = match &e {
                    JournalError::Refused(refusal) => {
                        gap && matches!(refusal, Refusal::Gap { .. } | Refusal::OtherStream { held: 0, .. })
                    }
                    _ => storage_failed,
                };
                let e = Chain(&e).to_string();
                self.h.check(
                    expected,
                    "the journal refuses a batch only for a gap, and fails one only on a fault of its storage",
                    || format!("seqs {first}..={last}: {e}"),
                )?;
                self.h.note(format!("deliver seqs {first}..={last}: refused ({e})"));
                if let Some(s) = self.session.as_mut() {
                    s.recovery_hung_up = true;
                }
                ControlMessage::refused(e)
            }
        };
        let mut bytes = Vec::new();
        send_control(&mut bytes, &answer).await.expect("encoding to memory");
        if let Some(s) = self.session.as_mut() {
            s.to_protected.push_back(Frame { bytes, garbled: false });
        }
        Ok(())
    }

    /// A record the recovery side got is one the protected side appended
    /// and fsynced, as it was appended.
    fn check_sent(&mut self, record: &Record, bytes: &[u8]) -> Checked {
        let (seq, durable) = (record.seq, self.model.durable_seq);
        self.h.check(seq <= durable, "only durable records are sent", || {
            format!("sent {seq}, durable through {durable}")
        })?;
        let same = match self.model.appended.get(&seq) {
            Some(Some(appended)) => appended == bytes,
            Some(None) => {
                matches!(record.body, RecordBody::StreamStart { stream_id, .. } if stream_id == self.model.stream)
            }
            None => false,
        };
        self.h.check(same, "a record arrives as it was appended", || format!("seq {seq} is not the record appended"))
    }

    /// The sender takes the next answer the link delivers.
    async fn deliver_answer(&mut self) -> Checked {
        let Some((frame, _)) = self.next_frame(false) else {
            self.h.note("deliver an answer: none on the link".into());
            return Ok(());
        };
        match recv_control(&mut &frame.bytes[..]).await {
            Ok(ControlMessage::Ack { seq }) => {
                let held = self.rec.index.durable_seq;
                self.h.check(seq <= held, "an ack never runs ahead of the journal", || {
                    format!("ack of {seq}; the journal holds {held}")
                })?;
                self.log().ack(seq);
                self.h.note(format!("deliver an ack of {seq}"));
            }
            Ok(ControlMessage::Refused { reason }) => self.end_session(&format!("the recovery side refused: {reason}")),
            Ok(other) => return Err(self.h.violation("the sender gets what the receiver sent", format!("{other:?}"))),
            Err(e) => {
                let garbled = frame.garbled;
                self.h.check(garbled, "the sender takes every answer the receiver built", || Chain(&e).to_string())?;
                self.end_session(&format!(
                    "deliver an answer: refused ({e_chain}), the sender hangs up",
                    e_chain = crate::error_chain::Chain(&e)
                ));
            }
        }
        Ok(())
    }

    fn end_session(&mut self, why: &str) {
        if self.session.take().is_some() {
            self.h.note(format!("{why}: the session ends"));
        } else {
            self.h.note(format!("{why}: no session"));
        }
    }

    fn apply_faults(&self) {
        self.h.apply_faults();
        self.rec.fs.set_fault_per_mille(if self.h.faults_on { FAULT_PER_MILLE } else { 0 });
    }

    fn toggle_faults(&mut self) {
        self.h.toggle_faults();
        self.apply_faults();
    }

    fn toggle_link_faults(&mut self) {
        self.link_faults_on = !self.link_faults_on;
        self.h.note(format!("link faults {}", if self.link_faults_on { "on" } else { "off" }));
    }

    fn maybe_recovery_dies(&mut self) {
        if self.h.rng.chance(DEATH_PER_MILLE) {
            let ops = self.h.rng.below(8);
            self.rec.fs.die_after(ops);
            self.h.note(format!("the recovery process will die after {ops} more storage operations"));
        }
    }

    async fn restart_protected(&mut self, stop: Stop) -> Checked {
        self.session = None;
        self.log = None;
        self.h.stop(stop);
        let log = self.reopen_protected()?;
        let last = log.appended_seq();
        let (durable, stream) = (self.model.durable_seq, self.model.stream);
        self.h.check(log.stream_id() == stream, "the log keeps its stream across a restart", || {
            format!("stream {:#x} where {stream:#x} was", log.stream_id())
        })?;
        self.h.check(last >= durable, "no fsynced record is lost", || {
            format!("fsynced through {durable}, the log opens ending at {last}")
        })?;
        // Appends past the end were never durable: their seqs come again.
        self.model.appended.retain(|seq, _| *seq <= last);
        self.model.checkpoints.retain(|seq| *seq <= last);
        self.model.next_seq = last + 1;
        self.model.durable_seq = last;
        self.h.note(format!("the log opened: through seq {last}"));
        self.log = Some(log);
        Ok(())
    }

    /// Opens the log after a stop (now and then dying while it does).
    fn reopen_protected(&mut self) -> Result<Arc<ProtectedLog>, Box<Violation>> {
        self.h.maybe_die_opening();
        let mut faults = self.h.faults_on;
        for _attempt in 0..OPEN_ATTEMPTS {
            let env = LogEnv { storage: Arc::new(self.h.fs.clone()), clock: self.clock.clone() };
            let hint = self.model.durable_hint;
            let opened = ProtectedLog::open_on(env, &self.log_dir, VPG_ID, LOG_SIZE, hint, &mut |what| {
                // No stream ever starts here but the first.
                Err(format!("the open would drop another stream's records: {what}").into())
            });
            if self.h.died_opening("log") {
                drop(opened);
                continue;
            }
            match opened {
                Ok((log, _)) => {
                    self.apply_faults();
                    return Ok(log);
                }
                Err(e) => self.h.open_failed(&e, &mut faults, "the log opens again after any stop")?,
            }
        }
        Err(self.h.violation("the log opens again after any stop", format!("not in {OPEN_ATTEMPTS} attempts")))
    }

    fn restart_recovery(&mut self, stop: Stop) -> Checked {
        self.session = None;
        self.rec.files = None;
        match stop {
            Stop::Crash => {
                self.rec.fs.crash();
                self.h.note("kill the recovery process".into());
            }
            Stop::PowerCut => {
                self.rec.fs.power_cut();
                self.h.note("cut the recovery side's power".into());
            }
        }
        self.reopen_recovery()
    }

    /// Opens the journal after a stop (now and then dying while it does,
    /// its successor opening what it left), and checks what it holds.
    fn reopen_recovery(&mut self) -> Checked {
        if self.h.rng.chance(OPEN_DEATH_PER_MILLE) {
            let ops = self.h.rng.below(12);
            self.rec.fs.die_after(ops);
            self.h.note(format!("the opening recovery process will die after {ops} more storage operations"));
        }
        let mut faults = self.h.faults_on;
        for _attempt in 0..OPEN_ATTEMPTS {
            let mut read = Vec::new();
            let opened = self.open_journal_once(&mut read);
            if self.rec.fs.is_dead() {
                drop(opened);
                let cut = self.h.rng.below(2) == 0;
                if cut {
                    self.rec.fs.power_cut()
                } else {
                    self.rec.fs.crash()
                }
                self.h.note(format!(
                    "the recovery process died while opening: {}",
                    if cut { "cut the power" } else { "kill" }
                ));
                continue;
            }
            match opened {
                Ok((files, index, damage)) => {
                    self.apply_faults();
                    self.rec.files = Some(files);
                    self.rec.index = index;
                    return self.check_journal(&read, damage);
                }
                Err(e) if faults => {
                    self.h.note(format!(
                        "the journal's open failed on a fault: {e_chain}; again without faults",
                        e_chain = crate::error_chain::Chain(&e)
                    ));
                    faults = false;
                    self.rec.fs.set_fault_per_mille(0);
                }
                Err(e) => {
                    return Err(self.h.violation(
                        "the journal opens again after any stop",
                        crate::error_chain::Chain(&e).to_string(),
                    ))
                }
            }
        }
        Err(self.h.violation("the journal opens again after any stop", format!("not in {OPEN_ATTEMPTS} attempts")))
    }

    /// One open of the journal, as `Journal::open` does it: what it read
    /// (seq, encoding) into `read`.
    fn open_journal_once(
        &self,
        read: &mut Vec<(u64, Vec<u8>)>,
    ) -> Result<(SegmentFiles, JournalIndex, Option<String>), JournalError> {
        let mut index = JournalIndex::new(VOLUMES);
        let (files, damage) = super::journal::open_segments(&self.rec.fs, &self.rec.dir, VPG_ID, ROLLING, |r| {
            index.observe(r);
            read.push((r.seq, r.encode()));
        })?;
        Ok((files, index, damage))
    }

    /// The journal that opened holds every record it acknowledged, each
    /// as the protected side appended it, in order from the stream's start.
    fn check_journal(&mut self, read: &[(u64, Vec<u8>)], damage: Option<String>) -> Checked {
        let last = read.last().map_or(0, |(seq, _)| *seq);
        let acked = self.model.journal_acked;
        self.h.check(last >= acked, "no record the journal acknowledged is lost", || {
            format!("acknowledged through {acked}, the journal opens ending at {last}; damage: {damage:?}")
        })?;
        let start = self.model.appended.keys().next().copied().unwrap_or(0);
        let gap = read.iter().enumerate().find(|(i, (seq, _))| *seq != start + *i as u64);
        self.h.check(gap.is_none(), "the journal holds the stream from its start, in order, without gaps", || {
            let (i, (seq, _)) = gap.expect("found");
            format!("seq {seq} where {} was due", start + i as u64)
        })?;
        let differs = read.iter().find(|(seq, bytes)| match self.model.appended.get(seq) {
            Some(Some(appended)) => appended != bytes,
            Some(None) => false,
            None => true,
        });
        self.h.check(differs.is_none(), "the journal holds each record as it was appended", || {
            format!("seq {} differs", differs.expect("found").0)
        })?;
        // What an open found, the welcome advertises.
        self.model.journal_acked = last;
        if damage.is_some() {
            self.h.report.journal_cuts += 1;
        }
        self.h.note(format!(
            "the journal opened: through seq {last}{}",
            damage.map(|d| format!(", cut: {}", short(&d))).unwrap_or_default()
        ));
        Ok(())
    }

    /// The end: faults stop, both sides lose power and come back, the link
    /// heals, and the journal must catch up with the log.
    async fn catch_up(&mut self) -> Checked {
        self.h.faults_on = false;
        self.link_faults_on = false;
        self.apply_faults();
        self.h.note("the end: no more faults, and the link heals".into());
        self.restart_protected(Stop::PowerCut).await?;
        self.restart_recovery(Stop::PowerCut)?;
        let log = self.log();
        for _round in 0..CATCH_UP_ROUNDS {
            if self.rec.index.durable_seq == log.synced_seq() && log.acked_seq() == log.synced_seq() {
                break;
            }
            self.send().await?;
            while self.session.as_ref().is_some_and(|s| !s.to_recovery.is_empty()) {
                self.deliver_batch().await?;
            }
            while self.session.as_ref().is_some_and(|s| !s.to_protected.is_empty()) {
                self.deliver_answer().await?;
            }
        }
        let (held, synced, acked) = (self.rec.index.durable_seq, log.synced_seq(), log.acked_seq());
        self.h.check(held == synced && acked == synced, "once the link heals the journal catches up", || {
            format!("the log fsynced through {synced}, the journal holds {held}, the log has {acked} acked")
        })?;
        // What it caught up, it holds across a power cut, as appended.
        self.restart_recovery(Stop::PowerCut)?;
        let held = self.rec.index.durable_seq;
        self.h.check(held == synced, "every record fsynced on the protected side reaches the journal", || {
            format!("fsynced through {synced}, the journal holds {held} after a power cut")
        })?;
        self.restore_checkpoint()
    }

    /// A checkpoint (the newest, or by lot an older one), restored from
    /// the journal by the real restore, equals the volumes at that point
    /// of the write order.
    fn restore_checkpoint(&mut self) -> Checked {
        let checkpoints: Vec<u64> = self.model.checkpoints.iter().copied().collect();
        let Some(&newest) = checkpoints.last() else {
            self.h.note("no checkpoint to restore".into());
            return Ok(());
        };
        let checkpoint = match self.h.rng.below(2) {
            0 => newest,
            _ => checkpoints[self.h.rng.below(checkpoints.len() as u64) as usize],
        };
        let rec = &self.rec;
        let restored = super::restore_check::restore_matches(
            &rec.fs,
            &rec.dir,
            &rec.meta,
            &self.model.appended,
            checkpoint,
            self.h.seed,
        );
        self.h.check(
            restored.is_ok(),
            "a checkpoint restores to the volumes at that point of the write order",
            || format!("checkpoint {checkpoint}: {}", restored.as_ref().expect_err("failed")),
        )?;
        self.h.report.restores += 1;
        self.h.note(format!("restore checkpoint {checkpoint}: the volumes as the model has them"));
        Ok(())
    }
}
