//! Why the appliance's first-boot configuration (OVF properties, the
//! configuration ISO) was refused or could not be written.

use crate::config::ConfigError;
use crate::io_failure::IoFailure;

#[derive(Debug, thiserror::Error)]
pub enum ApplianceError {
    #[error(transparent)]
    Storage(#[from] IoFailure),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Access(#[from] crate::access::AccessError),
    #[error(transparent)]
    Harden(#[from] crate::harden::HardenError),
    /// A property or file that is not acceptable, and why.
    #[error("{0}")]
    Invalid(String),
    #[error("{what}")]
    Step {
        what: String,
        #[source]
        source: Box<ApplianceError>,
    },
}

impl ApplianceError {
    pub fn at(self, what: impl Into<String>) -> Self {
        ApplianceError::Step { what: what.into(), source: Box::new(self) }
    }
}
