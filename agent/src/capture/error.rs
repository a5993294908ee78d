//! Why a VPG's capture refused or failed an operation. The kinds call for
//! different answers: a write refused because the VPG takes none here now
//! (`Refused`) is EPERM to its client and expected; a failed one is EIO and
//! logged; a request that the VPG's state does not allow (`Unavailable`)
//! or that the recovery side did not answer (`Link`) is the user's to try
//! again; storage and log failures keep their own kinds.

use crate::io_failure::IoFailure;
use crate::log::LogError;
use crate::nbd::export::ExportError;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(transparent)]
    Storage(#[from] IoFailure),
    #[error(transparent)]
    Log(#[from] LogError),
    /// The VPG takes no writes here now (moved, failed over, a move began).
    #[error("{0}")]
    Refused(String),
    /// An update failed and could not be undone: nothing more is taken
    /// until a restart reads the range again.
    #[error("VPG {vpg} takes no {what} until the agent restarts: {why}")]
    Failed { vpg: String, what: &'static str, why: String },
    /// What the VPG's state does not allow now, and why.
    #[error("{0}")]
    Unavailable(String),
    /// The recovery side did not answer, or the link is gone.
    #[error("{0}")]
    Link(String),
    /// The recovery side refused what was asked, and why.
    #[error("{0}")]
    PeerRefused(String),
    #[error("volume {name:?} at {} is empty (size 0)", path.display())]
    EmptyVolume { name: String, path: PathBuf },
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
    #[error("{what}")]
    Task {
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
    /// A step of a longer operation that failed, and what it was.
    #[error("{what}")]
    Step {
        what: String,
        #[source]
        source: Box<CaptureError>,
    },
    #[error("{0} (failpoint)")]
    Failpoint(&'static str),
}

impl CaptureError {
    /// Says which step of a longer operation failed.
    pub fn step(self, what: impl Into<String>) -> Self {
        CaptureError::Step { what: what.into(), source: Box::new(self) }
    }
}

impl From<CaptureError> for ExportError {
    fn from(e: CaptureError) -> Self {
        match e {
            CaptureError::Refused(why) => ExportError::Refused(why),
            other => ExportError::failed(other),
        }
    }
}
