//! Getting data back out of a journal: listing checkpoints and restoring a
//! VPG's volumes as they were at one of them.

pub mod disk_layout;
mod error;
pub mod exports;
pub mod failover;
pub mod fs_check;
pub mod hashes;
pub mod listing;
pub mod luns;
pub mod ops;
pub mod pinning;
pub mod restore;
pub mod seed;
pub mod switch_back;
pub mod view;

pub use error::RecoveryError;

use crate::journal::apply_state::ApplyState;
use crate::journal::catalog::walk_journal;
use crate::journal::index::{CheckpointInfo, JournalIndex};
use crate::journal::lease::{self, Lease};
use crate::journal::scan::{Damage, Visit};
use crate::journal::{vpg_dir, JournalMeta};
use std::path::{Path, PathBuf};

type Result<T, E = RecoveryError> = std::result::Result<T, E>;

/// A journal read from disk, without taking it from the running agent:
/// sealed segments from their summaries (`journal::summary`), the rest
/// scanned.
pub struct JournalView {
    pub dir: PathBuf,
    pub meta: JournalMeta,
    pub index: JournalIndex,
    /// Corruption (not a torn tail) found while reading, if any.
    pub corruption: Option<Damage>,
    /// How the index was read: (segments from summaries, segments
    /// scanned, bytes scanned).
    pub read: (usize, usize, u64),
    /// A reader's lease, taken before anything was read.
    lease: Option<Lease>,
}

impl JournalView {
    /// Lists the journal without pinning anything (`checkpoints`).
    pub fn open(journal_root: &Path, vpg: &str) -> Result<JournalView> {
        Self::open_as(journal_root, vpg, None)
    }

    /// Takes `holder`'s lease first, so the applier neither moves the
    /// replica nor retires a segment while the reader lists and chooses;
    /// `pin` then moves the lease to the chosen checkpoint.
    pub fn open_leased(journal_root: &Path, vpg: &str, holder: &str) -> Result<JournalView> {
        Self::open_as(journal_root, vpg, Some(holder))
    }

    fn open_as(journal_root: &Path, vpg: &str, holder: Option<&str>) -> Result<JournalView> {
        crate::config::validate_name("--vpg", vpg)?;
        let dir = vpg_dir(journal_root, vpg);
        if !dir.exists() {
            return Err(RecoveryError::Unavailable(format!(
                "no journal for VPG {vpg:?} under {} (has the protected side connected?)",
                journal_root.display()
            )));
        }
        if let Some(record) = failover::FailoverRecord::load(&dir)? {
            return Err(RecoveryError::Unavailable(record.refusal(vpg).to_string()));
        }
        let meta = JournalMeta::load(&dir)?;
        let lease = holder.map(|h| lease::take_at_replica(&dir, h)).transpose()?;
        let state = match &lease {
            Some(l) => l.state.clone(),
            None => ApplyState::load(&dir)?,
        };
        let mut index = JournalIndex::from_applied(meta.volumes.len(), &state);
        let outcome = walk_journal(&dir, meta.vpg_id, state.applied_seq, |entry, _| {
            index.observe_entry(entry);
            Visit::Continue
        })?;
        // A torn end of the newest segment is an append in progress.
        let corruption = outcome.damage.filter(|d| !d.torn);
        let read = (outcome.summarized, outcome.scanned, outcome.scanned_bytes);
        Ok(JournalView { dir, meta, index, corruption, read, lease })
    }

    /// Resolves `wanted` and moves the lease taken at open to it.
    pub fn pin(&mut self, wanted: &str) -> Result<(CheckpointInfo, Lease)> {
        let checkpoint = self.resolve(wanted)?;
        let mut lease = self.lease.take().expect("pin needs a view opened with open_leased");
        lease.move_to(checkpoint.id)?;
        Ok((checkpoint, lease))
    }

    /// Moves the lease taken at open to the journal's durable end, whether
    /// or not the image there is complete (`PitView::open_head`).
    pub fn pin_head(&mut self) -> Result<(CheckpointInfo, Lease)> {
        let head = self.index.durable_seq.max(self.index.applied_seq);
        let checkpoint = CheckpointInfo {
            id: head,
            time_ms: crate::record::now_ms(),
            tag: "head".into(),
            consistent: false,
            resync: false,
        };
        let mut lease = self.lease.take().expect("pin_head needs a view opened with open_leased");
        lease.move_to(checkpoint.id)?;
        Ok((checkpoint, lease))
    }

    /// Resolves `latest`, an id or a tag to a complete checkpoint, saying
    /// clearly why when it cannot.
    pub fn resolve(&self, wanted: &str) -> Result<CheckpointInfo> {
        if crate::capture::alert::names_last_clean(wanted) {
            return self.resolve_last_clean(wanted);
        }
        let found = self.index.find(wanted);
        match (found, &self.corruption) {
            (Some(c), _) if !c.consistent => Err(RecoveryError::Unavailable(format!(
                "checkpoint {} cannot be restored: {}; the newest restorable checkpoint before it is {}",
                c.id,
                c.not_restorable_why().unwrap_or("it is not a complete image"),
                self.index
                    .checkpoints
                    .iter()
                    .rev()
                    .find(|o| o.consistent && o.id < c.id)
                    .map_or("none".into(), |o| o.id.to_string())
            ))),
            (Some(c), _) => Ok(c),
            (None, Some(damage)) => Err(RecoveryError::Unavailable(format!(
                "checkpoint {wanted:?} is not in the readable part of the journal: {damage}; the last good checkpoint is {}",
                self.index.latest_consistent().map_or("none".into(), |c| c.id.to_string())
            ))),
            (None, _) if wanted.parse::<u64>().is_ok_and(|id| id < self.index.applied_seq) => Err(RecoveryError::Unavailable(format!(
                "checkpoint {wanted} is older than the history window; the oldest recoverable checkpoint is {} \
                 (see `tidemark checkpoints`)",
                match (self.index.oldest(), self.between_checkpoints()) {
                    (Some(c), _) => c.id.to_string(),
                    (None, Some(why)) => format!("none: {why}"),
                    (None, None) => "none".into(),
                }
            ))),
            (None, None) if wanted == "latest" => Err(RecoveryError::Unavailable(match self.between_checkpoints() {
                Some(why) => format!("VPG {:?} has no complete checkpoint: {why}", self.meta.vpg),
                None => format!("VPG {:?} has no complete checkpoint yet (initial copy still running?)", self.meta.vpg),
            })),
            (None, None) => Err(RecoveryError::Unavailable(format!("VPG {:?} has no checkpoint {wanted:?} (see `tidemark checkpoints`)", self.meta.vpg))),
        }
    }

    /// Why no checkpoint older than the replica is left, when it is at a
    /// seq that is none (applier.rs).
    fn between_checkpoints(&self) -> Option<String> {
        let at = self.index.applied_seq;
        if at == 0 || self.index.oldest().is_some_and(|c| c.id == at) {
            return None;
        }
        let head = match self.index.find("head") {
            Some(h) if h.consistent => "`head` is restorable",
            _ => "`head` is no image yet (a resync or a copy is under way)",
        };
        Some(format!(
            "the replica is at seq {at}, between checkpoints, past the ones before it (journal_limit or a nearly \
             full disk moved it there, or a reader of head held it there); {head}"
        ))
    }

    /// `last-clean`: the newest checkpoint the encryption detector had
    /// pinned; `last-clean-<time>`: the one pinned with that label.
    fn resolve_last_clean(&self, wanted: &str) -> Result<CheckpointInfo> {
        let pins = crate::journal::pins::load(&self.dir)?;
        // The oldest: every later checkpoint may hold encrypted data.
        let Some(pin) = pins.iter().find(|p| {
            pinning::is_detector_pin(&p.reason)
                && (wanted == crate::capture::alert::LAST_CLEAN || p.reason.starts_with(&format!("{wanted}: ")))
        }) else {
            return Err(RecoveryError::Unavailable(format!(
                "VPG {:?} has no checkpoint pinned as {wanted:?}: the encryption detector has not raised an alert \
                 (see `tidemark checkpoints` and the protected side's status)",
                self.meta.vpg
            )));
        };
        self.resolve(&pin.checkpoint.to_string())
    }
}
