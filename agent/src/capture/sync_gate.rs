//! Sync mode's wait for the recovery journal, and its bound. In sync mode
//! a FLUSH or FUA write returns once the recovery journal holds the write
//! (RPO 0). A lost link must not hold production for good: a wait longer
//! than `sync_timeout` suspends sync mode (logged, shown in status), and
//! the FLUSHes from then on wait for the protected log only, as in async
//! mode. It resumes by itself once the link has caught up: the journal
//! acknowledged everything the log held, within half the timeout (so a
//! FLUSH right after would not time out again at once). `"never"` keeps
//! the strict promise: a FLUSH waits for the link however long it takes.

use super::error::CaptureError;
use crate::config::{ReplicationMode, SyncTimeout};
use crate::log::ProtectedLog;
use std::future::Future;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// What makes a suspended sync mode look again whether the link caught up
/// after an error reading the log's acknowledgements.
const RETRY_AFTER_ERROR: Duration = Duration::from_secs(1);

#[derive(Clone)]
struct Suspension {
    since: Instant,
    why: String,
}

/// Sync mode suspended, for status.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SyncSuspended {
    pub since_seconds: u64,
    pub why: String,
}

pub struct SyncGate {
    mode: ReplicationMode,
    /// None: wait for good (`sync_timeout = "never"`).
    timeout: Option<Duration>,
    suspended: watch::Sender<Option<Suspension>>,
}

impl SyncGate {
    /// `timeout` None: the default.
    pub fn new(mode: ReplicationMode, timeout: Option<SyncTimeout>) -> SyncGate {
        let timeout = match timeout.unwrap_or(SyncTimeout::DEFAULT) {
            SyncTimeout::After(t) => Some(t),
            SyncTimeout::Never => None,
        };
        SyncGate { mode, timeout, suspended: watch::channel(None).0 }
    }

    pub fn mode(&self) -> ReplicationMode {
        self.mode
    }

    /// In sync mode, and not suspended: waits for `journaled` (the
    /// recovery journal holds `seq`), at most the timeout; a longer wait
    /// suspends sync mode, and the wait ends Ok. Async mode: returns.
    pub async fn wait(
        &self,
        vpg: &str,
        seq: u64,
        journaled: impl Future<Output = Result<(), CaptureError>>,
    ) -> Result<(), CaptureError> {
        if self.mode != ReplicationMode::Sync {
            return Ok(());
        }
        let mut suspended = self.suspended.subscribe();
        if suspended.borrow_and_update().is_some() {
            return Ok(());
        }
        let timeout = async {
            match self.timeout {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            done = journaled => done,
            // Another wait timed out: this one ends with it.
            _ = suspended.wait_for(|s| s.is_some()) => Ok(()),
            () = timeout => {
                let t = self.timeout.expect("the timeout fired");
                self.suspend(vpg, format!(
                    "the recovery journal did not acknowledge seq {seq} within {}", humantime::format_duration(t)
                ));
                Ok(())
            }
        }
    }

    fn suspend(&self, vpg: &str, why: String) {
        self.suspended.send_if_modified(|s| {
            if s.is_some() {
                return false;
            }
            tracing::warn!(
                vpg,
                "sync mode suspended: {why}; FLUSH and FUA writes now wait for the protected log only (RPO is no \
                 longer 0) until the link catches up"
            );
            *s = Some(Suspension { since: Instant::now(), why });
            true
        });
    }

    /// While suspended, for status.
    pub fn status(&self) -> Option<SyncSuspended> {
        self.suspended
            .borrow()
            .as_ref()
            .map(|s| SyncSuspended { since_seconds: s.since.elapsed().as_secs(), why: s.why.clone() })
    }

    /// Resumes sync mode each time it was suspended and the link caught
    /// up with `log`. Runs for as long as the VPG does (returns at once
    /// where sync mode is never suspended).
    pub async fn resume_when_caught_up(&self, vpg: &str, log: &ProtectedLog) {
        let Some(timeout) = self.timeout.filter(|_| self.mode == ReplicationMode::Sync) else { return };
        let mut suspended = self.suspended.subscribe();
        loop {
            if suspended.wait_for(|s| s.is_some()).await.is_err() {
                return;
            }
            loop {
                let target = log.appended_seq();
                let started = Instant::now();
                match log.wait_acked(target).await {
                    // Acknowledged quickly: a FLUSH now would not time out.
                    Ok(true) if started.elapsed() <= timeout / 2 => break,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(vpg, "sync mode stays suspended: reading the link's acknowledgements: {e}");
                        tokio::time::sleep(RETRY_AFTER_ERROR).await;
                    }
                }
            }
            let was = self.suspended.send_replace(None);
            let after = was.map(|s| humantime::format_duration(Duration::from_secs(s.since.elapsed().as_secs())));
            tracing::info!(
                vpg,
                "sync mode resumed after {}: the recovery journal caught up with the protected log; FLUSH and FUA \
                 writes wait for it again",
                after.map_or_else(|| "a moment".to_string(), |a| a.to_string())
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sync_after(secs: u64) -> SyncGate {
        SyncGate::new(ReplicationMode::Sync, Some(SyncTimeout::After(Duration::from_secs(secs))))
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_longer_than_the_timeout_suspends_sync_mode_and_the_next_returns_at_once() {
        let gate = sync_after(10);
        let started = tokio::time::Instant::now();
        gate.wait("v", 7, std::future::pending()).await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        let status = gate.status().expect("suspended");
        assert!(status.why.contains("seq 7 within 10s"), "{}", status.why);
        let again = tokio::time::Instant::now();
        gate.wait("v", 8, std::future::pending()).await.unwrap();
        assert_eq!(again.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn waits_end_together_when_one_times_out() {
        let gate = std::sync::Arc::new(sync_after(10));
        let first = tokio::spawn({
            let gate = gate.clone();
            async move { gate.wait("v", 1, std::future::pending()).await }
        });
        tokio::time::sleep(Duration::from_secs(9)).await;
        let second = tokio::spawn({
            let gate = gate.clone();
            async move { gate.wait("v", 2, std::future::pending()).await }
        });
        let started = tokio::time::Instant::now();
        first.await.unwrap().unwrap();
        second.await.unwrap().unwrap();
        assert_eq!(started.elapsed(), Duration::from_secs(1), "the second wait ends with the first's timeout");
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_or_an_answer_in_time_is_the_waits_own() {
        let gate = sync_after(10);
        let e = gate.wait("v", 1, async { Err(CaptureError::Unavailable("closed".into())) }).await;
        assert!(e.is_err());
        let in_time = async {
            tokio::time::sleep(Duration::from_secs(9)).await;
            Ok(())
        };
        gate.wait("v", 2, in_time).await.unwrap();
        assert!(gate.status().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn never_and_async_mode_do_not_suspend() {
        let never = SyncGate::new(ReplicationMode::Sync, Some(SyncTimeout::Never));
        let waited = tokio::time::timeout(Duration::from_secs(3600), never.wait("v", 1, std::future::pending())).await;
        assert!(waited.is_err(), "a strict sync wait does not end without the journal");
        assert!(never.status().is_none());
        let not_sync = SyncGate::new(ReplicationMode::Async, None);
        not_sync.wait("v", 1, std::future::pending()).await.unwrap();
        assert!(not_sync.status().is_none());
    }
}
