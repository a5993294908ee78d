//! The protected appliance: NBD exports in front of the volumes, one
//! protected log and one sender per VPG, periodic checkpoints, status.

use crate::capture::export::CaptureExport;
use crate::capture::volume::Volume;
use crate::capture::vpg::VpgCapture;
use crate::config::{parse_fingerprint, ProtectedConfig};
use crate::coordination::coordinator::Coordinator;
use crate::nbd::export::{BlockExport, ExportTable};
use crate::nbd::server;
use crate::record::vpg_id;
use crate::status::{self, VpgStatus, STATUS_INTERVAL_MS};
use crate::transfer::link_share::LinkShare;
use crate::transfer::sender::{self, LinkSeat, SenderStats};
use crate::wire::tls;
use anyhow::{Context, Result};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

struct VpgRuntime {
    capture: Arc<VpgCapture>,
    stats: Arc<SenderStats>,
}

pub async fn run(cfg: ProtectedConfig) -> Result<()> {
    let identity = tls::load_identity(&cfg.node.cert, &cfg.node.key)?;
    let pinned = parse_fingerprint(&cfg.peer.fingerprint)?;
    let tls_config = tls::client_config(identity.duplicate(), pinned)?;
    warn_if_logs_overcommit(&cfg);
    let mut runtimes = Vec::new();
    let mut exports = Vec::new();
    for vpg_cfg in &cfg.vpgs {
        let volumes = vpg_cfg.volumes.iter().map(|v| Volume::open(&v.name, &v.path)).collect::<Result<Vec<_>, _>>()?;
        let dir = cfg.node.data_dir.join("log").join(&vpg_cfg.name);
        // Nothing here waits for the log or the link: whatever a start
        // has to do runs in the background, and the VMs get their disks.
        let capture = VpgCapture::open(
            vpg_cfg.name.clone(),
            crate::capture::sync_gate::SyncPolicy { mode: vpg_cfg.mode, timeout: vpg_cfg.sync_timeout },
            volumes,
            vpg_id(&vpg_cfg.name),
            &dir,
            cfg.log.size(),
            crate::capture::vpg::StreamTo::RecoverySite(&vpg_cfg.bitmap),
        )?;
        if vpg_cfg.detection.enabled {
            capture.enable_detection(&vpg_cfg.detection)?;
        }
        for (i, v) in vpg_cfg.volumes.iter().enumerate() {
            let export: Arc<dyn BlockExport> = Arc::new(CaptureExport { vpg: capture.clone(), volume: i as u32 });
            exports.push((v.name.clone(), export));
        }
        runtimes
            .push((vpg_cfg.checkpoint_interval_ms, VpgRuntime { capture, stats: Arc::new(SenderStats::default()) }));
    }
    let by_name: Arc<std::collections::BTreeMap<String, Arc<VpgCapture>>> =
        Arc::new(runtimes.iter().map(|(_, rt)| (rt.capture.name.clone(), rt.capture.clone())).collect());
    let coordinator = Arc::new(match &cfg.coordination {
        Some(c) => Coordinator::new(c, &identity, &by_name)?,
        None => Coordinator::none(),
    });
    // One cap for the link, shared by every VPG on it.
    let link = Arc::new(LinkShare::new(cfg.peer.throttle_bytes_per_sec, cfg.vpgs.len()));
    let start_forward: crate::transfer::reverse_runner::StartForward = {
        let seats: std::collections::BTreeMap<String, (Arc<SenderStats>, crate::config::Priority)> = runtimes
            .iter()
            .zip(&cfg.vpgs)
            .map(|((_, rt), v)| (rt.capture.name.clone(), (rt.stats.clone(), v.priority)))
            .collect();
        let (peer, tls_config, link) = (cfg.peer.clone(), tls_config.clone(), link.clone());
        Box::new(move |capture: &Arc<VpgCapture>| {
            let Some((stats, priority)) = seats.get(&capture.name) else { return };
            let seat = LinkSeat { share: link.clone(), priority: *priority };
            tokio::spawn(sender::run(capture.clone(), peer.clone(), tls_config.clone(), stats.clone(), seat));
        })
    };
    let reverse = Arc::new(crate::transfer::reverse_runner::ReverseRunner::new(
        cfg.peer.clone(),
        tls_config.clone(),
        start_forward,
    ));
    let agent = crate::api::local::Agent::Protected(by_name.clone(), reverse.clone(), coordinator.clone());
    crate::api::start_control(&cfg.node, &cfg.system, agent).await?;
    if let Some(c) = &cfg.coordination {
        crate::coordination::member::start(c, identity, by_name.clone()).await?;
    }
    let listener = crate::listen::bind_listener(cfg.capture.listen, "NBD").await?;
    let table = ExportTable::listed();
    table.add(exports)?;
    tokio::spawn(server::serve(listener, table));
    // Each VPG's iSCSI target (None without iSCSI), served for as long as
    // the agent runs (status keeps it).
    let mut targets = None;
    if let Some(iscsi) = &cfg.iscsi {
        // The LUN identities come from the appliance's certificate.
        let fingerprint = tls::fingerprint_of_file(&cfg.node.cert)?;
        let captures: Vec<Arc<VpgCapture>> = runtimes.iter().map(|(_, rt)| rt.capture.clone()).collect();
        let frontend =
            crate::iscsi::Frontend::on_this_kernel(iscsi, &cfg.node.name, &fingerprint, &cfg.node.data_dir.join("lio"))
                .context("starting the iSCSI front-end")?;
        targets =
            Some(crate::iscsi::start(Arc::new(frontend), captures).await.context("starting the iSCSI front-end")?);
    }
    for ((interval_ms, rt), vpg_cfg) in runtimes.iter().zip(&cfg.vpgs) {
        rt.capture.spawn_initial_copy(rt.capture.copy_generation());
        tokio::spawn(checkpoint_timer(rt.capture.clone(), *interval_ms));
        if let Some(every) = vpg_cfg.verify_interval {
            tokio::spawn(verify_timer(rt.capture.clone(), every));
        }
        // A VPG under reverse protection receives from the recovery site.
        if rt.capture.reverse_state().is_some() {
            reverse.ensure(&rt.capture);
        } else {
            reverse.start_forward(&rt.capture);
        }
    }
    coordinator.start_timers();
    let runtimes: Vec<VpgRuntime> = runtimes.into_iter().map(|(_, rt)| rt).collect();
    let names: Vec<&str> = cfg.vpgs.iter().map(|v| v.name.as_str()).collect();
    tracing::info!(
        "tidemark protected ready: NBD on {}, peer {}, VPGs {:?}",
        cfg.capture.listen,
        cfg.peer.address,
        names
    );
    let status_loop = status_writer(cfg.clone(), runtimes, targets, coordinator);
    tokio::select! {
        _ = super::shutdown_signal() => tracing::info!("stopping"),
        r = status_loop => r?,
    }
    Ok(())
}

async fn checkpoint_timer(capture: Arc<VpgCapture>, interval_ms: u64) {
    let mut tick = tokio::time::interval(Duration::from_millis(interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        if let Err(e) = capture.scheduled_checkpoint().await {
            tracing::error!(vpg = %capture.name, "checkpoint failed: {e_chain}", e_chain = crate::error_chain::Chain(&e));
        }
    }
}

/// A scheduled online verify (no repair): the report goes to status and
/// the log; differing extents are logged as errors.
async fn verify_timer(capture: Arc<VpgCapture>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        // Not while the stream has ended here (moved, failed over, reverse).
        if capture.writes_refused().is_some() || capture.reverse_state().is_some() {
            continue;
        }
        match capture.verify(false).await {
            Ok(r) if r.differing_extents > 0 => tracing::error!(
                vpg = %capture.name,
                "scheduled verify: {} extents differ from the recovery site (run `tidemark verify --repair`)",
                r.differing_extents
            ),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(vpg = %capture.name, "scheduled verify did not finish: {e_chain}", e_chain = crate::error_chain::Chain(&e))
            }
        }
    }
}

async fn status_writer(
    cfg: ProtectedConfig,
    runtimes: Vec<VpgRuntime>,
    targets: Option<Arc<crate::iscsi::vpg_targets::VpgTargets<crate::iscsi::Target>>>,
    coordinator: Arc<Coordinator>,
) -> Result<()> {
    let mut prev_raw: Vec<u64> = vec![0; runtimes.len()];
    let mut over_target = vec![false; runtimes.len()];
    let configfs = std::path::Path::new(crate::iscsi::lio::CONFIGFS_TARGET);
    let mut tick = tokio::time::interval(Duration::from_millis(STATUS_INTERVAL_MS));
    let mut status_file = status::StatusFile::new(&cfg.node.data_dir);
    loop {
        tick.tick().await;
        let mut vpgs = Vec::new();
        for (i, (rt, vpg_cfg)) in runtimes.iter().zip(&cfg.vpgs).enumerate() {
            let log = &rt.capture.log;
            let (lag_bytes, lag_seconds) = log.lag();
            let rpo_target_seconds = vpg_cfg.rpo_alert.map(|t| t.as_secs_f64());
            check_rpo(&rt.capture.name, lag_seconds, rpo_target_seconds, &mut over_target[i]);
            let raw = rt.stats.raw_bytes.load(Ordering::Relaxed);
            let throughput = raw.saturating_sub(prev_raw[i]) * 1000 / STATUS_INTERVAL_MS;
            prev_raw[i] = raw;
            let connected = rt.stats.connected.load(Ordering::Relaxed);
            let copied = rt.capture.copied().len();
            let total = rt.capture.volumes.len();
            let stopped = rt.capture.writes_refused();
            let failure = rt.capture.failure();
            let reverse = rt.capture.reverse_state();
            let bitmap = rt.capture.bitmap_status();
            let kept = match &bitmap {
                Some(b) if b.mode == "bitmap" => "changed regions are kept in the dirty map",
                _ => "writes are kept in the protected log",
            };
            let state = match (connected, copied == total) {
                _ if reverse.is_some() => {
                    let r = reverse.expect("checked");
                    format!(
                        "reverse protection: receiving from the recovery site (applied seq {}, {})",
                        r.applied_seq,
                        if r.in_sync { "in sync" } else { "delta copy in progress" }
                    )
                }
                _ if failure.is_some() => {
                    format!("failed, takes no writes until the agent restarts: {}", failure.expect("checked"))
                }
                _ if stopped.is_some() => format!("stopped: {}", stopped.expect("checked")),
                (false, _) => match rt.stats.last_error.lock().expect("last error").as_str() {
                    "" => format!("disconnected ({kept})"),
                    why => format!("disconnected ({kept}): {why}"),
                },
                _ if bitmap.is_some() => bitmap.as_ref().map(|b| b.mode.clone()).expect("checked"),
                (true, false) => {
                    format!("initial copy ({copied}/{total} volumes appended; {})", rt.capture.copy_progress())
                }
                (true, true) if log.appended_seq() > log.acked_seq() => "replicating".to_string(),
                (true, true) => "in sync".to_string(),
            };
            vpgs.push(VpgStatus {
                name: rt.capture.name.clone(),
                state,
                lag_bytes,
                lag_seconds,
                throughput_bytes_per_sec: throughput,
                transferred_bytes: raw,
                link_connected: Some(connected),
                head_seq: log.appended_seq(),
                acked_seq: log.acked_seq(),
                last_checkpoint: rt.capture.last_checkpoint(),
                note: format!(
                    "mode {:?}, {} reconnects",
                    rt.capture.sync.mode(),
                    rt.stats.reconnects.load(Ordering::Relaxed)
                )
                .to_lowercase(),
                history: None,
                iscsi: targets.iter().map(|t| iscsi_status(t, i, configfs)).collect(),
                priority: format!("{:?}", vpg_cfg.priority).to_lowercase(),
                rpo_target_seconds,
                rpo_over_target: over_target[i],
                alert: rt.capture.detection().and_then(|d| d.alert()).map(|a| a.describe()),
                bitmap,
                sync_suspended: rt.capture.sync_suspended(),
                last_verify: rt.capture.last_verify().map(|r| r.summary()),
                log: Some(rt.capture.log_space_status()),
            });
        }
        status::publish(&mut status_file, &cfg.node, "protected", vpgs, coordinator.status());
    }
}

/// What status shows of VPG `i`'s target: its LUNs and the initiators
/// logged in now, or why it is not served.
fn iscsi_status(
    targets: &crate::iscsi::vpg_targets::VpgTargets<crate::iscsi::Target>,
    i: usize,
    configfs: &std::path::Path,
) -> crate::status::IscsiStatus {
    let mut shown = targets.status(
        i,
        |target| target.status(),
        |not| crate::status::IscsiStatus {
            target: not.iqn.clone(),
            luns: Vec::new(),
            sessions: Vec::new(),
            error: Some(not.error.clone()),
        },
    );
    // Read with the target's slot let go (configfs reads block).
    if shown.error.is_none() {
        shown.sessions = crate::iscsi::lio::sessions(configfs, &shown.target);
    }
    shown
}

/// Says, at start, when the VPGs' logs together are promised more than
/// the data directory's file system holds: each log may fill to its
/// `capacity_bytes`, and a log that cannot get its space fails appends
/// (and, preallocating, claims its share at start).
fn warn_if_logs_overcommit(cfg: &ProtectedConfig) {
    let Ok(space) = crate::storage::Storage::space(&crate::storage::REAL, &cfg.node.data_dir) else { return };
    if let Some(why) = logs_overcommit(cfg.vpgs.len() as u64, cfg.log.capacity_bytes, space.total) {
        tracing::warn!("{why}");
    }
}

/// Why `vpgs` logs of `capacity` bytes do not fit a file system of
/// `fs_bytes`, if they do not (they may take all of it but the reserve a
/// log keeps free when it preallocates).
fn logs_overcommit(vpgs: u64, capacity: u64, fs_bytes: u64) -> Option<String> {
    let promised = vpgs.saturating_mul(capacity);
    let usable = fs_bytes / 100 * (100 - crate::log::FS_RESERVE_PERCENT);
    (promised > usable).then(|| {
        format!(
            "the protected logs are promised more than their disk holds: {vpgs} VPG(s) x [log] capacity_bytes {} = {}, \
             on a file system of {}; a log whose disk fills during an outage goes to bitmap mode before its high-water \
             mark, or with bitmap mode off fails its writes: lower capacity_bytes to at most {} or grow the disk",
            crate::status::format_bytes(capacity),
            crate::status::format_bytes(promised),
            crate::status::format_bytes(fs_bytes),
            crate::status::format_bytes(usable / vpgs.max(1))
        )
    })
}

/// Compares a VPG's lag with its RPO target (`rpo_alert`) and says so in
/// the log when it passes the target and when it is back under it.
fn check_rpo(vpg: &str, lag_seconds: f64, target_seconds: Option<f64>, over: &mut bool) {
    let Some(target) = target_seconds else { return };
    let now_over = lag_seconds > target;
    if now_over && !*over {
        tracing::warn!(
            vpg,
            "RPO target missed: the oldest write not yet at the recovery site is {lag_seconds:.1} s old, over the \
             {target:.0} s target (rpo_alert)"
        );
    } else if !now_over && *over {
        tracing::info!(vpg, "RPO back within its {target:.0} s target: lag {lag_seconds:.1} s");
    }
    *over = now_over;
}

#[cfg(test)]
mod tests {
    use super::logs_overcommit;

    #[test]
    fn logs_that_do_not_fit_their_disk_are_named() {
        assert_eq!(logs_overcommit(2, 1 << 30, 10 << 30), None);
        let why = logs_overcommit(4, 3 << 30, 10 << 30).expect("12 GiB promised on 10");
        assert!(why.contains("4 VPG(s)") && why.contains("at most 2.2 GiB"), "{why}");
        assert!(logs_overcommit(1, 1 << 30, 1 << 30).is_some(), "90 % at most");
    }
}
