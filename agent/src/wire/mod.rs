//! Everything that crosses the WAN between a protected and a recovery
//! appliance: framing (`frame`), control messages (`message`), batches of
//! records (`batch`), TLS with pinned fingerprints (`tls`) and the link
//! throttle (`throttle`). Encoding is kept apart from sockets so it can be
//! tested byte by byte.

pub mod batch;
pub mod frame;
pub mod message;
pub mod throttle;
pub mod tls;
