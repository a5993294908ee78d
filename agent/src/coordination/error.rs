//! Why a coordinated checkpoint, or a member's part in one, failed: the
//! link to a member or coordinator (closed, silent, malformed), a member
//! that could not hold or mark, or the setup of the links.

use crate::capture::CaptureError;
use crate::config::ConfigError;
use crate::io_failure::IoFailure;
use crate::wire::frame::FrameError;
use crate::wire::tls::TlsSetupError;

#[derive(Debug, thiserror::Error)]
pub enum CoordinationError {
    #[error(transparent)]
    Storage(#[from] IoFailure),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tag(#[from] crate::names::InvalidTag),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// A local member's hold or mark.
    #[error(transparent)]
    Capture(#[from] CaptureError),
    /// The other side broke the protocol or said no, or a step ran out of
    /// time, and how.
    #[error("{0}")]
    Failed(String),
    #[error("{what}")]
    Step {
        what: String,
        #[source]
        source: Box<CoordinationError>,
    },
}

impl CoordinationError {
    pub fn at(self, what: impl Into<String>) -> Self {
        CoordinationError::Step { what: what.into(), source: Box::new(self) }
    }
}
