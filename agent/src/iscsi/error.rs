//! Why the iSCSI front-end could not serve, attach or withdraw a LUN:
//! the kernel refused (a netlink answer, configfs), a request that cannot
//! be served (`Refused`), or the storage under it failed.

use crate::io_failure::IoFailure;

#[derive(Debug, thiserror::Error)]
pub enum IscsiError {
    #[error(transparent)]
    Storage(#[from] IoFailure),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The kernel's answer to a netlink request.
    #[error("the kernel refused")]
    Kernel(#[source] std::io::Error),
    /// A netlink answer that is not well formed.
    #[error("{0}")]
    Malformed(String),
    /// What cannot be served or done, and why.
    #[error("{0}")]
    Refused(String),
    #[error("{what}")]
    Task {
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
    /// A target a previous agent left (its initiators' I/O held by the
    /// kernel for the next agent) could not be taken over: not retried in
    /// this process, whose own connections to its devices would stand in
    /// the way of the next attempt.
    #[error("the iSCSI target {iqn}, left by the agent before, could not be taken over")]
    LeftBehind {
        iqn: String,
        #[source]
        source: Box<IscsiError>,
    },
    #[error("{what}")]
    Step {
        what: String,
        #[source]
        source: Box<IscsiError>,
    },
}

impl IscsiError {
    pub fn at(self, what: impl Into<String>) -> Self {
        IscsiError::Step { what: what.into(), source: Box::new(self) }
    }
}
