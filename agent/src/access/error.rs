//! Why an access-control request (users, tokens, sessions, roles) was
//! refused or failed: the request breaks a rule (`Refused`), or the store
//! could not be read or written.

use crate::io_failure::IoFailure;

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error(transparent)]
    Storage(#[from] IoFailure),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// What the request asked for that the rules do not allow, and why.
    #[error("{0}")]
    Refused(String),
    #[error("{what}")]
    Step {
        what: String,
        #[source]
        source: Box<AccessError>,
    },
}

impl AccessError {
    pub fn at(self, what: impl Into<String>) -> Self {
        AccessError::Step { what: what.into(), source: Box::new(self) }
    }
}
