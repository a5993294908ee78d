//! A ballast file in a VPG's log directory: room on the log's disk held
//! for bitmap mode's own files. The activity log, the dirty map and the
//! capture state are each rewritten as a new file, and a write in bitmap
//! mode needs its extent marked durably first. On a disk the log filled,
//! with no spare segment to give back, a small write's failed record may
//! give back no block at all, and bitmap mode would then fail the write it
//! is there to take (review of helper-41). So when the log's disk does
//! not take a record, the ballast is given back before the VPG goes to
//! bitmap mode (`bitmap_mode::log_failed`). It is made again once the disk
//! has room for the log's capacity, and at each start where there is room.

use crate::io_failure::{Doing, IoFailure};
use crate::status::format_bytes;
use std::path::{Path, PathBuf};

const BALLAST_FILE: &str = "ballast";
/// Room for the activity log, the capture state and the status file,
/// beside two copies of the dirty map (the old and the new while one is
/// rewritten).
const SMALL_FILES_BYTES: u64 = 1 << 20;

pub struct Ballast {
    path: PathBuf,
    bytes: u64,
}

impl Ballast {
    /// The ballast of the log in `dir`, for a dirty map of `map_bytes`.
    pub fn new(dir: &Path, map_bytes: u64) -> Ballast {
        Ballast { path: dir.join(BALLAST_FILE), bytes: 2 * map_bytes + SMALL_FILES_BYTES }
    }

    /// Makes the file if it is missing and the disk keeps its reserve
    /// free with it (`log::FS_RESERVE_PERCENT`). A failure is logged:
    /// the VPG works without, as it did before the ballast.
    pub fn fill(&self, vpg: &str) {
        if self.path.exists() {
            return;
        }
        // Left by a fill a stop cut short.
        let _ = std::fs::remove_file(self.path.with_extension("tmp"));
        match self.make() {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                vpg,
                "no room on the protected log's disk for its {} ballast: a disk that fills may then fail writes in \
                 bitmap mode",
                format_bytes(self.bytes)
            ),
            Err(e) => tracing::warn!(vpg, "{}", crate::error_chain::Chain(&e)),
        }
    }

    fn make(&self) -> Result<bool, IoFailure> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let space = rustix::fs::statvfs(dir)
            .doing(|| format!("asking the file system of {} for its free space", dir.display()))?;
        let (available, total) = (space.f_bavail * space.f_frsize, space.f_blocks * space.f_frsize);
        if available < self.bytes + total / 100 * crate::log::FS_RESERVE_PERCENT {
            return Ok(false);
        }
        let tmp = self.path.with_extension("tmp");
        let made = (|| {
            let file = std::fs::File::create(&tmp).doing(|| format!("creating {}", tmp.display()))?;
            // Blocks, not a hole: a hole gives nothing back.
            rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, self.bytes)
                .doing(|| format!("allocating {} for {}", format_bytes(self.bytes), tmp.display()))?;
            file.sync_all().doing(|| format!("syncing {}", tmp.display()))?;
            std::fs::rename(&tmp, &self.path).doing(|| format!("naming {}", self.path.display()))
        })();
        if made.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        made.map(|()| true)
    }

    /// Gives the room back to the disk. Whether there was a ballast.
    pub fn release(&self, vpg: &str) -> bool {
        let _ = std::fs::remove_file(self.path.with_extension("tmp"));
        match std::fs::remove_file(&self.path) {
            Ok(()) => {
                tracing::warn!(
                    vpg,
                    "the protected log's disk is full: its {} ballast given back",
                    format_bytes(self.bytes)
                );
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => {
                tracing::warn!(vpg, "removing {}: {e}", self.path.display());
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_with_blocks_once_and_gives_them_back() {
        let dir = tempfile::tempdir().unwrap();
        let ballast = Ballast::new(dir.path(), 64 << 10);
        assert_eq!(ballast.bytes, (128 << 10) + SMALL_FILES_BYTES);
        assert!(!ballast.release("v"), "nothing to give back yet");
        ballast.fill("v");
        let meta = std::fs::metadata(dir.path().join(BALLAST_FILE)).unwrap();
        assert_eq!(meta.len(), ballast.bytes);
        assert!(std::os::unix::fs::MetadataExt::blocks(&meta) * 512 >= ballast.bytes, "a hole gives nothing back");
        ballast.fill("v");
        assert!(ballast.release("v"));
        assert!(!dir.path().join(BALLAST_FILE).exists());
        assert!(!ballast.release("v"));
    }
}
