//! Files kept for the log's next segments, as PostgreSQL keeps WAL
//! segments: a segment the recovery site has acknowledged is renamed
//! `<first seq>.spare` instead of being removed, and a log that claims its
//! capacity ahead makes zero-filled ones, `prepared-<n>.spare`
//! (`prepare.rs`). The next roll writes its new segment over a spare
//! (`segment::recycle_segment_on`). Its pages stay allocated and cached,
//! so the log's writes overwrite pages rather than allocate new ones, and
//! an fdatasync need not commit a size change.
//!
//! A file is kept only while the log, with every spare, stays within its
//! capacity (and, without preallocation, at most `SPARES_MAX` of them):
//! spares are space the log may fill again, never more. What a spare holds
//! is of no use to anyone: the new segment's end markers keep it from
//! being read. A log that preallocates keeps the spares it finds at open;
//! one that does not removes them.

use super::prepare::PREPARING_EXTENSION;
use crate::storage::Storage;
use std::path::{Path, PathBuf};

/// Enough for a log drained as fast as it fills: one segment is retired
/// for each roll.
pub(super) const SPARES_MAX: usize = 2;
const SPARE_EXTENSION: &str = "spare";

/// A spare file, and its length.
pub(super) struct Spare {
    pub path: PathBuf,
    pub bytes: u64,
}

/// The name a retired segment `first_seq` is kept under.
pub(super) fn spare_path(dir: &Path, first_seq: u64) -> PathBuf {
    spare_path_named(dir, &format!("{first_seq:020}"))
}

/// The spare `<stem>.spare`.
pub(super) fn spare_path_named(dir: &Path, stem: &str) -> PathBuf {
    dir.join(format!("{stem}.{SPARE_EXTENSION}"))
}

/// The spares a predecessor left, if `keep`; otherwise they are removed. Files of a preparation a stop
/// cut short are removed either way. A failure is only said: a file left
/// behind holds nothing, and the next open tries again.
pub(super) fn left_behind(fs: &dyn Storage, dir: &Path, keep: bool) -> Vec<Spare> {
    let listed = match fs.list(dir) {
        Ok(listed) => listed,
        Err(e) => {
            tracing::warn!("protected log: listing {} for spare segments: {e}", dir.display());
            return Vec::new();
        }
    };
    let mut kept = Vec::new();
    for path in listed {
        let extension = path.extension().and_then(|e| e.to_str());
        if extension == Some(SPARE_EXTENSION) && keep {
            match fs.size_of(&path) {
                Ok(size) => {
                    kept.push(Spare { bytes: size, path });
                    continue;
                }
                Err(e) => tracing::warn!("protected log: sizing spare segment {}: {e}", path.display()),
            }
        }
        if extension == Some(SPARE_EXTENSION) || extension == Some(PREPARING_EXTENSION) {
            remove(fs, &path);
        }
    }
    // The same order at every open (a listing has none).
    kept.sort_by(|a, b| a.path.cmp(&b.path));
    kept
}

/// Removes a spare the log will not use; a failure is only said.
pub(super) fn remove(fs: &dyn Storage, path: &Path) {
    if let Err(e) = fs.remove_file(path) {
        tracing::warn!("protected log: removing spare segment {}: {e}", path.display());
    }
}
