//! Why a configuration (the agent's TOML, the OVF properties, the
//! coordination file) is refused: it could not be read, or it is not
//! valid, and where.

use crate::io_failure::IoFailure;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Storage(#[from] IoFailure),
    /// What is wrong with the configuration, naming the key.
    #[error("{0}")]
    Invalid(String),
    /// Where in the configuration an error was found.
    #[error("{at}")]
    At {
        at: String,
        #[source]
        source: Box<ConfigError>,
    },
}

impl ConfigError {
    /// Says where (a key, a file) the error was found.
    pub fn at(self, at: impl Into<String>) -> Self {
        ConfigError::At { at: at.into(), source: Box::new(self) }
    }
}
