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

use crate::io_failure::{Doing, IoFailure};
use crate::storage::Storage;
use std::path::{Path, PathBuf};

/// Enough for a log drained as fast as it fills: one segment is retired
/// for each roll.
pub(super) const SPARES_MAX: usize = 2;
const SPARE_EXTENSION: &str = "spare";
/// A spare being zero-filled (`prepare.rs`).
const PREPARING_EXTENSION: &str = "zeroing";

/// A spare file, and its length.
pub(super) struct Spare {
    pub path: PathBuf,
    pub bytes: u64,
}

/// The name a retired segment `first_seq` is kept under.
pub(super) fn spare_path(dir: &Path, first_seq: u64) -> PathBuf {
    spare_path_named(dir, &format!("{first_seq:020}"))
}

/// The temporary name a spare made ahead of need is zero-filled under,
/// and the spare name it then takes.
pub(super) fn prepared_names(dir: &Path, n: u64) -> (PathBuf, PathBuf) {
    let stem = format!("prepared-{n:06}");
    (dir.join(format!("{stem}.{PREPARING_EXTENSION}")), spare_path_named(dir, &stem))
}

/// The spare `<stem>.spare`.
fn spare_path_named(dir: &Path, stem: &str) -> PathBuf {
    dir.join(format!("{stem}.{SPARE_EXTENSION}"))
}

/// The spares a predecessor left, if `keep`; otherwise they are removed.
/// Files of a preparation a stop cut short are removed either way; a
/// failed removal is only said (the next open tries again). A spare that
/// is kept must be counted, so one that cannot be listed or sized fails
/// the open, as a segment would.
pub(super) fn left_behind(fs: &dyn Storage, dir: &Path, keep: bool) -> Result<Vec<Spare>, IoFailure> {
    let listed = fs.list(dir).doing(|| format!("listing {} for spare segments", dir.display()))?;
    let mut kept = Vec::new();
    for path in listed {
        let extension = path.extension().and_then(|e| e.to_str());
        if extension == Some(SPARE_EXTENSION) && keep {
            let bytes = fs.size_of(&path).doing(|| format!("sizing spare segment {}", path.display()))?;
            kept.push(Spare { bytes, path });
        } else if extension == Some(SPARE_EXTENSION) || extension == Some(PREPARING_EXTENSION) {
            remove(fs, &path);
        }
    }
    // The same order at every open (a listing has none).
    kept.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(kept)
}

/// The log's roll reserve: a small zero-filled file kept for one roll on a
/// disk with no free block. A segment whose records are all acknowledged
/// is retired only once the next segment's header is durable (the log's
/// place must survive a power cut), and a new file needs a block for it;
/// the roll writes the header over the reserve instead
/// (`ProtectedLog::leave_full_segment`). Not a spare: a spare is a
/// segment's worth of room and goes to any roll.
const RESERVE_NAME: &str = "roll-reserve";
const RESERVE_BYTES: u64 = 64 << 10;

/// The reserve in `dir`: the one there, or a new one (zero-filled under
/// a temporary name an open removes, then named).
pub(super) fn reserve(fs: &dyn Storage, dir: &Path) -> Result<Spare, IoFailure> {
    let path = dir.join(RESERVE_NAME);
    if let Ok(bytes) = fs.size_of(&path) {
        if bytes >= RESERVE_BYTES {
            return Ok(Spare { path, bytes });
        }
    }
    let tmp = dir.join(format!("{RESERVE_NAME}.{PREPARING_EXTENSION}"));
    super::prepare::zero_fill(fs, &tmp, RESERVE_BYTES)?;
    fs.rename(&tmp, &path).doing(|| format!("naming {}", path.display()))?;
    Ok(Spare { path, bytes: RESERVE_BYTES })
}

/// Removes a spare the log will not use: false, said, if it could not.
pub(super) fn remove(fs: &dyn Storage, path: &Path) -> bool {
    match fs.remove_file(path) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!("protected log: removing spare segment {}: {e}", path.display());
            false
        }
    }
}
