//! Capture: the NBD exports a hypervisor writes to (served by `nbd`).
//! `volume` does I/O on the backing file or device, `vpg` orders every
//! write of a protection group into the protected log, and `export` is one
//! volume of a VPG as an NBD export.

pub mod activity;
pub mod alert;
pub mod bitmap_mode;
pub mod bitmap_state;
pub mod delta;
pub mod detector;
pub mod dirty_map;
mod error;
pub mod export;
pub mod group_hold;
pub mod initial_copy;
pub mod moving;
mod no_image_marks;
pub mod peer_hashes;
pub mod sync_gate;
pub mod verify;
pub mod verify_report;
pub mod volume;
pub mod vpg;

pub use error::CaptureError;
