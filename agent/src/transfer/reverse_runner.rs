//! The reverse tasks of the old protected site: started by `tidemark
//! reverse` (or at start, for a VPG under reverse protection), stopped by
//! a switch-back, which then starts the VPG's forward sender again.

use super::reverse::{Ended, ReverseProgress};
use super::TransferError;
use crate::capture::vpg::VpgCapture;
use crate::config::PeerConfig;
use crate::log::state::ReverseState;
use crate::protected_state::Event;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

type Result<T, E = TransferError> = std::result::Result<T, E>;

/// How long `reverse` waits to hear of a failover that just happened
/// (a few keepalive intervals).
const FAILOVER_NEWS_POLL: Duration = Duration::from_millis(200);
const FAILOVER_NEWS_POLLS: u32 = 50;

/// Starts a VPG's forward sender (after a switch-back).
pub type StartForward = Box<dyn Fn(&Arc<VpgCapture>) + Send + Sync>;

/// A running reverse task: its progress, and the flag that stops it.
type ReverseTask = (watch::Receiver<ReverseProgress>, Arc<AtomicBool>);

/// Starts and tracks the reverse tasks of the old protected site.
pub struct ReverseRunner {
    pub(super) peer: PeerConfig,
    pub(super) tls: Arc<rustls::ClientConfig>,
    running: std::sync::Mutex<std::collections::BTreeMap<String, ReverseTask>>,
    forward: StartForward,
}

impl ReverseRunner {
    pub fn new(peer: PeerConfig, tls: Arc<rustls::ClientConfig>, start_forward: StartForward) -> Self {
        ReverseRunner { peer, tls, running: Default::default(), forward: start_forward }
    }

    /// Starts the VPG's forward sender.
    pub fn start_forward(&self, vpg: &Arc<VpgCapture>) {
        (self.forward)(vpg)
    }

    /// The VPG's reverse task, started if it is not running.
    pub fn ensure(self: &Arc<Self>, vpg: &Arc<VpgCapture>) -> watch::Receiver<ReverseProgress> {
        let mut running = self.running.lock().expect("reverse tasks");
        if let Some((rx, _)) = running.get(&vpg.name) {
            return rx.clone();
        }
        let (tx, rx) = watch::channel(ReverseProgress::default());
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let (me, vpg2) = (self.clone(), vpg.clone());
        tokio::spawn(async move {
            let ended = super::reverse::run(&vpg2, &me.peer, me.tls.clone(), &tx, &stop2).await;
            if matches!(ended, Ended::SwitchedBack) {
                if let Err(e) = finish_interrupted(&me, &vpg2).await {
                    tracing::error!(vpg = %vpg2.name, "finishing the switch-back failed (run `tidemark move-back`): {e_chain}", e_chain = crate::error_chain::Chain(&e));
                    // Ended: the next `ensure` starts a task again.
                    me.running.lock().expect("reverse tasks").remove(&vpg2.name);
                }
            }
        });
        running.insert(vpg.name.clone(), (rx.clone(), stop));
        rx
    }

    /// Stops the VPG's reverse task (it ends at its next turn).
    pub fn stop(&self, vpg: &str) {
        if let Some((_, stop)) = self.running.lock().expect("reverse tasks").remove(vpg) {
            stop.store(true, Ordering::SeqCst);
        }
    }
}

/// `tidemark reverse` on the old protected site: start receiving the VPG
/// back and wait until the delta copy is applied.
pub async fn start(runner: &Arc<ReverseRunner>, vpg: &Arc<VpgCapture>, wait: Duration) -> Result<String> {
    // Not while a move or a switch-back changes what this site is.
    let running = vpg.moving.try_lock().map_err(|_| {
        TransferError::Peer(format!("a move or switch-back of VPG {:?} is running; try again after it", vpg.name))
    })?;
    // Right after a failover (or a move's promote whose answer was lost)
    // this site may not have heard of it yet: it does at the link's next
    // keepalive.
    for _ in 0..FAILOVER_NEWS_POLLS {
        if vpg.check_writes_change(Event::ReverseBegin).is_ok() {
            break;
        }
        tokio::time::sleep(FAILOVER_NEWS_POLL).await;
    }
    vpg.check_writes_change(Event::ReverseBegin)?;
    if vpg.reverse_state().is_none() {
        vpg.set_reverse_state(ReverseState::default())?;
    }
    drop(running);
    let mut progress = runner.ensure(vpg);
    let reached = matches!(tokio::time::timeout(wait, progress.wait_for(|p| p.in_sync)).await, Ok(Ok(_)));
    let p = progress.borrow().clone();
    if !reached {
        return Err(TransferError::Peer(format!(
            "the delta copy is not applied yet after {wait:?} ({}); reverse protection keeps trying",
            p.last_error.unwrap_or_else(|| format!("{} received so far", crate::status::format_bytes(p.wire_bytes)))
        )));
    }
    let size: u64 = vpg.volumes.iter().map(|v| v.size).sum();
    Ok(format!(
        "reverse protection of VPG {:?} is running; this site is in sync with the recovery site. \
         Received {} on the wire ({} of extent data) for {} of volumes ({:.2}%)",
        vpg.name,
        crate::status::format_bytes(p.wire_bytes),
        crate::status::format_bytes(p.data_bytes),
        crate::status::format_bytes(size),
        p.wire_bytes as f64 * 100.0 / size as f64
    ))
}

/// The reverse session found the failover over at the recovery site
/// after this site recorded a switch-back's marker (a stop or a lost
/// answer came between): the switch-back is finished here.
async fn finish_interrupted(runner: &ReverseRunner, vpg: &Arc<VpgCapture>) -> Result<()> {
    // Not alongside a `tidemark move-back` that finishes it too.
    let _running = vpg.moving.lock().await;
    if vpg.reverse_state().is_none() || vpg.move_back_marker().is_none() {
        return Ok(());
    }
    tracing::warn!(vpg = %vpg.name, "the recovery site ended its failover (switch-back); finishing it here");
    take_back(runner, vpg, 0).await.map(|_| ())
}

/// The failover is over at the recovery site: a new forward stream (above
/// `min_seq`, the journal's end), then writes here again, then the sender.
pub(super) async fn take_back(runner: &ReverseRunner, vpg: &Arc<VpgCapture>, min_seq: u64) -> Result<String> {
    fail::fail_point!("move-back-before-take-back", |_| std::process::abort());
    // The new stream first: the old one holds writes from before the
    // failover that the volumes no longer hold, and must never be sent.
    let stream_seq = vpg.restart_stream(min_seq).await?;
    fail::fail_point!("move-back-after-new-stream", |_| std::process::abort());
    vpg.end_reverse().await?;
    runner.stop(&vpg.name);
    runner.start_forward(vpg);
    let message = format!(
        "switched back VPG {:?}: it runs here again and takes writes; protection towards the recovery site \
         restarts with a new stream (seq {stream_seq}) whose copy sends only extents that differ",
        vpg.name
    );
    tracing::warn!("{message}");
    Ok(message)
}
