//! Capture: the NBD exports a hypervisor writes to. `protocol` encodes and
//! parses NBD messages, `server` speaks it on sockets, `volume` does I/O on
//! the backing file or device, and `vpg` orders every write of a protection
//! group into the protected log.

pub mod protocol;
pub mod server;
pub mod volume;
pub mod vpg;
