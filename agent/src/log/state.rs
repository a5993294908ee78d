//! Small persistent facts about a VPG's capture that outlive log segments:
//! which volumes' initial copies are complete in the current stream, and
//! whether the VPG no longer takes writes here (moved or failed over).

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct CaptureState {
    /// Volumes whose initial copy was fully appended to this stream.
    pub copied: Vec<String>,
    /// Set when writes are refused for good (a move began, or the VPG was
    /// failed over to the recovery site); says why.
    #[serde(default)]
    pub writes_refused: Option<String>,
    /// Reverse protection: this site receives the VPG back from the
    /// recovery site, and has applied its stream up to this seq.
    #[serde(default)]
    pub reverse: Option<ReverseState>,
    /// The stream whose initial copy skipped extents on the strength of a
    /// recovery journal's hashes (0: none): it may be sent again from its
    /// start only to a journal that holds it (`docs/hash-sync.md`).
    #[serde(default)]
    pub compared_stream: u32,
    /// A switch-back (`tidemark move-back`): this site applied the reverse
    /// log through the recovery site's marker (that checkpoint's seq) and
    /// asked it to end the failover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub move_back_marker: Option<u64>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct ReverseState {
    pub applied_seq: u64,
    /// The stream of the recovery site's reverse log `applied_seq` is in.
    #[serde(default)]
    pub stream_id: u32,
    /// The delta copy of every volume is applied: the volumes equal the
    /// recovery site's as of `applied_seq`.
    #[serde(default)]
    pub in_sync: bool,
}

impl CaptureState {
    fn path(dir: &Path) -> PathBuf {
        dir.join("capture-state.json")
    }

    /// Loads the state; a fresh log always starts from an empty state.
    pub fn load(dir: &Path, fresh_log: bool) -> Result<Self> {
        let path = Self::path(dir);
        if fresh_log || !path.exists() {
            return Ok(CaptureState::default());
        }
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// Writes the state atomically and durably.
    pub fn store(&self, dir: &Path) -> Result<()> {
        let text = serde_json::to_vec_pretty(self)?;
        crate::durable::replace_file(&Self::path(dir), &text, crate::durable::FileMode::Public)
    }
}
