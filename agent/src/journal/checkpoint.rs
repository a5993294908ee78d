//! A checkpoint as the journal knows it (the index lists them, the
//! applier's state keeps the ones it applied past).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CheckpointInfo {
    /// The checkpoint's id is its seq in the stream.
    pub id: u64,
    pub time_ms: u64,
    pub tag: String,
    /// False while some volume's initial copy was still incomplete, or
    /// when taken during a resync.
    pub consistent: bool,
    /// Taken while the VPG read its changed regions back after bitmap
    /// mode (listed `inconsistent`). Absent in files of earlier builds.
    #[serde(default)]
    pub resync: bool,
}

impl CheckpointInfo {
    /// Why this checkpoint cannot be restored (None: it can).
    pub fn not_restorable_why(&self) -> Option<&'static str> {
        match (self.consistent, self.resync) {
            (true, _) => None,
            (false, true) => Some(
                "it was taken during a resync (changed regions read back after bitmap mode or an unclean stop), \
                 so the volumes it holds are a mix of times",
            ),
            (false, false) => Some("it was taken before the initial copy finished; it is not a complete image"),
        }
    }

    /// Its state in `tidemark checkpoints` (before pins and alerts).
    pub fn listed_state(&self) -> &'static str {
        match (self.consistent, self.resync) {
            (true, _) => "complete",
            (false, true) => "inconsistent",
            (false, false) => "partial",
        }
    }
}
