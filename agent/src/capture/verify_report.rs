//! What an online verify found (`capture/verify.rs`), as the CLI, status
//! and the diagnostics bundle show it.

use serde::{Deserialize, Serialize};

/// Differing extents listed in a report (all are counted and repaired).
pub const DIFFERING_LISTED_MAX: usize = 1000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Differing {
    pub volume: String,
    pub offset: u64,
    pub length: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VerifyReport {
    pub vpg: String,
    /// The first checkpoint compared at (each 512 MiB has its own; 0 if
    /// the verify failed before one).
    pub checkpoint: u64,
    pub started_ms: u64,
    pub elapsed_ms: u64,
    /// Bytes compared (extents not written during the verify).
    pub compared_bytes: u64,
    /// Extents written after each checkpoint they were tried at, so not
    /// compared.
    pub changed_extents: u64,
    pub differing_extents: u64,
    /// The first `DIFFERING_LISTED_MAX` of them.
    pub differing: Vec<Differing>,
    /// Bytes resent by `--repair`, and the seq the last of them has.
    pub repaired_bytes: u64,
    pub repaired_seq: Option<u64>,
    /// Why the verify did not finish, if it did not.
    pub error: Option<String>,
}

impl VerifyReport {
    /// One line for status and the log.
    pub fn summary(&self) -> String {
        let when = crate::status::format_time_ms(self.started_ms);
        if let Some(e) = &self.error {
            return format!("{when}: failed: {e}");
        }
        let repaired = match self.repaired_seq {
            Some(seq) => format!(", resent ({} from seq {seq} on)", crate::status::format_bytes(self.repaired_bytes)),
            None => String::new(),
        };
        format!(
            "{when}: from checkpoint {}: {} compared, {} extents differ{repaired}, {} written meanwhile (not compared)",
            self.checkpoint,
            crate::status::format_bytes(self.compared_bytes),
            self.differing_extents,
            self.changed_extents
        )
    }
}
