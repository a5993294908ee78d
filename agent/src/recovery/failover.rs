//! Failover, recovery side, on disk: commit the journal up to the chosen
//! checkpoint into the replica, record the failover in `failover.json`,
//! then set aside every segment after it (kept in `after-failover/`, never
//! applied). From then on the replica images are the VPG's live volumes;
//! the stream for the VPG is refused, and restore/export/test failover of
//! it are refused with the reason.
//!
//! Crash safety: the apply records its target first (`apply_state`), and
//! the record is written before any segment moves, so after a crash either
//! nothing changed but the replica moving forward to a checkpoint (the
//! failover did not happen; run it again) or the record exists and the
//! setting aside is finished at the next start (`finish_commit`).

use crate::durable::{replace_file, sync_dir, FileMode};
use crate::journal::applier::apply_to;
use crate::journal::apply_state::ApplyState;
use crate::journal::index::CheckpointInfo;
use crate::journal::lease::{self, ApplyLock};
use crate::journal::replica::replica_dir;
use crate::journal::JournalMeta;
use crate::segment::{list_segments, SegmentKind};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

use super::RecoveryError;
use crate::io_failure::Doing;
use crate::journal::FAILOVER_RECORD_FILE as FAILOVER_FILE;

type Result<T, E = RecoveryError> = std::result::Result<T, E>;
pub(super) const SET_ASIDE_DIR: &str = "after-failover";

pub use crate::recovery_state::How;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailoverRecord {
    pub checkpoint: CheckpointInfo,
    pub how: How,
    pub time_ms: u64,
    /// The volumes are served over NBD (else they are left as files).
    pub serve: bool,
    /// Journal bytes after the checkpoint that were set aside.
    pub set_aside_bytes: u64,
    /// A switch-back (`tidemark move-back`) under way: writes on the live
    /// volumes are refused and the reverse log ends at its marker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub move_back: Option<MoveBackMark>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct MoveBackMark {
    /// The checkpoint that ends the reverse log (nothing is written after it).
    pub marker: u64,
    /// The old site applied the reverse log through the marker: the
    /// failover ends (also at the next start, if a stop interrupts it).
    pub applied: bool,
}

impl FailoverRecord {
    pub fn load(vpg_dir: &Path) -> Result<Option<FailoverRecord>> {
        let path = vpg_dir.join(FAILOVER_FILE);
        match std::fs::read(&path) {
            Ok(b) => Ok(Some(
                serde_json::from_slice(&b)
                    .map_err(|e| RecoveryError::from(e).at(format!("parsing {}", path.display())))?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).doing(|| format!("reading {}", path.display())).map_err(Into::into),
        }
    }

    pub(super) fn store(&self, vpg_dir: &Path) -> Result<()> {
        Ok(replace_file(&vpg_dir.join(FAILOVER_FILE), &serde_json::to_vec_pretty(self)?, FileMode::Public)?)
    }

    /// Where the live volumes are.
    pub fn volume_paths(vpg_dir: &Path, meta: &JournalMeta) -> Vec<PathBuf> {
        meta.volumes.iter().map(|v| replica_dir(vpg_dir).join(format!("{}.img", v.name))).collect()
    }

    /// The error for anything that wants the VPG's history after this.
    pub fn refusal(&self, vpg: &str) -> String {
        crate::recovery_state::failed_over_message(vpg, self.how, self.checkpoint.id, self.time_ms)
    }
}

pub struct Committed {
    pub record: FailoverRecord,
    pub bytes_applied: u64,
}

/// Commits `checkpoint` (blocking). Refused while a reader holds a lease
/// (an export, restore or test failover) or if the checkpoint is older than
/// the replica; nothing changes then.
pub fn commit(dir: &Path, meta: &JournalMeta, checkpoint: &CheckpointInfo, how: How, serve: bool) -> Result<Committed> {
    let lock = ApplyLock::exclusive(dir)?;
    let readers = lease::live(dir, &lock)?;
    if !readers.is_empty() {
        let who: Vec<&str> = readers.iter().map(|l| l.holder.as_str()).collect();
        return Err(RecoveryError::Unavailable(format!(
            "a reader of VPG {:?} is open ({}); stop it first",
            meta.vpg,
            who.join(", ")
        )));
    }
    let state = ApplyState::load(dir)?;
    if checkpoint.id < state.applied_seq {
        return Err(RecoveryError::Unavailable(format!(
            "checkpoint {} is older than the history window (the replica holds seq {})",
            checkpoint.id, state.applied_seq
        )));
    }
    let (_, bytes_applied) = apply_to(dir, meta, &state, checkpoint.id, false)?;
    let mut set_aside_bytes = 0;
    for (_, path) in list_segments(dir, SegmentKind::Journal)? {
        set_aside_bytes += std::fs::metadata(&path).doing(|| format!("sizing {}", path.display()))?.len();
    }
    let record = FailoverRecord {
        checkpoint: checkpoint.clone(),
        how,
        time_ms: crate::record::now_ms(),
        serve,
        set_aside_bytes,
        move_back: None,
    };
    record.store(dir)?;
    fail::fail_point!("failover-after-record", |_| std::process::abort());
    set_aside(dir)?;
    Ok(Committed { record, bytes_applied })
}

/// After a crash in the middle of a failover: if its record exists, the
/// segments it had not set aside yet are set aside now. Idempotent.
pub fn finish_commit(dir: &Path) -> Result<()> {
    if FailoverRecord::load(dir)?.is_none() {
        return Ok(());
    }
    let mut left = 0;
    for (_, path) in list_segments(dir, SegmentKind::Journal)? {
        left += usize::from(holds_records(&path)?);
    }
    if left > 0 {
        tracing::warn!("{}: finishing a failover a stop interrupted ({left} segments to set aside)", dir.display());
    }
    set_aside(dir)
}

/// More than a header: records that were journaled.
fn holds_records(path: &Path) -> Result<bool> {
    let len = std::fs::metadata(path).doing(|| format!("sizing {}", path.display()))?.len();
    Ok(len > crate::segment::SEGMENT_HEADER_BYTES as u64)
}

/// Moves every journal segment that holds records into `after-failover/`,
/// durably, never over one already there; empty ones (a journal reopened
/// after the failover makes one) are removed.
fn set_aside(dir: &Path) -> Result<()> {
    let aside = dir.join(SET_ASIDE_DIR);
    for (_, path) in list_segments(dir, SegmentKind::Journal)? {
        crate::journal::summary::forget(&path)?;
        if !holds_records(&path)? {
            std::fs::remove_file(&path).doing(|| format!("removing {}", path.display()))?;
            continue;
        }
        std::fs::create_dir_all(&aside).doing(|| format!("creating {}", aside.display()))?;
        let name = path
            .file_name()
            .ok_or_else(|| RecoveryError::Unavailable("segment name".to_string()))?
            .to_string_lossy()
            .to_string();
        let mut target = aside.join(&name);
        let mut n = 1;
        while target.exists() {
            target = aside.join(format!("{name}.{n}"));
            n += 1;
        }
        std::fs::rename(&path, &target).doing(|| format!("setting aside {}", path.display()))?;
        fail::fail_point!("failover-set-aside", |_| std::process::abort());
    }
    if aside.exists() {
        sync_dir(&aside)?;
    }
    Ok(sync_dir(dir)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::{create_segment, segment_path};
    use std::io::Write;

    /// After a failover, a reopened journal makes an empty segment; the
    /// next start must not set it aside over a segment of the same name
    /// (it once replaced 8 KiB of history with a 32-byte header).
    #[test]
    fn setting_aside_never_overwrites_history() {
        let dir = tempfile::tempdir().unwrap();
        let record = FailoverRecord {
            checkpoint: CheckpointInfo { id: 10, time_ms: 1, tag: String::new(), consistent: true, resync: false },
            how: How::Failover,
            time_ms: 1,
            serve: false,
            set_aside_bytes: 0,
            move_back: None,
        };
        record.store(dir.path()).unwrap();
        let (path, mut f) = create_segment(dir.path(), SegmentKind::Journal, 1, 11).unwrap();
        f.write_all(&[7; 8192]).unwrap();
        finish_commit(dir.path()).unwrap();
        assert!(!path.exists());
        let kept = dir.path().join(SET_ASIDE_DIR).join(path.file_name().unwrap());
        assert_eq!(std::fs::metadata(&kept).unwrap().len(), 32 + 8192);
        // The journal reopens and makes an empty segment of the same name.
        create_segment(dir.path(), SegmentKind::Journal, 1, 11).unwrap();
        finish_commit(dir.path()).unwrap();
        assert_eq!(std::fs::metadata(&kept).unwrap().len(), 32 + 8192, "history was overwritten");
        assert!(!segment_path(dir.path(), SegmentKind::Journal, 11).exists());
    }
}
