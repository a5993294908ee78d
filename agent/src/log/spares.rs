//! Files of retired segments kept for reuse, as PostgreSQL keeps WAL
//! segments: a segment the recovery site has acknowledged is renamed
//! `<first seq>.spare` instead of being removed, and the next roll writes
//! its new segment over it (`segment::recycle_segment_on`). Its pages stay
//! allocated and cached, so the log's writes overwrite pages rather than
//! allocate new ones, and an fdatasync need not commit a size change.
//!
//! A file is kept only while the log, with every spare, stays within its
//! capacity, and at most `SPARES_MAX` of them: spares are space the log
//! may fill again, never more. They are not kept across a restart (an
//! open removes them): a restart is rare, and what a spare held is of no
//! use to anyone.

use crate::storage::Storage;
use std::path::{Path, PathBuf};

/// Enough for a log drained as fast as it fills: one segment is retired
/// for each roll.
pub(super) const SPARES_MAX: usize = 2;
const SPARE_EXTENSION: &str = "spare";

/// A retired segment's file, under its spare name, and its length.
pub(super) struct Spare {
    pub path: PathBuf,
    pub bytes: u64,
}

/// The name a retired segment `first_seq` is kept under.
pub(super) fn spare_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.{SPARE_EXTENSION}"))
}

/// Removes the spares a predecessor kept. A failure is only said: a spare
/// left behind holds nothing, and the next open tries again.
pub(super) fn remove_left_behind(fs: &dyn Storage, dir: &Path) {
    let listed = match fs.list(dir) {
        Ok(listed) => listed,
        Err(e) => {
            tracing::warn!("protected log: listing {} for spare segments: {e}", dir.display());
            return;
        }
    };
    for path in listed {
        if path.extension().and_then(|e| e.to_str()) == Some(SPARE_EXTENSION) {
            if let Err(e) = fs.remove_file(&path) {
                tracing::warn!("protected log: removing spare segment {}: {e}", path.display());
            }
        }
    }
}
