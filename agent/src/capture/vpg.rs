//! One protection group on the protected side: its volumes, its protected
//! log, its activity log, and the lock that puts every write of every
//! volume into one order. A write is applied to the volume and appended to
//! the log under that lock, so the log's seq order is the order the
//! volumes saw; a checkpoint appended under the same lock is therefore a
//! prefix of that order. Room in the log is reserved before the lock is
//! taken: a full log holds up writers, never the lock.
//!
//! After any stop the stream is made consistent again before the next
//! checkpoint: the ranges whose volume content may differ from the log
//! are marked in the dirty map and read back by a resync
//! (`bitmap_mode`), or, if the log lost what it had made durable, a new
//! stream starts.

use super::activity::{extent_range, ActivityFound, ActivityLog};
use super::alert::Detection;
use super::bitmap_state::{BitmapState, CaptureMode};
use super::dirty_map::{DirtyMap, LoadError, MapFile};
use super::no_image_marks::{mark_before_next_record, mark_now_or_before_next_record, Marked};
use super::no_image_marks::{BITMAP_START_TAG, RESYNC_START_TAG};
use super::sync_gate::{SyncGate, SyncPolicy};
use super::volume::Volume;
use crate::config::BitmapConfig;
use crate::log::{CaptureState, LogOpenReport, LogSize, LogSpace, ProtectedLog};

use super::error::CaptureError;
use crate::io_failure::Doing;
use crate::protected_state::{self, Event, WritesRefused};
use crate::record::{now_ms, RecordBody, RECORD_HEADER_BYTES};
use crate::status::CheckpointSummary;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch, Mutex};

type Result<T, E = CaptureError> = std::result::Result<T, E>;

/// What a move asks of the recovery side, through the link.
pub enum MoveStep {
    /// A move begins: the recovery side refuses other failovers of the VPG
    /// (or refuses the move, saying why).
    Begin,
    /// Fail over to this checkpoint, which the journal holds.
    Promote(u64),
    /// An unfinished move is called off: the recovery side confirms it has
    /// not failed over the VPG (or refuses, saying so).
    Cancel,
}

/// Where a capture's stream goes.
pub enum StreamTo<'a> {
    /// The recovery site (forward protection): bitmap mode as configured,
    /// and a new stream's copy sends only extents whose hashes differ
    /// from the recovery journal's.
    RecoverySite(&'a BitmapConfig),
    /// The old site of a failed-over VPG (reverse protection): bitmap
    /// mode with its defaults (this site runs production now: a full
    /// reverse log while the old site is down must not hold its VMs'
    /// writes), and a new stream's copy sends everything.
    OldSite,
}

/// How far the current initial copy is (for status and the log).
#[derive(Default)]
pub struct CopyProgress {
    pub compared_bytes: AtomicU64,
    pub sent_bytes: AtomicU64,
    pub total_bytes: AtomicU64,
}

pub struct PromoteRequest {
    pub step: MoveStep,
    pub reply: oneshot::Sender<Result<()>>,
}

/// Reads of the initial copy and of ranges read again, one record each.
pub(super) const COPY_CHUNK_BYTES: u64 = 1 << 20;
/// How often written extents are made durable and forgotten by the
/// activity log (when there were writes).
const ACTIVITY_EPOCH_INTERVAL: Duration = Duration::from_secs(5);
/// Pause before a start's new stream is tried again after an error.
const START_WORK_RETRY: Duration = Duration::from_secs(5);

pub struct VpgCapture {
    pub name: String,
    /// Async or sync mode, and sync mode's bound on a FLUSH's wait.
    pub sync: SyncGate,
    pub volumes: Vec<Volume>,
    pub log: Arc<ProtectedLog>,
    pub(crate) order: Arc<Mutex<()>>,
    pub(crate) state: std::sync::Mutex<CaptureState>,
    pub(super) activity: Arc<std::sync::Mutex<ActivityLog>>,
    /// False while a start's new stream has not begun: a checkpoint before
    /// it could name an image the volumes never held.
    consistent: watch::Sender<bool>,
    /// The mode (logging, bitmap, resync) and the dirty map.
    pub(super) bitmap: BitmapState,
    /// Set when a volume write failed and the stream could not be made to
    /// agree with the volume, or a volume fsync failed
    /// (`VolumeSyncFailure`): every write fails until a restart.
    failed: Arc<std::sync::Mutex<Option<String>>>,
    volume_sync: crate::durable::SyncGroup,
    /// Bumped when a new stream starts; a copy from an older stream stops.
    pub(crate) copy_generation: AtomicU64,
    /// The copy generation of the reverse delta copy that runs or ran
    /// (0: none; `delta.rs`).
    pub(crate) delta_copy: AtomicU64,
    /// The seq of the CopyDone that completed the current stream's copy,
    /// once it did in this run (None after a new stream starts).
    pub(super) copy_complete: watch::Sender<Option<u64>>,
    /// Whether a copy compares extent hashes with the recovery side.
    pub(super) copies_by_hash: bool,
    pub(super) copy_progress: CopyProgress,
    /// Questions for the recovery side's extent hashes, for the link.
    pub peer_hashes: super::peer_hashes::PeerHashes,
    /// While a verify runs: the extents written since its checkpoint.
    pub(super) verify_written: std::sync::Mutex<Option<DirtyMap>>,
    /// Held by the one verify that runs at a time (others wait).
    pub(super) verifying: Mutex<()>,
    /// The last verify's report.
    pub(super) last_verify: std::sync::Mutex<Option<super::verify_report::VerifyReport>>,
    /// The newest checkpoint inserted, automatic or tagged (for status).
    last_checkpoint: std::sync::Mutex<Option<CheckpointSummary>>,
    promote_tx: mpsc::Sender<PromoteRequest>,
    /// Taken by the link that is up; a move's request waits for one.
    pub promote_rx: Mutex<mpsc::Receiver<PromoteRequest>>,
    /// Held by the one move that may run at a time.
    pub moving: Mutex<()>,
    /// The encryption-attack detector, when it is on.
    detection: std::sync::OnceLock<Arc<Detection>>,
    /// The last seq the log held when it was opened.
    opened_end: u64,
    /// When the last coordinated checkpoint's hold ended, and the hold
    /// debt then (`group_hold`: holds are kept to a tenth of the time).
    pub(super) last_group_hold: std::sync::Mutex<Option<(std::time::Instant, Duration)>>,
    /// When writing `sync_let_go` last failed: tried again only after
    /// `LET_GO_RETRY`, so a full or failing disk costs a write and a
    /// warning per interval, not per FLUSH.
    let_go_write_failed: std::sync::Mutex<Option<std::time::Instant>>,
}

const LET_GO_RETRY: Duration = Duration::from_secs(30);
/// How soon a failover's refusal whose store failed is stored again.
const FAILED_OVER_STORE_RETRY_MIN: Duration = Duration::from_secs(1);
const FAILED_OVER_STORE_RETRY_MAX: Duration = Duration::from_secs(30);

impl VpgCapture {
    /// Opens a VPG's capture from `dir` (its protected log, activity log,
    /// dirty map and state; created when new), and starts in the background
    /// what makes the stream consistent again after an unclean stop, the
    /// resync, and the activity log's epochs. Nothing here waits for room
    /// in the log.
    pub fn open(
        name: String,
        sync: SyncPolicy,
        volumes: Vec<Volume>,
        vpg_id: u32,
        dir: &Path,
        log_size: LogSize,
        to: StreamTo<'_>,
    ) -> Result<Arc<VpgCapture>> {
        let old_site_bitmap = BitmapConfig::default();
        let (bitmap, copies_by_hash) = match to {
            StreamTo::RecoverySite(b) => (b, true),
            StreamTo::OldSite => (&old_site_bitmap, false),
        };
        std::fs::create_dir_all(dir).doing(|| format!("creating {}", dir.display()))?;
        // Left by a build that kept a ballast here: its room lets this
        // start make its slot files on a disk that is full.
        for left in ["ballast", "ballast.tmp"] {
            let _ = std::fs::remove_file(dir.join(left));
        }
        let (mut activity, found) = ActivityLog::open(dir)?;
        let mut dropped_stream = None;
        let before_dropping = &mut |what: &str| {
            // Said durably before the records go: a stop right after the
            // drop still starts the new stream.
            activity.require_new_stream()?;
            dropped_stream = Some(what.to_string());
            Ok(())
        };
        let (log, report) = ProtectedLog::open(dir, vpg_id, log_size, found.durable_through, before_dropping)
            .map_err(|e| CaptureError::from(e).step(format!("opening the protected log of VPG {name}")))?;
        if let Some(cut) = &report.cut {
            tracing::warn!(vpg = %name, "protected log: cut after seq {} at {}", cut.after_seq, cut.damage);
        }
        let mut state = CaptureState::load(dir, report.fresh)?;
        if report.fresh {
            state.store(dir)?;
        }
        // Only sync mode keeps it true: a FLUSH of an async VPG returns
        // without the journal, so a later start in sync mode must not find
        // "nothing was let go" (review of helper-42).
        if sync.mode != crate::config::ReplicationMode::Sync && state.sync_let_go.is_some() {
            // Best effort, as every write of it: a full disk must not keep
            // the VPG from starting (review of helper-43).
            if let Err(e) = state.update(dir, |s| s.sync_let_go = None) {
                tracing::warn!(vpg = %name, "clearing sync mode's record in the capture state: {}", crate::error_chain::Chain(&e));
            }
        }
        let shapes = super::bitmap_state::shapes(&volumes);
        let granularity = bitmap.granularity;
        let mut dirty = DirtyMap::new(granularity, &shapes);
        let mut map_file = MapFile::new(dir, vpg_id);
        // A map that is damaged or not this VPG's is never trusted.
        let stored_map = match report.fresh {
            true => Ok(None),
            false => map_file.load(granularity, &shapes),
        };
        let log_end = report.next_seq - 1;
        let mut why_dirty = String::new();
        let new_stream = if report.fresh {
            // A new log copies every volume anyway.
            activity.finish_epoch(0, activity.generation(), true, false)?;
            None
        } else if let Some(why) = new_stream_due(&found, &report, &stored_map, dropped_stream) {
            // Said durably first: a stop before the new stream asks again.
            activity.require_new_stream()?;
            Some(why)
        } else {
            let start = StartFound { volumes: &volumes, found: &found, report: &report, stored_map: &stored_map };
            why_dirty = start.mark_dirty(&name, &mut activity, &mut dirty)?;
            None
        };
        // The file takes its full size now, holding what the start found
        // (or a new stream was asked for durably): bitmap mode then stores
        // the map in place on a disk the log has filled.
        if let Err(e) = map_file.prepare(&dirty) {
            tracing::warn!(vpg = %name, "no room for the dirty map's file now: bitmap mode makes it when it stores a map ({})", crate::error_chain::Chain(&e));
        }
        // No writer yet: the resync's start is marked before any write.
        // Without room for its mark (or a disk that takes it), nothing may
        // be logged before it (`head` would be restorable while it holds
        // some regions read back and not others; review of helper-45): the
        // log writes it before whatever it takes first (a write with
        // bitmap mode off, a copy resumed; review of helper-46). With
        // bitmap mode on, the VPG then starts in bitmap mode, whose resync
        // marks its start before it logs anything. (The activity log was
        // told the map is in use when the start marked its regions:
        // `mark_dirty`.)
        let mut mark = Marked::Now;
        if new_stream.is_none() && !dirty.is_empty() {
            mark = mark_now_or_before_next_record(&log, RESYNC_START_TAG, &name, "the resync's start")?;
        }
        let start_in_bitmap = mark != Marked::Now && bitmap.enabled;
        if start_in_bitmap {
            tracing::warn!(vpg = %name, "starting in bitmap mode: the resync begins once its start is marked");
        }
        let (promote_tx, promote_rx) = mpsc::channel(1);
        let capture = Arc::new(VpgCapture {
            name,
            // A fresh log holds nothing a FLUSH let go, nor does one whose
            // gate was strict when the agent before last said.
            sync: SyncGate::new(sync, if report.fresh || state.sync_let_go == Some(false) { 0 } else { log_end }),
            volumes,
            log,
            order: Arc::new(Mutex::new(())),
            state: std::sync::Mutex::new(state),
            activity: Arc::new(std::sync::Mutex::new(activity)),
            consistent: watch::channel(new_stream.is_none()).0,
            bitmap: BitmapState::new(bitmap, log_size.capacity_bytes, dirty, why_dirty, map_file, start_in_bitmap),
            failed: Arc::new(std::sync::Mutex::new(None)),
            volume_sync: Default::default(),
            copy_generation: AtomicU64::new(0),
            delta_copy: AtomicU64::new(0),
            copy_complete: watch::channel(None).0,
            copies_by_hash,
            copy_progress: Default::default(),
            peer_hashes: Default::default(),
            verify_written: std::sync::Mutex::new(None),
            verifying: Mutex::new(()),
            last_verify: std::sync::Mutex::new(None),
            last_checkpoint: std::sync::Mutex::new(None),
            promote_tx,
            promote_rx: Mutex::new(promote_rx),
            moving: Mutex::new(()),
            detection: std::sync::OnceLock::new(),
            opened_end: log_end,
            last_group_hold: std::sync::Mutex::new(None),
            let_go_write_failed: std::sync::Mutex::new(None),
        });
        if start_in_bitmap && mark == Marked::BeforeNextDiskRefused {
            // As after any record the disk refused: the cap, and the
            // pause before the resync tries the log (status, metrics).
            capture.bitmap.log_failed(capture.log_takes());
        }
        if let Some(why) = new_stream {
            tokio::spawn(capture.clone().start_new_stream(why));
        }
        tokio::spawn(capture.clone().resync_loop());
        tokio::spawn(capture.clone().activity_epochs());
        let resumes = capture.clone();
        tokio::spawn(async move {
            let (appended, journaled) = (|| resumes.log.appended_seq(), |seq| resumes.wait_recovery_durable(seq));
            let logging = || {
                let mut mode = resumes.bitmap.subscribe();
                async move {
                    let _ = mode.wait_for(|m| *m == CaptureMode::Logging).await;
                }
            };
            resumes.sync.resume_when_caught_up(&resumes.name, appended, journaled, logging).await
        });
        Ok(capture)
    }

    /// Starts the new stream a start found due (retrying after errors),
    /// then lets checkpoints be taken again.
    async fn start_new_stream(self: Arc<Self>, why: String) {
        tracing::error!(vpg = %self.name, "{why}: starting a new stream (its copy sends what differs from the recovery journal)");
        let mut started = false;
        loop {
            // Once the stream has started, only its epoch is tried again.
            if !started {
                started = match self.restart_stream(0).await {
                    Ok(_) => true,
                    Err(e) => {
                        tracing::error!(vpg = %self.name, "starting the new stream failed (retrying): {e_chain}", e_chain = crate::error_chain::Chain(&e));
                        tokio::time::sleep(START_WORK_RETRY).await;
                        continue;
                    }
                };
            }
            let done = self.epoch_with(self.plan_epoch_now().await, true).await;
            match done {
                Ok(()) => break,
                Err(e) => {
                    tracing::error!(vpg = %self.name, "making the new stream's start durable failed (retrying): {e_chain}", e_chain = crate::error_chain::Chain(&e));
                    tokio::time::sleep(START_WORK_RETRY).await;
                }
            }
        }
        self.consistent.send_replace(true);
        tracing::info!(vpg = %self.name, "the stream is consistent again; checkpoints resume");
    }

    /// What an epoch makes durable, as it is now. Under the order lock.
    fn plan_epoch(&self) -> EpochPlan {
        EpochPlan {
            upto: self.activity.lock().expect("activity lock").generation(),
            through: self.log.appended_seq(),
            map: self.bitmap.snapshot(),
        }
    }

    async fn plan_epoch_now(&self) -> EpochPlan {
        let _order = self.order.lock().await;
        self.plan_epoch()
    }

    /// Makes every write up to `plan` durable in the volumes and the log,
    /// stores the dirty map as it was then, and only then lets the activity
    /// log forget the extents written before. `start_work_done`: a start's
    /// work (its new stream, or its re-reading now in the map) is durable.
    async fn epoch_with(&self, plan: EpochPlan, start_work_done: bool) -> Result<()> {
        self.sync_volumes().await?;
        self.log.sync_to(plan.through).await?;
        self.bitmap.store(&plan.map)?;
        self.activity.lock().expect("activity lock").finish_epoch(
            plan.through,
            plan.upto,
            start_work_done,
            plan.map.in_use,
        )
    }

    /// An epoch now (once a start's new stream has begun).
    pub(super) async fn epoch(&self) -> Result<()> {
        let plan = self.plan_epoch_now().await;
        let start_work_done = *self.consistent.borrow();
        self.epoch_with(plan, start_work_done).await
    }

    async fn activity_epochs(self: Arc<Self>) {
        let mut tick = tokio::time::interval(ACTIVITY_EPOCH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if !*self.consistent.borrow() || self.failed.lock().expect("failed lock").is_some() {
                continue;
            }
            let plan = self.plan_epoch_now().await;
            let idle = self.activity.lock().expect("activity lock").marked_count() == 0;
            if idle && !plan.map.changed() {
                continue;
            }
            if let Err(e) = self.epoch_with(plan, true).await {
                tracing::warn!(vpg = %self.name, "activity log epoch failed: {e_chain}", e_chain = crate::error_chain::Chain(&e));
            }
        }
    }

    /// fsyncs every volume; concurrent callers share one sync. A failed
    /// fsync fails the VPG until a restart: the kernel may have dropped
    /// writes it could not store and says so only once, so a later fsync
    /// (and a FLUSH after it) would succeed without them, and the next
    /// epoch would let the activity log forget where they were. The
    /// activity log keeps every mark and asks the next start to read them
    /// again from the volumes (from the device: the start drops their
    /// cached pages first), so the replica comes to hold what the volumes
    /// hold (review of helper-69).
    pub(crate) async fn sync_volumes(&self) -> Result<()> {
        let volumes = self.volumes.clone();
        let failure = VolumeSyncFailure {
            vpg: self.name.clone(),
            failed: self.failed.clone(),
            activity: self.activity.clone(),
            log: self.log.clone(),
        };
        // Recorded by the run itself: the FLUSH that started it may be gone
        // (its connection ended) by the time it fails, and until the next
        // sync the VPG would go on taking writes, and a kill then would
        // leave a start on this boot nothing to read again (review of
        // helper-73).
        self.volume_sync
            .sync(move || {
                let synced = volumes.iter().try_for_each(|v| v.sync());
                if let Err(e) = &synced {
                    failure.record(e);
                }
                synced
            })
            .await
    }

    /// Marks the range active before a write to it; under the write-order
    /// lock. A full activity log is emptied by an epoch first.
    pub(super) async fn mark_active(&self, volume: u32, offset: u64, length: u64) -> Result<()> {
        let full = self.activity.lock().expect("activity lock").would_overflow(volume, offset, length);
        if full {
            // The order lock is held: every write so far is in the log or
            // the dirty map, and on the volume (page cache).
            self.epoch_with(self.plan_epoch(), false).await?;
        }
        self.activity.lock().expect("activity lock").mark(volume, offset, length)?;
        // A verify running compares only what was not written since its checkpoint.
        if let Some(written) = self.verify_written.lock().expect("verify lock").as_mut() {
            written.mark(volume, offset, length);
        }
        Ok(())
    }

    /// Turns the encryption-attack detector on (once, before writes come)
    /// and starts its interval clock.
    pub fn enable_detection(self: &Arc<Self>, cfg: &crate::config::DetectionConfig) -> Result<()> {
        let volumes: Vec<(String, u64)> = self.volumes.iter().map(|v| (v.name.clone(), v.size)).collect();
        let detection = Arc::new(Detection::open(self.log.dir(), cfg, &volumes, self.opened_end)?);
        tracing::info!(
            vpg = %self.name,
            "encryption detector on: {} intervals, class maps of {}",
            humantime::format_duration(cfg.interval),
            crate::status::format_bytes(detection.map_bytes() as u64)
        );
        if self.detection.set(detection.clone()).is_ok() {
            tokio::spawn(super::alert::run(self.name.clone(), detection));
        }
        Ok(())
    }

    pub fn detection(&self) -> Option<&Arc<Detection>> {
        self.detection.get()
    }

    /// Reverse protection state, if this site receives the VPG back.
    pub fn reverse_state(&self) -> Option<crate::log::state::ReverseState> {
        self.state.lock().expect("state lock").reverse.clone()
    }

    /// Records reverse progress durably (before it is acknowledged).
    pub fn set_reverse_state(&self, reverse: crate::log::state::ReverseState) -> Result<()> {
        let mut state = self.state.lock().expect("state lock");
        Ok(state.update(self.log.dir(), |s| s.reverse = Some(reverse))?)
    }

    /// The marker of a switch-back this site applied, if one is under way.
    pub fn move_back_marker(&self) -> Option<u64> {
        self.state.lock().expect("state lock").move_back_marker
    }

    /// Records (durably) that this site applied the reverse log through
    /// `marker`, or forgets it.
    pub fn set_move_back_marker(&self, marker: Option<u64>) -> Result<()> {
        let mut state = self.state.lock().expect("state lock");
        Ok(state.update(self.log.dir(), |s| s.move_back_marker = marker)?)
    }

    /// Reverse protection ends (switched back): this site takes writes
    /// again, in one durable write, between the reverse apply's batches
    /// (it holds the order lock too).
    pub async fn end_reverse(&self) -> Result<()> {
        let _order = self.order.lock().await;
        let mut state = self.state.lock().expect("state lock");
        let refused = protected_state::next(state.refused(), Event::ReverseEnded)
            .map_err(|r| CaptureError::Unavailable(r.message(&self.name)))?;
        state.update(self.log.dir(), |s| {
            s.reverse = None;
            s.set_refused(refused, &self.name);
            s.move_back_marker = None;
        })?;
        tracing::warn!(vpg = %self.name, "reverse protection ended: this site takes writes again");
        Ok(())
    }

    /// Why writes are refused, in words, if they are.
    pub fn writes_refused(&self) -> Option<String> {
        self.refusal().map(|r| r.message(&self.name))
    }

    /// Why writes are refused, if they are.
    pub fn refusal(&self) -> Option<WritesRefused> {
        self.state.lock().expect("state lock").refused().cloned()
    }

    /// Refused (with the operator's words) if `event` cannot happen now;
    /// changes nothing.
    pub fn check_writes_change(&self, event: Event) -> Result<()> {
        protected_state::next(self.refusal().as_ref(), event)
            .map(|_| ())
            .map_err(|r| CaptureError::Unavailable(r.message(&self.name)))
    }

    /// Whether writes are taken here changes by `event` (refused, with the
    /// operator's words, if it cannot happen now), durably before it takes
    /// effect, between writes (under the order lock): from then on every
    /// write and zero is refused (EPERM) with the refusal's words, or taken
    /// again, also after a restart. Writes already ordered are not affected.
    pub async fn change_writes(&self, event: Event) -> Result<()> {
        let _order = self.order.lock().await;
        let after = {
            let mut state = self.state.lock().expect("state lock");
            let after = protected_state::next(state.refused(), event)
                .map_err(|r| CaptureError::Unavailable(r.message(&self.name)))?;
            if after.as_ref() == state.refused() {
                return Ok(());
            }
            state.update(self.log.dir(), |s| s.set_refused(after.clone(), &self.name))?;
            after
        };
        match after {
            Some(r) => tracing::warn!(vpg = %self.name, "writes refused from now on: {}", r.message(&self.name)),
            None => tracing::warn!(vpg = %self.name, "writes accepted again"),
        }
        Ok(())
    }

    /// The recovery site failed the VPG over at `checkpoint`: writes are
    /// refused from now on, at once, and durably as soon as the state can
    /// be stored (tried again until it is). When the store failed (a full
    /// or failing log disk), the refusal was not made at all and the old
    /// site took writes the recovery site's VMs never see, for good (review
    /// of helper-51).
    pub async fn failed_over_heard(&self, checkpoint: u64) {
        {
            // No write is in flight, and none is taken from here.
            let _order = self.order.lock().await;
            let mut state = self.state.lock().expect("state lock");
            match protected_state::next(state.refused(), Event::FailedOverHeard { checkpoint }) {
                Err(r) => {
                    tracing::error!(vpg = %self.name, "the recovery site failed the VPG over: {}", r.message(&self.name));
                    return;
                }
                Ok(after) if after.as_ref() == state.refused() => return,
                Ok(after) => state.set_refused(after, &self.name),
            }
        }
        tracing::warn!(vpg = %self.name, "writes refused from now on: {}", self.writes_refused().unwrap_or_default());
        let mut delay = FAILED_OVER_STORE_RETRY_MIN;
        loop {
            let stored = (|| {
                fail::fail_point!("failed-over-store", |_| Err(crate::log::LogError::Append {
                    seq: 0,
                    path: "failpoint".into(),
                    source: std::io::Error::from_raw_os_error(28),
                }));
                self.state.lock().expect("state lock").store(self.log.dir())
            })();
            match stored {
                Ok(()) => return,
                Err(e) => tracing::error!(
                    vpg = %self.name,
                    "recording that the VPG was failed over failed: {e_chain}; writes stay refused, trying again in {delay:?}",
                    e_chain = crate::error_chain::Chain(&e)
                ),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(FAILED_OVER_STORE_RETRY_MAX);
        }
    }

    /// Why the VPG takes nothing until a restart (a volume write or fsync
    /// failed), if it does not (for status).
    pub fn failure(&self) -> Option<String> {
        self.failed.lock().expect("failed lock").clone()
    }

    pub(super) fn check_writable(&self) -> Result<()> {
        if let Some(why) = self.failed.lock().expect("failed lock").as_ref() {
            return Err(CaptureError::Failed { vpg: self.name.clone(), what: "writes", why: why.clone() });
        }
        match self.writes_refused() {
            Some(reason) => Err(CaptureError::Refused(reason)),
            None => Ok(()),
        }
    }

    /// Bitmap mode and resync, for status (None while logging).
    pub fn bitmap_status(&self) -> Option<crate::status::BitmapStatus> {
        self.bitmap.status()
    }

    /// The log's space, for status: with the cap on its high-water mark
    /// while its disk did not take a record.
    pub fn log_space_status(&self) -> crate::log::LogSpaceStatus {
        crate::log::LogSpaceStatus { disk_full_cap_bytes: self.bitmap.capped(), ..self.log.space_status() }
    }

    /// Sync mode suspended, for status: by a FLUSH that waited too long
    /// (`sync_gate`), or by bitmap mode and its resync (writes only
    /// marked are in no record a FLUSH could wait for).
    pub fn sync_suspended(&self) -> Option<super::sync_gate::SyncSuspended> {
        if self.sync.mode() != crate::config::ReplicationMode::Sync {
            return None;
        }
        if self.sync.waits_for_good() {
            // Never let go: a start's resync does not suspend it.
            return self.sync.status();
        }
        self.sync.status().or_else(|| {
            self.bitmap.status().map(|b| super::sync_gate::SyncSuspended {
                since_seconds: b.since_seconds,
                why: format!("{} mode: writes were only marked, not logged ({})", b.mode, b.why),
                resuming: false,
            })
        })
    }

    /// Asks the recovery side (through the link, when it is up) to fail
    /// over to `checkpoint`; returns when it has, or why not.
    pub async fn move_step(&self, step: MoveStep) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        let gone = |_| CaptureError::Link("the link task is gone".to_string());
        self.promote_tx.send(PromoteRequest { step, reply }).await.map_err(gone)?;
        answer.await.map_err(|_| CaptureError::Link("the link dropped the request".to_string()))?
    }

    /// Logs a write, then applies it to the volume. Log first: if the agent
    /// dies in between, the log names the range and the next start reads
    /// it again from the volume, so source and replica agree.
    pub async fn write(&self, volume: u32, offset: u64, data: Vec<u8>) -> Result<u64> {
        self.check_writable()?;
        // Classified before the write-order lock: only the class map's
        // update is done under it.
        let parts = self.detection.get().map(|_| super::detector::classify_parts(offset, &data));
        let body = RecordBody::Write { volume, offset, data };
        let RecordBody::Write { data, .. } = &body else { unreachable!("built above") };
        self.update(&body, volume, offset, data.len() as u64, |seq, logged| {
            if let (Some(d), Some(parts)) = (self.detection.get(), &parts) {
                d.observe_parts(volume, seq, parts);
            }
            if logged {
                fail::fail_point!("volume-write", |_| Err(CaptureError::Failpoint("volume write failed")));
            }
            self.volumes[volume as usize].write_at(data, offset)
        })
        .await
    }

    pub async fn zero(&self, volume: u32, offset: u64, length: u64) -> Result<u64> {
        self.check_writable()?;
        let body = RecordBody::Zero { volume, offset, length };
        self.update(&body, volume, offset, length, |_, _| {
            if let Some(d) = self.detection.get() {
                d.observe_zero(volume, offset, length);
            }
            self.volumes[volume as usize].zero_range(offset, length)
        })
        .await
    }

    /// A write or zero of `[offset, offset + length)` on `volume`: logged
    /// as `body`, then done on the volume by `apply(seq, logged)`; in
    /// bitmap mode (also after the log's disk did not take the record)
    /// only marked, and done by `apply(seq everything before is durable
    /// with, false)`.
    async fn update(
        &self,
        body: &RecordBody,
        volume: u32,
        offset: u64,
        length: u64,
        apply: impl Fn(u64, bool) -> Result<()>,
    ) -> Result<u64> {
        let bytes = crate::log::encoded_bytes(body)?;
        loop {
            let Some(space) = self.log_room(bytes).await? else {
                let unlogged = self.write_unlogged(volume, offset, length, || apply(self.log.appended_seq(), false));
                match unlogged.await? {
                    Some(seq) => return Ok(seq),
                    None => continue,
                }
            };
            let order = self.order.lock().await;
            self.check_writable()?;
            self.mark_active(volume, offset, length).await?;
            let seq = match self.log.append_reserved(space, body) {
                Ok(seq) => seq,
                Err(e) => {
                    drop(order);
                    self.degrade_after(e).await?;
                    continue;
                }
            };
            if let Err(e) = apply(seq, true) {
                self.after_failed_update(volume, offset, length, &e);
                return Err(e);
            }
            return Ok(seq);
        }
    }

    /// A logged update failed on its volume (the guest is told it failed,
    /// but the recovery side will apply the record): append what the
    /// volume holds there now, so both sides agree again. If even that
    /// fails, the next start must read the range again, and until then no
    /// write is taken. Under the write-order lock.
    fn after_failed_update(&self, volume: u32, offset: u64, length: u64, error: &CaptureError) {
        let compensated = (|| -> Result<()> {
            let mut at = offset;
            while at < offset + length {
                let len = (offset + length - at).min(COPY_CHUNK_BYTES);
                let full = || CaptureError::Unavailable("the log is full".to_string());
                let space = self.log.try_reserve_bytes(RECORD_HEADER_BYTES as u64 + len).ok_or_else(full)?;
                self.append_volume_range(space, volume, at, len)?;
                at += len;
            }
            Ok(())
        })();
        match compensated {
            Ok(()) => tracing::error!(
                vpg = %self.name,
                "{error_chain}; what the volume holds there now was logged after it, so the replica agrees", error_chain = crate::error_chain::Chain(error)),
            Err(e) => {
                let why = format!(
                    "{error_chain}, and reading back what the volume holds failed: {e_chain}",
                    error_chain = crate::error_chain::Chain(error),
                    e_chain = crate::error_chain::Chain(&e)
                );
                tracing::error!(vpg = %self.name, "{why}; no write is taken until a restart reads the range again");
                if let Err(e) = self.activity.lock().expect("activity lock").require_resync() {
                    tracing::error!(vpg = %self.name, "recording that a resync is needed failed: {e_chain}", e_chain = crate::error_chain::Chain(&e));
                }
                *self.failed.lock().expect("failed lock") = Some(why);
            }
        }
    }

    /// Appends what the volume holds in a range (zeros as a Zero record),
    /// in space reserved for a Write of it. Under the write-order lock.
    pub(crate) fn append_volume_range(&self, space: LogSpace<'_>, volume: u32, offset: u64, len: u64) -> Result<u64> {
        let mut chunk = vec![0u8; len as usize];
        self.volumes[volume as usize].read_at(&mut chunk, offset)?;
        // Everything before the chunk's end: read-ahead folios can be larger
        // than a chunk and straddle it; the part already dropped is cheap.
        self.volumes[volume as usize].drop_cache(0, offset + len);
        self.append_data(space, volume, offset, chunk)
    }

    /// Appends `data` read from a volume at `offset` (zeros as a Zero
    /// record). Under the write-order lock.
    pub(crate) fn append_data(&self, space: LogSpace<'_>, volume: u32, offset: u64, data: Vec<u8>) -> Result<u64> {
        if let Some(d) = self.detection.get() {
            d.observe_contents(volume, offset, &data);
        }
        let body = if data.iter().all(|b| *b == 0) {
            RecordBody::Zero { volume, offset, length: data.len() as u64 }
        } else {
            RecordBody::Write { volume, offset, data }
        };
        Ok(self.log.append_reserved(space, &body)?)
    }

    /// Inserts a checkpoint, once the stream is consistent (a start's new
    /// stream has begun, and no bitmap mode or resync is under way); waits
    /// at most `wait` for that.
    pub async fn checkpoint(&self, tag: &str, wait: Duration) -> Result<u64> {
        self.checkpoint_then(tag, wait, || {}).await
    }

    /// `checkpoint`, and whether it is partial: some volume's initial copy
    /// had not completed when it was appended. Said under the write-order
    /// lock, right after the append: a stream that started over while the
    /// checkpoint waited for its turn (its copy begun again) counts (review
    /// of helper-72: said before the wait, such a checkpoint was reported
    /// restorable). A copy whose CopyDone is appended but not yet recorded
    /// counts as running: the report errs on the side of "partial".
    pub async fn tagged_checkpoint(&self, tag: &str, wait: Duration) -> Result<(u64, bool)> {
        let partial = std::sync::atomic::AtomicBool::new(false);
        let id = self
            .checkpoint_then(tag, wait, || {
                partial.store(self.copied().len() < self.volumes.len(), std::sync::atomic::Ordering::SeqCst)
            })
            .await?;
        Ok((id, partial.load(std::sync::atomic::Ordering::SeqCst)))
    }

    /// `checkpoint`, running `then` under the write-order lock right after
    /// the checkpoint is appended (before any later write).
    pub(super) async fn checkpoint_then(&self, tag: &str, wait: Duration, then: impl FnOnce()) -> Result<u64> {
        let mut consistent = self.consistent.subscribe();
        let mut mode = self.bitmap.subscribe();
        let ready = async {
            consistent.wait_for(|c| *c).await?;
            mode.wait_for(|m| *m == CaptureMode::Logging).await.map(|_| ())
        };
        let ready = async { ready.await.map_err(|_| CaptureError::Unavailable(format!("VPG {} closed", self.name))) };
        tokio::time::timeout(wait, ready).await.map_err(|_| match self.bitmap.status() {
            Some(b) => CaptureError::Unavailable(format!(
                "VPG {} is in {} mode ({}; {} of changed regions not yet read back): no checkpoint can be \
                 taken until the resync is done (see `tidemark status`); try again later",
                self.name,
                b.mode,
                b.why,
                crate::status::format_bytes(b.dirty_bytes)
            )),
            None => CaptureError::Unavailable(format!(
                "VPG {} is still starting a new stream after an unclean stop (see the agent's log); \
                 no checkpoint can be taken before that is done; try again shortly",
                self.name
            )),
        })??;
        match self.append_checkpoint(tag, false, then).await? {
            Some(id) => Ok(id),
            None => Err(CaptureError::Unavailable(format!(
                "VPG {} went to bitmap mode: no checkpoint until its resync is done",
                self.name
            ))),
        }
    }

    /// The checkpoint timer's: a consistent checkpoint while the VPG logs,
    /// and during a resync one marked `resync` (listed `inconsistent` at
    /// the recovery site, never restored), so the list shows the resync
    /// in the timeline. None while anything else holds checkpoints: the
    /// stream has ended here (moved, failed over), a start's new stream has
    /// not begun, bitmap mode, or a failed volume write left the stream
    /// ahead of the volume until a restart reads the range again.
    pub async fn scheduled_checkpoint(&self) -> Result<Option<u64>> {
        let held = self.writes_refused().is_some()
            || !*self.consistent.borrow()
            || self.failed.lock().expect("failed lock").is_some()
            || self.bitmap.mode() == CaptureMode::Bitmap;
        if held {
            return Ok(None);
        }
        self.append_checkpoint("", true, || {}).await
    }

    /// Why a restorable checkpoint cannot be taken now, if it cannot:
    /// what `scheduled_checkpoint` skips on, and an initial copy still
    /// running (its checkpoints are partial). For a coordinator.
    pub(super) fn checkpoint_refusal(&self) -> Option<String> {
        let name = &self.name;
        if let Some(why) = self.failed.lock().expect("failed lock").as_ref() {
            return Some(format!("VPG {name} takes no checkpoint until the agent restarts: {why}"));
        }
        if let Some(why) = self.writes_refused() {
            return Some(format!("VPG {name} takes no writes here: {why}"));
        }
        if !*self.consistent.borrow() {
            return Some(format!("VPG {name} is still starting a new stream after an unclean stop"));
        }
        let mode = self.bitmap.mode();
        if mode != CaptureMode::Logging {
            return Some(format!("VPG {name} is in {} mode: no checkpoint until its resync is done", mode.name()));
        }
        if self.copied().len() < self.volumes.len() {
            return Some(format!("VPG {name}'s initial copy is still running ({})", self.copy_progress()));
        }
        None
    }

    /// Appends a checkpoint under the write-order lock, then runs `then`
    /// (before any later write). None, appending nothing, in bitmap mode
    /// (it may have begun while the record waited for room) and in a
    /// resync, unless `resync_allowed`: then it is marked `resync`.
    async fn append_checkpoint(&self, tag: &str, resync_allowed: bool, then: impl FnOnce()) -> Result<Option<u64>> {
        let body = RecordBody::Checkpoint { time_ms: now_ms(), tag: tag.to_string(), resync: false };
        let space = self.log.reserve(&body).await?;
        let _order = self.order.lock().await;
        self.append_checkpoint_held(space, body, resync_allowed, then)
    }

    /// `append_checkpoint`'s work once the write-order lock is held, in
    /// `space` reserved for `body` (a Checkpoint).
    pub(super) fn append_checkpoint_held(
        &self,
        space: LogSpace<'_>,
        mut body: RecordBody,
        resync_allowed: bool,
        then: impl FnOnce(),
    ) -> Result<Option<u64>> {
        let RecordBody::Checkpoint { time_ms, ref tag, .. } = body else {
            panic!("append_checkpoint_held takes a Checkpoint record");
        };
        let tag = tag.clone();
        if let Some(why) = self.failed.lock().expect("failed lock").as_ref() {
            return Err(CaptureError::Failed { vpg: self.name.clone(), what: "checkpoint", why: why.clone() });
        }
        let resync = match self.bitmap.mode() {
            CaptureMode::Logging => false,
            CaptureMode::Resync if resync_allowed => true,
            _ => return Ok(None),
        };
        if let RecordBody::Checkpoint { resync: flag, .. } = &mut body {
            *flag = resync;
        }
        let id = self.log.append_reserved(space, &body)?;
        then();
        // Status shows the newest checkpoint that can be restored.
        if !resync {
            *self.last_checkpoint.lock().expect("checkpoint lock") = Some(CheckpointSummary { id, time_ms, tag });
        }
        Ok(Some(id))
    }

    pub fn last_checkpoint(&self) -> Option<CheckpointSummary> {
        self.last_checkpoint.lock().expect("checkpoint lock").clone()
    }

    /// Makes every write up to `seq` as durable as the mode promises:
    /// on the volume and in the protected log, and in sync mode also in
    /// the recovery journal.
    pub async fn make_durable(&self, seq: u64) -> Result<()> {
        self.sync_volumes().await?;
        self.log.sync_to(seq).await?;
        self.wait_for_sync_mode(seq).await?;
        self.remember_sync_let_go();
        Ok(())
    }

    /// Says in the capture state, durably, whether sync mode may have let
    /// a FLUSH go without the recovery journal (suspended, or resuming):
    /// before such a FLUSH returns, so the next start knows what the log
    /// holds may have been let go; and once the gate is strict again, so a
    /// start after it does not report sync mode suspended until the first
    /// acknowledgement. Written only when it changes.
    ///
    /// A failed write does not fail the FLUSH, whose data is durable: it
    /// is logged, and tried again at a FLUSH `LET_GO_RETRY` later (review of helper-42:
    /// on a full disk every FLUSH of a suspended VPG failed). Status after
    /// a crash may then miss a suspension; no data depends on it.
    fn remember_sync_let_go(&self) {
        if self.sync.mode() != crate::config::ReplicationMode::Sync {
            return;
        }
        let mut state = self.state.lock().expect("state lock");
        // Read under the lock: the last writer says what the gate is now.
        // A gate strict again has the journal hold everything let go.
        let let_go = self.sync.status().is_some();
        if state.sync_let_go == Some(let_go) {
            return;
        }
        let mut failed_at = self.let_go_write_failed.lock().expect("let-go failure lock");
        if failed_at.is_some_and(|at| at.elapsed() < LET_GO_RETRY) {
            return;
        }
        *failed_at = None;
        if let Err(e) = state.update(self.log.dir(), |s| s.sync_let_go = Some(let_go)) {
            // The file may hold either value now: written again later.
            state.sync_let_go = None;
            *failed_at = Some(std::time::Instant::now());
            tracing::warn!(
                vpg = %self.name,
                "recording in the capture state whether sync mode let a FLUSH go: {}; after a crash now, status \
                 may not show sync mode suspended (tried again in {} s)",
                crate::error_chain::Chain(&e),
                LET_GO_RETRY.as_secs()
            );
        }
    }

    /// In sync mode, waits for the recovery journal to hold `seq`, within
    /// the gate's bound (`sync_gate`).
    async fn wait_for_sync_mode(&self, seq: u64) -> Result<()> {
        // Bitmap mode and its resync suspend sync mode: writes only marked
        // are in no record a FLUSH could wait for, and production never
        // waits for the link (status says so). Sync mode resumes once the
        // journal holds what the resync read back (`sync_gate`).
        let unlogged = || format!("{:?} mode: writes are only marked, not logged", self.bitmap.mode()).to_lowercase();
        if self.bitmap.mode() != CaptureMode::Logging && self.sync.let_go(&self.name, unlogged, seq) {
            return Ok(());
        }
        let journaled = async {
            let mut mode = self.bitmap.subscribe();
            let bitmap_mode = async { mode.wait_for(|m| *m == CaptureMode::Bitmap).await.map(|_| ()) };
            let waits_for_good = self.sync.waits_for_good();
            tokio::select! {
                done = self.wait_recovery_durable(seq) => done.map_err(|e| e.step("waiting for the recovery journal")),
                // ("never" has bitmap mode off.)
                _ = bitmap_mode, if !waits_for_good => {
                    self.sync.let_go(&self.name, unlogged, seq);
                    Ok(())
                }
            }
        };
        self.sync.wait(&self.name, seq, journaled).await
    }

    /// FLUSH: everything appended so far becomes durable.
    pub async fn flush(&self) -> Result<()> {
        self.make_durable(self.log.appended_seq()).await
    }

    pub fn copied(&self) -> Vec<String> {
        self.state.lock().expect("state lock").copied.clone()
    }

    /// Starts a new stream at a seq of at least `min_seq` (the recovery
    /// journal cannot continue the old one): the log drops what it held,
    /// and every volume is copied again. Needs no room in the log.
    pub async fn restart_stream(self: &Arc<Self>, min_seq: u64) -> Result<u64> {
        let (started, generation) = {
            let _order = self.order.lock().await;
            let generation = self.copy_generation.fetch_add(1, Ordering::SeqCst) + 1;
            self.copy_complete.send_replace(None);
            // The copy state first: a stop between the two copies again,
            // where the other order would skip the copy for good.
            let stored = {
                let mut state = self.state.lock().expect("state lock");
                state.copied.clear();
                state.store(self.log.dir())
            };
            fail::fail_point!("restart-stream-after-state", |_| std::process::abort());
            let started = stored.map_err(CaptureError::from).and_then(|()| Ok(self.log.start_stream(min_seq)?));
            // A new stream is consistent once its copy is in, but in bitmap
            // mode a write after the copy read its region is only marked:
            // the new stream is no image from its start until the resync
            // (review of helper-47; the mark of the old stream went with it).
            if started.is_ok() && self.bitmap.mode() == CaptureMode::Bitmap {
                mark_before_next_record(&self.log, BITMAP_START_TAG);
            }
            (started, generation)
        };
        // Whatever happened, "copied" was emptied and any copy under way
        // stopped: a copy runs again, into whichever stream the log holds.
        self.spawn_initial_copy(generation);
        started
    }

    /// Waits until the recovery journal holds the data of every update up
    /// to `seq` (sync mode's promise). If the stream started over past
    /// `seq`, its records were dropped; their data is in the new stream's
    /// copy, durable once the copy's last CopyDone is acknowledged.
    pub async fn wait_recovery_durable(&self, mut seq: u64) -> Result<()> {
        loop {
            if self.log.wait_acked(seq).await? {
                return Ok(());
            }
            let mut complete = self.copy_complete.subscribe();
            let closed = |_| CaptureError::Unavailable("the VPG closed while waiting for the new stream's copy".into());
            let done = complete.wait_for(|c| c.is_some()).await.map_err(closed)?;
            seq = done.expect("waited for Some");
        }
    }
}

/// Why a start cannot go on with the stream the log holds, if so: the log
/// must hold everything it had made durable, and ending before that (cut
/// now, or by an earlier start that stopped before its new stream) it
/// lost records the recovery side may hold; it dropped another stream's
/// records (`dropped_stream`, see `log::BeforeDroppingStream`); or the
/// dirty map, which says what a resync must read, cannot be trusted.
fn new_stream_due(
    found: &ActivityFound,
    report: &LogOpenReport,
    stored_map: &Result<Option<DirtyMap>, LoadError>,
    dropped_stream: Option<String>,
) -> Option<String> {
    let log_end = report.next_seq - 1;
    if let Some(what) = dropped_stream {
        return Some(what);
    }
    if found.unknown {
        return Some(found.why.clone().unwrap_or_default());
    }
    match (&report.cut, stored_map) {
        _ if log_end >= found.durable_through && stored_map.is_ok() => None,
        (Some(cut), _) if log_end < found.durable_through => Some(format!(
            "the protected log lost records it had made durable ({}; durable through seq {})",
            cut.damage, found.durable_through
        )),
        (_, Err(e)) => Some(format!("the dirty map cannot be trusted ({e})")),
        (_, Ok(_)) => Some(format!(
            "the protected log ends at seq {log_end}, before seq {} it had made durable",
            found.durable_through
        )),
    }
}

/// What a failed fsync of a VPG's volumes must leave behind, whoever
/// waits for it (`sync_volumes`).
struct VolumeSyncFailure {
    vpg: String,
    failed: Arc<std::sync::Mutex<Option<String>>>,
    activity: Arc<std::sync::Mutex<ActivityLog>>,
    log: Arc<ProtectedLog>,
}

impl VolumeSyncFailure {
    fn record(&self, error: &CaptureError) {
        if self.failed.lock().expect("failed lock").is_some() {
            return;
        }
        let vpg = &self.vpg;
        let why = format!(
            "{error_chain}: writes since the last good fsync may be lost from the volume",
            error_chain = crate::error_chain::Chain(error)
        );
        tracing::error!(vpg = %vpg, "{why}; no write, FLUSH or checkpoint is taken until a restart reads them again from the volumes");
        if let Err(e) = self.activity.lock().expect("activity lock").require_resync() {
            // Without it a restart on this boot would read nothing again.
            let e_chain = crate::error_chain::Chain(&e);
            self.log.stop_process(&format!("VPG {vpg}: recording that a resync is needed failed: {e_chain}"));
        }
        self.failed.lock().expect("failed lock").get_or_insert(why);
    }
}

/// What a start found that goes on with its stream.
struct StartFound<'a> {
    volumes: &'a [Volume],
    found: &'a ActivityFound,
    report: &'a LogOpenReport,
    stored_map: &'a Result<Option<DirtyMap>, LoadError>,
}

impl StartFound<'_> {
    /// Marks in `dirty` what must be read again into the stream before the
    /// next consistent checkpoint: extents the activity log says may
    /// differ between volume and log, the newest logged update (the volume
    /// may not hold it), and what a stored dirty map names. Returns why,
    /// or "" when nothing is.
    fn mark_dirty(&self, name: &str, activity: &mut ActivityLog, dirty: &mut DirtyMap) -> Result<String> {
        let volumes = self.volumes;
        let mut ranges: Vec<(u32, u64, u64)> = (self.found.unclean.iter())
            .filter_map(|(volume, extent)| {
                let size = volumes.get(*volume as usize)?.size;
                let (offset, length) = extent_range(*extent);
                (offset < size).then(|| (*volume, offset, length.min(size - offset)))
            })
            .collect();
        if let Some((volume, offset, length)) = self.report.last_update {
            let fits =
                volumes.get(volume as usize).is_some_and(|v| offset.checked_add(length).is_some_and(|e| e <= v.size));
            if fits {
                // Kept durably until the first epoch stores the dirty map:
                // a second stop before then must find it, whatever was
                // appended meanwhile.
                activity.require_start_resync(&[(volume, offset, length)])?;
                ranges.push((volume, offset, length));
            }
        }
        for (volume, offset, length) in &ranges {
            dirty.mark(*volume, *offset, *length);
            // Read again from the device, not from cached pages: after a
            // failed writeback (a failed fsync, `sync_volumes`) the cache
            // still shows data the device never got, until it is evicted.
            volumes[*volume as usize].drop_cache(*offset, *length);
        }
        if let Ok(Some(stored)) = self.stored_map {
            dirty.merge(stored);
        }
        if dirty.is_empty() {
            return Ok(String::new());
        }
        let stored = matches!(self.stored_map, Ok(Some(m)) if !m.is_empty());
        let why = match (&self.found.why, stored) {
            (_, true) => "bitmap mode or a resync was under way (the dirty map names regions)".to_string(),
            (Some(why), false) => why.clone(),
            (None, false) => "the agent stopped while writing".to_string(),
        };
        tracing::warn!(
            vpg = %name,
            "{why}: {} of volume data are read again into the stream before the next checkpoint",
            crate::status::format_bytes(dirty.dirty_bytes())
        );
        activity.use_map()?;
        Ok(why)
    }
}

/// What an epoch makes durable (taken under the write-order lock).
struct EpochPlan {
    /// The activity log's generation and the log's last seq then.
    upto: u64,
    through: u64,
    map: super::bitmap_state::MapSnapshot,
}

/// Storage faults at exact points (`--features test-build`).
#[cfg(all(test, feature = "test-build"))]
mod failpoints {
    use super::*;
    use crate::capture::activity::ActivityLog;
    use crate::log::{LogSize, Preallocation};

    /// A failed fsync of a volume fails the VPG: the FLUSH that met it,
    /// every later one (a second fsync would succeed, the kernel having
    /// reported its error once), writes and checkpoints, until a restart;
    /// and that restart reads what was written since the last good fsync
    /// again (review of helper-69: a later FLUSH succeeded, and the next
    /// epoch let the activity log forget the lost write's extent).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_volume_fsync_fails_the_vpg_until_a_restart() {
        let scenario = fail::FailScenario::setup();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v");
        std::fs::write(&path, vec![0u8; 16 << 20]).unwrap();
        let log_dir = dir.path().join("log");
        let bitmap = BitmapConfig::default();
        let capture = VpgCapture::open(
            "vpg".into(),
            SyncPolicy::default(),
            vec![Volume::open("v", &path).unwrap()],
            9,
            &log_dir,
            LogSize::for_capacity(64 << 20, Preallocation::Off),
            StreamTo::RecoverySite(&bitmap),
        )
        .unwrap();
        let first = capture.write(0, 0, vec![1u8; 4096]).await.unwrap();
        capture.make_durable(first).await.unwrap();
        let lost = capture.write(0, 8 << 20, vec![2u8; 4096]).await.unwrap();
        fail::cfg("volume-sync", "1*return").unwrap();
        let chain = |e: CaptureError| crate::error_chain::Chain(&e).to_string();
        let failed = chain(capture.make_durable(lost).await.unwrap_err());
        assert!(failed.contains("volume sync failed"), "{failed}");
        fail::remove("volume-sync");
        let again = chain(capture.make_durable(lost).await.unwrap_err());
        assert!(again.contains("an earlier fsync failed"), "a FLUSH after the failed fsync: {again}");
        let write = chain(capture.write(0, 0, vec![3u8; 4096]).await.unwrap_err());
        assert!(write.contains("takes no writes until the agent restarts"), "{write}");
        assert!(capture.checkpoint("t", Duration::from_secs(1)).await.is_err(), "a checkpoint was taken");
        let (_, found) = ActivityLog::open(&log_dir).unwrap();
        let extents: Vec<u32> = found.unclean.iter().map(|(_, extent)| *extent).collect();
        let lost_extent = ((8 << 20) / crate::capture::activity::ACTIVITY_EXTENT_BYTES) as u32;
        assert!(
            extents.contains(&lost_extent),
            "the next start does not read the lost write's extent again: {extents:?}"
        );
        scenario.teardown();
    }
}
