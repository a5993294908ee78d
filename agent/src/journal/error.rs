//! Why the recovery journal refused or failed an operation. The kinds call
//! for different answers: a refused batch (`Refused`, `Full`) is answered
//! with a refusal and the sender connects again or waits; a storage
//! failure is reported and retried, never taken for damage; damage read
//! back is cut or quarantined where it is found; a request that cannot be
//! met (`Unavailable`) is the user's to change.

use crate::io_failure::IoFailure;
use crate::segment::{SegmentError, SegmentFileError};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error(transparent)]
    Storage(#[from] IoFailure),
    #[error(transparent)]
    SegmentFile(#[from] SegmentFileError),
    /// A read of records that failed (never damage: that is cut or
    /// quarantined where it is found).
    #[error("reading the journal")]
    Read(#[source] SegmentError),
    #[error("{}: header says first seq {header}, name says {name}", path.display())]
    Misnamed { path: PathBuf, header: u64, name: u64 },
    #[error("parsing {}", path.display())]
    StateFile {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("encoding {what}")]
    Encoding {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// A batch that breaks the journal's rules (`intake`).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// A batch refused at `journal_cap`; says why, for status.
    #[error("{0}")]
    Full(String),
    #[error("journal {} was created for {vpg:?} with volumes {volumes:?}; the peer now sends {now:?}", dir.display())]
    CreatedForOther {
        dir: PathBuf,
        vpg: String,
        volumes: Vec<crate::wire::message::VolumeInfo>,
        now: Vec<crate::wire::message::VolumeInfo>,
    },
    #[error("the seeded replica does not fit the VPG's volumes")]
    SeedMismatch(#[source] Box<JournalError>),
    /// A replica image that does not match its volume, or a record that
    /// does not fit it.
    #[error("{0}")]
    Replica(String),
    /// A segment summary that is damaged (rebuilt from its segment).
    #[error("{0}")]
    Summary(String),
    #[error("applying seq {seq}")]
    ApplyingRecord {
        seq: u64,
        #[source]
        source: Box<JournalError>,
    },
    /// An apply, restore, pin or lease that cannot be done now or at all,
    /// and why (the history is closed, a checkpoint is out of the window,
    /// a limit is reached).
    #[error("{0}")]
    Unavailable(String),
}

impl JournalError {
    /// The storage failed (a read, a write, a sync): says nothing about
    /// the data, which is never cut, quarantined or reported damaged on it.
    pub fn is_storage(&self) -> bool {
        matches!(
            self,
            JournalError::Storage(_) | JournalError::Read(_) | JournalError::SegmentFile(SegmentFileError::Storage(_))
        )
    }
}

/// Why `intake` refused a batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the batch starts stream {started:#x}, but its sender said its log holds stream {announced:#x}")]
    Unannounced { started: u32, announced: u32 },
    #[error("the journal holds stream {held:#x} up to seq {durable}; a log of stream {other:#x} cannot continue it")]
    OtherStream { held: u32, durable: u64, other: u32 },
    #[error("gap in the stream: journal holds up to seq {durable}, batch starts at {first}")]
    Gap { durable: u64, first: u64 },
    #[error("seq {seq}: a StreamStart of stream {stream:#x} inside a batch (a stream starts a batch)")]
    StartInside { seq: u64, stream: u32 },
    #[error("gap in the stream inside a batch: seq {seq} after {before}")]
    GapInside { seq: u64, before: u64 },
    #[error("seq {seq} names volume {volume}; VPG {vpg} has {count}")]
    NoSuchVolume { seq: u64, volume: u32, vpg: String, count: usize },
    #[error("seq {seq} reaches past the end of volume {volume} ({size} bytes)")]
    PastEnd { seq: u64, volume: String, size: u64 },
}

/// A JSON state file's content, or why it is not one.
pub(super) fn parse<T: serde::de::DeserializeOwned>(path: &Path, bytes: &[u8]) -> Result<T, JournalError> {
    serde_json::from_slice(bytes).map_err(|source| JournalError::StateFile { path: path.to_path_buf(), source })
}

/// `value` as JSON (pretty unless `compact`), for a file named `what`.
pub(super) fn encode<T: serde::Serialize + ?Sized>(
    what: &'static str,
    value: &T,
    compact: bool,
) -> Result<Vec<u8>, JournalError> {
    let encoded = if compact { serde_json::to_vec(value) } else { serde_json::to_vec_pretty(value) };
    encoded.map_err(|source| JournalError::Encoding { what, source })
}
