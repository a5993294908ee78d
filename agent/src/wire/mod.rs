//! Everything that crosses the WAN between a protected and a recovery
//! appliance: framing (`frame`), control messages (`message`), batches of
//! records (`batch`) and whether compressing them pays on their link
//! (`link_pace`), TLS with pinned fingerprints (`tls`) and the link
//! throttle (`throttle`). Encoding is kept apart from sockets so it can be
//! tested byte by byte.

pub mod batch;
pub mod frame;
pub mod link_pace;
pub mod message;
pub mod throttle;
pub mod tls;
