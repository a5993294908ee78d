//! Small persistent facts about a VPG's capture that outlive log segments:
//! which volumes' initial copies are complete in the current stream, and
//! whether the VPG no longer takes writes here (moved or failed over).

use super::LogError;
use crate::io_failure::Doing;
use crate::protected_state::WritesRefused;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

type Result<T> = std::result::Result<T, LogError>;

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct CaptureState {
    /// Volumes whose initial copy was fully appended to this stream.
    pub copied: Vec<String>,
    /// Set when writes are refused for good (a move began, or the VPG was
    /// failed over to the recovery site); says why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refused: Option<WritesRefused>,
    /// The same refusal as text, which builds before `refused` read and
    /// wrote: written beside it, read only where it is missing (a state an
    /// earlier build wrote last).
    #[serde(default)]
    writes_refused: Option<String>,
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
    /// Sync mode: whether a FLUSH may have returned for writes the
    /// recovery journal does not hold (sync mode suspended, or resuming),
    /// written before such a FLUSH returns and again once the gate is
    /// strict. None (a state written before this was kept): unknown, so a
    /// start takes what the log holds as possibly let go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_let_go: Option<bool>,
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
    /// Whose delta copy of stream `stream_id` is applied, per volume: a
    /// session that goes on with the stream gets no CopyDone it applied
    /// already (review of helper-51: a VPG of two volumes restarted
    /// between their CopyDones never came in sync). Empty in a state an
    /// earlier build wrote: then every volume is as `in_sync` says.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub copied: Vec<bool>,
}

impl ReverseState {
    /// Whose delta copy is applied, for a VPG of `volumes` volumes.
    pub fn copied_volumes(&self, volumes: usize) -> Vec<bool> {
        match self.copied.len() == volumes {
            true => self.copied.clone(),
            false => vec![self.in_sync; volumes],
        }
    }
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
        let text = std::fs::read_to_string(&path).doing(|| format!("reading {}", path.display()))?;
        let mut state: CaptureState =
            serde_json::from_str(&text).map_err(|source| LogError::StateFile { path: path.clone(), source })?;
        if state.refused.is_none() {
            state.refused = state.writes_refused.as_deref().map(WritesRefused::from_text);
        }
        Ok(state)
    }

    /// Why writes are refused, if they are.
    pub fn refused(&self) -> Option<&WritesRefused> {
        self.refused.as_ref()
    }

    /// Sets the refusal (to be stored); `vpg` names the VPG in its text.
    pub fn set_refused(&mut self, refused: Option<WritesRefused>, vpg: &str) {
        self.writes_refused = refused.as_ref().map(|r| r.message(vpg));
        self.refused = refused;
    }

    /// Changes the state by `change` durably before it takes effect: if
    /// the store fails, the state stays as it was (what is in effect is
    /// never ahead of what a restart reads back).
    pub fn update<T>(&mut self, dir: &Path, change: impl FnOnce(&mut Self) -> T) -> Result<T> {
        let mut changed = self.clone();
        let out = change(&mut changed);
        changed.store(dir)?;
        *self = changed;
        Ok(out)
    }

    /// Writes the state atomically and durably.
    pub fn store(&self, dir: &Path) -> Result<()> {
        let text = serde_json::to_vec_pretty(self).map_err(LogError::Encoding)?;
        Ok(crate::durable::replace_file(&Self::path(dir), &text, crate::durable::FileMode::Public)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tidemark-capture-state-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_change_whose_store_fails_is_not_in_effect() {
        let missing = std::env::temp_dir().join(format!("tidemark-capture-state-missing-{}", std::process::id()));
        let mut state = CaptureState::default();
        let stored = state.update(&missing, |s| s.set_refused(Some(WritesRefused::Moving), "db"));
        assert!(stored.is_err());
        assert_eq!(state.refused(), None);
        assert!(state.writes_refused.is_none());
    }

    #[test]
    fn a_refusal_an_earlier_build_wrote_as_text_is_read_typed() {
        let dir = scratch("legacy");
        let text = r#"{"copied": ["disk0"], "writes_refused": "a move to the recovery site is in progress"}"#;
        std::fs::write(dir.join("capture-state.json"), text).unwrap();
        let state = CaptureState::load(&dir, false).unwrap();
        assert_eq!(state.refused(), Some(&WritesRefused::Moving));
        assert_eq!(state.copied, vec!["disk0".to_string()]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_refusal_is_stored_typed_and_as_the_text_earlier_builds_read() {
        let dir = scratch("store");
        let mut state = CaptureState::default();
        state.set_refused(Some(WritesRefused::Moved { checkpoint: 12 }), "db");
        state.store(&dir).unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("capture-state.json")).unwrap()).unwrap();
        assert_eq!(json["refused"], serde_json::json!({"kind": "moved", "checkpoint": 12}));
        assert_eq!(json["writes_refused"], "VPG \"db\" was moved to the recovery site (checkpoint 12)");
        assert_eq!(CaptureState::load(&dir, false).unwrap().refused(), Some(&WritesRefused::Moved { checkpoint: 12 }));
        state.set_refused(None, "db");
        state.store(&dir).unwrap();
        let back = CaptureState::load(&dir, false).unwrap();
        assert_eq!(back.refused(), None);
        assert!(back.writes_refused.is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
