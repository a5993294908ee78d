//! Why a link (sender, receiver, reverse protection, switch-back) ended or
//! a request over it failed: the control link, a malformed frame or batch,
//! the peer's refusal or an answer out of turn (`Peer`), the journal's or
//! the log's or the recovery operations' own errors, kept typed.

use crate::io_failure::IoFailure;

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error(transparent)]
    Storage(#[from] IoFailure),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Control(#[from] super::ControlError),
    #[error(transparent)]
    Frame(#[from] crate::wire::frame::FrameError),
    #[error(transparent)]
    Batch(#[from] crate::wire::batch::BatchError),
    #[error(transparent)]
    Message(#[from] crate::wire::message::MessageError),
    #[error(transparent)]
    Tls(#[from] crate::wire::tls::TlsSetupError),
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
    #[error(transparent)]
    Log(#[from] crate::log::LogError),
    #[error(transparent)]
    Capture(#[from] crate::capture::CaptureError),
    #[error(transparent)]
    Recovery(#[from] crate::recovery::RecoveryError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    State(#[from] super::slot::StateRefused),
    #[error(transparent)]
    Join(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Hash(#[from] crate::extent_hash::NotAHash),
    /// The peer refused, broke the protocol or went silent, and how; or
    /// what this side cannot do now.
    #[error("{0}")]
    Peer(String),
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
        source: Box<TransferError>,
    },
    #[error("{0} (failpoint)")]
    Failpoint(&'static str),
}

impl TransferError {
    pub fn at(self, what: impl Into<String>) -> Self {
        TransferError::Step { what: what.into(), source: Box::new(self) }
    }
}
