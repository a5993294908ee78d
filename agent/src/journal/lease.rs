//! Readers of a point in time (restore, export, test failover) take a
//! lease: a file in `<vpg>/leases/` holding an exclusive `flock` for as
//! long as the reader lives, naming the checkpoint it reads and the
//! replica seq it started from. The applier never applies past a live
//! lease's checkpoint and never retires a segment the lease still needs.
//! A lease whose holder died (lock free) is removed by the next applier.
//!
//! `apply.lock` orders the two: the applier holds it exclusively from
//! reading the leases to retiring segments; a lease is taken under it
//! shared, so the applier sees every lease taken before its pass.

use super::apply_state::ApplyState;
use super::error::JournalError;
use crate::io_failure::{Doing, IoFailure};
use rustix::fs::{flock, FlockOperation};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

type Result<T> = std::result::Result<T, JournalError>;

const LEASE_DIR: &str = "leases";
const APPLY_LOCK_FILE: &str = "apply.lock";

/// Opens (creating it, never truncating) a file that is only ever
/// `flock`ed.
pub fn open_lock_file(path: &Path) -> Result<File> {
    Ok(OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .doing(|| format!("opening {}", path.display()))?)
}

/// Held while applying (exclusive) or while taking a lease (shared).
pub struct ApplyLock(#[allow(dead_code)] File);

impl ApplyLock {
    fn take(vpg_dir: &Path, op: FlockOperation) -> Result<ApplyLock> {
        let path = vpg_dir.join(APPLY_LOCK_FILE);
        let file = open_lock_file(&path)?;
        flock(&file, op).doing(|| format!("locking {}", path.display()))?;
        Ok(ApplyLock(file))
    }

    pub fn exclusive(vpg_dir: &Path) -> Result<ApplyLock> {
        Self::take(vpg_dir, FlockOperation::LockExclusive)
    }

    pub fn shared(vpg_dir: &Path) -> Result<ApplyLock> {
        Self::take(vpg_dir, FlockOperation::LockShared)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LeaseInfo {
    /// Who reads ("restore", "export", "test-failover"), for status.
    pub holder: String,
    /// The checkpoint read; the replica must not pass it.
    pub checkpoint: u64,
    /// The replica seq the reader started from; journal records after it
    /// must stay.
    pub base: u64,
}

pub struct Lease {
    path: PathBuf,
    file: File,
    vpg_dir: PathBuf,
    pub info: LeaseInfo,
    /// The replica as it was when the lease was taken.
    pub state: ApplyState,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

static LEASE_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Pins `checkpoint` for `holder`. Refused when the replica is already
/// past it (the checkpoint left the history window), or when a crashed
/// apply left the replica between two points that `checkpoint` is not
/// after (the recovery agent finishes that apply when it starts).
pub fn take(vpg_dir: &Path, holder: &str, checkpoint: u64) -> Result<Lease> {
    take_with(vpg_dir, holder, |_| checkpoint)
}

/// Pins the replica where it is, before the reader has read anything: the
/// applier cannot move it nor retire a segment while the reader lists
/// checkpoints; `Lease::move_to` then pins the one the reader chose.
pub fn take_at_replica(vpg_dir: &Path, holder: &str) -> Result<Lease> {
    take_with(vpg_dir, holder, |state| state.applying_to.unwrap_or(0).max(state.applied_seq))
}

fn take_with(vpg_dir: &Path, holder: &str, checkpoint: impl FnOnce(&ApplyState) -> u64) -> Result<Lease> {
    let _lock = ApplyLock::shared(vpg_dir)?;
    // A failover commits under the apply lock: seen here, or not begun.
    if vpg_dir.join(super::FAILOVER_RECORD_FILE).exists() {
        let why = "the VPG was failed over while this reader was opening; its history is closed";
        return Err(JournalError::Unavailable(why.to_string()));
    }
    let state = ApplyState::load(vpg_dir)?;
    let checkpoint = checkpoint(&state);
    check_readable(&state, checkpoint)?;
    let dir = vpg_dir.join(LEASE_DIR);
    std::fs::create_dir_all(&dir).doing(|| format!("creating {}", dir.display()))?;
    let n = LEASE_COUNTER.fetch_add(1, Ordering::Relaxed);
    let path = dir.join(format!("{}-{n}-{holder}.lease", std::process::id()));
    let mut file = OpenOptions::new()
        .create_new(true)
        .read(true)
        .write(true)
        .open(&path)
        .doing(|| format!("creating lease {}", path.display()))?;
    flock(&file, FlockOperation::NonBlockingLockExclusive).doing(|| format!("locking {}", path.display()))?;
    let info = LeaseInfo { holder: holder.to_string(), checkpoint, base: state.applied_seq };
    let json = super::error::encode("a lease", &info, true)?;
    file.write_all(&json).doing(|| format!("writing lease {}", path.display()))?;
    Ok(Lease { path, file, vpg_dir: vpg_dir.to_path_buf(), info, state })
}

/// Why the replica (as `state` says) cannot be read at `checkpoint`.
pub(super) fn check_readable(state: &ApplyState, checkpoint: u64) -> Result<()> {
    if checkpoint < state.applied_seq {
        return Err(JournalError::Unavailable(format!(
            "checkpoint {checkpoint} is older than the history window: the replica already holds seq {} \
             (see `tidemark checkpoints` for the recoverable ones)",
            state.applied_seq
        )));
    }
    if let Some(to) = state.applying_to.filter(|to| checkpoint < *to) {
        return Err(JournalError::Unavailable(format!(
            "an apply to seq {to} was interrupted or has not finished, and checkpoint {checkpoint} is before it: \
             the replica holds part of that apply. The recovery agent finishes it (if it runs, its status says \
             why it has not yet); pick a checkpoint at or after {to}"
        )));
    }
    Ok(())
}

impl Lease {
    /// Moves the pin forward to `checkpoint` (what the reader resolved
    /// under the pin it took first); never backwards past the replica.
    pub fn move_to(&mut self, checkpoint: u64) -> Result<()> {
        check_readable(&self.state, checkpoint)?;
        if checkpoint == self.info.checkpoint {
            return Ok(());
        }
        // The applier reads leases under the exclusive lock: it sees the
        // old pin or the new one, never a half-written file.
        let _lock = ApplyLock::shared(&self.vpg_dir)?;
        let info = LeaseInfo { checkpoint, ..self.info.clone() };
        let bytes = super::error::encode("a lease", &info, true)?;
        // Written over the old bytes, then cut to length: never empty.
        self.file
            .write_all_at(&bytes, 0)
            .and_then(|()| self.file.set_len(bytes.len() as u64))
            .doing(|| format!("updating lease {}", self.path.display()))?;
        self.info = info;
        Ok(())
    }
}

/// The leases whose holders are alive; stale ones are removed. Call with
/// the apply lock held exclusively.
pub fn live(vpg_dir: &Path, _held: &ApplyLock) -> Result<Vec<LeaseInfo>> {
    let dir = vpg_dir.join(LEASE_DIR);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(IoFailure::new(format!("listing {}", dir.display()), e).into()),
    };
    let mut found = Vec::new();
    for entry in entries {
        let path = entry.doing(|| format!("listing {}", dir.display()))?.path();
        let Ok(mut file) = File::open(&path) else { continue };
        if flock(&file, FlockOperation::NonBlockingLockShared).is_ok() {
            tracing::info!("removing the lease of a reader that is gone: {}", path.display());
            let _ = std::fs::remove_file(&path);
            continue;
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).doing(|| format!("reading lease {}", path.display()))?;
        found.push(super::error::parse(&path, &bytes)?);
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_live_while_held_and_refuse_old_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        ApplyState { applied_seq: 10, ..Default::default() }.store(dir.path()).unwrap();
        let err = take(dir.path(), "restore", 9).err().unwrap().to_string();
        assert!(err.contains("older than the history window"), "{err}");
        let lease = take(dir.path(), "export", 12).unwrap();
        assert_eq!(lease.info.base, 10);
        {
            let lock = ApplyLock::exclusive(dir.path()).unwrap();
            assert_eq!(live(dir.path(), &lock).unwrap(), vec![lease.info.clone()]);
        }
        drop(lease);
        let lock = ApplyLock::exclusive(dir.path()).unwrap();
        assert!(live(dir.path(), &lock).unwrap().is_empty());
    }

    #[test]
    fn no_lease_on_a_failed_over_replica() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(crate::journal::FAILOVER_RECORD_FILE), b"{}").unwrap();
        let err = take(dir.path(), "export", 1).err().unwrap().to_string();
        assert!(err.contains("failed over"), "{err}");
    }

    #[test]
    fn interrupted_apply_pins_its_target() {
        let dir = tempfile::tempdir().unwrap();
        ApplyState { applied_seq: 10, applying_to: Some(20), ..Default::default() }.store(dir.path()).unwrap();
        assert!(take(dir.path(), "restore", 15).is_err());
        assert!(take(dir.path(), "restore", 20).is_ok());
    }

    #[test]
    fn a_lease_taken_first_pins_the_replica_then_moves_to_the_chosen_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        ApplyState { applied_seq: 10, applying_to: Some(20), ..Default::default() }.store(dir.path()).unwrap();
        let mut lease = take_at_replica(dir.path(), "export").unwrap();
        assert_eq!((lease.info.checkpoint, lease.info.base), (20, 10));
        let err = lease.move_to(15).err().unwrap().to_string();
        assert!(err.contains("interrupted"), "{err}");
        lease.move_to(30).unwrap();
        let lock = ApplyLock::exclusive(dir.path()).unwrap();
        let seen = live(dir.path(), &lock).unwrap();
        assert_eq!(seen, vec![LeaseInfo { holder: "export".into(), checkpoint: 30, base: 10 }]);
    }
}
