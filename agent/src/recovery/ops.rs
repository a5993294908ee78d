//! What the running recovery agent does on request (through its local
//! control socket): serve point-in-time views over NBD, and run test
//! failovers. It is the one place that knows what is running for each VPG,
//! so conflicting requests are refused here with the reason.

use super::exports::{LiveCapture, LiveVolume, OverlayVolume, PitVolume};
pub use super::failover::How;
use super::failover::{commit, FailoverRecord};
use super::luns::{Purpose, RecoveryLuns};
use super::view::PitView;
use super::RecoveryError;
use crate::capture::sync_gate::SyncPolicy;
use crate::capture::vpg::VpgCapture;
use crate::io_failure::Doing;
use crate::journal::index::CheckpointInfo;
use crate::journal::replica::VolumeFiles;
use crate::journal::{vpg_dir, JournalMeta};
use crate::nbd::export::{BlockExport, ExportTable};
use crate::recovery_state::{Commit, Event, VpgState};
use crate::transfer::slot::{VpgSlot, VpgSlots};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

type Result<T, E = RecoveryError> = std::result::Result<T, E>;

const SCRATCH_DIR: &str = "scratch";
/// Where a failed-over VPG logs its writes for the old site.
pub(super) const REVERSE_LOG_DIR: &str = "reverse-log";
const REVERSE_LOG_CAPACITY: u64 = 1 << 30;

/// The reverse log claims no space ahead: a failover's VMs start on this
/// disk, and a background zero-fill would compete with them.
fn reverse_log_size() -> crate::log::LogSize {
    crate::log::LogSize::for_capacity(REVERSE_LOG_CAPACITY, crate::log::Preallocation::Off)
}

/// The exports one request made: NBD, and iSCSI LUNs where configured.
#[derive(Debug, Clone, Serialize)]
pub struct Served {
    pub vpg: String,
    pub checkpoint: CheckpointInfo,
    pub names: Vec<String>,
    /// `nbd://` URIs, then `iscsi://` ones.
    pub uris: Vec<String>,
    /// Why the volumes are not served over iSCSI as well, if they are not.
    pub iscsi_problem: Option<String>,
}

/// What a running test failover serves (its state is the VPG's).
struct TestFailover {
    served: Served,
    overlays: Vec<Arc<OverlayVolume>>,
    scratch_dir: PathBuf,
}

/// Ends a VPG's `TestChanging` when a start fails or a stop ends, however
/// it ends, unless the start succeeded (`started`).
struct TestChange(Option<Arc<VpgSlot>>);

impl TestChange {
    fn started(mut self, checkpoint: u64) -> Result<()> {
        let slot = self.0.take().expect("a test change ends once");
        Ok(slot.change(Event::TestStarted { checkpoint })?)
    }
}

impl Drop for TestChange {
    fn drop(&mut self) {
        if let Some(Err(e)) = self.0.take().map(|slot| slot.change(Event::TestGone)) {
            tracing::error!("{e_chain}", e_chain = crate::error_chain::Chain(&e));
        }
    }
}

pub struct RecoveryOps {
    pub(super) journal_root: PathBuf,
    scratch_root: PathBuf,
    pub exports: ExportTable,
    listen: Option<SocketAddr>,
    /// The same exports as iSCSI LUNs (`[iscsi]` configured).
    pub(super) luns: Option<RecoveryLuns>,
    /// What each VPG's running test failover serves, added before its
    /// state says `Testing` and taken once it says `TestChanging`.
    tests: Mutex<BTreeMap<String, TestFailover>>,
    /// The VPGs whose journals are open here, each with its state.
    pub(super) slots: Arc<VpgSlots>,
    /// Failed-over VPGs served live: where their writes go.
    pub(super) live: Mutex<BTreeMap<String, LiveCapture>>,
    /// Reverse protection sessions, by VPG.
    pub(super) reverse: Mutex<BTreeMap<String, ReverseSession>>,
    /// Held while a reverse capture is made.
    reverse_setup: tokio::sync::Mutex<()>,
    /// Switch-back cancels asked for, per VPG: a begin that a cancel came
    /// after (while it waited for a reverse session) changes nothing.
    pub(super) move_back_cancels: std::sync::Mutex<std::collections::HashMap<String, u64>>,
    /// Held by the one failover or move being committed.
    pub(super) committing: tokio::sync::Mutex<()>,
}

/// Opens the capture of a failed-over VPG's writes for the old site, in
/// its reverse log (created the first time).
fn open_reverse_capture(vpg: &str, dir: &Path, meta: &JournalMeta) -> Result<Arc<VpgCapture>> {
    let mut volumes = Vec::new();
    for (v, path) in meta.volumes.iter().zip(FailoverRecord::volume_paths(dir, meta)) {
        volumes.push(crate::capture::volume::Volume::open(&v.name, &path)?);
    }
    let log_dir = dir.join(REVERSE_LOG_DIR);
    let to = crate::capture::vpg::StreamTo::OldSite;
    Ok(VpgCapture::open(
        vpg.to_string(),
        SyncPolicy::default(),
        volumes,
        meta.vpg_id,
        &log_dir,
        reverse_log_size(),
        to,
    )?)
}

/// A reverse session: its id, the certificate that opened it, its capture.
type ReverseSession = (u64, [u8; 32], Arc<VpgCapture>);

/// What the old site says it applied, in its reverse hello.
#[derive(Debug, Clone, Copy)]
pub struct OldSiteApplied {
    pub seq: u64,
    pub stream: u32,
    /// It applied the delta copy of every volume of `stream`.
    pub in_sync: bool,
}

/// What a reverse hello gets.
pub struct ReverseStart {
    pub session: u64,
    /// The copy generation of the delta stream this session starts (the
    /// old site then sends its hashes); None when the reverse log goes on
    /// right after what the old site applied.
    pub delta: Option<u64>,
    pub capture: Arc<VpgCapture>,
}

/// What a failover did, for the operator.
pub struct FailedOver {
    pub vpg: String,
    pub checkpoint: CheckpointInfo,
    pub how: How,
    pub bytes_applied: u64,
    pub set_aside_bytes: u64,
    pub uris: Vec<String>,
    pub iscsi_problem: Option<String>,
    pub files: Vec<PathBuf>,
}

impl FailedOver {
    pub fn describe(&self) -> String {
        let verb = if self.how == How::Move { "moved" } else { "failed over" };
        let mut out = format!(
            "VPG {:?} {verb} at checkpoint {} ({}{}): {} applied to the replica; the journal segments holding what came \
             after it ({}) are set aside in after-failover/\n",
            self.vpg,
            self.checkpoint.id,
            crate::status::format_time_ms(self.checkpoint.time_ms),
            if self.checkpoint.tag.is_empty() { String::new() } else { format!(", {:?}", self.checkpoint.tag) },
            crate::status::format_bytes(self.bytes_applied),
            crate::status::format_bytes(self.set_aside_bytes),
        );
        if self.uris.is_empty() {
            out.push_str("volumes (files):\n");
            for f in &self.files {
                out.push_str(&format!("  {}\n", f.display()));
            }
        } else {
            out.push_str("volumes served writable:\n");
            for u in &self.uris {
                out.push_str(&format!("  {u}\n"));
            }
        }
        if let Some(problem) = &self.iscsi_problem {
            out.push_str(&format!("not served over iSCSI: {problem}\n"));
        }
        out
    }
}

/// A move announced by the protected side: other failovers of the VPG
/// are refused until it ends or its link drops.
pub struct MoveMark(Arc<VpgSlot>, u64);

impl MoveMark {
    /// Names this move: only its promote may commit it.
    pub fn mark(&self) -> u64 {
        self.1
    }
}

impl Drop for MoveMark {
    fn drop(&mut self) {
        if let Err(e) = self.0.change(Event::MoveEnd { mark: self.1 }) {
            tracing::error!("{e_chain}", e_chain = crate::error_chain::Chain(&e));
        }
    }
}

/// Ends a failover's `Committing` as the disk says it ended, however the
/// commit ends (a panic aborts the agent, whose next start reads the
/// disk). It travels with the blocking commit,
/// not with the caller's future: a caller that goes away while the commit
/// runs must not reopen the stream of a VPG whose record is then written.
struct CommitEnd {
    slot: Arc<VpgSlot>,
    dir: PathBuf,
}

impl CommitEnd {
    /// Failed over once the record is on disk, else back to before.
    fn settle(&self, committed: Option<&FailoverRecord>) {
        let record = match committed {
            Some(r) => Ok(Some(r.clone())),
            None => FailoverRecord::load(&self.dir),
        };
        let event = match record {
            Ok(Some(r)) => Event::Committed { checkpoint: r.checkpoint.id, how: r.how, time_ms: r.time_ms },
            Ok(None) => Event::CommitFailed,
            // Unknown: the stream stays closed until a restart reads it.
            Err(e) => {
                tracing::error!(vpg = %self.slot.name, "after a failed commit, reading its record failed: {e_chain}; \
                    the stream stays closed until the recovery agent restarts", e_chain = crate::error_chain::Chain(&e));
                return;
            }
        };
        if let Err(e) = self.slot.change(event) {
            tracing::error!("{e_chain}", e_chain = crate::error_chain::Chain(&e));
        }
    }
}

impl RecoveryOps {
    /// A test failover does not outlive the agent: scratch left by a
    /// previous run is removed here.
    pub fn new(
        data_dir: &Path,
        listen: Option<SocketAddr>,
        luns: Option<RecoveryLuns>,
        slots: Arc<VpgSlots>,
    ) -> Result<Arc<RecoveryOps>> {
        let scratch_root = data_dir.join(SCRATCH_DIR);
        match std::fs::remove_dir_all(&scratch_root) {
            Ok(()) => tracing::info!("removed test-failover scratch left by the previous run"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Ok(Err(e).doing(|| format!("removing {}", scratch_root.display()))?),
        }
        Ok(Arc::new(RecoveryOps {
            journal_root: data_dir.join("journal"),
            scratch_root,
            // The names say which VPGs and checkpoints are here: not listed.
            exports: ExportTable::unlisted(),
            listen,
            luns,
            tests: Mutex::new(BTreeMap::new()),
            slots,
            live: Mutex::new(BTreeMap::new()),
            reverse: Mutex::new(BTreeMap::new()),
            reverse_setup: tokio::sync::Mutex::new(()),
            move_back_cancels: Default::default(),
            committing: tokio::sync::Mutex::new(()),
        }))
    }

    /// After a restart: VPGs failed over with `serve` are served again.
    pub async fn resume_failovers(&self) -> Result<()> {
        let slots: Vec<_> = self.slots.lock().expect("vpgs lock").keys().cloned().collect();
        for vpg in slots {
            let dir = vpg_dir(&self.journal_root, &vpg);
            if let Some(record) = FailoverRecord::load(&dir)? {
                if record.serve {
                    let meta = JournalMeta::load(&dir)?;
                    // Writes must keep being logged for the old site, from
                    // the first one: the capture exists before the exports.
                    let capture = match dir.join(REVERSE_LOG_DIR).exists() {
                        true => Some(open_reverse_capture(&vpg, &dir, &meta)?),
                        false => None,
                    };
                    let (uris, _) = self.serve_live(&vpg, &dir, &meta, capture).await?;
                    tracing::info!(%vpg, "failed-over volumes served again: {uris:?}");
                }
            }
        }
        // What a previous agent served over iSCSI and nobody serves now
        // (exports, test failovers) is taken down.
        if let Some(luns) = &self.luns {
            luns.remove_strays().await;
        }
        Ok(())
    }

    /// Serves a failed-over VPG's volumes writable; their writes go to
    /// `capture` when reverse protection runs, else straight to the files.
    /// Returns their URIs, and why they are not iSCSI LUNs as well if they
    /// are not (the failover happened: that never undoes it).
    async fn serve_live(
        &self,
        vpg: &str,
        dir: &Path,
        meta: &JournalMeta,
        capture: Option<Arc<VpgCapture>>,
    ) -> Result<(Vec<String>, Option<String>)> {
        let files = VolumeFiles::open_replica(dir, &meta.volumes, true)?;
        let capture: LiveCapture = Arc::new(std::sync::RwLock::new(capture));
        let exports: Vec<(String, Arc<dyn BlockExport>)> = files
            .files
            .into_iter()
            .zip(&meta.volumes)
            .enumerate()
            .map(|(i, (f, v))| {
                let live = LiveVolume {
                    file: Arc::new(f.file),
                    size: f.size,
                    volume: i as u32,
                    capture: capture.clone(),
                    syncs: Default::default(),
                };
                let export: Arc<dyn BlockExport> = Arc::new(live);
                (format!("{vpg}/{}", v.name), export)
            })
            .collect();
        self.live.lock().expect("live lock").insert(vpg.to_string(), capture);
        let mut uris = exports.iter().map(|(n, _)| self.uri(n)).collect::<Result<Vec<_>>>()?;
        let luns = lun_sources(&meta.volumes, &exports);
        self.exports.add(exports)?;
        let problem = self.publish_luns(vpg, Purpose::Failover, &luns, &mut uris).await;
        Ok((uris, problem))
    }

    /// Serves `luns` over iSCSI too, where configured, adding their URIs;
    /// returns why not if that failed (the NBD exports stay: a LUN problem,
    /// such as a volume that is not whole sectors, must not take them away).
    async fn publish_luns(
        &self,
        vpg: &str,
        purpose: Purpose,
        luns: &[(String, Arc<dyn BlockExport>)],
        uris: &mut Vec<String>,
    ) -> Option<String> {
        let l = self.luns.as_ref()?;
        match l.publish(vpg, purpose, luns).await {
            Ok(more) => {
                uris.extend(more);
                None
            }
            Err(e) => {
                tracing::error!(%vpg, "not served over iSCSI: {e_chain}", e_chain = crate::error_chain::Chain(&e));
                Some(crate::error_chain::Chain(&e).to_string())
            }
        }
    }

    /// Marks a move of `vpg` as running; refused when the VPG is failed
    /// over already, or a failover or test failover of it runs.
    /// The encryption detector of the protected side raised an alert:
    /// pins the newest complete checkpoint before `since_seq`.
    pub async fn pin_last_clean(&self, vpg: &str, since_seq: u64, reason: String) -> Result<u64> {
        let root = self.journal_root.clone();
        let name = vpg.to_string();
        let (chosen, pin) =
            tokio::task::spawn_blocking(move || super::pinning::pin_last_clean(&root, &name, since_seq, &reason))
                .await
                .map_err(|source| RecoveryError::Task { what: "pin task", source })??;
        tracing::warn!(
            %vpg,
            "the protected side's encryption detector raised an alert: checkpoint {} ({}) is pinned as {:?} \
             and stays restorable until `tidemark unpin`",
            chosen.id,
            crate::status::format_time_ms(chosen.time_ms),
            pin.reason
        );
        Ok(chosen.id)
    }

    pub fn begin_move(&self, vpg: &str) -> Result<MoveMark> {
        let slot = self.slot(vpg)?;
        let mark = crate::recovery_state::new_move_mark();
        slot.change(Event::MoveBegin { mark })?;
        tracing::info!(%vpg, "a move begins; other failovers of this VPG are refused until it ends");
        Ok(MoveMark(slot, mark))
    }

    /// The slot of `vpg`, whose journal must be open here.
    fn slot(&self, vpg: &str) -> Result<Arc<VpgSlot>> {
        crate::transfer::slot::find(&self.slots, vpg).ok_or_else(|| {
            RecoveryError::Unavailable(format!(
                "no journal for VPG {vpg:?} under {} (has the protected side connected?)",
                self.journal_root.display()
            ))
        })
    }

    /// Fails `vpg` over to `wanted` (see `failover.rs`). The stream for
    /// the VPG stops first; if the commit fails, it is taken up again and
    /// nothing changed. A move's repeated promote of the same checkpoint
    /// is answered as done.
    pub async fn failover(&self, vpg: &str, wanted: &str, serve: bool, what: Commit) -> Result<FailedOver> {
        let how = what.how();
        crate::config::validate_name("--vpg", vpg)?;
        // One commit at a time: a second promote of a move (a new link
        // while the first runs) then finds the first one's record.
        let _committing = self.committing.lock().await;
        if serve {
            self.uri("")?;
        }
        let slot = self.slot(vpg)?;
        let dir = vpg_dir(&self.journal_root, vpg);
        // A move's promote asked again (its link came back) is answered as done.
        if let VpgState::FailedOver { checkpoint, how: How::Move, .. } = slot.state() {
            if how == How::Move && checkpoint.to_string() == wanted {
                if let Some(record) = FailoverRecord::load(&dir)? {
                    return Ok(self.already_moved(vpg, record));
                }
            }
        }
        // Refused now if it would be once the checkpoint is found.
        slot.check(Event::CommitBegin(what))?;
        // A checkpoint that cannot be resolved is refused before the stream
        // is touched. The running journal's index answers for the common
        // case; only a miss reads the journal, for the precise reason.
        let known = slot.journal.lock().expect("journal lock").index.find(wanted).is_some_and(|c| c.consistent);
        if !known {
            let (root, name, wanted) = (self.journal_root.clone(), vpg.to_string(), wanted.to_string());
            tokio::task::spawn_blocking(move || super::JournalView::open(&root, &name)?.resolve(&wanted))
                .await
                .map_err(|source| RecoveryError::Task { what: "failover task", source })??;
        }
        // The stream closes under the journal lock: no batch is appended after.
        let meta = {
            let journal = slot.journal.lock().expect("journal lock");
            slot.change(Event::CommitBegin(what))?;
            journal.meta.clone()
        };
        let end = CommitEnd { slot: slot.clone(), dir: dir.clone() };
        tracing::warn!(%vpg, "{:?} to checkpoint {wanted:?} begins; the stream for this VPG is closed", how);
        let (root, name, wanted_owned, how_owned, dir_owned, meta_owned) =
            (self.journal_root.clone(), vpg.to_string(), wanted.to_string(), how, dir.clone(), meta.clone());
        let committed = tokio::task::spawn_blocking(move || {
            let committed = (|| {
                let view = super::JournalView::open(&root, &name)?;
                let checkpoint = view.resolve(&wanted_owned)?;
                commit(&dir_owned, &meta_owned, &checkpoint, how_owned, serve)
            })();
            end.settle(committed.as_ref().ok().map(|c| &c.record));
            committed
        })
        .await
        .map_err(|source| RecoveryError::Task { what: "failover task", source })?;
        let committed = match committed {
            Ok(c) => c,
            Err(e) => {
                // Once its record is written the failover happened, even if
                // what follows failed (it is finished at the next start).
                match slot.state() {
                    VpgState::FailedOver { checkpoint, .. } => {
                        return Err(e.at(format!(
                            "VPG {vpg:?} is failed over at checkpoint {checkpoint}, but finishing it failed; \
                             restart the recovery agent to finish it"
                        )))
                    }
                    // The record could not be read back (`CommitEnd`).
                    VpgState::Committing { .. } => {
                        return Err(e.at(format!(
                            "whether VPG {vpg:?} was {} is not known (its failover record could not be read); \
                             replication of it is stopped until the recovery agent restarts and reads the record",
                            how.past_participle()
                        )))
                    }
                    _ => {}
                }
                tracing::warn!(%vpg, "failover refused, replication goes on: {e_chain}", e_chain = crate::error_chain::Chain(&e));
                return Err(e);
            }
        };
        let checkpoint = committed.record.checkpoint.clone();
        let (uris, iscsi_problem) =
            if serve { self.serve_live(vpg, &dir, &meta, None).await? } else { (Vec::new(), None) };
        let done = FailedOver {
            vpg: vpg.to_string(),
            checkpoint,
            how,
            bytes_applied: committed.bytes_applied,
            set_aside_bytes: committed.record.set_aside_bytes,
            uris,
            iscsi_problem,
            files: FailoverRecord::volume_paths(&dir, &meta),
        };
        tracing::warn!("{}", done.describe().trim_end());
        Ok(done)
    }

    /// The capture that logs a failed-over VPG's writes for the old site,
    /// made (and switched in) the first time.
    async fn reverse_capture(&self, vpg: &str, dir: &Path, meta: &JournalMeta) -> Result<Arc<VpgCapture>> {
        // Two hellos at once must not open the reverse log twice.
        let _setup = self.reverse_setup.lock().await;
        let live = self.live.lock().expect("live lock").get(vpg).cloned().ok_or_else(|| {
            RecoveryError::Unavailable(format!(
                "VPG {vpg:?} was failed over with its volumes left as files; reverse protection needs them served"
            ))
        })?;
        if let Some(c) = live.read().expect("live capture").clone() {
            return Ok(c);
        }
        let capture = open_reverse_capture(vpg, dir, meta)?;
        // Waits for direct writes in progress; every later write is logged.
        *live.write().expect("live capture") = Some(capture.clone());
        tracing::info!(%vpg, "writes to the failed-over volumes are logged for reverse protection from now on");
        Ok(capture)
    }

    /// A reverse hello from the old protected site: start (or resume)
    /// sending the VPG back. Hashes are needed unless the reverse log can
    /// continue right after what the old site applied. None when the VPG
    /// is not failed over here (never, or switched back).
    pub async fn reverse_begin(
        &self,
        vpg: &str,
        volumes: &[crate::wire::message::VolumeInfo],
        applied: OldSiteApplied,
        peer: [u8; 32],
    ) -> Result<Option<ReverseStart>> {
        let (applied_seq, applied_stream) = (applied.seq, applied.stream);
        crate::config::validate_name("vpg", vpg)?;
        // Not alongside a switch-back's finish, which drops the session
        // this would add for the capture it drops.
        let _committing = self.committing.lock().await;
        let dir = vpg_dir(&self.journal_root, vpg);
        if FailoverRecord::load(&dir)?.is_none() {
            self.reopen_if_ended(vpg, &dir).await?;
            return Ok(None);
        }
        let meta = JournalMeta::load(&dir)?;
        if meta.volumes != volumes {
            return Err(RecoveryError::Unavailable(format!(
                "the old site's volumes {:?} differ from this VPG's {:?}",
                volumes, meta.volumes
            )));
        }
        // A new stream starts above it (`start_delta_stream`).
        if applied_seq >= crate::record::SEQ_LIMIT - 1 {
            return Err(RecoveryError::Unavailable(format!(
                "the old site says it applied seq {applied_seq}, beyond any seq a log writes (2^53)"
            )));
        }
        let capture = self.reverse_capture(vpg, &dir, &meta).await?;
        let log = &capture.log;
        // Going on with the stream needs its delta copy too: done at the
        // old site, or running (or done) here. A copy this process never
        // ran (a restart in the middle of it) or one that failed is started
        // again with a new stream; else the old site waited for good for a
        // CopyDone that never came (review of helper-52).
        // (In sync with the stream the log holds, not an older one.)
        let copy_alive = (applied.in_sync && applied_stream == log.stream_id()) || capture.delta_copy_alive();
        let continues = applied_seq > 0 && copy_alive && log.continues(applied_seq, applied_stream).await?;
        if continues && applied_stream == log.stream_id() {
            log.ack(applied_seq);
        }
        // The delta copy's stream starts now, before the old site can
        // attach: nothing of the old stream (which it did not hash)
        // reaches it after its hashes.
        let delta = match continues {
            true => None,
            false => Some(capture.start_delta_stream(applied_seq).await?),
        };
        let session = crate::random::random_u64();
        self.reverse.lock().expect("reverse lock").insert(vpg.to_string(), (session, peer, capture.clone()));
        Ok(Some(ReverseStart { session, delta, capture }))
    }

    /// Ends reverse session `session` of `vpg` if it is still the current
    /// one (its data link ended): the old site's next ping is refused, and
    /// it starts another (review of helper-49).
    pub fn end_reverse_session(&self, vpg: &str, session: u64) {
        let mut reverse = self.reverse.lock().expect("reverse lock");
        if reverse.get(vpg).is_some_and(|(s, _, _)| *s == session) {
            reverse.remove(vpg);
        }
    }

    /// The capture of a reverse session, if `session` is the current one
    /// and `peer` the certificate that opened it.
    pub fn reverse_session(&self, vpg: &str, session: u64, peer: &[u8; 32]) -> Option<Arc<VpgCapture>> {
        let reverse = self.reverse.lock().expect("reverse lock");
        reverse.get(vpg).filter(|(s, p, _)| *s == session && p == peer).map(|(_, _, c)| c.clone())
    }

    fn already_moved(&self, vpg: &str, record: FailoverRecord) -> FailedOver {
        let dir = vpg_dir(&self.journal_root, vpg);
        let meta = JournalMeta::load(&dir).ok();
        let names: Vec<String> =
            meta.as_ref().map(|m| m.volumes.iter().map(|v| format!("{vpg}/{}", v.name)).collect()).unwrap_or_default();
        FailedOver {
            vpg: vpg.to_string(),
            checkpoint: record.checkpoint,
            how: How::Move,
            bytes_applied: 0,
            set_aside_bytes: record.set_aside_bytes,
            uris: names.iter().filter_map(|n| self.uri(n).ok()).collect(),
            iscsi_problem: None,
            files: meta.map(|m| FailoverRecord::volume_paths(&dir, &m)).unwrap_or_default(),
        }
    }

    fn uri(&self, name: &str) -> Result<String> {
        let listen = self.listen.ok_or_else(|| {
            RecoveryError::Unavailable(
                "no NBD address for recovered volumes: set [exports] listen in the recovery config".to_string(),
            )
        })?;
        Ok(format!("nbd://{listen}/{name}"))
    }

    async fn open_view(&self, vpg: &str, checkpoint: &str, holder: &'static str) -> Result<Arc<PitView>> {
        self.uri("")?;
        let (root, vpg, checkpoint) = (self.journal_root.clone(), vpg.to_string(), checkpoint.to_string());
        let view = tokio::task::spawn_blocking(move || PitView::open(&root, &vpg, &checkpoint, holder)).await??;
        Ok(Arc::new(view))
    }

    /// Serves `exports` over NBD, and over iSCSI as the target for
    /// `purpose` where configured (`publish_luns`).
    async fn publish(
        &self,
        view: &PitView,
        purpose: Purpose,
        exports: Vec<(String, Arc<dyn BlockExport>)>,
    ) -> Result<Served> {
        let names: Vec<String> = exports.iter().map(|(n, _)| n.clone()).collect();
        let mut uris: Vec<String> = names.iter().map(|n| self.uri(n)).collect::<Result<_>>()?;
        let luns = lun_sources(&view.volumes, &exports);
        self.exports.add(exports)?;
        let iscsi_problem = self.publish_luns(&view.vpg, purpose, &luns, &mut uris).await;
        Ok(Served { vpg: view.vpg.clone(), checkpoint: view.checkpoint.clone(), names, uris, iscsi_problem })
    }

    /// Serves every volume of `vpg` at `checkpoint`, read-only, as
    /// `<vpg>/<volume>/<checkpoint id>`, until `unexport`.
    pub async fn export(&self, vpg: &str, checkpoint: &str) -> Result<Served> {
        let view = self.open_view(vpg, checkpoint, "export").await?;
        let exports = (0..view.volumes.len())
            .map(|i| {
                let name = format!("{vpg}/{}/{}", view.volumes[i].name, view.checkpoint.id);
                let export: Arc<dyn BlockExport> = Arc::new(PitVolume::new(view.clone(), i));
                (name, export)
            })
            .collect();
        let served = self.publish(&view, Purpose::Checkpoint(view.checkpoint.id), exports).await?;
        let (summarized, scanned) = view.read;
        tracing::info!(
            %vpg,
            "serving checkpoint {} read-only: {:?} (journal index: {summarized} sealed segments read from their \
             summaries, {scanned} scanned)",
            served.checkpoint.id,
            served.names
        );
        Ok(served)
    }

    /// Ends an export: its LUNs first (the initiators' commands in flight
    /// still read the view), then the NBD exports and the view.
    pub async fn unexport(&self, served: &Served) {
        if let Some(l) = &self.luns {
            l.withdraw(&served.vpg, Purpose::Checkpoint(served.checkpoint.id)).await;
        }
        self.exports.remove(&served.names).await;
        tracing::info!("stopped serving {:?}", served.names);
    }

    /// Starts a test failover: writable exports `<vpg>/<volume>/test` at
    /// `checkpoint`, whose writes go to scratch files. Replication goes on.
    pub async fn test_failover_start(&self, vpg: &str, checkpoint: &str) -> Result<Served> {
        crate::config::validate_name("--vpg", vpg)?;
        let scratch_dir = self.scratch_root.join(vpg);
        // The VPG's state says a test failover is starting first: a second
        // start, a failover or a move is refused meanwhile, and the scratch
        // directory is this start's alone.
        let slot = self.slot(vpg)?;
        slot.change(Event::TestStart)?;
        // Back to replicating if the start ends any other way than served.
        let change = TestChange(Some(slot));
        let started = self.start_test(vpg, checkpoint, &scratch_dir).await;
        let (served, overlays) = match started {
            Ok(s) => s,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&scratch_dir);
                return Err(e);
            }
        };
        tracing::info!(%vpg, "test failover started at checkpoint {}: {:?}", served.checkpoint.id, served.names);
        let checkpoint = served.checkpoint.id;
        self.tests
            .lock()
            .expect("tests lock")
            .insert(vpg.to_string(), TestFailover { served: served.clone(), overlays, scratch_dir });
        change.started(checkpoint)?;
        Ok(served)
    }

    /// A test failover's overlays in `scratch_dir` (emptied first: what a
    /// start that failed left there), served.
    async fn start_test(
        &self,
        vpg: &str,
        checkpoint: &str,
        scratch_dir: &Path,
    ) -> Result<(Served, Vec<Arc<OverlayVolume>>)> {
        let view = self.open_view(vpg, checkpoint, "test-failover").await?;
        match std::fs::remove_dir_all(scratch_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Ok(Err(e).doing(|| format!("emptying {}", scratch_dir.display()))?),
        }
        std::fs::create_dir_all(scratch_dir).doing(|| format!("creating {}", scratch_dir.display()))?;
        let mut overlays = Vec::new();
        let mut exports: Vec<(String, Arc<dyn BlockExport>)> = Vec::new();
        for (i, v) in view.volumes.iter().enumerate() {
            let overlay =
                Arc::new(OverlayVolume::create(view.clone(), i, scratch_dir.join(format!("{}.overlay", v.name)))?);
            exports.push((format!("{vpg}/{}/test", v.name), overlay.clone()));
            overlays.push(overlay);
        }
        let served = self.publish(&view, Purpose::TestFailover, exports).await?;
        Ok((served, overlays))
    }

    /// Stops a test failover and throws its writes away. Returns a report.
    pub async fn test_failover_stop(&self, vpg: &str) -> Result<String> {
        // The VPG stays `TestChanging` until everything is gone, so a new
        // start cannot meet this one's scratch files or export names.
        let slot = crate::transfer::slot::find(&self.slots, vpg)
            .ok_or_else(|| RecoveryError::Unavailable(crate::recovery_state::Refusal::NoTest.message(vpg)))?;
        slot.change(Event::TestStop)?;
        let _change = TestChange(Some(slot));
        let test = self.tests.lock().expect("tests lock").remove(vpg).ok_or_else(|| {
            RecoveryError::Unavailable(format!("internal error: the test failover of VPG {vpg:?} serves nothing"))
        })?;
        // Its LUNs first, then the overlays and every connection to them.
        if let Some(l) = &self.luns {
            l.withdraw(vpg, Purpose::TestFailover).await;
        }
        self.exports.remove(&test.served.names).await;
        let blocks: u64 = test.overlays.iter().map(|o| o.blocks_written()).sum();
        std::fs::remove_dir_all(&test.scratch_dir)
            .doing(|| format!("removing scratch {}", test.scratch_dir.display()))?;
        let report = format!(
            "test failover of VPG {vpg:?} at checkpoint {} stopped; {} of test writes discarded",
            test.served.checkpoint.id,
            crate::status::format_bytes(blocks * 4096)
        );
        tracing::info!("{report}");
        Ok(report)
    }

    /// VPG → its served iSCSI targets and their sessions (for status).
    pub fn iscsi_status(&self) -> BTreeMap<String, Vec<crate::status::IscsiStatus>> {
        self.luns.as_ref().map(|l| l.status()).unwrap_or_default()
    }
}

/// Each volume's name and its export (the exports in the volumes' order),
/// as iSCSI LUN sources.
fn lun_sources(
    volumes: &[crate::wire::message::VolumeInfo],
    exports: &[(String, Arc<dyn BlockExport>)],
) -> Vec<(String, Arc<dyn BlockExport>)> {
    volumes.iter().zip(exports).map(|(v, (_, export))| (v.name.clone(), export.clone())).collect()
}

/// The guards that end a state when an operation ends however it ends
/// (returned, failed, or its future dropped), each on a real journal.
#[cfg(test)]
mod guard_tests {
    use super::*;
    use crate::journal::applier::HistoryPolicy;
    use crate::journal::Journal;
    use crate::recovery_state::How;
    use std::time::Duration;

    fn slot(name: &str) -> (Arc<VpgSlot>, PathBuf) {
        let dir = std::env::temp_dir().join(format!("tidemark-guards-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let meta = JournalMeta { vpg: name.to_string(), vpg_id: 1, volumes: Vec::new() };
        let policy = HistoryPolicy { history: Duration::from_secs(60), journal_limit: None, journal_cap: None };
        let journal = Journal::open(&dir, meta, &policy).unwrap();
        (Arc::new(VpgSlot::new(journal, 1, policy, VpgState::Replicating)), dir)
    }

    fn record(checkpoint: u64) -> FailoverRecord {
        FailoverRecord {
            checkpoint: CheckpointInfo {
                id: checkpoint,
                time_ms: 5,
                tag: String::new(),
                consistent: true,
                resync: false,
            },
            how: How::Move,
            time_ms: 6,
            serve: false,
            set_aside_bytes: 0,
            move_back: None,
        }
    }

    #[test]
    fn a_test_failover_that_never_started_leaves_no_trace() {
        let (slot, dir) = slot("test-change");
        slot.change(Event::TestStart).unwrap();
        drop(TestChange(Some(slot.clone())));
        assert_eq!(slot.state(), VpgState::Replicating);
        slot.change(Event::TestStart).unwrap();
        TestChange(Some(slot.clone())).started(9).unwrap();
        assert_eq!(slot.state(), VpgState::Testing { checkpoint: 9 });
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_move_mark_ends_its_own_move_and_nothing_after_it() {
        let (slot, dir) = slot("move-mark");
        let mark = crate::recovery_state::new_move_mark();
        slot.change(Event::MoveBegin { mark }).unwrap();
        drop(MoveMark(slot.clone(), mark));
        assert_eq!(slot.state(), VpgState::Replicating);
        // A mark whose move committed: dropping it (its link went away)
        // must not touch the failed-over state.
        let mark = crate::recovery_state::new_move_mark();
        slot.change(Event::MoveBegin { mark }).unwrap();
        let held = MoveMark(slot.clone(), mark);
        slot.change(Event::CommitBegin(Commit::Move { mark: held.mark() })).unwrap();
        slot.change(Event::Committed { checkpoint: 4, how: How::Move, time_ms: 6 }).unwrap();
        drop(held);
        assert_eq!(slot.state().failed_over_at(), Some(4));
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// The protected side announced a move on link A, reconnected, and
    /// cancelled it on link B (it takes writes again); A's promote read
    /// after that must not fail the VPG over, and A's link dropping later
    /// must not touch a move announced since.
    #[test]
    fn a_cancelled_move_is_not_promoted_from_its_old_link() {
        let (slot, dir) = slot("move-cancel");
        let a = crate::recovery_state::new_move_mark();
        slot.change(Event::MoveBegin { mark: a }).unwrap();
        let held_by_a = MoveMark(slot.clone(), a);
        slot.change(Event::MoveCancel).unwrap();
        assert_eq!(slot.state(), VpgState::Replicating);
        let late = slot.change(Event::CommitBegin(Commit::Move { mark: a })).unwrap_err().to_string();
        assert!(late.contains("has ended") && late.contains("nothing was promoted"), "{late}");
        assert_eq!(slot.state(), VpgState::Replicating);
        let c = crate::recovery_state::new_move_mark();
        slot.change(Event::MoveBegin { mark: c }).unwrap();
        drop(held_by_a);
        assert_eq!(slot.state(), VpgState::Moving { mark: c });
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_commit_ends_as_the_disk_says() {
        let (slot, dir) = slot("commit-end");
        let end = CommitEnd { slot: slot.clone(), dir: dir.clone() };
        // Nothing on disk: the commit failed, the stream reopens.
        slot.change(Event::CommitBegin(Commit::Failover)).unwrap();
        end.settle(None);
        assert_eq!(slot.state(), VpgState::Replicating);
        // The record is on disk although the commit reported an error.
        let mark = crate::recovery_state::new_move_mark();
        slot.change(Event::MoveBegin { mark }).unwrap();
        slot.change(Event::CommitBegin(Commit::Move { mark })).unwrap();
        record(7).store(&dir).unwrap();
        end.settle(None);
        assert_eq!(slot.state().failed_over_at(), Some(7));
        // The record cannot be read: unknown, so the stream stays closed.
        let (slot, dir2) = self::slot("commit-unknown");
        std::fs::write(dir2.join(crate::journal::FAILOVER_RECORD_FILE), b"{not json").unwrap();
        slot.change(Event::CommitBegin(Commit::Failover)).unwrap();
        CommitEnd { slot: slot.clone(), dir: dir2.clone() }.settle(None);
        assert!(matches!(slot.state(), VpgState::Committing { .. }));
        assert!(slot.stream_refusal().is_some());
        std::fs::remove_dir_all(dir).unwrap();
        std::fs::remove_dir_all(dir2).unwrap();
    }
}
