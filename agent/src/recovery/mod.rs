//! Getting data back out of a journal: listing checkpoints and restoring a
//! VPG's volumes as they were at one of them.

pub mod exports;
pub mod failover;
pub mod luns;
pub mod ops;
pub mod restore;
pub mod view;

use crate::journal::apply_state::ApplyState;
use crate::journal::index::{CheckpointInfo, JournalIndex};
use crate::journal::scan::{scan_journal, Damage};
use crate::journal::{vpg_dir, JournalMeta};
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// A journal read from disk, without taking it from the running agent.
pub struct JournalView {
    pub dir: PathBuf,
    pub meta: JournalMeta,
    pub index: JournalIndex,
    /// Corruption (not a torn tail) found while reading, if any.
    pub corruption: Option<Damage>,
}

impl JournalView {
    pub fn open(journal_root: &Path, vpg: &str) -> Result<JournalView> {
        crate::config::validate_name("--vpg", vpg)?;
        let dir = vpg_dir(journal_root, vpg);
        if !dir.exists() {
            bail!("no journal for VPG {vpg:?} under {} (has the protected side connected?)", journal_root.display());
        }
        if let Some(record) = failover::FailoverRecord::load(&dir)? {
            bail!("{}", record.refusal(vpg));
        }
        let meta = JournalMeta::load(&dir)?;
        let state = ApplyState::load(&dir)?;
        let mut index = JournalIndex::from_applied(meta.volumes.len(), &state);
        let outcome = scan_journal(&dir, meta.vpg_id, |rec, _| index.observe(rec))?;
        // A torn end of the newest segment is an append in progress.
        let corruption = outcome.damage.filter(|d| !d.torn);
        Ok(JournalView { dir, meta, index, corruption })
    }

    /// Resolves `latest`, an id or a tag to a complete checkpoint, saying
    /// clearly why when it cannot.
    pub fn resolve(&self, wanted: &str) -> Result<CheckpointInfo> {
        let found = self.index.find(wanted);
        match (found, &self.corruption) {
            (Some(c), _) if !c.consistent => bail!(
                "checkpoint {} was taken before the initial copy finished; it is not a complete image",
                c.id
            ),
            (Some(c), _) => Ok(c),
            (None, Some(damage)) => bail!(
                "checkpoint {wanted:?} is not in the readable part of the journal: {damage}; the last good checkpoint is {}",
                self.index.latest_consistent().map_or("none".into(), |c| c.id.to_string())
            ),
            (None, _) if wanted.parse::<u64>().is_ok_and(|id| id < self.index.applied_seq) => bail!(
                "checkpoint {wanted} is older than the history window; the oldest recoverable checkpoint is {} \
                 (see `tidemark checkpoints`)",
                self.index.oldest().map_or("none".into(), |c| c.id.to_string())
            ),
            (None, None) if wanted == "latest" => {
                bail!("VPG {:?} has no complete checkpoint yet (initial copy still running?)", self.meta.vpg)
            }
            (None, None) => bail!("VPG {:?} has no checkpoint {wanted:?} (see `tidemark checkpoints`)", self.meta.vpg),
        }
    }
}
