//! An I/O error together with what was being done when it happened, for
//! the typed errors of the library's modules. The `std::io::Error` stays
//! the error's source, so a caller that must tell EIO from ENOSPC or a
//! closed connection still can (an EIO is never taken for corruption),
//! and the message says what failed: `syncing /var/lib/tidemark/log/x`.

use std::io;

#[derive(Debug, thiserror::Error)]
#[error("{doing}")]
pub struct IoFailure {
    doing: String,
    #[source]
    source: io::Error,
}

impl IoFailure {
    pub fn new(doing: impl Into<String>, source: io::Error) -> Self {
        IoFailure { doing: doing.into(), source }
    }

    pub fn kind(&self) -> io::ErrorKind {
        self.source.kind()
    }

    pub fn io(&self) -> &io::Error {
        &self.source
    }

    /// Says what the step that failed was part of: `writing /x/state.json:
    /// syncing /x/.state.json.tmp`.
    pub fn within(self, what: impl FnOnce() -> String) -> Self {
        IoFailure { doing: format!("{}: {}", what(), self.doing), source: self.source }
    }
}

/// Names what an I/O call was doing, as `anyhow::Context` does, but
/// keeping the error typed.
pub trait Doing<T> {
    fn doing(self, what: impl FnOnce() -> String) -> Result<T, IoFailure>;
}

impl<T> Doing<T> for io::Result<T> {
    fn doing(self, what: impl FnOnce() -> String) -> Result<T, IoFailure> {
        self.map_err(|source| IoFailure { doing: what(), source })
    }
}

impl<T> Doing<T> for Result<T, rustix::io::Errno> {
    fn doing(self, what: impl FnOnce() -> String) -> Result<T, IoFailure> {
        self.map_err(|e| IoFailure { doing: what(), source: e.into() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_kind_and_says_what_failed() {
        let failed: io::Result<()> = Err(io::Error::from_raw_os_error(5));
        let e = failed.doing(|| "syncing /x".to_string()).unwrap_err();
        assert_eq!(e.to_string(), "syncing /x");
        assert_eq!(e.io().raw_os_error(), Some(5));
        let chained = format!("{:#}", anyhow::Error::new(e));
        assert!(chained.starts_with("syncing /x: "), "{chained}");
    }
}
