//! Spare segment files made ahead of need, zero-filled, as PostgreSQL
//! makes WAL segments ahead: a log that claims its capacity this way never
//! appends into a new page or block. Every roll takes a spare
//! (`spares.rs`), its writes overwrite blocks that are allocated and
//! written, so an fdatasync commits no allocation or size change, and
//! their pages are in the page cache already. A log that has claimed its
//! capacity also cannot run out of disk space while it fills: its bytes
//! are on the disk before the records that need them.
//!
//! One file at a time, only while the log, its spares, the unwritten rest
//! of its current file and one more segment stay within its capacity, and
//! only while the file system keeps `FS_RESERVE_PERCENT` of itself free
//! after the new file (a data disk shared with other logs keeps room for
//! them). The logs of one process make their files one at a time
//! (`DiskClaim`), so each asks for the free space the others left, not
//! the same free space at once. A file is written under a temporary
//! name, fsynced and renamed a spare: a stop at any point leaves either a
//! spare, which the next open keeps, or a temporary file, which it
//! removes.

use crate::io_failure::{Doing, IoFailure};
use crate::storage::Storage;
use std::path::Path;
use std::sync::{Condvar, Mutex};

/// Whether a log claims its capacity on disk ahead of need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preallocation {
    /// Only retired segments are kept for reuse, at most `SPARES_MAX`.
    Off,
    /// A thread of the log zero-fills spares while there is room.
    Background,
    /// As `Background`, but the log's owner calls `prepare_spare` itself
    /// (the simulator and tests, which choose when work happens).
    ByCaller,
}

/// What one call of `ProtectedLog::prepare_spare` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prepared {
    /// A spare was made.
    Made,
    /// The log and its spares fill its capacity (or it is broken).
    LogFull,
    /// The file system would keep less than its reserve free.
    DiskReserve,
}

/// Part of the file system a log leaves free when it makes a spare (and
/// what the logs together are warned not to be promised).
pub const FS_RESERVE_PERCENT: u64 = 10;
/// Zeros written per call.
const ZERO_CHUNK_BYTES: u64 = 1 << 20;
/// Written data is fsynced every this many bytes, so the page cache never
/// holds much of it dirty: an fsync of the log's own appends may have to
/// wait for the file system's other dirty data.
const SYNC_EVERY_BYTES: u64 = 16 << 20;

/// Turns to claim the disk, in the order asked (a ticket lock): held
/// while a log checks the free space and makes a file in it, so the logs
/// of a process (one per VPG, often on one data disk) claim the disk one
/// file at a time, and each log's next file waits behind the others'
/// (a plain mutex would let the log that just made a file take the next
/// turn too, and one VPG make all its spares before the others any).
struct DiskTurns {
    /// The next ticket to give, and the ticket whose turn it is.
    tickets: Mutex<(u64, u64)>,
    turn_ended: Condvar,
}

static DISK_TURNS: DiskTurns = DiskTurns { tickets: Mutex::new((0, 0)), turn_ended: Condvar::new() };

/// One log's turn to claim disk space for one spare; ends when dropped.
pub(super) struct DiskClaim(());

impl Drop for DiskClaim {
    fn drop(&mut self) {
        let mut tickets = DISK_TURNS.tickets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        tickets.1 += 1;
        DISK_TURNS.turn_ended.notify_all();
    }
}

/// Waits for this log's turn to claim disk space for one spare.
pub(super) fn disk_claim() -> DiskClaim {
    // A preparer that panicked left no state to distrust here.
    let mut tickets = DISK_TURNS.tickets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let mine = tickets.0;
    tickets.0 += 1;
    while tickets.1 != mine {
        tickets = DISK_TURNS.turn_ended.wait(tickets).unwrap_or_else(|poisoned| poisoned.into_inner());
    }
    DiskClaim(())
}

/// Whether the file system of `dir`, with `bytes` more taken, keeps its
/// reserve free.
pub(super) fn fs_has_room(fs: &dyn Storage, dir: &Path, bytes: u64) -> Result<bool, IoFailure> {
    let space = fs.space(dir).doing(|| format!("asking the file system of {} for its free space", dir.display()))?;
    let reserve = space.total / 100 * FS_RESERVE_PERCENT;
    Ok(space.available >= bytes.saturating_add(reserve))
}

/// Makes `tmp` a file of `bytes` zeros, fsynced (data and size). On an
/// error the file is removed.
pub(super) fn zero_fill(fs: &dyn Storage, tmp: &Path, bytes: u64) -> Result<(), IoFailure> {
    // Left by a preparation a stop cut short.
    let _ = fs.remove_file(tmp);
    let made = (|| {
        let file = fs.create_new(tmp).doing(|| format!("creating {}", tmp.display()))?;
        let zeros = vec![0u8; ZERO_CHUNK_BYTES.min(bytes) as usize];
        let mut written = 0;
        while written < bytes {
            let n = ZERO_CHUNK_BYTES.min(bytes - written);
            file.append(&[&zeros[..n as usize]]).doing(|| format!("zero-filling {}", tmp.display()))?;
            written += n;
            if written % SYNC_EVERY_BYTES == 0 && written < bytes {
                file.sync_data().doing(|| format!("syncing {}", tmp.display()))?;
            }
        }
        file.sync_all().doing(|| format!("syncing {}", tmp.display()))
    })();
    if made.is_err() {
        let _ = fs.remove_file(tmp);
    }
    made
}
