//! `apply.json` in a VPG's journal directory: how far the replica is.
//! Written atomically (temp file, fsync, rename, directory fsync). An
//! apply first records where it is going (`applying_to`); after a crash
//! that apply is finished before anything else, so the replica never
//! stays a mix of two points in time.

use super::checkpoint::CheckpointInfo;
use super::error::JournalError;
use crate::durable::{replace_file, FileMode};
use crate::io_failure::IoFailure;
use serde::{Deserialize, Serialize};
use std::path::Path;

type Result<T> = std::result::Result<T, JournalError>;

const APPLY_STATE_FILE: &str = "apply.json";

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ApplyState {
    /// The replica holds exactly the volumes as of this seq.
    pub applied_seq: u64,
    /// An apply to this seq began; the replica may hold part of it.
    pub applying_to: Option<u64>,
    /// Volumes whose initial copy is complete as of `applied_seq`.
    pub copied: Vec<u32>,
    /// The checkpoint the replica holds (none before the first apply).
    pub base: Option<CheckpointInfo>,
    /// The stream the replica's records came from (its StreamStart may be
    /// retired already); 0 before stream ids.
    #[serde(default)]
    pub stream_id: u32,
    /// The last checkpoint up to `applied_seq` was taken during a resync,
    /// so the stream's end is no image until a consistent one follows.
    /// Kept for a replica between checkpoints; at one, `base` says it too.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resyncing: bool,
    /// The replica left its last checkpoint because journal_limit (or the
    /// free disk) was reached by writes with no checkpoint far enough on
    /// (applier.rs), and has been at none since: status says so until it
    /// is at a checkpoint again, across restarts.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub left_by_limit: bool,
}

impl ApplyState {
    /// The state in `dir`; the default (empty replica) when there is none.
    pub fn load(dir: &Path) -> Result<ApplyState> {
        let path = dir.join(APPLY_STATE_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => super::error::parse(&path, &bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ApplyState::default()),
            Err(e) => Err(IoFailure::new(format!("reading {}", path.display()), e).into()),
        }
    }

    /// Whether the replica, as this says, is a crash-consistent image of
    /// a VPG of `volume_count` volumes.
    pub fn is_image(&self, volume_count: usize) -> bool {
        self.copied.len() == volume_count && !self.resyncing && !self.base.as_ref().is_some_and(|b| b.resync)
    }

    pub fn store(&self, dir: &Path) -> Result<()> {
        let json = super::error::encode(APPLY_STATE_FILE, self, false)?;
        Ok(replace_file(&dir.join(APPLY_STATE_FILE), &json, FileMode::Public)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_is_empty_and_roundtrips() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(ApplyState::load(dir.path()).unwrap(), ApplyState::default());
        let state = ApplyState {
            applied_seq: 42,
            applying_to: Some(50),
            copied: vec![0, 1],
            base: Some(CheckpointInfo { id: 42, time_ms: 7, tag: "t".into(), consistent: true, resync: false }),
            stream_id: 9,
            resyncing: true,
            left_by_limit: true,
        };
        state.store(dir.path()).unwrap();
        assert_eq!(ApplyState::load(dir.path()).unwrap(), state);
        std::fs::write(dir.path().join(APPLY_STATE_FILE), b"{garbage").unwrap();
        assert!(ApplyState::load(dir.path()).is_err());
    }
}
