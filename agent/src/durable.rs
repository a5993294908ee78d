//! Small files that must survive a power cut whole: either the old content
//! or the new, never an empty or half-written file. Keys, certificates and
//! the JSON state files (capture state, apply state, journal meta, failover
//! record, support session) all go through `replace_file`.
//!
//! The order is the classic one: write a temporary file beside the target,
//! fsync it, rename it over the target, fsync the directory. Without the
//! first fsync, ext4's delayed allocation can leave a renamed file of zero
//! length after a crash (seen in CI: an appliance cut 8 s after first boot
//! came back with an empty `cert.pem`).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::io_failure::{Doing, IoFailure};

type Result<T> = std::result::Result<T, IoFailure>;

/// Who may read a file written by `replace_file`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileMode {
    /// 0644: configuration and state anybody on the box may read.
    Public,
    /// 0600: keys and secrets, owner only.
    OwnerOnly,
}

impl FileMode {
    fn bits(self) -> u32 {
        match self {
            FileMode::Public => 0o644,
            FileMode::OwnerOnly => 0o600,
        }
    }
}

/// Replaces `path` with `bytes` atomically and durably: after a crash the
/// file holds the old content or the new, and once this returns, the new.
pub fn replace_file(path: &Path, bytes: &[u8], mode: FileMode) -> Result<()> {
    let dir = parent_dir(path)?;
    let tmp = temporary_beside(path)?;
    let written = write_synced(&tmp, bytes, mode).and_then(|()| {
        std::fs::rename(&tmp, path).doing(|| format!("renaming {} to {}", tmp.display(), path.display()))
    });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.within(|| format!("writing {}", path.display())));
    }
    sync_dir(dir)
}

/// Removes `path` durably (its directory is synced); a file that is not
/// there is already removed.
pub fn remove_file(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => sync_dir(parent_dir(path)?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(IoFailure::new(format!("removing {}", path.display()), e)),
    }
}

/// Makes a directory's entries (creates, renames, removes) durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).doing(|| format!("syncing directory {}", dir.display()))
}

/// Runs a blocking sync so that callers who arrive while one runs share
/// the next one: at most one runs and one waits, however many callers
/// there are (100,000 FLUSHes once started 516 threads, one sync each).
///
/// A failed sync fails every later call, without running it again: the
/// kernel reports a writeback error to one fsync of an open file and then
/// marks the pages it could not write clean, so the next fsync succeeds
/// without them. Before, callers whose ticket the failed run covered ran
/// their own, got success and acknowledged writes the file had lost
/// (review of helper-69).
#[derive(Default)]
pub struct SyncGroup {
    requested: std::sync::atomic::AtomicU64,
    done: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Held for as long as a run lasts, even when its caller is gone.
    running: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// Why a sync failed, once one did.
    failed: std::sync::Arc<std::sync::OnceLock<String>>,
}

impl SyncGroup {
    /// Returns once a run of `sync` that started after this call finished.
    /// A `sync` that panics panics the caller.
    pub async fn sync<F, E>(&self, sync: F) -> std::result::Result<(), E>
    where
        F: FnOnce() -> std::result::Result<(), E> + Send + 'static,
        E: From<IoFailure> + std::error::Error + Send + Sync + 'static,
    {
        use std::sync::atomic::Ordering;
        let ticket = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
        let running = self.running.clone().lock_owned().await;
        if let Some(why) = self.failed.get() {
            let doing = "syncing after an earlier fsync failed (the kernel may have dropped what it could not \
                write, so no later fsync can promise it)";
            return Err(IoFailure::new(doing, std::io::Error::other(why.clone())).into());
        }
        if self.done.load(Ordering::SeqCst) >= ticket {
            return Ok(());
        }
        let covers = self.requested.load(Ordering::SeqCst);
        let (done, failed) = (self.done.clone(), self.failed.clone());
        // The outcome is recorded, and the group held, by the run itself: a
        // caller dropped half way (a FLUSH whose connection ended) must
        // neither lose a failure nor let the next caller sync alongside.
        let run = move || {
            let _running = running;
            let synced = sync();
            match &synced {
                Ok(()) => {
                    done.fetch_max(covers, Ordering::SeqCst);
                }
                Err(e) => {
                    let _ = failed.set(crate::error_chain::Chain(e).to_string());
                }
            }
            synced
        };
        match tokio::task::spawn_blocking(run).await {
            Ok(synced) => synced,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Cancelled before it ran (the runtime is shutting down): nothing synced.
            Err(e) => Err(IoFailure::new("sync task", std::io::Error::other(e.to_string())).into()),
        }
    }
}

fn write_synced(tmp: &Path, bytes: &[u8], mode: FileMode) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode.bits())
        .open(tmp)
        .doing(|| format!("creating {}", tmp.display()))?;
    // An existing temporary file keeps its old mode; a secret must not.
    use std::os::unix::fs::PermissionsExt;
    f.set_permissions(std::fs::Permissions::from_mode(mode.bits()))
        .doing(|| format!("setting the mode of {}", tmp.display()))?;
    f.write_all(bytes).doing(|| format!("writing {}", tmp.display()))?;
    f.sync_all().doing(|| format!("syncing {}", tmp.display()))
}

fn parent_dir(path: &Path) -> Result<&Path> {
    match path.parent() {
        Some(p) if p.as_os_str().is_empty() => Ok(Path::new(".")),
        Some(p) => Ok(p),
        None => Err(not_a_file_path(path)),
    }
}

fn not_a_file_path(path: &Path) -> IoFailure {
    IoFailure::new(format!("{}: not a file path", path.display()), std::io::ErrorKind::InvalidInput.into())
}

/// A temporary name no other replace of the same file uses at the same
/// time (two replaces with one name once wrote into each other's file).
fn temporary_beside(path: &Path) -> Result<PathBuf> {
    static REPLACES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let name = path.file_name().ok_or_else(|| not_a_file_path(path))?;
    let n = REPLACES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}-{n}.tmp", std::process::id()));
    Ok(path.with_file_name(tmp_name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tidemark-durable-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn replaces_content_and_leaves_no_temporary() {
        let dir = scratch("replace");
        let path = dir.join("state.json");
        replace_file(&path, b"old", FileMode::Public).unwrap();
        replace_file(&path, b"new", FileMode::Public).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn secrets_are_owner_only() {
        let dir = scratch("secret");
        let path = dir.join("key.pem");
        replace_file(&path, b"secret", FileMode::OwnerOnly).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn concurrent_replaces_of_one_file_never_mix() {
        let dir = scratch("concurrent");
        let path = dir.join("state.json");
        let writers: Vec<_> = (0..8u8)
            .map(|i| {
                let path = path.clone();
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        replace_file(&path, &vec![b'a' + i; 4096], FileMode::Public).unwrap();
                    }
                })
            })
            .collect();
        writers.into_iter().for_each(|w| w.join().unwrap());
        // Whole content of one writer, never a mix or a short file.
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 4096);
        assert!(bytes.iter().all(|b| *b == bytes[0]));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_directory_is_an_error_that_names_the_file() {
        let dir = scratch("missing");
        let path = dir.join("no/such/dir/file");
        let err = format!("{:#}", replace_file(&path, b"x", FileMode::Public).unwrap_err());
        assert!(err.contains("no/such/dir/file"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A failed sync fails the callers waiting behind it and every later
    /// one, though a new run would succeed (the kernel reports a writeback
    /// error once): none of them is told its writes are durable.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_sync_fails_every_later_call() {
        use std::sync::atomic::{AtomicU32, Ordering};
        let group = std::sync::Arc::new(SyncGroup::default());
        let runs = std::sync::Arc::new(AtomicU32::new(0));
        let run = |fail: bool| {
            let runs = runs.clone();
            move || -> Result<()> {
                runs.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(200));
                match fail {
                    true => Err(IoFailure::new("syncing a volume", std::io::Error::from_raw_os_error(5))),
                    false => Ok(()),
                }
            }
        };
        group.sync(run(false)).await.unwrap();
        let failing = tokio::spawn({
            let (group, run) = (group.clone(), run(true));
            async move { group.sync(run).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        // Arrives while the failing run runs: its ticket is not covered, and
        // before, it ran a sync of its own that succeeded.
        let waiting = group.sync(run(false)).await;
        let failed = failing.await.unwrap().unwrap_err().to_string();
        assert!(failed.contains("syncing a volume"), "{failed}");
        let waiting = crate::error_chain::Chain(&waiting.unwrap_err()).to_string();
        assert!(waiting.contains("an earlier fsync failed") && waiting.contains("os error 5"), "{waiting}");
        assert!(group.sync(run(false)).await.is_err(), "a later call succeeded after a failed sync");
        assert_eq!(runs.load(Ordering::SeqCst), 2, "no sync runs after one failed");
    }

    /// A caller dropped while its sync runs (a FLUSH whose connection
    /// ended) loses neither the run's failure nor the group: the next
    /// caller waits for that run and gets its failure (review of
    /// helper-70: it ran a sync of its own alongside, which succeeded).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_caller_keeps_its_runs_failure() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let group = std::sync::Arc::new(SyncGroup::default());
        let ended = std::sync::Arc::new(AtomicBool::new(false));
        let caller = tokio::spawn({
            let (group, ended) = (group.clone(), ended.clone());
            async move {
                group
                    .sync(move || -> Result<()> {
                        std::thread::sleep(std::time::Duration::from_millis(300));
                        ended.store(true, Ordering::SeqCst);
                        Err(IoFailure::new("syncing a volume", std::io::Error::from_raw_os_error(5)))
                    })
                    .await
            }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        caller.abort();
        assert!(caller.await.unwrap_err().is_cancelled());
        let next = group
            .sync({
                let ended = ended.clone();
                move || -> Result<()> {
                    assert!(ended.load(Ordering::SeqCst), "a sync ran alongside the dropped caller's");
                    Ok(())
                }
            })
            .await;
        let next = crate::error_chain::Chain(&next.unwrap_err()).to_string();
        assert!(next.contains("an earlier fsync failed") && next.contains("os error 5"), "{next}");
    }
}
