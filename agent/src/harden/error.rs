//! Why hardening, its audit or the support SSH session refused or failed:
//! the input is not acceptable (`Invalid`: a rule, a key, a request), or
//! the system did not do what was asked (`Failed`: a firewall call, a
//! sysctl that reads back otherwise, an SSH server that did not start).

use crate::config::ConfigError;
use crate::io_failure::IoFailure;

#[derive(Debug, thiserror::Error)]
pub enum HardenError {
    #[error(transparent)]
    Storage(#[from] IoFailure),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Failed(String),
    /// An error of the iSCSI target that the audit reads.
    #[error(transparent)]
    Iscsi(#[from] crate::iscsi::IscsiError),
    /// What was being done when an error happened.
    #[error("{what}")]
    Step {
        what: String,
        #[source]
        source: Box<HardenError>,
    },
}

impl HardenError {
    pub fn at(self, what: impl Into<String>) -> Self {
        HardenError::Step { what: what.into(), source: Box::new(self) }
    }
}
