//! The applier: moves the replica forward through the journal and
//! retires what it no longer needs. One pass:
//! 1. takes `apply.lock` and reads the live leases (`lease.rs`);
//! 2. picks a target checkpoint: the newest one older than the history
//!    window, or a newer one when the journal is over its byte limit (the
//!    window shrinks, protection goes on), but never past a lease; once
//!    the replica is a consistent image, only a consistent checkpoint,
//!    unless the limit leaves no other (a long resync or new stream's
//!    copy: the last consistent image is given up, and the pass says so);
//!    over the limit with no checkpoint far enough on (a burst without
//!    one), the end of the oldest segments, a seq between checkpoints;
//! 3. records the target in `apply.json`, writes every record after the
//!    replica's seq up to the target into the replica in seq order,
//!    fsyncs the images, records the new seq;
//! 4. deletes the segments whose records are all in the replica.
//!
//! After a crash in step 3 the same records are written again: each byte
//! ends as the last record up to the target left it, whatever part of the
//! first try reached the disk, so applying twice equals applying once.

use super::apply_state::ApplyState;
use super::error::JournalError;
use super::index::{CheckpointInfo, JournalIndex};
use super::lease::{self, ApplyLock, LeaseInfo};
use super::replica::VolumeFiles;
use super::scan::{scan_journal_until, Visit};
use super::JournalMeta;
use crate::durable::sync_dir;
use crate::io_failure::Doing;
use crate::segment::{list_segments, SegmentKind};
use std::path::{Path, PathBuf};
use std::time::Duration;

type Result<T> = std::result::Result<T, JournalError>;

/// What the recovery config says about one VPG's history.
#[derive(Debug, Clone, Copy)]
pub struct HistoryPolicy {
    pub history: Duration,
    pub journal_limit: Option<u64>,
    /// Bytes the journal never passes: appends are refused at it.
    pub journal_cap: Option<u64>,
}

impl HistoryPolicy {
    /// When the journal is over its limit, it is brought down to this
    /// share of it, so early applies come in steps, not on every batch.
    const LIMIT_TARGET_PERCENT: u64 = 90;

    /// Segments close at this size, so a limit is kept in small steps.
    pub fn segment_bytes(&self) -> u64 {
        let cap = super::JOURNAL_SEGMENT_BYTES;
        self.journal_limit.map_or(cap, |l| (l / 16).clamp(4 << 20, cap))
    }

    /// Checkpoints taken at or before this time are out of the window.
    fn horizon_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.history.as_millis() as u64)
    }

    /// Segments close at this age, so a quiet VPG's history still retires.
    pub fn segment_age(&self) -> Duration {
        (self.history / 8).clamp(Duration::from_secs(5), Duration::from_secs(15 * 60))
    }
}

#[derive(Debug, Clone, Default)]
pub struct PassReport {
    /// The pin that kept the replica from where the window or the limit
    /// would have taken it.
    pub pinned: Option<super::pins::Pin>,
    /// Damage the summarizer found in a sealed segment (it fills this in).
    pub journal_damage: Option<String>,
    /// Pins of seqs that are no checkpoint in the journal (ignored).
    pub void_pins: Vec<u64>,
    /// The replica's seq after the pass.
    pub applied_seq: u64,
    /// Set when this pass moved the replica.
    pub applied_to: Option<u64>,
    pub bytes_applied: u64,
    pub segments_retired: usize,
    /// Journal bytes on disk after the pass.
    pub journal_bytes: u64,
    /// No reader needs records at or below this seq any more: the
    /// replica's, or the oldest base of a live lease.
    pub in_replica: u64,
    /// The replica is at a checkpoint younger than the window: the byte
    /// limit made the window shorter than configured. Stays set after the
    /// journal is back under its limit, until time catches up with the
    /// replica, so status says so for as long as it is true.
    pub shortened: bool,
    /// A reader's lease held the replica back (holder names).
    pub held_by: Vec<String>,
    /// The byte limit moved the replica from a consistent checkpoint to
    /// one that is not: no checkpoint is restorable until the next
    /// consistent one arrives.
    pub left_consistent: bool,
    /// This pass moved the replica to a seq between checkpoints: the byte
    /// limit found none far enough on. (A reader's lease at `head` can
    /// hold the replica between checkpoints too; that gives nothing up.)
    pub between_checkpoints: Option<BetweenCheckpoints>,
    /// The replica stays at this consistent checkpoint although the
    /// window passed newer ones, which are no image (a resync or a new
    /// stream's copy is under way): the journal grows meanwhile.
    pub held_consistent: Option<u64>,
    /// Without a journal_limit, the journal's file system was nearly full
    /// and the pass applied early to free room.
    pub disk_nearly_full: bool,
    pub state: ApplyState,
}

/// A replica the byte limit moved to a seq that is no checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BetweenCheckpoints {
    pub seq: u64,
    /// Every volume's copy is in and no resync is under way: the replica
    /// is a crash-consistent image, and so is `head`.
    pub image: bool,
    /// The newest consistent checkpoint it moved past (no longer
    /// restorable).
    pub gave_up: Option<u64>,
}

struct SegmentFile {
    first_seq: u64,
    path: PathBuf,
    bytes: u64,
}

fn segments(dir: &Path) -> Result<Vec<SegmentFile>> {
    let mut out = Vec::new();
    for (first_seq, path) in list_segments(dir, SegmentKind::Journal)? {
        let bytes = match std::fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Ok(Err(e).doing(|| format!("reading {}", path.display()))?),
        };
        // A segment's summary goes with it and counts toward the limit.
        let summary = std::fs::metadata(super::summary::summary_path(&path)).map_or(0, |m| m.len());
        out.push(SegmentFile { first_seq, path, bytes: bytes + summary });
    }
    Ok(out)
}

/// Bytes the journal holds on disk: its segments and their summaries.
pub fn journal_bytes(dir: &Path) -> Result<u64> {
    Ok(segments(dir)?.iter().map(|s| s.bytes).sum())
}

/// Where a pass takes the replica, and why.
#[derive(Debug, Default, PartialEq, Eq)]
struct Target {
    /// The checkpoint to apply up to (None: the replica stays).
    id: Option<u64>,
    /// The byte limit (or a nearly full disk) chose it, not the window.
    early: bool,
    /// Only checkpoints that are no image were far enough on for the
    /// limit: the replica leaves its consistent checkpoint.
    gives_up_consistent: bool,
    /// The window passed checkpoints that are no image (a resync's, a new
    /// stream's copy's) and the replica stays at its consistent one.
    held_consistent: bool,
    /// `id` is no checkpoint: over the limit, none was far enough on.
    between_checkpoints: bool,
}

/// The checkpoint to apply up to: the newest one older than the window,
/// or one far enough on to bring the journal under `limit`. A replica at
/// a consistent checkpoint (`keep_consistent`) moves only to consistent
/// ones, unless the limit finds no consistent one far enough on.
fn choose_target(
    checkpoints: &[CheckpointInfo],
    applied_seq: u64,
    keep_consistent: bool,
    segments: &[SegmentFile],
    limit: Option<u64>,
    policy: &HistoryPolicy,
    now_ms: u64,
) -> Target {
    let ahead = |c: &&CheckpointInfo| c.id > applied_seq;
    let allowed = |c: &&CheckpointInfo| c.consistent || !keep_consistent;
    let horizon = policy.horizon_ms(now_ms);
    let aged = |c: &&CheckpointInfo| c.time_ms <= horizon;
    let by_time = checkpoints.iter().filter(ahead).filter(allowed).filter(aged).map(|c| c.id).max();
    let by_time_any = checkpoints.iter().filter(ahead).filter(aged).map(|c| c.id).max();
    let held = by_time_any > by_time;
    let by_time_only = Target { id: by_time, held_consistent: held, ..Default::default() };
    let Some(limit) = limit else { return by_time_only };
    let total: u64 = segments.iter().map(|s| s.bytes).sum();
    if total <= limit {
        return by_time_only;
    }
    // Retire the oldest closed segments until the rest fits; the target is
    // the first checkpoint at or after the last of them.
    let goal = limit / 100 * HistoryPolicy::LIMIT_TARGET_PERCENT;
    let mut freed = 0;
    let mut needed_seq = None;
    for pair in segments.windows(2) {
        freed += pair[0].bytes;
        needed_seq = Some(pair[1].first_seq - 1);
        if total - freed <= goal {
            break;
        }
    }
    let Some(needed_seq) = needed_seq else { return by_time_only };
    let far_enough = |c: &&CheckpointInfo| c.id >= needed_seq;
    let mut candidates = checkpoints.iter().filter(ahead).filter(far_enough);
    let (by_limit, gives_up, between) = match candidates.clone().find(allowed) {
        Some(c) => (c.id, false, false),
        None => match candidates.next() {
            Some(c) => (c.id, true, false),
            // A burst longer than the limit came without a checkpoint: the
            // segment of the last one holds the burst's start, so waiting
            // for the next one retires nothing, and at the cap, which
            // refuses every batch, the next one never arrives (review of
            // helper-50). The replica goes to the end of the oldest
            // segments instead: every prefix of the stream is as
            // consistent as its end (`head`).
            None if needed_seq > applied_seq => (needed_seq, keep_consistent, true),
            None => return by_time_only,
        },
    };
    if by_time.is_some_and(|t| t >= by_limit) {
        return by_time_only;
    }
    Target {
        id: Some(by_limit),
        early: true,
        gives_up_consistent: gives_up,
        held_consistent: false,
        between_checkpoints: between,
    }
}

/// The byte limit a pass keeps the journal under: the configured one, or,
/// without one, when the journal's file system is nearly full, what the
/// journal holds less what is missing to the free-space floor (the
/// window shrinks by that much rather than the journal running out of
/// room; once the floor is free again, nothing more). The second value
/// says the disk chose it.
fn effective_limit(dir: &Path, policy: &HistoryPolicy, journal_bytes: u64) -> (Option<u64>, bool) {
    if policy.journal_limit.is_some() {
        return (policy.journal_limit, false);
    }
    let Ok(fs) = rustix::fs::statvfs(dir) else { return (None, false) };
    // The agent runs as root: the blocks reserved for root are its too.
    let free = if rustix::process::getuid().is_root() { fs.f_bfree } else { fs.f_bavail };
    let block = fs.f_frsize.max(1);
    let floor = fs.f_blocks / DISK_FREE_FLOOR_DIVISOR;
    if free >= floor {
        return (None, false);
    }
    let missing = (floor - free).saturating_mul(block);
    (Some(journal_bytes.saturating_sub(missing)), true)
}

/// Without a journal_limit, the journal's file system is nearly full below
/// 1/20 (5 %) of it free.
const DISK_FREE_FLOOR_DIVISOR: u64 = 20;

/// Writes every record after the replica's seq up to `target` into the
/// replica and makes it durable (see the module comment for crashes).
/// `by_limit`: journal_limit (or the free disk) chose the target, between
/// checkpoints (`ApplyState::left_by_limit`, stored with the state).
pub fn apply_to(
    dir: &Path,
    meta: &JournalMeta,
    state: &ApplyState,
    target: u64,
    by_limit: bool,
) -> Result<(ApplyState, u64)> {
    if target <= state.applied_seq {
        return Ok((state.clone(), 0));
    }
    if state.applying_to != Some(target) {
        if let Some(pending) = state.applying_to.filter(|p| *p > target) {
            let why = format!("an interrupted apply to seq {pending} must finish before any apply to {target}");
            return Err(JournalError::Unavailable(why));
        }
        // (An interrupted apply is finished with what this says.)
        let left_by_limit = state.left_by_limit || by_limit;
        ApplyState { applying_to: Some(target), left_by_limit, ..state.clone() }.store(dir)?;
    }
    let replica = VolumeFiles::open_replica(dir, &meta.volumes, true)?;
    let mut index = JournalIndex::from_applied(meta.volumes.len(), state);
    let mut bytes = 0u64;
    let mut failure = None;
    // A record after the target was read: every one up to it was too, even
    // when no record has the target's seq (a target between checkpoints is
    // a segment's end, and a new stream's seqs start higher).
    let mut passed_target = false;
    // (Records at or below the replica's seq are passed by the scan.)
    let outcome = scan_journal_until(dir, meta.vpg_id, state.applied_seq, |rec, _| {
        if rec.seq > target {
            passed_target = true;
            return Visit::Stop;
        }
        if let Err(e) = replica.apply(&rec.body) {
            failure = Some(JournalError::ApplyingRecord { seq: rec.seq, source: Box::new(e) });
            return Visit::Stop;
        }
        bytes += rec.data_bytes();
        index.observe(rec);
        Visit::Continue
    })?;
    if let Some(e) = failure {
        return Err(e);
    }
    // Or the segment named after the seq right above the target (a target
    // between checkpoints is the end of the segment before it) was reached
    // with no damage before it: the first batch of a new stream rolled to
    // it, and its append failed and left it empty. Only right above: a
    // segment further on says nothing of records a repair cut before it.
    let damaged_at = outcome.damage.as_ref().and_then(|d| outcome.segments.iter().find(|(_, p)| *p == d.path));
    let next_segment = outcome.segments.iter().find(|(first, _)| *first == target + 1);
    passed_target |= next_segment.is_some_and(|(next, _)| damaged_at.is_none_or(|(at, _)| at >= next));
    if index.durable_seq < target && !passed_target {
        let why = outcome.damage.map_or("the journal ends".to_string(), |d| d.to_string());
        let why =
            format!("cannot apply to seq {target}: the readable journal stops at seq {} ({why})", index.durable_seq);
        return Err(JournalError::Unavailable(why));
    }
    replica.sync_all()?;
    let base = index.checkpoints.iter().find(|c| c.id == target).cloned();
    let next = ApplyState {
        applied_seq: target,
        applying_to: None,
        copied: index.copied_volumes(),
        left_by_limit: (state.left_by_limit || by_limit) && base.is_none(),
        base,
        stream_id: index.stream_id,
        resyncing: index.resyncing(),
    };
    next.store(dir)?;
    Ok((next, bytes))
}

/// Deletes the closed segments whose records are all at or below both the
/// replica's seq and every lease's base. The newest segment always stays.
fn retire(dir: &Path, segments: &[SegmentFile], applied_seq: u64, leases: &[LeaseInfo]) -> Result<usize> {
    let keep_after = leases.iter().map(|l| l.base).chain([applied_seq]).min().unwrap_or(applied_seq);
    let mut retired = 0;
    for pair in segments.windows(2) {
        if pair[1].first_seq - 1 > keep_after {
            break;
        }
        // The summary first: a crash between leaves no summary of a
        // segment that is gone.
        super::summary::forget(&pair[0].path)?;
        std::fs::remove_file(&pair[0].path).doing(|| format!("retiring {}", pair[0].path.display()))?;
        retired += 1;
    }
    if retired > 0 {
        sync_dir(dir)?;
    }
    Ok(retired)
}

/// One applier pass over a VPG's journal; `checkpoints` are the journal
/// index's, oldest first.
pub fn pass(
    dir: &Path,
    meta: &JournalMeta,
    checkpoints: &[CheckpointInfo],
    policy: &HistoryPolicy,
    now_ms: u64,
) -> Result<PassReport> {
    let lock = ApplyLock::exclusive(dir)?;
    // A failover committed while this pass waited for the lock: the replica
    // is a live volume now, not history to move forward.
    if dir.join(super::FAILOVER_RECORD_FILE).exists() {
        return Ok(PassReport { applied_seq: ApplyState::load(dir)?.applied_seq, ..Default::default() });
    }
    let leases = lease::live(dir, &lock)?;
    let mut state = ApplyState::load(dir)?;
    let before = segments(dir)?;
    let consistent_base = state.base.as_ref().is_some_and(|b| b.consistent && b.id == state.applied_seq);
    let (limit, by_disk) = effective_limit(dir, policy, before.iter().map(|s| s.bytes).sum());
    let chosen = choose_target(checkpoints, state.applied_seq, consistent_base, &before, limit, policy, now_ms);
    let wanted = chosen.id;
    let mut report =
        PassReport { shortened: chosen.early, disk_nearly_full: chosen.early && by_disk, ..Default::default() };
    // An interrupted apply is finished first, whatever the window says.
    let mut target = wanted.max(state.applying_to);
    if let (Some(t), Some(pin)) = (target, leases.iter().map(|l| l.checkpoint).min()) {
        if pin < t {
            report.held_by = leases.iter().filter(|l| l.checkpoint < t).map(|l| l.holder.clone()).collect();
            target = Some(pin.max(state.applying_to.unwrap_or(0)));
        }
    }
    // A pinned checkpoint stays restorable: the replica stops before it,
    // whatever the window or the limit says.
    // A pin that names no checkpoint of the journal (one a repair cut
    // away) protects nothing and must not become a target.
    let (pins, void): (Vec<_>, Vec<_>) = super::pins::load(dir)?
        .into_iter()
        .partition(|p| checkpoints.binary_search_by_key(&p.checkpoint, |c| c.id).is_ok());
    report.void_pins = void.iter().map(|p| p.checkpoint).collect();
    if let (Some(t), Some(pin)) = (target, pins.first()) {
        if pin.checkpoint < t {
            report.pinned = Some(pin.clone());
            target = Some(pin.checkpoint.max(state.applying_to.unwrap_or(0)));
        }
    }
    if let Some(t) = target.filter(|t| *t > state.applied_seq) {
        let (next, bytes) = apply_to(dir, meta, &state, t, chosen.between_checkpoints)?;
        let image = next.base.as_ref().map_or_else(|| next.is_image(meta.volumes.len()), |b| b.consistent);
        report.left_consistent = chosen.gives_up_consistent && !image;
        if chosen.between_checkpoints && next.base.is_none() {
            let gave_up = checkpoints.iter().rev().find(|c| c.consistent && c.id < t).map(|c| c.id);
            report.between_checkpoints = Some(BetweenCheckpoints { seq: t, image, gave_up });
        }
        state = next;
        report.applied_to = Some(t);
        report.bytes_applied = bytes;
    }
    if chosen.held_consistent {
        report.held_consistent = Some(state.applied_seq);
    }
    report.segments_retired = retire(dir, &before, state.applied_seq, &leases)?;
    report.journal_bytes = journal_bytes(dir)?;
    report.applied_seq = state.applied_seq;
    report.in_replica = leases.iter().map(|l| l.base).chain([state.applied_seq]).min().unwrap_or(0);
    report.shortened |= state.base.as_ref().is_some_and(|b| b.time_ms > policy.horizon_ms(now_ms));
    report.shortened |= report.between_checkpoints.is_some();
    report.state = state;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cp(id: u64, time_ms: u64) -> CheckpointInfo {
        CheckpointInfo { id, time_ms, tag: String::new(), consistent: true, resync: false }
    }

    fn seg(first_seq: u64, bytes: u64) -> SegmentFile {
        SegmentFile { first_seq, path: PathBuf::new(), bytes }
    }

    fn pick(id: Option<u64>, early: bool) -> Target {
        Target { id, early, ..Default::default() }
    }

    #[test]
    fn window_picks_the_newest_checkpoint_older_than_history() {
        let policy = HistoryPolicy { history: Duration::from_secs(60), journal_limit: None, journal_cap: None };
        let cps = [cp(10, 1_000), cp(20, 30_000), cp(30, 90_000)];
        assert_eq!(choose_target(&cps, 0, true, &[], None, &policy, 60_500), pick(None, false));
        assert_eq!(choose_target(&cps, 0, true, &[], None, &policy, 61_500), pick(Some(10), false));
        assert_eq!(choose_target(&cps, 0, true, &[], None, &policy, 91_000), pick(Some(20), false));
        assert_eq!(choose_target(&cps, 20, true, &[], None, &policy, 91_000), pick(None, false));
    }

    #[test]
    fn limit_applies_early_and_says_so() {
        let policy = HistoryPolicy { history: Duration::from_secs(3600), journal_limit: Some(100), journal_cap: None };
        let cps = [cp(10, 1_000), cp(25, 2_000), cp(40, 3_000)];
        // 150 bytes in three segments; the first two must go to reach 90.
        let segs = [seg(1, 50), seg(21, 50), seg(41, 50)];
        assert_eq!(choose_target(&cps, 0, true, &segs, Some(100), &policy, 4_000), pick(Some(40), true));
        // Under the limit, nothing is early.
        let small = [seg(1, 40), seg(21, 40)];
        assert_eq!(choose_target(&cps, 0, true, &small, Some(100), &policy, 4_000), pick(None, false));
    }

    #[test]
    fn a_consistent_replica_moves_only_to_consistent_checkpoints_unless_the_limit_leaves_none() {
        let resync = |id, time_ms| CheckpointInfo { consistent: false, resync: true, ..cp(id, time_ms) };
        let window = HistoryPolicy { history: Duration::from_secs(60), journal_limit: None, journal_cap: None };
        let cps = [cp(10, 1_000), resync(20, 2_000), resync(30, 3_000), cp(40, 90_000)];
        // The window passed 30, but 30 and 20 were taken during a resync:
        // the replica stays at 10, and the pass says why.
        let held = Target { held_consistent: true, ..pick(None, false) };
        assert_eq!(choose_target(&cps, 10, true, &[], None, &window, 63_500), held);
        assert_eq!(choose_target(&cps, 10, true, &[], None, &window, 150_000), pick(Some(40), false));
        // A replica that is no image yet (initial copy) may move through any.
        assert_eq!(choose_target(&cps, 0, false, &[], None, &window, 63_500), pick(Some(30), false));
        // Over the limit: a consistent checkpoint far enough on is chosen
        // first; with none, the limit wins over the last consistent image.
        let segs = [seg(1, 50), seg(21, 50), seg(41, 50)];
        assert_eq!(choose_target(&cps, 10, true, &segs, Some(100), &window, 4_000), pick(Some(40), true));
        let without_40 = &cps[..3];
        let segs = [seg(1, 50), seg(15, 50), seg(31, 50)];
        let gives_up = Target { gives_up_consistent: true, ..pick(Some(30), true) };
        assert_eq!(choose_target(without_40, 10, true, &segs, Some(100), &window, 4_000), gives_up);
    }

    #[test]
    fn a_burst_without_a_checkpoint_moves_the_replica_between_checkpoints() {
        let policy = HistoryPolicy { history: Duration::from_secs(3600), journal_limit: Some(100), journal_cap: None };
        // Checkpoint 10 is in the first segment; the burst fills the rest.
        let cps = [cp(10, 1_000)];
        let segs = [seg(1, 50), seg(21, 50), seg(41, 50)];
        let between = |id, gives_up| Target {
            id: Some(id),
            early: true,
            gives_up_consistent: gives_up,
            between_checkpoints: true,
            ..Default::default()
        };
        assert_eq!(choose_target(&cps, 10, true, &segs, Some(100), &policy, 4_000), between(40, true));
        assert_eq!(choose_target(&cps, 0, false, &segs, Some(100), &policy, 4_000), between(40, false));
        // A checkpoint far enough on is still preferred.
        let cps = [cp(10, 1_000), cp(45, 2_000)];
        assert_eq!(choose_target(&cps, 10, true, &segs, Some(100), &policy, 4_000), pick(Some(45), true));
        // Already there: nothing to do.
        assert_eq!(choose_target(&[], 40, false, &segs, Some(100), &policy, 4_000), pick(None, false));
    }

    mod on_disk {
        use super::super::*;
        use crate::journal::Journal;
        use crate::record::{Record, RecordBody, RECORD_HEADER_BYTES};
        use crate::segment::{create_segment, SEGMENT_HEADER_BYTES};
        use crate::wire::message::VolumeInfo;
        use std::io::Write;

        const VPG_ID: u32 = 77;

        fn body_at(seq: u64) -> RecordBody {
            match seq {
                1 => RecordBody::StreamStart { time_ms: 0, stream_id: 3 },
                2 => RecordBody::Write { volume: 0, offset: 0, data: vec![b'a'; 8192] },
                3 => RecordBody::CopyDone { volume: 0 },
                4 => RecordBody::Checkpoint { time_ms: 1_000, tag: "first".into(), resync: false },
                5 => RecordBody::Write { volume: 0, offset: 4096, data: vec![b'b'; 4096] },
                6 => RecordBody::Zero { volume: 0, offset: 0, length: 1024 },
                7 => RecordBody::Checkpoint { time_ms: 2_000, tag: String::new(), resync: false },
                8 => RecordBody::Write { volume: 0, offset: 0, data: vec![b'c'; 512] },
                9 => RecordBody::Checkpoint { time_ms: 100_000, tag: "last".into(), resync: false },
                _ => unreachable!(),
            }
        }

        /// Three segments: seqs 1-4, 5-7, 8-9.
        fn journal() -> (tempfile::TempDir, std::path::PathBuf, JournalMeta) {
            let root = tempfile::tempdir().unwrap();
            let dir = root.path().join("db");
            std::fs::create_dir(&dir).unwrap();
            let meta = JournalMeta {
                vpg: "db".into(),
                vpg_id: VPG_ID,
                volumes: vec![VolumeInfo { name: "v".into(), size: 16384 }],
            };
            std::fs::write(dir.join("journal.json"), serde_json::to_vec(&meta).unwrap()).unwrap();
            for seqs in [1..5, 5..8, 8..10] {
                let (_, mut f) = create_segment(&dir, SegmentKind::Journal, VPG_ID, seqs.start).unwrap();
                for seq in seqs {
                    f.write_all(&Record { seq, vpg_id: VPG_ID, body: body_at(seq) }.encode()).unwrap();
                }
            }
            (root, dir, meta)
        }

        fn expected_at(last: u64) -> Vec<u8> {
            let replica = tempfile::tempdir().unwrap();
            let files =
                VolumeFiles::create_new(replica.path(), &[VolumeInfo { name: "v".into(), size: 16384 }]).unwrap();
            (1..=last).for_each(|seq| files.apply(&body_at(seq)).unwrap());
            std::fs::read(&files.files[0].path).unwrap()
        }

        fn replica_bytes(dir: &Path) -> Vec<u8> {
            std::fs::read(dir.join("replica/v.img")).unwrap()
        }

        #[test]
        fn pass_applies_the_aged_history_and_retires_its_segments() {
            let (_root, dir, meta) = journal();
            let policy = HistoryPolicy { history: Duration::from_secs(60), journal_limit: None, journal_cap: None };
            let index = Journal::open(&dir, meta.clone(), &policy).unwrap().index;
            let report = pass(&dir, &meta, &index.checkpoints, &policy, 62_500).unwrap();
            assert_eq!(report.applied_to, Some(7));
            assert_eq!(report.segments_retired, 2);
            assert_eq!(replica_bytes(&dir), expected_at(7));
            // Reopened, the index starts at the replica and still sees 9.
            let index = Journal::open(&dir, meta.clone(), &policy).unwrap().index;
            assert_eq!(index.checkpoints.iter().map(|c| c.id).collect::<Vec<_>>(), vec![7, 9]);
            assert!(index.initial_copy_complete(), "the copy's end was in a retired segment");
            assert!(index.find("4").is_none() && index.find("first").is_none());
            // Restores start from the replica.
            let root = dir.parent().unwrap();
            for (cp, last) in [("last", 9), ("7", 7)] {
                let out = tempfile::tempdir().unwrap();
                crate::recovery::restore::restore(root, "db", cp, out.path(), false).unwrap();
                assert_eq!(std::fs::read(out.path().join("v.img")).unwrap(), expected_at(last), "checkpoint {cp}");
            }
            let out = tempfile::tempdir().unwrap();
            let err = crate::recovery::restore::restore(root, "db", "4", out.path(), false).err().unwrap();
            assert!(
                crate::error_chain::Chain(&err).to_string().contains("older than the history window"),
                "{err_chain}",
                err_chain = crate::error_chain::Chain(&err)
            );
        }

        #[test]
        fn a_pin_holds_the_replica_before_it_and_a_pin_of_no_checkpoint_is_ignored() {
            let (_root, dir, meta) = journal();
            let policy = HistoryPolicy { history: Duration::from_secs(60), journal_limit: None, journal_cap: None };
            let index = Journal::open(&dir, meta.clone(), &policy).unwrap().index;
            // Seq 5 is a write, not a checkpoint (a pin a repair left behind).
            crate::journal::pins::pin(&dir, 5, "void", 1).unwrap();
            crate::journal::pins::pin(&dir, 4, "kept", 1).unwrap();
            let report = pass(&dir, &meta, &index.checkpoints, &policy, 62_500).unwrap();
            assert_eq!((report.applied_to, report.void_pins.clone()), (Some(4), vec![5]));
            assert_eq!(report.pinned.map(|p| p.checkpoint), Some(4));
            assert_eq!(replica_bytes(&dir), expected_at(4));
            crate::journal::pins::unpin(&dir, 4).unwrap();
            let report = pass(&dir, &meta, &index.checkpoints, &policy, 62_500).unwrap();
            assert_eq!((report.applied_to, report.pinned), (Some(7), None), "released, the window applies again");
        }

        fn view_bytes(dir: &Path, checkpoint: &str) -> Vec<u8> {
            let view = crate::recovery::view::PitView::open(dir.parent().unwrap(), "db", checkpoint, "test").unwrap();
            let mut buf = vec![0xee; 16384];
            view.read_at(0, &mut buf, 0).unwrap();
            // Unaligned pieces read the same bytes.
            let mut piece = vec![0; 3000];
            view.read_at(0, &mut piece, 3500).unwrap();
            assert_eq!(piece, buf[3500..6500]);
            assert!(view.read_at(0, &mut piece, 16000).is_err());
            buf
        }

        #[test]
        fn views_read_the_replica_plus_the_journal() {
            let (_root, dir, meta) = journal();
            let policy = HistoryPolicy { history: Duration::from_secs(60), journal_limit: None, journal_cap: None };
            let index = Journal::open(&dir, meta.clone(), &policy).unwrap().index;
            for (cp, last) in [("first", 4), ("7", 7), ("last", 9)] {
                assert_eq!(view_bytes(&dir, cp), expected_at(last), "before the apply, checkpoint {cp}");
            }
            pass(&dir, &meta, &index.checkpoints, &policy, 62_500).unwrap();
            for (cp, last) in [("7", 7), ("last", 9)] {
                assert_eq!(view_bytes(&dir, cp), expected_at(last), "after the apply, checkpoint {cp}");
            }
        }

        #[test]
        fn a_window_shortened_by_the_limit_is_reported_until_time_catches_up() {
            let (_root, dir, meta) = journal();
            let policy = HistoryPolicy { history: Duration::from_secs(60), journal_limit: Some(1), journal_cap: None };
            let index = Journal::open(&dir, meta.clone(), &policy).unwrap().index;
            let report = pass(&dir, &meta, &index.checkpoints, &policy, 10_000).unwrap();
            assert_eq!((report.applied_to, report.shortened), (Some(7), true));
            // Nothing more to apply early, but the window is still short.
            let report = pass(&dir, &meta, &index.checkpoints, &policy, 10_000).unwrap();
            assert_eq!((report.applied_to, report.shortened), (None, true));
            // Checkpoint 7 (at 2 s) has aged out of the 60 s window.
            let report = pass(&dir, &meta, &index.checkpoints, &policy, 62_500).unwrap();
            assert_eq!((report.applied_to, report.shortened), (None, false));
        }

        #[test]
        fn a_lease_holds_the_replica_back() {
            let (_root, dir, meta) = journal();
            let policy = HistoryPolicy { history: Duration::from_secs(60), journal_limit: None, journal_cap: None };
            let index = Journal::open(&dir, meta.clone(), &policy).unwrap().index;
            let held = lease::take(&dir, "export", 4).unwrap();
            let report = pass(&dir, &meta, &index.checkpoints, &policy, 62_500).unwrap();
            assert_eq!(report.applied_to, Some(4));
            assert_eq!(report.held_by, vec!["export".to_string()]);
            assert_eq!(report.segments_retired, 0, "the lease reads from seq 0");
            drop(held);
            let report = pass(&dir, &meta, &index.checkpoints, &policy, 62_500).unwrap();
            assert_eq!((report.applied_to, report.segments_retired), (Some(7), 2));
        }

        #[test]
        fn a_target_between_checkpoints_in_a_gap_of_seqs_is_applied_and_head_still_reads() {
            // Stream 3 ends at seq 4 (a checkpoint); stream 4 starts at
            // seq 20 in the next segment, and its copy has no checkpoint:
            // over the limit, the target is 19, which no record has.
            let (_root, dir, meta) = journal();
            for f in std::fs::read_dir(&dir).unwrap() {
                let path = f.unwrap().path();
                if path.extension().is_some_and(|e| e == "tmjrn") {
                    std::fs::remove_file(path).unwrap();
                }
            }
            let body = |seq| match seq {
                20 => RecordBody::StreamStart { time_ms: 5_000, stream_id: 4 },
                21 => RecordBody::Write { volume: 0, offset: 0, data: vec![b'd'; 4096] },
                22 => RecordBody::Write { volume: 0, offset: 8192, data: vec![b'e'; 4096] },
                23 => RecordBody::CopyDone { volume: 0 },
                seq => body_at(seq),
            };
            for seqs in [1..5, 20..24] {
                let (_, mut f) = create_segment(&dir, SegmentKind::Journal, VPG_ID, seqs.start).unwrap();
                for seq in seqs {
                    f.write_all(&Record { seq, vpg_id: VPG_ID, body: body(seq) }.encode()).unwrap();
                }
            }
            // The new stream's segment, before its first batch was written
            // (an append that failed leaves it so): the target is reached.
            let second = dir.join(format!("{:020}.tmjrn", 20));
            let whole = std::fs::read(&second).unwrap();
            std::fs::write(&second, &whole[..crate::segment::SEGMENT_HEADER_BYTES]).unwrap();
            let policy =
                HistoryPolicy { history: Duration::from_secs(3600), journal_limit: Some(1), journal_cap: None };
            let index = Journal::open(&dir, meta.clone(), &policy).unwrap().index;
            // Only the segment right after a target says its records were
            // all read: one further on says nothing of records a repair may
            // have cut before it.
            let refused = apply_to(&dir, &meta, &ApplyState::default(), 10, true).unwrap_err();
            assert!(refused.to_string().contains("cannot apply to seq 10"), "{refused}");
            let report = pass(&dir, &meta, &index.checkpoints, &policy, 10_000).unwrap();
            assert_eq!((report.applied_to, report.segments_retired), (Some(19), 1));
            std::fs::write(&second, &whole).unwrap();
            let between = report.between_checkpoints.unwrap();
            assert_eq!((between.seq, between.image, between.gave_up), (19, true, Some(4)));
            assert_eq!(replica_bytes(&dir), expected_at(4));
            let state = ApplyState::load(&dir).unwrap();
            assert_eq!((state.applied_seq, state.base, state.stream_id), (19, None, 3));
            assert!(state.left_by_limit, "a restart would no longer say why the replica is at no checkpoint");
            // The next pass has nothing more to give up; the state still
            // says why the replica is where it is.
            let index = Journal::open(&dir, meta.clone(), &policy).unwrap().index;
            let report = pass(&dir, &meta, &index.checkpoints, &policy, 10_000).unwrap();
            assert_eq!((report.applied_to, report.between_checkpoints), (None, None));
            assert!(report.state.left_by_limit);
            // head: the replica plus stream 4's records.
            let out = tempfile::tempdir().unwrap();
            crate::recovery::restore::restore(dir.parent().unwrap(), "db", "head", out.path(), false).unwrap();
            let mut want = expected_at(4);
            want[..4096].fill(b'd');
            want[8192..12288].fill(b'e');
            assert_eq!(std::fs::read(out.path().join("v.img")).unwrap(), want);
        }

        #[test]
        fn bit_rot_in_records_already_in_the_replica_harms_nothing() {
            // The replica holds seqs 1-8; record 8 (in the newest segment,
            // 8-9) rots. Before, the open took it for damage: the segment
            // was cut before 8 and checkpoint 9 was lost (review of
            // helper-50).
            let (_root, dir, meta) = journal();
            let replica = VolumeFiles::open_replica(&dir, &meta.volumes, true).unwrap();
            (1..=8).for_each(|seq| replica.apply(&body_at(seq)).unwrap());
            replica.sync_all().unwrap();
            let copied = vec![0];
            ApplyState { applied_seq: 8, copied, stream_id: 3, ..Default::default() }.store(&dir).unwrap();
            let newest = dir.join(format!("{:020}.tmjrn", 8));
            let mut bytes = std::fs::read(&newest).unwrap();
            let at = bytes.windows(64).position(|w| w.iter().all(|b| *b == b'c')).unwrap();
            bytes[at + 10] ^= 0x40;
            std::fs::write(&newest, &bytes).unwrap();
            let policy = HistoryPolicy { history: Duration::from_secs(3600), journal_limit: None, journal_cap: None };
            let journal = Journal::open(&dir, meta.clone(), &policy).unwrap();
            assert_eq!((journal.index.durable_seq, journal.index.damage.clone()), (9, None));
            assert!(!dir.join("quarantine").exists(), "nothing was quarantined");
            drop(journal);
            let out = tempfile::tempdir().unwrap();
            crate::recovery::restore::restore(dir.parent().unwrap(), "db", "last", out.path(), false).unwrap();
            assert_eq!(std::fs::read(out.path().join("v.img")).unwrap(), expected_at(9));
        }

        #[test]
        fn a_damaged_header_in_records_already_in_the_replica_harms_nothing() {
            // The replica holds seqs 1-5; the header of record 5 (the first
            // of segment 5-7, summarized while sound) rots. Nothing in the
            // segment says where record 6 starts: the open cut the segment
            // at 5 and quarantined segment 8-9, and checkpoints 7 and 9
            // were lost. Now the summary says where. With the replica at 4
            // record 5 is needed, and without a summary nothing says where
            // 6 starts: both are still damage (the journal ends at the
            // replica).
            // With more damage above the replica in the same segment, the
            // start cuts at the first damage, as before: cut at the later
            // one, the segment would be appended to and lose its summary,
            // and the next start would cut it at the first, with records
            // acknowledged since (review of helper-59).
            for (applied, summarized, more) in [(5, true, false), (4, true, false), (5, false, false), (5, true, true)]
            {
                let (_root, dir, meta) = journal();
                if summarized {
                    assert_eq!(crate::journal::summary::Summarizer::default().pass(&dir, VPG_ID, 0, 0).unwrap(), 2);
                }
                let replica = VolumeFiles::open_replica(&dir, &meta.volumes, true).unwrap();
                (1..=applied).for_each(|seq| replica.apply(&body_at(seq)).unwrap());
                replica.sync_all().unwrap();
                ApplyState { applied_seq: applied, copied: vec![0], stream_id: 3, ..Default::default() }
                    .store(&dir)
                    .unwrap();
                let segment = dir.join(format!("{:020}.tmjrn", 5));
                let mut bytes = std::fs::read(&segment).unwrap();
                bytes[SEGMENT_HEADER_BYTES + 10] ^= 0x40;
                if more {
                    // Checkpoint 7's payload, after records 5 (4096 bytes) and 6.
                    let seven = SEGMENT_HEADER_BYTES + 2 * RECORD_HEADER_BYTES + 4096;
                    bytes[seven + RECORD_HEADER_BYTES] ^= 0x40;
                }
                std::fs::write(&segment, &bytes).unwrap();
                let policy =
                    HistoryPolicy { history: Duration::from_secs(3600), journal_limit: None, journal_cap: None };
                let journal = Journal::open(&dir, meta.clone(), &policy).unwrap();
                if (applied, summarized, more) != (5, true, false) {
                    let case = format!("replica at {applied}, summary {summarized}, more damage {more}");
                    assert_eq!(journal.index.durable_seq, applied, "{case}: 7 and 9 are gone");
                    assert!(dir.join("quarantine").exists(), "{case}: nothing was quarantined");
                    let cut = std::fs::metadata(&segment).unwrap().len();
                    assert_eq!(cut, SEGMENT_HEADER_BYTES as u64, "{case}: cut at record 5");
                    continue;
                }
                assert_eq!((journal.index.durable_seq, journal.index.damage.clone()), (9, None));
                assert!(!dir.join("quarantine").exists(), "nothing was quarantined");
                drop(journal);
                for (checkpoint, seq) in [("7", 7), ("last", 9)] {
                    let out = tempfile::tempdir().unwrap();
                    crate::recovery::restore::restore(dir.parent().unwrap(), "db", checkpoint, out.path(), false)
                        .unwrap();
                    assert_eq!(std::fs::read(out.path().join("v.img")).unwrap(), expected_at(seq), "{checkpoint}");
                }
                let index = Journal::open(&dir, meta.clone(), &policy).unwrap().index;
                let aged = HistoryPolicy { history: Duration::from_secs(60), ..policy };
                assert_eq!(pass(&dir, &meta, &index.checkpoints, &aged, 62_500).unwrap().applied_to, Some(7));
                assert_eq!(replica_bytes(&dir), expected_at(7));
            }
        }

        #[test]
        fn an_interrupted_apply_is_finished_the_same_from_any_point() {
            for done in 0..=7 {
                let (_root, dir, meta) = journal();
                // The crash: apply.json says "applying to 7", and the
                // replica holds the first `done` records of that apply.
                ApplyState { applying_to: Some(7), ..Default::default() }.store(&dir).unwrap();
                let replica = VolumeFiles::open_replica(&dir, &meta.volumes, true).unwrap();
                (1..=done).for_each(|seq| replica.apply(&body_at(seq)).unwrap());
                let policy =
                    HistoryPolicy { history: Duration::from_secs(3600), journal_limit: None, journal_cap: None };
                let journal = Journal::open(&dir, meta.clone(), &policy).unwrap();
                assert_eq!(journal.index.applied_seq, 7, "after {done} records");
                assert_eq!(replica_bytes(&dir), expected_at(7), "after {done} records");
                let state = ApplyState::load(&dir).unwrap();
                assert_eq!((state.applied_seq, state.applying_to), (7, None));
            }
        }
    }
}
