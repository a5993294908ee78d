//! The recovery side of a hash comparison: SHA-256 of 64 KiB extents of a
//! VPG's volume as the journal holds it at one point (its durable end, for
//! a new stream's copy; a checkpoint, for online verify), read through a
//! point-in-time view that leases what it reads.
//!
//! The point must be in the stream the protected side compares against:
//! hashes of an older stream's end would let a write the protected log
//! lost look like data the journal holds. So the answer is given only once
//! the journal holds that stream (its StreamStart comes first on the data
//! link, and after it no batch of an older stream is taken); the receiver
//! waits a while for it, then refuses with `STREAM_NOT_YET` (asked again).

use super::view::PitView;
use super::RecoveryError;
use crate::extent_hash::{extent_count, ExtentHash, HashQuestion};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

type Result<T, E = RecoveryError> = std::result::Result<T, E>;

/// In a refusal: the journal does not hold the stream yet; ask again.
pub const STREAM_NOT_YET: &str = "the journal does not hold the stream yet";

/// Hashes of up to `count` extents of `volume` from `first_extent` (fewer
/// at the volume's end). Blocking; stops early once `cancel` is set (the
/// link that asked is gone).
pub fn extent_hashes(
    journal_root: &Path,
    vpg: &str,
    ask: &HashQuestion,
    cancel: &AtomicBool,
) -> Result<Vec<ExtentHash>> {
    let (view, stream) = match ask.at.as_str() {
        "head" => PitView::open_head(journal_root, vpg, "hashes")?,
        id => PitView::open_with_stream(journal_root, vpg, id, "verify")?,
    };
    if stream != ask.stream_id {
        return Err(RecoveryError::Unavailable(format!(
            "{STREAM_NOT_YET} ({:#x}; it holds {stream:#x})",
            ask.stream_id
        )));
    }
    let Some(info) = view.volumes.get(ask.volume as usize) else {
        return Err(RecoveryError::Unavailable(format!(
            "VPG {vpg:?} has no volume {} ({} volumes)",
            ask.volume,
            view.volumes.len()
        )));
    };
    let extents = extent_count(info.size);
    if ask.first_extent >= extents {
        return Err(RecoveryError::Unavailable(format!(
            "volume {} has {extents} extents; asked from extent {}",
            info.name, ask.first_extent
        )));
    }
    let end = extents.min(ask.first_extent + u64::from(ask.count));
    let mut out = Vec::with_capacity((end - ask.first_extent) as usize);
    for e in ask.first_extent..end {
        if cancel.load(Ordering::Relaxed) {
            return Err(RecoveryError::Unavailable("the link that asked is gone".to_string()));
        }
        out.push(view.hash_extent(ask.volume as usize, e)?);
    }
    Ok(out)
}
