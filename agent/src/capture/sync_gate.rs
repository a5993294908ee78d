//! Sync mode's wait for the recovery journal, and its bound. In sync mode
//! a FLUSH or FUA write returns once the recovery journal holds the write
//! (RPO 0). A lost link must not hold production for good: a wait longer
//! than `sync_timeout` suspends sync mode (logged, shown in status), and
//! the FLUSHes from then on wait for the protected log only, as in async
//! mode; each such FLUSH's seq is remembered. Sync mode resumes by itself
//! once the link has caught up (the journal acknowledged everything the log
//! held, within half the timeout, so a FLUSH right after would not time
//! out again at once): FLUSHes wait for the journal again from there, and
//! status says "suspended" until the journal also holds every write a
//! FLUSH let go while suspended (review of helper-39: it said "resumed"
//! while such writes were still only here). A start finds the same: what
//! the log holds unacknowledged may have been let go by the agent before,
//! so it starts resuming, unless the capture state says the gate was
//! strict (`CaptureState::sync_let_go`, written before a FLUSH is let go
//! and once the gate is strict again). `"never"` keeps the strict promise: a FLUSH waits
//! for the link however long it takes (the config then requires bitmap
//! mode off: a write it only marks is in no record a FLUSH could wait for).

use super::error::CaptureError;
use crate::config::{ReplicationMode, SyncTimeout};
use std::future::Future;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// What makes a suspended sync mode look again whether the link caught up
/// after an error reading the log's acknowledgements.
const RETRY_AFTER_ERROR: Duration = Duration::from_secs(1);

#[derive(Clone, Debug, PartialEq)]
enum State {
    /// FLUSHes wait for the journal, and nothing they let go is unconfirmed.
    Strict,
    /// FLUSHes wait for the protected log only; `released` is the newest
    /// seq one of them returned for.
    Suspended { since: Instant, why: String, released: u64 },
    /// FLUSHes wait for the journal again; what they let go while
    /// suspended, up to `until`, is not acknowledged yet.
    Resuming { since: Instant, why: String, until: u64 },
}

/// Sync mode suspended, for status.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SyncSuspended {
    pub since_seconds: u64,
    pub why: String,
    /// FLUSH and FUA wait for the journal again; what they let go before
    /// is not all acknowledged yet.
    #[serde(default)]
    pub resuming: bool,
}

/// A VPG's replication mode and, in sync mode, its `sync_timeout` (None:
/// the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct SyncPolicy {
    pub mode: ReplicationMode,
    pub timeout: Option<SyncTimeout>,
}

pub struct SyncGate {
    mode: ReplicationMode,
    /// None: wait for good (`sync_timeout = "never"`).
    timeout: Option<Duration>,
    state: watch::Sender<State>,
}

impl SyncGate {
    /// `opened_end`: the last seq the log held at the start, if a FLUSH of
    /// the agent before may have let it go (0: nothing was, or a fresh
    /// log); the gate resumes until the journal has it.
    pub fn new(policy: SyncPolicy, opened_end: u64) -> SyncGate {
        let mode = policy.mode;
        let timeout = match policy.timeout.unwrap_or(SyncTimeout::DEFAULT) {
            SyncTimeout::After(t) => Some(t),
            SyncTimeout::Never => None,
        };
        let state = match (mode, timeout) {
            (ReplicationMode::Sync, Some(_)) if opened_end > 0 => State::Resuming {
                since: Instant::now(),
                why: format!(
                    "unconfirmed since the start: the agent before may have let writes through seq {opened_end} go"
                ),
                until: opened_end,
            },
            _ => State::Strict,
        };
        SyncGate { mode, timeout, state: watch::channel(state).0 }
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
        if self.mode != ReplicationMode::Sync || self.release(seq) {
            return Ok(());
        }
        let mut state = self.state.subscribe();
        state.borrow_and_update();
        let timeout = async {
            match self.timeout {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(journaled, timeout);
        loop {
            tokio::select! {
                done = &mut journaled => return done,
                // Another wait timed out: this one ends with it, once its
                // seq is remembered. If the gate resumed in between (review
                // of helper-42), it was not, and it waits for the journal
                // again. (The watch's borrow is let go before `release`
                // writes it.)
                _ = async { state.wait_for(|s| matches!(s, State::Suspended { .. })).await.map(|_| ()) } => {
                    if self.release(seq) {
                        return Ok(());
                    }
                }
                () = &mut timeout => {
                    let t = self.timeout.expect("the timeout fired");
                    let why = format!(
                        "the recovery journal did not acknowledge seq {seq} within {}", humantime::format_duration(t)
                    );
                    self.suspend(vpg, why, seq);
                    return Ok(());
                }
            }
        }
    }

    /// While suspended: remembers that a FLUSH let `seq` go, and true.
    fn release(&self, seq: u64) -> bool {
        let mut suspended = false;
        self.state.send_if_modified(|s| match s {
            State::Suspended { released, .. } => {
                suspended = true;
                let newer = seq > *released;
                *released = (*released).max(seq);
                newer
            }
            _ => false,
        });
        suspended
    }

    /// Whether a FLUSH may return without the journal for another reason
    /// than the timeout (bitmap mode or its resync: writes only marked are
    /// in no record to wait for): true, and in sync mode that suspends it
    /// as a timeout does; false where sync mode waits for good (`"never"`,
    /// whose config has bitmap mode off: only a start's resync of the
    /// regions in flight at a crash gets here, and the FLUSH waits).
    pub fn let_go(&self, vpg: &str, why: impl FnOnce() -> String, seq: u64) -> bool {
        if self.mode != ReplicationMode::Sync {
            return true;
        }
        if self.timeout.is_none() {
            return false;
        }
        if !self.release(seq) {
            self.suspend(vpg, why(), seq);
        }
        true
    }

    /// Sync mode that never lets a FLUSH go without the journal.
    pub fn waits_for_good(&self) -> bool {
        self.mode == ReplicationMode::Sync && self.timeout.is_none()
    }

    fn suspend(&self, vpg: &str, why: String, seq: u64) {
        self.state.send_if_modified(|s| {
            let released = match s {
                State::Suspended { released, .. } => {
                    *released = (*released).max(seq);
                    return true;
                }
                // Still unconfirmed from the last suspension.
                State::Resuming { until, .. } => (*until).max(seq),
                State::Strict => seq,
            };
            tracing::warn!(
                vpg,
                "sync mode suspended: {why}; FLUSH and FUA writes now wait for the protected log only (RPO is no \
                 longer 0) until the link catches up"
            );
            *s = State::Suspended { since: Instant::now(), why, released };
            true
        });
    }

    /// While suspended or resuming, for status.
    pub fn status(&self) -> Option<SyncSuspended> {
        match &*self.state.borrow() {
            State::Strict => None,
            State::Suspended { since, why, .. } => {
                Some(SyncSuspended { since_seconds: since.elapsed().as_secs(), why: why.clone(), resuming: false })
            }
            State::Resuming { since, why, until } => Some(SyncSuspended {
                since_seconds: since.elapsed().as_secs(),
                why: format!("{why}; the recovery journal has not yet acknowledged seq {until}"),
                resuming: true,
            }),
        }
    }

    /// Resumes sync mode each time it was suspended and the link caught
    /// up with `log`, and confirms it once the journal holds what was let
    /// go meanwhile. Runs for as long as the VPG does (returns at once
    /// where sync mode is never suspended).
    /// `appended`: the log's last seq now; `journaled(seq)`: returns once
    /// the recovery journal holds every write up to `seq`
    /// (`VpgCapture::wait_recovery_durable`); `logging()`: returns once
    /// every write is logged again (no bitmap mode or resync: the regions
    /// it marked are in the log, before its end).
    pub async fn resume_when_caught_up<F: Future<Output = Result<(), CaptureError>>, L: Future<Output = ()>>(
        &self,
        vpg: &str,
        appended: impl Fn() -> u64,
        journaled: impl Fn(u64) -> F,
        logging: impl Fn() -> L,
    ) {
        let Some(timeout) = self.timeout.filter(|_| self.mode == ReplicationMode::Sync) else { return };
        let mut state = self.state.subscribe();
        loop {
            let now = state.borrow_and_update().clone();
            match now {
                State::Strict => {
                    if state.changed().await.is_err() {
                        return;
                    }
                }
                State::Suspended { .. } => {
                    logging().await;
                    let target = appended();
                    let started = Instant::now();
                    match journaled(target).await {
                        // Acknowledged quickly: a FLUSH now would not time out.
                        Ok(()) if started.elapsed() <= timeout / 2 => self.begin_resuming(target),
                        Ok(()) => {}
                        Err(e) => {
                            tracing::warn!(vpg, "sync mode stays suspended: reading the link's acknowledgements: {e}");
                            tokio::time::sleep(RETRY_AFTER_ERROR).await;
                        }
                    }
                }
                State::Resuming { until, since, .. } => {
                    let confirmed = tokio::select! {
                        acked = journaled(until) => acked,
                        // Suspended again meanwhile.
                        _ = async { state.wait_for(|s| !matches!(s, State::Resuming { .. })).await.map(|_| ()) } => continue,
                    };
                    match confirmed {
                        Ok(()) => self.confirm(vpg, until, since),
                        Err(e) => {
                            tracing::warn!(vpg, "sync mode stays suspended: reading the link's acknowledgements: {e}");
                            tokio::time::sleep(RETRY_AFTER_ERROR).await;
                        }
                    }
                }
            }
        }
    }

    /// Suspended -> resuming: FLUSHes wait for the journal from here on.
    /// `caught_up`: the log's end the journal just acknowledged (past what
    /// a resync read back, if there was one).
    fn begin_resuming(&self, caught_up: u64) {
        self.state.send_if_modified(|s| match s {
            State::Suspended { since, why, released } => {
                let until = (*released).max(caught_up);
                *s = State::Resuming { since: *since, why: std::mem::take(why), until };
                true
            }
            _ => false,
        });
    }

    /// Resuming -> strict, once the journal has `until`.
    fn confirm(&self, vpg: &str, until: u64, since: Instant) {
        let done = self.state.send_if_modified(|s| match s {
            State::Resuming { until: u, .. } if *u == until => {
                *s = State::Strict;
                true
            }
            _ => false,
        });
        if done {
            tracing::info!(
                vpg,
                "sync mode resumed after {}: the recovery journal holds every write a FLUSH let go meanwhile \
                 (through seq {until}); FLUSH and FUA writes wait for it again",
                humantime::format_duration(Duration::from_secs(since.elapsed().as_secs()))
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    fn sync_after(secs: u64) -> SyncGate {
        let policy =
            SyncPolicy { mode: ReplicationMode::Sync, timeout: Some(SyncTimeout::After(Duration::from_secs(secs))) };
        SyncGate::new(policy, 0)
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
        let gate = Arc::new(sync_after(10));
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
        let never = SyncGate::new(SyncPolicy { mode: ReplicationMode::Sync, timeout: Some(SyncTimeout::Never) }, 9);
        assert!(never.status().is_none(), "a strict gate starts strict");
        let waited = tokio::time::timeout(Duration::from_secs(3600), never.wait("v", 1, std::future::pending())).await;
        assert!(waited.is_err(), "a strict sync wait does not end without the journal");
        assert!(never.status().is_none());
        let not_sync = SyncGate::new(SyncPolicy::default(), 9);
        not_sync.wait("v", 1, std::future::pending()).await.unwrap();
        assert!(not_sync.status().is_none());
    }

    /// A recovery journal that acknowledges what the test says, and a log
    /// whose end the test moves.
    #[derive(Default)]
    struct Link {
        acked: tokio::sync::watch::Sender<u64>,
        appended: AtomicU64,
        /// True while the VPG is in bitmap mode or resyncing.
        unlogged: tokio::sync::watch::Sender<bool>,
    }

    impl Link {
        fn resume(self: &Arc<Self>, gate: &Arc<SyncGate>) {
            let (link, gate) = (self.clone(), gate.clone());
            tokio::spawn(async move {
                let appended = || link.appended.load(Ordering::SeqCst);
                let journaled = |seq| {
                    let mut acked = link.acked.subscribe();
                    async move {
                        let _ = acked.wait_for(|a| *a >= seq).await;
                        Ok(())
                    }
                };
                let logging = || {
                    let mut unlogged = link.unlogged.subscribe();
                    async move {
                        let _ = unlogged.wait_for(|u| !*u).await;
                    }
                };
                gate.resume_when_caught_up("v", appended, journaled, logging).await
            });
        }
    }

    /// Review of helper-39: a FLUSH let go while suspended, after the
    /// resume had read the log's end, kept status at "resumed" while the
    /// journal did not hold its write yet.
    #[tokio::test(start_paused = true)]
    async fn sync_mode_is_confirmed_only_once_the_journal_holds_what_was_let_go() {
        let gate = Arc::new(sync_after(10));
        let link = Arc::new(Link::default());
        link.appended.store(5, Ordering::SeqCst);
        gate.wait("v", 5, std::future::pending()).await.unwrap();
        link.resume(&gate);
        tokio::time::sleep(Duration::from_millis(10)).await;
        // The resume waits for seq 5; a write 6 is flushed meanwhile.
        link.appended.store(6, Ordering::SeqCst);
        let at_once = tokio::time::timeout(Duration::from_millis(1), gate.wait("v", 6, std::future::pending())).await;
        assert!(at_once.is_ok(), "suspended: the FLUSH returns at once");
        link.acked.send_replace(5);
        tokio::time::sleep(Duration::from_millis(10)).await;
        let status = gate.status().expect("seq 6 was let go and is not acknowledged");
        assert!(status.resuming && status.why.contains("seq 6"), "{}", status.why);
        // Resuming: a FLUSH waits for the journal again.
        let strict = tokio::time::timeout(Duration::from_secs(1), gate.wait("v", 7, std::future::pending())).await;
        assert!(strict.is_err(), "resuming, a FLUSH waits for the journal");
        link.acked.send_replace(6);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(gate.status().is_none(), "the journal holds everything let go");
    }

    /// A start finds unacknowledged records the agent before may have let
    /// go: resuming until the journal has them.
    #[tokio::test(start_paused = true)]
    async fn a_start_resumes_until_the_journal_has_what_the_log_held() {
        let policy = SyncPolicy { mode: ReplicationMode::Sync, timeout: None };
        let gate = Arc::new(SyncGate::new(policy, 42));
        let status = gate.status().expect("resuming");
        assert!(status.resuming && status.why.contains("seq 42"), "{}", status.why);
        let link = Arc::new(Link::default());
        link.resume(&gate);
        link.acked.send_replace(42);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(gate.status().is_none());
    }

    /// Review of helper-40: a FLUSH let go by bitmap mode suspends sync
    /// mode, and it resumes only once the VPG logs again and the journal
    /// holds the log's end then (past what the resync read back), not at
    /// the FLUSH's own older seq.
    #[tokio::test(start_paused = true)]
    async fn bitmap_mode_suspends_sync_mode_until_the_journal_holds_the_resync() {
        let gate = Arc::new(sync_after(10));
        let link = Arc::new(Link::default());
        link.unlogged.send_replace(true);
        link.appended.store(5, Ordering::SeqCst);
        assert!(gate.let_go("v", || "bitmap mode".to_string(), 5));
        assert!(!gate.status().expect("suspended").resuming);
        link.resume(&gate);
        link.acked.send_replace(5);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!gate.status().expect("still suspended").resuming, "the VPG does not log every write yet");
        // The resync read the marked regions back into seqs 6..9.
        link.appended.store(9, Ordering::SeqCst);
        link.unlogged.send_replace(false);
        tokio::time::sleep(Duration::from_millis(10)).await;
        link.acked.send_replace(9);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(gate.status().is_none(), "the journal holds what the resync read back");
        // An async VPG's FLUSH let go by bitmap mode changes nothing.
        let not_sync = SyncGate::new(SyncPolicy::default(), 0);
        assert!(not_sync.let_go("v", || unreachable!("async mode"), 5));
        assert!(not_sync.status().is_none());
        // "never" is not let go (a start's resync): the FLUSH waits, and the
        // gate, which has no resume, is never suspended.
        let never = SyncGate::new(SyncPolicy { mode: ReplicationMode::Sync, timeout: Some(SyncTimeout::Never) }, 0);
        assert!(!never.let_go("v", || unreachable!("never"), 5));
        assert!(never.status().is_none() && never.waits_for_good());
    }
}
