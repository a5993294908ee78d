//! `tidemark pin` / `unpin` on a VPG's journal: resolving what the
//! operator named to a checkpoint, then `journal::pins` keeps it.

use super::JournalView;
use super::RecoveryError;
use crate::capture::alert::{names_last_clean, LAST_CLEAN};
use crate::journal::index::CheckpointInfo;
use crate::journal::pins::{self, Pin};
use crate::journal::vpg_dir;
use std::path::Path;

type Result<T, E = RecoveryError> = std::result::Result<T, E>;

/// Pins the checkpoint `wanted` names (an id, a tag or `latest`). Resolved
/// under a reader's lease, so the applier cannot pass it between the
/// choice and the pin.
pub fn pin(journal_root: &Path, vpg: &str, wanted: &str, reason: &str) -> Result<(CheckpointInfo, Pin)> {
    if is_detector_pin(reason) {
        return Err(RecoveryError::Unavailable(format!(
            "--reason: a reason starting with {LAST_CLEAN:?} is the encryption detector's; choose another"
        )));
    }
    let mut view = JournalView::open_leased(journal_root, vpg, "pin")?;
    let (chosen, _lease) = view.pin(wanted)?;
    if view.index.checkpoints.binary_search_by_key(&chosen.id, |c| c.id).is_err() {
        return Err(RecoveryError::Unavailable(format!(
            "{wanted:?} is the journal's end, not a checkpoint; pin a checkpoint id, a tag or `latest`"
        )));
    }
    let pin = pins::pin(&view.dir, chosen.id, reason, crate::record::now_ms())?;
    Ok((chosen, pin))
}

/// The encryption detector's alert: pins the newest complete checkpoint
/// before `since_seq` (the first write of the anomaly) with `reason`.
///
/// The request comes from the peer: one detector pin per VPG is kept (the
/// oldest, which is clean for every later alert too: a second request
/// gets it back), and the journal must hold what came before `since_seq`.
pub fn pin_last_clean(journal_root: &Path, vpg: &str, since_seq: u64, reason: &str) -> Result<(CheckpointInfo, Pin)> {
    if !is_detector_pin(reason) {
        return Err(RecoveryError::Unavailable(format!(
            "a detector pin's reason must start with its {LAST_CLEAN}-<time> label"
        )));
    }
    let mut view = JournalView::open_leased(journal_root, vpg, "last-clean")?;
    if let Some(held) = pins::load(&view.dir)?.into_iter().find(|p| is_detector_pin(&p.reason)) {
        let checkpoint = view.resolve(&held.checkpoint.to_string())?;
        return Ok((checkpoint, held));
    }
    if since_seq > view.index.durable_seq + 1 {
        return Err(RecoveryError::Unavailable(format!(
            "the journal holds seq {} only, not everything before seq {since_seq}",
            view.index.durable_seq
        )));
    }
    let Some(chosen) = view.index.checkpoints.iter().rev().find(|c| c.id < since_seq && c.consistent).cloned() else {
        return Err(RecoveryError::Unavailable(format!(
            "no complete checkpoint before seq {since_seq} is left in the journal (the replica already holds \
             seq {}: the history window or the journal limit merged it)",
            view.index.applied_seq
        )));
    };
    let (_, _lease) = view.pin(&chosen.id.to_string())?;
    let pin = pins::pin(&view.dir, chosen.id, reason, crate::record::now_ms())?;
    Ok((chosen, pin))
}

/// Whether a pin's reason names it as the encryption detector's
/// (`last-clean-<time>: ...`).
pub fn is_detector_pin(reason: &str) -> bool {
    names_last_clean(reason.split(": ").next().unwrap_or_default())
}

/// Releases the pin of the checkpoint `wanted` names. An id needs no
/// lookup: a repaired or failed-over journal may no longer list the
/// checkpoint, and its pin must still go.
pub fn unpin(journal_root: &Path, vpg: &str, wanted: &str) -> Result<Pin> {
    crate::config::validate_name("--vpg", vpg)?;
    let id = match wanted.parse::<u64>() {
        Ok(id) => id,
        Err(_) => JournalView::open(journal_root, vpg)?.resolve(wanted)?.id,
    };
    Ok(pins::unpin(&vpg_dir(journal_root, vpg), id)?)
}
