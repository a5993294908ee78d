//! Why the protected log refused or failed an operation. The kinds call
//! for different answers from its callers: damage found reading the log
//! starts the stream over (the sender copies everything again); a storage
//! failure is reported and retried, never taken for damage; a broken or
//! closed log takes nothing more.

use crate::io_failure::IoFailure;
use crate::record::RecordError;
use crate::segment::{SegmentError, SegmentFileError};

/// What a `BeforeDroppingStream` callback's failure is.
pub type CallerError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error(transparent)]
    Storage(#[from] IoFailure),
    #[error(transparent)]
    SegmentFile(#[from] SegmentFileError),
    /// Reading records back: `SegmentError::Damage` is bad bytes,
    /// `SegmentError::Io` a read that failed.
    #[error("reading the protected log")]
    Read(#[source] SegmentError),
    #[error("refusing to log a record its readers would refuse")]
    Unloggable(#[source] RecordError),
    #[error("the protected log takes no more records: {0}")]
    Broken(String),
    #[error("appending seq {seq} to {path}")]
    Append {
        seq: u64,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: header says first seq {header}, name says {name}", path.display())]
    Misnamed { path: std::path::PathBuf, header: u64, name: u64 },
    #[error("saying a new stream is due before dropping another stream's records")]
    BeforeDropping(#[source] CallerError),
    #[error("the protected log is closed")]
    Closed,
    #[error("parsing {}", path.display())]
    StateFile {
        path: std::path::PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("encoding the capture state")]
    Encoding(#[source] serde_json::Error),
}

impl LogError {
    /// Known bad bytes in the log (not a failed read): the stream cannot go
    /// on from there.
    pub fn is_damage(&self) -> bool {
        matches!(self, LogError::Read(SegmentError::Damage(_)))
    }

    /// The log's disk did not take a record (full or failing), or a
    /// failure before left the log broken: nothing was appended.
    pub fn is_storage_failure(&self) -> bool {
        matches!(self, LogError::Storage(_) | LogError::SegmentFile(_) | LogError::Append { .. } | LogError::Broken(_))
    }
}
