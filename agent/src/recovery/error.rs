//! Why a recovery operation (checkpoints, restore, export, test failover,
//! failover, move-back, seeding, checks) was refused or failed. The kinds
//! keep what the layers below said: the journal's, the capture's, the
//! iSCSI target's, a storage failure; `Unavailable` is a request the
//! VPG's state or the history cannot meet, and why.

use crate::io_failure::IoFailure;

#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error(transparent)]
    Storage(#[from] IoFailure),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
    #[error(transparent)]
    Log(#[from] crate::log::LogError),
    #[error(transparent)]
    Join(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Capture(#[from] crate::capture::CaptureError),
    #[error(transparent)]
    Iscsi(#[from] crate::iscsi::IscsiError),
    #[error(transparent)]
    Export(#[from] crate::nbd::export::ExportError),
    #[error(transparent)]
    ExportName(#[from] crate::nbd::export::NameTaken),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Tag(#[from] crate::names::InvalidTag),
    #[error(transparent)]
    State(#[from] crate::transfer::slot::StateRefused),
    /// What the request asked that cannot be done, and why.
    #[error("{0}")]
    Unavailable(String),
    #[error("{what}")]
    Task {
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
    #[error("{what}")]
    Step {
        what: String,
        #[source]
        source: Box<RecoveryError>,
    },
    #[error("{0} (failpoint)")]
    Failpoint(&'static str),
}

impl RecoveryError {
    pub fn at(self, what: impl Into<String>) -> Self {
        RecoveryError::Step { what: what.into(), source: Box::new(self) }
    }
}
