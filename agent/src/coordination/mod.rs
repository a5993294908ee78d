//! Coordinated checkpoints (port 4009): one checkpoint, at one instant,
//! across VPGs on several protected appliances (the VMs of one application
//! on several hosts).
//!
//! The coordinator (`coordinator`) asks every member to hold its writes
//! (`capture::group_hold`: no write is logged or completed while held);
//! once all hold, it tells each to append the checkpoint and go on. A
//! checkpoint with the group's tag then exists in every member's log, and
//! restored together they never show a write without one that completed
//! before it was issued, on any member. A member lets its writes go on,
//! appending nothing, when the coordinator is slower than its `hold_max`.
//!
//! Members serve coordinators (`member`) over TLS 1.3 with certificates
//! pinned both ways, like the replication link; the messages are JSON in
//! the link's checksummed frames (`message`). docs/coordination.md.

pub mod coordinator;
mod error;
pub mod member;
pub mod message;

pub use error::CoordinationError;
