//! The appliance's endpoints: the diagnostics bundle on 4005 (`diag`; the
//! bundle itself is `bundle`, which `tidemark diag` also writes locally),
//! the agent's local control socket (`local`), and the management API on
//! 4006 (`v1`), which runs the same operations for remote callers. Both
//! HTTPS endpoints are served by `https`. Checkpoint coordination (4009)
//! will live here too.

pub mod bundle;
pub mod diag;
pub mod https;
pub mod local;
pub mod remote;
pub mod v1;

use crate::audit_trail::Actor;
use std::path::Path;

/// Blocking threads the API's work (audit appends, reads, the user store,
/// metrics) holds at most at once. The runtime has 64, and FLUSH/FUA
/// fsyncs, journal appends and iSCSI writes need theirs: before, a caller
/// with the lowest role that connected, was refused and left, again and
/// again, queued audit appends (each waiting on the trail's lock and
/// fsync) on all of them (review of helper-71).
const BLOCKING_MAX: usize = 8;
static BLOCKING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(BLOCKING_MAX);

/// Runs `run` on a blocking thread once one of the API's `BLOCKING_MAX`
/// is free. A caller that goes away while it waits queues nothing; once
/// started, `run` runs to its end.
pub(crate) async fn blocking<T: Send + 'static>(
    run: impl FnOnce() -> T + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    let permit = BLOCKING.acquire().await.expect("the API's semaphore is never closed");
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        run()
    })
    .await
}

/// Appends to the audit trail off the runtime's threads; a trail that
/// cannot be written is logged, and the operation goes on.
pub(crate) async fn record(
    data_dir: &Path,
    actor: &Actor,
    op: &str,
    params: serde_json::Value,
    outcome: String,
    of: Option<u64>,
) -> Option<u64> {
    let (dir, who, what) = (data_dir.to_path_buf(), actor.clone(), op.to_string());
    let appended = blocking(move || crate::audit_trail::append_or_log(&dir, &who, &what, params, &outcome, of)).await;
    appended.unwrap_or_else(|e| {
        tracing::error!("audit trail: could not record {op}: {e}");
        None
    })
}

/// The running agent's control endpoints: the local socket always, the
/// management API (4006) when the config has an `[api]` table.
pub async fn start_control(
    node: &crate::config::Identity,
    system: &crate::config::SystemConfig,
    agent: local::Agent,
) -> anyhow::Result<()> {
    local::start(&node.data_dir, agent.clone())?;
    if let Some(api) = &system.api {
        v1::start(node, system, api, agent).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// However many callers, the API's work holds at most `BLOCKING_MAX`
    /// blocking threads; a caller dropped while waiting runs nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_apis_blocking_work_takes_a_bounded_number_of_threads() {
        let (now, most, ran) =
            (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let job = || {
            let (now, most, ran) = (now.clone(), most.clone(), ran.clone());
            move || {
                let running = now.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(running, Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(100));
                now.fetch_sub(1, Ordering::SeqCst);
                ran.fetch_add(1, Ordering::SeqCst);
            }
        };
        let callers: Vec<_> = (0..4 * super::BLOCKING_MAX).map(|_| tokio::spawn(super::blocking(job()))).collect();
        // Waiting behind all of them, then dropped: never runs.
        let dropped = tokio::spawn(super::blocking(job()));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        dropped.abort();
        for caller in callers {
            caller.await.unwrap().unwrap();
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        // At most: other tests in this process may hold some of them.
        let most = most.load(Ordering::SeqCst);
        assert!(most > 1 && most <= super::BLOCKING_MAX, "{most} at once");
        assert_eq!(ran.load(Ordering::SeqCst), 4 * super::BLOCKING_MAX, "the dropped caller's work ran");
    }
}
