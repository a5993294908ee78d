//! The protected side's targets, one per VPG, each served apart: a VPG
//! whose target cannot be served (a kernel NBD device refused, a configfs
//! write failed) is logged with its cause, shown in status with it, and
//! tried again with a growing pause, while every other VPG's target, the
//! NBD exports and replication go on. One VPG's target stopping the agent
//! would take every VPG's hypervisors down with it.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Pauses between attempts at a target not served: the first, doubled
/// after each failure up to the last.
pub const RETRY_FIRST: Duration = Duration::from_secs(5);
pub const RETRY_MAX: Duration = Duration::from_secs(120);

/// A target not served (yet): its name, and why the last attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotServed {
    pub iqn: String,
    pub error: String,
}

/// Each VPG's target (`T`: `iscsi::Target`), served or not yet.
pub struct VpgTargets<T> {
    slots: Vec<Mutex<Result<T, NotServed>>>,
}

/// One VPG to serve a target for: its name and the target's IQN.
pub struct Wanted {
    pub vpg: String,
    pub iqn: String,
}

impl<T: Send + 'static> VpgTargets<T> {
    /// Serves target `i` of `wanted` with `serve(i)`, one after another; a
    /// target that fails is kept with its error and served again in the
    /// background (`RETRY_FIRST`, doubling to `RETRY_MAX`) until it is. An
    /// error `final_error` says cannot be retried in this process ends it
    /// all (the caller stops) at the first attempt, and ends the retries
    /// of its target after.
    pub async fn serve_each<F, Fut, E>(
        wanted: Vec<Wanted>,
        final_error: fn(&E) -> bool,
        serve: F,
    ) -> Result<Arc<Self>, E>
    where
        F: Fn(usize) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        E: std::error::Error + Send + Sync + 'static,
    {
        let mut slots = Vec::new();
        for (i, w) in wanted.iter().enumerate() {
            let slot = match serve(i).await {
                Err(e) if final_error(&e) => return Err(e),
                Err(e) => {
                    let error = crate::error_chain::Chain(&e).to_string();
                    tracing::error!(
                        vpg = %w.vpg,
                        "the iSCSI target {} is not served: {error}; the other VPGs are, and it is tried again in {} s",
                        w.iqn,
                        RETRY_FIRST.as_secs()
                    );
                    Err(NotServed { iqn: w.iqn.clone(), error })
                }
                Ok(target) => Ok(target),
            };
            slots.push(Mutex::new(slot));
        }
        let targets = Arc::new(VpgTargets { slots });
        let serve = Arc::new(serve);
        for (i, w) in wanted.into_iter().enumerate() {
            if targets.slots[i].lock().expect("target slot").is_err() {
                tokio::spawn(retry(targets.clone(), i, w, final_error, serve.clone()));
            }
        }
        Ok(targets)
    }

    /// What status shows of target `i`: `shown` of it once served, else
    /// its name and why it is not.
    pub fn status<S>(&self, i: usize, shown: impl Fn(&T) -> S, not_served: impl Fn(&NotServed) -> S) -> S {
        match &*self.slots[i].lock().expect("target slot") {
            Ok(target) => shown(target),
            Err(why) => not_served(why),
        }
    }
}

/// Serves target `i` again until it is served, or an error `final_error`
/// says is final; a failure logged once per distinct cause (the pause
/// grows, so the log does not fill).
async fn retry<T, F, Fut, E>(
    targets: Arc<VpgTargets<T>>,
    i: usize,
    w: Wanted,
    final_error: fn(&E) -> bool,
    serve: Arc<F>,
) where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::error::Error + Send + Sync + 'static,
{
    let mut pause = RETRY_FIRST;
    let mut attempts = 1u32;
    loop {
        tokio::time::sleep(pause).await;
        attempts += 1;
        match serve(i).await {
            Ok(target) => {
                *targets.slots[i].lock().expect("target slot") = Ok(target);
                tracing::info!(vpg = %w.vpg, "the iSCSI target {} is served now (attempt {attempts})", w.iqn);
                return;
            }
            Err(e) if final_error(&e) => {
                let error = format!("{}; restart the agent to serve it", crate::error_chain::Chain(&e));
                tracing::error!(vpg = %w.vpg, "the iSCSI target {} is not served, and not tried again: {error}", w.iqn);
                *targets.slots[i].lock().expect("target slot") = Err(NotServed { iqn: w.iqn.clone(), error });
                return;
            }
            Err(e) => {
                let error = crate::error_chain::Chain(&e).to_string();
                pause = (pause * 2).min(RETRY_MAX);
                let mut slot = targets.slots[i].lock().expect("target slot");
                if slot.as_ref().err().is_none_or(|was| was.error != error) {
                    tracing::error!(
                        vpg = %w.vpg,
                        "the iSCSI target {} is still not served: {error}; tried again in {} s",
                        w.iqn,
                        pause.as_secs()
                    );
                }
                *slot = Err(NotServed { iqn: w.iqn.clone(), error });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct Failed(String);

    fn wanted(n: usize) -> Vec<Wanted> {
        (0..n).map(|i| Wanted { vpg: format!("vpg{i}"), iqn: format!("iqn.t:vpg{i}") }).collect()
    }

    fn shown(targets: &VpgTargets<String>, i: usize) -> String {
        targets.status(i, |t| format!("served {t}"), |n| format!("not served {}: {}", n.iqn, n.error))
    }

    /// A VPG whose target fails is kept with its cause while the others
    /// are served, and is served once an attempt succeeds.
    #[tokio::test(start_paused = true)]
    async fn a_target_that_fails_leaves_the_others_served_and_is_tried_again() {
        let attempts = Arc::new(AtomicU32::new(0));
        let seen = attempts.clone();
        let targets = VpgTargets::serve_each(
            wanted(3),
            |_: &Failed| false,
            move |i| {
                let n = if i == 1 { seen.fetch_add(1, Ordering::SeqCst) + 1 } else { 0 };
                async move {
                    match (i, n) {
                        (1, 1..=2) => Err(Failed(format!("no kernel NBD device left (attempt {n})"))),
                        _ => Ok(format!("target {i}")),
                    }
                }
            },
        )
        .await
        .unwrap();
        assert_eq!(shown(&targets, 0), "served target 0");
        assert_eq!(shown(&targets, 1), "not served iqn.t:vpg1: no kernel NBD device left (attempt 1)");
        assert_eq!(shown(&targets, 2), "served target 2");
        tokio::time::sleep(RETRY_FIRST + Duration::from_millis(1)).await;
        assert_eq!(shown(&targets, 1), "not served iqn.t:vpg1: no kernel NBD device left (attempt 2)");
        // The pause doubled: not yet after another RETRY_FIRST...
        tokio::time::sleep(RETRY_FIRST).await;
        assert_eq!(attempts.load(Ordering::SeqCst), 2);
        // ...served after the second pause.
        tokio::time::sleep(RETRY_FIRST + Duration::from_millis(1)).await;
        assert_eq!(shown(&targets, 1), "served target 1");
        assert_eq!(attempts.load(Ordering::SeqCst), 3);
        tokio::time::sleep(RETRY_MAX * 2).await;
        assert_eq!(attempts.load(Ordering::SeqCst), 3, "a served target is not served again");
    }

    /// An error the caller calls final stops it all at the first attempt
    /// (a target left by the agent before: the next agent takes it over),
    /// and ends a target's retries after.
    #[tokio::test(start_paused = true)]
    async fn a_final_error_ends_it_all_at_start_and_ends_the_retries_after() {
        let is_final = |e: &Failed| e.0.starts_with("left");
        let stopped = VpgTargets::<String>::serve_each(wanted(2), is_final, |i| async move {
            if i == 1 {
                Err(Failed("left behind".into()))
            } else {
                Ok("target 0".to_string())
            }
        })
        .await;
        assert_eq!(stopped.err().map(|e| e.0), Some("left behind".to_string()));
        let attempts = Arc::new(AtomicU32::new(0));
        let seen = attempts.clone();
        let targets = VpgTargets::<String>::serve_each(wanted(1), is_final, move |_| {
            let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
            async move { Err(Failed(if n == 1 { "refused".into() } else { "left behind".into() })) }
        })
        .await
        .unwrap();
        tokio::time::sleep(RETRY_MAX * 4).await;
        assert_eq!(attempts.load(Ordering::SeqCst), 2, "no retry after a final error");
        assert_eq!(shown(&targets, 0), "not served iqn.t:vpg0: left behind; restart the agent to serve it");
    }
}
