//! A checkpoint as the journal knows it (the index lists them, the
//! applier's state keeps the ones it applied past).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CheckpointInfo {
    /// The checkpoint's id is its seq in the stream.
    pub id: u64,
    pub time_ms: u64,
    pub tag: String,
    /// False while some volume's initial copy was still incomplete.
    pub consistent: bool,
}
