//! Switch-back, recovery side (`docs/switch-back.md`): after a failover and
//! reverse protection, the VPG goes back to the old site. The old site asks
//! three things, each on a control connection of its own:
//!
//! - begin: refuse writes on the live volumes (persisted in the reverse
//!   log's capture state, so a restart keeps it), append a checkpoint
//!   `move-back` as the reverse log's last record (the marker), and record
//!   the marker in `failover.json`;
//! - finish (the old site applied through the marker and is in sync):
//!   record that in `failover.json`, stop serving the volumes, move
//!   `after-failover/` and `reverse-log/` under `history-<time>/`, remove
//!   `failover.json` last, and reopen the journal: its replica, exactly the
//!   old site's volumes, is the base of the next forward stream;
//! - cancel (before finish): forget the marker and take writes again.
//!
//! Once `applied` is recorded, a stop is finished at the next start
//! (`finish_on_disk`): the VPG is either still failed over or protected
//! forward again, never in between.

use super::failover::{FailoverRecord, MoveBackMark, SET_ASIDE_DIR};
use super::luns::Purpose;
use super::ops::{RecoveryOps, REVERSE_LOG_DIR};
use super::RecoveryError;
use crate::capture::vpg::VpgCapture;
use crate::durable::{replace_file, sync_dir, FileMode};
use crate::io_failure::Doing;
use crate::journal::apply_state::ApplyState;
use crate::journal::checkpoint::CheckpointInfo;
use crate::journal::{vpg_dir, Journal, JournalMeta, FAILOVER_RECORD_FILE};
use crate::protected_state::Event as WritesEvent;
use crate::recovery_state::{Event, VpgState};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

type Result<T, E = RecoveryError> = std::result::Result<T, E>;

/// The tag of the checkpoint that ends the reverse log.
pub const MOVE_BACK_TAG: &str = "move-back";
const HISTORY_DIR_PREFIX: &str = "history-";
/// The marker of the last switch-back that ended a failover here: the old
/// site finishes on its strength only if it holds that same marker.
const SWITCHED_BACK_FILE: &str = "switched-back.json";
/// How long a switch-back request waits for the old site's reverse
/// session to connect (it dials again every 2 s).
const REVERSE_SESSION_WAIT: Duration = Duration::from_secs(15);
const REVERSE_SESSION_POLL: Duration = Duration::from_millis(200);
/// How long a finish waits for the old site's ack of the last batch.
const ACK_WAIT: Duration = Duration::from_secs(5);
/// How long the marker waits for the reverse log to be consistent.
const MARKER_WAIT: Duration = Duration::from_secs(60);

/// What a switch-back request gets.
#[derive(Debug, PartialEq, Eq)]
pub enum MoveBackAnswer {
    /// Writes are refused; the reverse log ends at this checkpoint.
    Marked(u64),
    /// The failover is over; the journal takes a new stream after this seq.
    Done {
        journal_seq: u64,
    },
    Cancelled,
    /// The VPG is not failed over here; the marker of the last switch-back
    /// that ended a failover of it (0: none).
    NotFailedOver {
        switched_back_at: u64,
    },
}

/// Ends a failover whose switch-back was applied at the old site, on
/// disk: the set-aside history and the reverse log go under
/// `history-<failover time>/` (for the operator to delete), then
/// `failover.json` goes. Idempotent; true if it found one to finish.
pub fn finish_on_disk(dir: &Path) -> Result<bool> {
    let Some(record) = FailoverRecord::load(dir)? else { return Ok(false) };
    if !record.move_back.is_some_and(|m| m.applied) {
        return Ok(false);
    }
    let history = dir.join(format!("{HISTORY_DIR_PREFIX}{}", record.time_ms));
    std::fs::create_dir_all(&history).doing(|| format!("creating {}", history.display()))?;
    for name in [SET_ASIDE_DIR, REVERSE_LOG_DIR] {
        let from = dir.join(name);
        if from.exists() {
            let to = history.join(name);
            std::fs::rename(&from, &to).doing(|| format!("moving {} to {}", from.display(), to.display()))?;
        }
    }
    sync_dir(&history)?;
    sync_dir(dir)?;
    fail::fail_point!("move-back-after-history", |_| std::process::abort());
    // The replica holds the volumes as the switch-back left them, not as
    // of the failover's checkpoint: its base is that image now, tagged
    // `move-back`, a recovery point until the next stream makes newer ones.
    let mut state = ApplyState::load(dir)?;
    let volumes = JournalMeta::load(dir)?.volumes.len() as u32;
    state.base = Some(CheckpointInfo {
        id: state.applied_seq,
        time_ms: crate::record::now_ms(),
        tag: MOVE_BACK_TAG.to_string(),
        consistent: true,
        resync: false,
    });
    state.copied = (0..volumes).collect();
    state.left_by_limit = false;
    state.store(dir)?;
    let marker = record.move_back.map_or(0, |m| m.marker);
    let done = SwitchedBack { marker, time_ms: crate::record::now_ms() };
    replace_file(&dir.join(SWITCHED_BACK_FILE), &serde_json::to_vec_pretty(&done)?, FileMode::Public)?;
    let record_path = dir.join(FAILOVER_RECORD_FILE);
    std::fs::remove_file(&record_path).doing(|| format!("removing {}", record_path.display()))?;
    sync_dir(dir)?;
    tracing::warn!(
        "{}: the failover is over (switched back to the old site); its history is kept in {}",
        dir.display(),
        history.display()
    );
    Ok(true)
}

#[derive(Serialize, Deserialize)]
struct SwitchedBack {
    marker: u64,
    time_ms: u64,
}

/// Stores `record` in `dir` off the runtime's threads (an fsynced write).
async fn store_record(record: FailoverRecord, dir: &Path) -> Result<()> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || record.store(&dir))
        .await
        .map_err(|source| RecoveryError::Task { what: "storing the failover record", source })?
}

/// Why the reverse log does not yet hold every write taken here, if so: it
/// is in bitmap mode (writes only marked) or reading the marked regions
/// back (resync), so the old site lacks some even once it is "in sync".
fn reverse_log_behind(capture: &VpgCapture) -> Option<String> {
    capture.bitmap_status().map(|b| {
        format!(
            "the recovery site's reverse log is in {} mode ({} of changed regions not yet read back to the old \
             site; it filled while the old site was away); wait until the recovery site's status shows no \
             bitmap: or resync: line for VPG {:?} (the log must drain first: if the VMs there write faster \
             than the link takes, stop or quiesce them), then run `tidemark move-back` again",
            b.mode,
            crate::status::format_bytes(b.dirty_bytes),
            capture.name
        )
    })
}

/// The marker of the last switch-back that ended a failover of the VPG in
/// `dir` (0: none). A record that cannot be read is an error, never "none":
/// an old site finishing its switch-back needs it.
pub fn last_switch_back(dir: &Path) -> Result<u64> {
    let path = dir.join(SWITCHED_BACK_FILE);
    match std::fs::read(&path) {
        Ok(b) => Ok(serde_json::from_slice::<SwitchedBack>(&b)
            .map_err(|e| RecoveryError::from(e).at(format!("parsing {}", path.display())))?
            .marker),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e).doing(|| format!("reading {}", path.display())).map_err(Into::into),
    }
}

fn not_failed_over(dir: &Path) -> Result<MoveBackAnswer> {
    Ok(MoveBackAnswer::NotFailedOver { switched_back_at: last_switch_back(dir)? })
}

impl RecoveryOps {
    /// The capture logging a failed-over VPG's writes for the old site.
    pub(crate) fn reverse_capture_of(&self, vpg: &str) -> Option<Arc<VpgCapture>> {
        self.live.lock().expect("live lock").get(vpg).and_then(|l| l.read().expect("live capture").clone())
    }

    /// The marker of the last switch-back that ended a failover of `vpg`.
    pub fn switched_back_at(&self, vpg: &str) -> Result<u64> {
        last_switch_back(&vpg_dir(&self.journal_root, vpg))
    }

    /// Whether writes on `vpg`'s live volumes are refused for a switch-back.
    pub fn switching_back(&self, vpg: &str) -> bool {
        self.reverse_capture_of(vpg).is_some_and(|c| c.writes_refused().is_some())
    }

    /// Only the certificate that holds the VPG's reverse session (the old
    /// site it is sent back to) may begin or finish its switch-back.
    fn check_reverse_peer(&self, vpg: &str, peer: &[u8; 32]) -> Result<()> {
        match self.reverse.lock().expect("reverse lock").get(vpg) {
            Some((_, holder, _)) if holder == peer => Ok(()),
            Some(_) => Err(RecoveryError::Unavailable(format!(
                "VPG {vpg:?} is sent back to another appliance; only it can switch back"
            ))),
            None => Err(RecoveryError::Unavailable(format!(
                "the old site's reverse protection of VPG {vpg:?} is not connected here; try again when it is"
            ))),
        }
    }

    /// How many switch-back cancels of `vpg` were asked for.
    fn move_back_cancels_of(&self, vpg: &str) -> u64 {
        self.move_back_cancels.lock().expect("cancels lock").get(vpg).copied().unwrap_or(0)
    }

    /// Waits a while for a reverse session of `vpg` that is not connected
    /// yet (either agent just started), before any lock is taken.
    async fn wait_reverse_session(&self, vpg: &str) {
        let since = tokio::time::Instant::now();
        while !self.reverse.lock().expect("reverse lock").contains_key(vpg) && since.elapsed() < REVERSE_SESSION_WAIT {
            tokio::time::sleep(REVERSE_SESSION_POLL).await;
        }
    }

    /// Begin: refuse writes, mark the reverse log's end. Asked again, it
    /// answers the same marker. If marking fails, writes are taken again.
    pub async fn move_back_begin(&self, vpg: &str, peer: &[u8; 32]) -> Result<MoveBackAnswer> {
        crate::config::validate_name("vpg", vpg)?;
        let cancels = self.move_back_cancels_of(vpg);
        self.wait_reverse_session(vpg).await;
        // A begin that waits long (for a reverse session that reconnects):
        // return(MS) waits MS more, without holding a runtime thread.
        let longer = (|| {
            fail::fail_point!("move-back-begin-wait", |ms: Option<String>| ms.and_then(|m| m.parse().ok()));
            None
        })();
        if let Some(ms) = longer {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let _committing = self.committing.lock().await;
        // A begin outlives its connection (its work goes on if the link
        // drops): one whose old site gave up and cancelled meanwhile must
        // not refuse the live VMs' writes after that cancel said they are
        // taken (review of helper-51).
        if self.move_back_cancels_of(vpg) != cancels {
            return Err(RecoveryError::Unavailable(format!(
                "the switch-back of VPG {vpg:?} was cancelled after this begin was asked for; nothing was changed"
            )));
        }
        let dir = vpg_dir(&self.journal_root, vpg);
        let Some(mut record) = FailoverRecord::load(&dir)? else { return not_failed_over(&dir) };
        let capture = self.reverse_capture_of(vpg);
        match (record.move_back, &capture) {
            (Some(m), _) if m.applied => return Ok(MoveBackAnswer::Marked(m.marker)),
            (Some(m), Some(c)) if c.writes_refused().is_some() => return Ok(MoveBackAnswer::Marked(m.marker)),
            _ => {}
        }
        let capture = capture.ok_or_else(|| {
            RecoveryError::Unavailable(format!(
                "reverse protection of VPG {vpg:?} is not running here; run `tidemark reverse` on the old site first"
            ))
        })?;
        self.check_reverse_peer(vpg, peer)?;
        // Said now, not after refusing the VMs' writes for the marker's
        // whole wait: the old site's "in sync" cannot see this.
        if let Some(why) = reverse_log_behind(&capture) {
            return Err(RecoveryError::Unavailable(format!("{why}; nothing was changed")));
        }
        let refused_now = capture.writes_refused().is_none();
        if refused_now {
            capture.change_writes(WritesEvent::MoveBackBegin).await?;
        }
        fail::fail_point!("move-back-after-refusal", |_| std::process::abort());
        let marked = async {
            // Every write taken before the refusal is in the log before this.
            let marker = tokio::time::timeout(MARKER_WAIT, capture.checkpoint(MOVE_BACK_TAG, MARKER_WAIT))
                .await
                .map_err(|_| {
                    RecoveryError::Unavailable(format!(
                        "the reverse log could not take the final checkpoint within {MARKER_WAIT:?} (no room, or \
                         a resync after bitmap mode is still reading changed regions back: see the recovery \
                         site's status)"
                    ))
                })??;
            capture.log.sync_to(marker).await?;
            record.move_back = Some(MoveBackMark { marker, applied: false });
            store_record(record, &dir).await?;
            Ok::<_, RecoveryError>(marker)
        };
        let marker = match marked.await {
            Ok(m) => m,
            Err(e) => {
                // The VM here must not stay refused by a switch-back that
                // never began.
                if refused_now {
                    capture.change_writes(WritesEvent::MoveBackUndone).await?;
                }
                return Err(e.at("the switch-back did not begin; writes are taken here again"));
            }
        };
        tracing::warn!(%vpg, marker, "switch-back begins: writes on the live volumes are refused; the reverse log ends at checkpoint {marker}");
        Ok(MoveBackAnswer::Marked(marker))
    }

    /// Finish: the old site applied the reverse log through `marker` and
    /// is in sync; the failover ends.
    pub async fn move_back_finish(&self, vpg: &str, marker: u64, peer: &[u8; 32]) -> Result<MoveBackAnswer> {
        crate::config::validate_name("vpg", vpg)?;
        self.wait_reverse_session(vpg).await;
        let _committing = self.committing.lock().await;
        let dir = vpg_dir(&self.journal_root, vpg);
        let Some(mut record) = FailoverRecord::load(&dir)? else {
            self.reopen_if_ended(vpg, &dir).await?;
            return not_failed_over(&dir);
        };
        let Some(mut mark) = record.move_back else {
            return Err(RecoveryError::Unavailable(format!(
                "no switch-back of VPG {vpg:?} is under way here (was it cancelled?); run `tidemark move-back` again"
            )));
        };
        if mark.marker != marker {
            return Err(RecoveryError::Unavailable(format!(
                "the switch-back of VPG {vpg:?} here ends the reverse log at checkpoint {}, not {marker}; run \
                 `tidemark move-back` again",
                mark.marker
            )));
        }
        if !mark.applied {
            self.check_reverse_peer(vpg, peer)?;
            let capture = self
                .reverse_capture_of(vpg)
                .ok_or_else(|| RecoveryError::Unavailable("reverse protection is not running here".to_string()))?;
            if capture.writes_refused().is_none() {
                return Err(RecoveryError::Unavailable(format!(
                    "writes on VPG {vpg:?} are taken here again; run `tidemark move-back` again"
                )));
            }
            // What the old site acknowledged, not what it says: everything
            // logged here (the old site also waited for its delta copy).
            // (Its ack of the last batch may trail its request a little.)
            let appended = capture.log.appended_seq();
            let _ = tokio::time::timeout(ACK_WAIT, capture.log.wait_acked(appended.max(marker))).await;
            // Read again after the wait: a resync (after a restart here)
            // may have appended meanwhile, and is itself a reason to wait.
            if let Some(why) = reverse_log_behind(&capture) {
                return Err(RecoveryError::Unavailable(why));
            }
            let (appended, acked) = (capture.log.appended_seq(), capture.log.acked_seq());
            if acked < marker || acked < appended {
                return Err(RecoveryError::Unavailable(format!(
                    "the old site has acknowledged seq {acked} of the reverse log, which ends at {appended} (marker \
                     {marker}); wait until it is in sync"
                )));
            }
            mark.applied = true;
            record.move_back = Some(mark);
            store_record(record, &dir).await?;
        }
        fail::fail_point!("move-back-after-applied", |_| std::process::abort());
        self.end_failover(vpg, &dir).await
    }

    /// Cancel: forget the marker, take writes on the live volumes again.
    pub async fn move_back_cancel(&self, vpg: &str) -> Result<MoveBackAnswer> {
        crate::config::validate_name("vpg", vpg)?;
        *self.move_back_cancels.lock().expect("cancels lock").entry(vpg.to_string()).or_default() += 1;
        let _committing = self.committing.lock().await;
        let dir = vpg_dir(&self.journal_root, vpg);
        let Some(mut record) = FailoverRecord::load(&dir)? else { return not_failed_over(&dir) };
        if record.move_back.is_some_and(|m| m.applied) {
            return Err(RecoveryError::Unavailable(format!(
                "the switch-back of VPG {vpg:?} is committed here (the old site applied everything); it cannot be \
                 cancelled: finish it with `tidemark move-back`"
            )));
        }
        // The marker goes first: a stop in between leaves writes refused
        // without one, which a new begin or cancel takes from there.
        if record.move_back.take().is_some() {
            store_record(record, &dir).await?;
        }
        if let Some(capture) = self.reverse_capture_of(vpg).filter(|c| c.writes_refused().is_some()) {
            capture.change_writes(WritesEvent::MoveBackUndone).await?;
        }
        tracing::warn!(%vpg, "switch-back cancelled: the live volumes take writes again");
        Ok(MoveBackAnswer::Cancelled)
    }

    /// Reopens the journal of a VPG whose failover ended on disk but
    /// whose reopening failed, before the old site is told "not failed
    /// over" (which it takes as the switch-back's end): else every forward
    /// hello is asked to come back until a restart. The caller holds
    /// `committing`.
    pub(super) async fn reopen_if_ended(&self, vpg: &str, dir: &Path) -> Result<()> {
        let slot = crate::transfer::slot::find(&self.slots, vpg);
        if slot.is_some_and(|s| s.state() == VpgState::Reopening) {
            self.end_failover(vpg, dir).await?;
        }
        Ok(())
    }

    /// Stops serving the live volumes, ends the failover on disk, and
    /// reopens the journal so the forward stream can come again.
    async fn end_failover(&self, vpg: &str, dir: &Path) -> Result<MoveBackAnswer> {
        let meta = JournalMeta::load(dir)?;
        if let Some(luns) = &self.luns {
            luns.withdraw(vpg, Purpose::Failover).await;
        }
        let names: Vec<String> = meta.volumes.iter().map(|v| format!("{vpg}/{}", v.name)).collect();
        self.exports.remove(&names).await;
        self.reverse.lock().expect("reverse lock").remove(vpg);
        self.live.lock().expect("live lock").remove(vpg);
        let slot = crate::transfer::slot::find(&self.slots, vpg)
            .ok_or_else(|| RecoveryError::Unavailable("the VPG's journal is not open".to_string()))?;
        // Until the journal is open again a forward hello is asked to come
        // back (never told "failed over", which would stop the old site,
        // already taking the VPG back, for good).
        slot.change(Event::SwitchBackEnds)?;
        let d = dir.to_path_buf();
        let reopened = async {
            tokio::task::spawn_blocking(move || finish_on_disk(&d))
                .await
                .map_err(|source| RecoveryError::Task { what: "ending the failover", source })??;
            fail::fail_point!("move-back-reopen", |_| Err(RecoveryError::Failpoint("move-back-reopen")));
            let (d, policy) = (dir.to_path_buf(), slot.policy);
            let journal = tokio::task::spawn_blocking(move || Journal::open(&d, meta, &policy))
                .await
                .map_err(|source| RecoveryError::Task { what: "reopening the journal", source })??;
            Ok::<_, RecoveryError>(journal)
        };
        // Stays `Reopening` on failure: the disk is finished at the next start.
        let journal = reopened.await.map_err(|e| {
            e.at("the failover is over but its journal is not open again; run `tidemark move-back` again, or restart \
                  the recovery agent, to finish the switch-back")
        })?;
        let journal_seq = journal.durable_seq();
        {
            let mut open = slot.journal.lock().expect("journal lock");
            *open = journal;
            *slot.summarizer.lock().expect("summarizer lock") = Default::default();
            slot.change(Event::Reopened)?;
        }
        tracing::warn!(%vpg, journal_seq, "switched back: the VPG runs at the old site again; its journal takes the new forward stream");
        Ok(MoveBackAnswer::Done { journal_seq })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recovery::failover::How;

    fn record(move_back: Option<MoveBackMark>) -> FailoverRecord {
        FailoverRecord {
            checkpoint: CheckpointInfo { id: 10, time_ms: 1, tag: String::new(), consistent: true, resync: false },
            how: How::Failover,
            time_ms: 77,
            serve: true,
            set_aside_bytes: 0,
            move_back,
        }
    }

    /// Only a switch-back the old site applied ends the failover; ending
    /// it again (a stop in the middle) finishes it and changes nothing else.
    #[test]
    fn the_failover_ends_only_once_applied_and_ending_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let volumes = vec![crate::wire::message::VolumeInfo { name: "disk0".into(), size: 1 << 20 }; 2];
        JournalMeta { vpg: "vm1".into(), vpg_id: 1, volumes }.store(d).unwrap();
        let failed_over_at = CheckpointInfo { id: 10, time_ms: 1, tag: String::new(), consistent: true, resync: false };
        ApplyState { applied_seq: 10, base: Some(failed_over_at), copied: vec![0, 1], ..Default::default() }
            .store(d)
            .unwrap();
        std::fs::create_dir_all(d.join(SET_ASIDE_DIR)).unwrap();
        std::fs::create_dir_all(d.join(REVERSE_LOG_DIR)).unwrap();
        std::fs::write(d.join(REVERSE_LOG_DIR).join("capture-state.json"), b"{}").unwrap();
        assert!(!finish_on_disk(d).unwrap(), "no record");
        record(None).store(d).unwrap();
        assert!(!finish_on_disk(d).unwrap(), "no switch-back");
        record(Some(MoveBackMark { marker: 20, applied: false })).store(d).unwrap();
        assert!(!finish_on_disk(d).unwrap(), "not applied at the old site");
        assert!(d.join(REVERSE_LOG_DIR).exists());
        record(Some(MoveBackMark { marker: 20, applied: true })).store(d).unwrap();
        // A stop after the reverse log moved, before the record went.
        std::fs::create_dir_all(d.join("history-77")).unwrap();
        std::fs::rename(d.join(REVERSE_LOG_DIR), d.join("history-77").join(REVERSE_LOG_DIR)).unwrap();
        assert!(finish_on_disk(d).unwrap());
        assert!(FailoverRecord::load(d).unwrap().is_none());
        // The replica's image is the switch-back's now, not the failover's.
        let state = ApplyState::load(d).unwrap();
        let base = state.base.unwrap();
        assert_eq!((base.id, base.tag.as_str(), base.consistent), (10, MOVE_BACK_TAG, true));
        assert!(base.time_ms > 1);
        assert_eq!(state.copied, vec![0, 1]);
        assert_eq!(last_switch_back(d).unwrap(), 20);
        assert!(d.join("history-77").join(REVERSE_LOG_DIR).join("capture-state.json").exists());
        assert!(d.join("history-77").join(SET_ASIDE_DIR).exists());
        assert!(!d.join(SET_ASIDE_DIR).exists() && !d.join(REVERSE_LOG_DIR).exists());
        assert!(!finish_on_disk(d).unwrap(), "already over");
    }
}
