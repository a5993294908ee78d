//! The NBD server, ours (the protocol is core to the product). `protocol`
//! encodes and parses NBD messages, `server` speaks it on sockets, and
//! `export` is what the server serves: the capture exports of the
//! protected side, and the point-in-time and test-failover exports of the
//! recovery side.

pub mod admission;
pub mod export;
#[cfg(any(test, feature = "fuzzing"))]
pub mod one_client;
pub mod protocol;
pub mod server;
