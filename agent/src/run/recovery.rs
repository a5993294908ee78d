//! The recovery appliance: TLS listeners for control and data, one
//! journal per VPG, status.

use crate::config::RecoveryConfig;
use crate::journal::applier::{self, HistoryPolicy};
use crate::recovery::ops::RecoveryOps;
use crate::recovery_state::VpgState;
use crate::status::{self, CheckpointSummary, HistoryStatus, VpgStatus, STATUS_INTERVAL_MS};
use crate::transfer::receiver::{accept_loop, Receiver};
use crate::transfer::slot::VpgSlot;
use crate::wire::tls;
use anyhow::{Context, Result};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::TlsAcceptor;

pub async fn run(cfg: RecoveryConfig) -> Result<()> {
    let identity = tls::load_identity(&cfg.node.cert, &cfg.node.key)?;
    let access = cfg.listen.access()?;
    let acceptor = TlsAcceptor::from(tls::server_config(identity, access.fingerprints())?);
    let journal_root = cfg.node.data_dir.join("journal");
    std::fs::create_dir_all(&journal_root).with_context(|| format!("creating {}", journal_root.display()))?;
    let vpg_settings = cfg.clone();
    let receiver = Receiver::new(
        journal_root,
        Box::new(move |vpg| {
            let v = vpg_settings.vpg(vpg);
            HistoryPolicy { history: v.history, journal_limit: v.journal_limit, journal_cap: v.journal_cap }
        }),
        access,
    );
    {
        let receiver = receiver.clone();
        tokio::task::spawn_blocking(move || receiver.open_existing()).await??;
    }
    let nbd_listen = cfg.exports.as_ref().map(|e| e.listen);
    // Without LIO the agent runs on, NBD only: failed-over volumes, the
    // control socket and replication must not depend on the iSCSI front-end
    // (the audit reports it).
    let luns = cfg.iscsi.as_ref().and_then(|iscsi| match recovery_luns(&cfg, iscsi) {
        Ok(luns) => Some(luns),
        Err(e) => {
            tracing::error!("no iSCSI LUNs, NBD exports only: {e:#}");
            None
        }
    });
    let ops = crate::recovery::ops::RecoveryOps::new(&cfg.node.data_dir, nbd_listen, luns, receiver.vpgs.clone())?;
    let _ = receiver.ops.set(ops.clone());
    crate::api::start_control(&cfg.node, &cfg.system, crate::api::local::Agent::Recovery(ops.clone())).await?;
    if let Some(listen) = nbd_listen {
        let listener = crate::listen::bind_listener(listen, "NBD").await?;
        tokio::spawn(crate::nbd::server::serve(listener, ops.exports.clone()));
    }
    ops.resume_failovers().await?;
    let control = crate::listen::bind_listener((cfg.listen.address, cfg.listen.control_port).into(), "control").await?;
    let data = crate::listen::bind_listener((cfg.listen.address, cfg.listen.data_port).into(), "data").await?;
    tokio::spawn(accept_loop(control, acceptor.clone(), receiver.clone(), "control"));
    tokio::spawn(accept_loop(data, acceptor, receiver.clone(), "data"));
    tracing::info!(
        "tidemark recovery ready: control {}:{}, data {}:{}",
        cfg.listen.address,
        cfg.listen.control_port,
        cfg.listen.address,
        cfg.listen.data_port
    );
    tokio::select! {
        _ = super::shutdown_signal() => tracing::info!("stopping"),
        _ = status_writer(&cfg, &receiver, &ops) => {}
        _ = applier_loop(&receiver) => {}
    }
    Ok(())
}

async fn status_writer(cfg: &RecoveryConfig, receiver: &Arc<Receiver>, ops: &RecoveryOps) {
    let mut prev: std::collections::HashMap<String, u64> = Default::default();
    let mut tick = tokio::time::interval(Duration::from_millis(STATUS_INTERVAL_MS));
    let mut status_file = status::StatusFile::new(&cfg.node.data_dir);
    loop {
        tick.tick().await;
        let slots: Vec<(String, Arc<_>)> =
            receiver.vpgs.lock().expect("vpgs lock").iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let mut vpgs = Vec::new();
        let mut targets = ops.iscsi_status();
        for (name, slot) in slots {
            let received = slot.received_bytes.load(Ordering::Relaxed);
            let throughput = received.saturating_sub(prev.get(&name).copied().unwrap_or(0)) * 1000 / STATUS_INTERVAL_MS;
            prev.insert(name.clone(), received);
            let history = history_status(&slot);
            let vpg_state = slot.state();
            let test = vpg_state.testing_at().map(|c| format!("test failover running at checkpoint {c}"));
            let iscsi = targets.remove(&name).unwrap_or_default();
            let journal = slot.journal.lock().expect("journal lock");
            let index = &journal.index;
            // The newest checkpoint that can be restored (complete).
            let last = index.latest_consistent();
            let lag_seconds = last.map_or(0.0, |c| crate::record::now_ms().saturating_sub(c.time_ms) as f64 / 1000.0);
            let state = match vpg_state {
                VpgState::Committing { .. } => "failover in progress".to_string(),
                VpgState::Reopening => "failed over; switching back: the journal is being reopened".to_string(),
                VpgState::FailedOver { checkpoint, .. } if ops.switching_back(&name) => format!(
                    "failed over at checkpoint {checkpoint}; switching back to the old site (writes refused here)"
                ),
                VpgState::FailedOver { checkpoint, .. } => {
                    format!("failed over at checkpoint {checkpoint} (volumes live here)")
                }
                _ if index.initial_copy_complete() => "protected".to_string(),
                _ => "initial copy in progress".to_string(),
            };
            // A failed-over VPG's reverse log, for the old site.
            let reverse_bitmap = ops.reverse_capture_of(&name).and_then(|c| c.bitmap_status());
            vpgs.push(VpgStatus {
                name,
                state,
                lag_bytes: 0,
                lag_seconds,
                throughput_bytes_per_sec: throughput,
                transferred_bytes: received,
                link_connected: None,
                head_seq: index.durable_seq,
                acked_seq: index.durable_seq,
                last_checkpoint: last.map(|c| CheckpointSummary { id: c.id, time_ms: c.time_ms, tag: c.tag.clone() }),
                note: [index.damage.as_ref().map(|d| format!("journal was damaged: {d}")), test]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join("; "),
                history: Some(history),
                iscsi,
                priority: String::new(),
                rpo_target_seconds: None,
                rpo_over_target: false,
                alert: None,
                bitmap: reverse_bitmap,
                sync_suspended: None,
                last_verify: None,
                log: None,
            });
        }
        vpgs.sort_by(|a, b| a.name.cmp(&b.name));
        status::publish(&mut status_file, &cfg.node, "recovery", vpgs, Vec::new());
    }
}

/// How often the applier looks at each VPG's window.
const APPLY_INTERVAL: Duration = Duration::from_secs(1);

/// Moves each VPG's replica forward as its history ages out (see
/// `journal::applier`). A failing pass is reported in status and tried
/// again; it never stops the stream.
async fn applier_loop(receiver: &Arc<Receiver>) {
    let mut tick = tokio::time::interval(APPLY_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let slots: Vec<Arc<VpgSlot>> = receiver.vpgs.lock().expect("vpgs lock").values().cloned().collect();
        // A failed-over VPG's replica is live: the applier leaves it alone.
        for slot in slots.into_iter().filter(|s| s.state().replica_moves()) {
            let task = slot.clone();
            let result = tokio::task::spawn_blocking(move || apply_once(&task)).await;
            let (capped, volume_count) = {
                let journal = slot.journal.lock().expect("journal lock");
                (journal.capped().map(str::to_owned), journal.meta.volumes.len())
            };
            let mut history = slot.history.lock().expect("history lock");
            let before = history.warning.clone();
            match result {
                Ok(Ok(report)) => {
                    // Said until the replica is at a checkpoint again (also
                    // when a lease at head moved it on since), across restarts.
                    let between = report.state.left_by_limit && report.state.base.is_none();
                    history.between_checkpoints =
                        between.then(|| (report.applied_seq, report.state.is_image(volume_count)));
                    history.journal_bytes = report.journal_bytes;
                    history.replica_seq = report.applied_seq;
                    let why = if let Some(damage) = &report.journal_damage {
                        damage.clone()
                    } else if !report.void_pins.is_empty() {
                        format!(
                            "pinned checkpoints {:?} are no longer in the journal (it was repaired); \
                             they protect nothing: release them with `tidemark unpin`",
                            report.void_pins
                        )
                    } else if let Some(pin) = &report.pinned {
                        pinned_warning(pin, report.journal_bytes, slot.policy.journal_limit)
                    } else if !report.held_by.is_empty() {
                        format!("history is held past the window by an open {}", report.held_by.join(", "))
                    } else if let Some(at) = report.held_consistent {
                        format!(
                            "the replica stays at checkpoint {at}, the last consistent one: newer checkpoints \
                             passed the history window but are no image (a resync or a new stream's copy is under \
                             way); the journal grows until one is (journal_limit bounds it)"
                        )
                    } else if let Some((seq, image)) = history.between_checkpoints {
                        between_checkpoints_warning(seq, image)
                    } else if report.disk_nearly_full {
                        "the journal's file system is nearly full (under 5 % free): the oldest history was applied \
                         early, so the window is shorter than configured (free space, or set journal_limit)"
                            .into()
                    } else if report.shortened {
                        "journal_limit reached: the oldest history was applied early, so the window is shorter than configured".into()
                    } else {
                        String::new()
                    };
                    // The cap stops replication: said first.
                    history.warning = match capped {
                        Some(cap) if why.is_empty() => cap,
                        Some(cap) => format!("{cap}. {why}"),
                        None => why,
                    };
                }
                Ok(Err(e)) => history.warning = format!("applier failed (retrying): {e:#}"),
                Err(e) => history.warning = format!("applier task failed: {e}"),
            }
            // Said once when it starts, not every second.
            if history.warning != before {
                match history.warning.as_str() {
                    "" => tracing::info!("history window back to normal"),
                    w => tracing::warn!("{w}"),
                }
            }
        }
    }
}

/// What status says while the limit keeps the replica between checkpoints.
fn between_checkpoints_warning(seq: u64, image: bool) -> String {
    let restorable = if image {
        "the checkpoints before it are gone; head and the checkpoints after it are restorable"
    } else {
        "a resync or a new stream's copy is under way, so nothing is restorable until the next consistent checkpoint"
    };
    format!(
        "the replica is at seq {seq}, between checkpoints: journal_limit (or the free disk) was reached by writes with \
         no checkpoint far enough on; {restorable} (shorten checkpoint_interval_ms or raise journal_limit)"
    )
}

/// What status and the log say while a pin holds the replica back.
fn pinned_warning(pin: &crate::journal::pins::Pin, journal_bytes: u64, limit: Option<u64>) -> String {
    let size = status::format_bytes(journal_bytes);
    let over = match limit {
        Some(l) if journal_bytes > l => format!("{size}, over its journal_limit of {}", status::format_bytes(l)),
        _ => size,
    };
    format!(
        "checkpoint {} is pinned ({}): the replica stays before it and the journal keeps growing ({over}); \
         release it with `tidemark unpin` when it is no longer needed",
        pin.checkpoint,
        if pin.reason.is_empty() { "no reason given" } else { &pin.reason },
    )
}

fn apply_once(slot: &VpgSlot) -> anyhow::Result<applier::PassReport> {
    let (dir, meta, checkpoints) = {
        let journal = slot.journal.lock().expect("journal lock");
        (journal.dir().to_path_buf(), journal.meta.clone(), journal.index.checkpoints.clone())
    };
    let mut report = applier::pass(&dir, &meta, &checkpoints, &slot.policy, crate::record::now_ms())?;
    if let Some(gave_up) = report.between_checkpoints.as_ref().and_then(|b| b.gave_up) {
        tracing::warn!(
            vpg = %meta.vpg,
            "journal_limit (or a nearly full disk) reached with no checkpoint far enough on: the replica moved to \
             seq {} and gave up checkpoint {gave_up}, which is no longer restorable",
            report.applied_seq
        );
    }
    if report.left_consistent {
        tracing::warn!(
            vpg = %meta.vpg,
            "journal_limit (or a nearly full disk) reached during a resync or a new stream's copy: the replica \
             moved past the last consistent checkpoint, so none is restorable until the next consistent one (raise journal_limit \
             to keep it)"
        );
    }
    // Summaries only speed readers up: a failure is logged, never fatal.
    let mut summarizer = slot.summarizer.lock().expect("summarizer lock");
    match summarizer.pass(&dir, meta.vpg_id, report.applied_seq, report.in_replica) {
        Ok(0) => {}
        Ok(n) => tracing::debug!(vpg = %meta.vpg, "summarized {n} sealed journal segments"),
        Err(e) => {
            tracing::warn!(vpg = %meta.vpg, "summarizing journal segments: {e_chain}", e_chain = crate::error_chain::Chain(&e))
        }
    }
    report.journal_damage = summarizer.damage.as_ref().map(|(_, message)| message.clone());
    drop(summarizer);
    if let Some(to) = report.applied_to {
        slot.journal.lock().expect("journal lock").index.applied(&report.state);
        tracing::debug!(
            vpg = %meta.vpg,
            "applied history up to seq {to} ({} bytes), retired {} segments; journal now {} bytes",
            report.bytes_applied,
            report.segments_retired,
            report.journal_bytes
        );
    }
    if report.segments_retired > 0 {
        tracing::info!(
            vpg = %meta.vpg,
            "replica at seq {}: retired {} journal segments, journal now {} bytes",
            report.applied_seq,
            report.segments_retired,
            report.journal_bytes
        );
    }
    Ok(report)
}

fn history_status(slot: &VpgSlot) -> HistoryStatus {
    let mut h = slot.history.lock().expect("history lock").clone();
    let journal = slot.journal.lock().expect("journal lock");
    let oldest = journal.index.oldest();
    h.configured_seconds = slot.policy.history.as_secs();
    h.journal_limit = slot.policy.journal_limit;
    h.window_seconds = oldest.map_or(0, |c| crate::record::now_ms().saturating_sub(c.time_ms) / 1000);
    h.oldest_checkpoint = oldest.map(|c| CheckpointSummary { id: c.id, time_ms: c.time_ms, tag: c.tag.clone() });
    h
}

/// The recovery side's iSCSI front-end; its LUN identities come from the
/// appliance's certificate.
fn recovery_luns(
    cfg: &RecoveryConfig,
    iscsi: &crate::config::IscsiConfig,
) -> Result<crate::recovery::luns::RecoveryLuns> {
    let fingerprint = tls::fingerprint_of_file(&cfg.node.cert)?;
    let state_dir = cfg.node.data_dir.join("lio");
    let frontend = crate::iscsi::Frontend::on_this_kernel(iscsi, &cfg.node.name, &fingerprint, &state_dir)?;
    Ok(crate::recovery::luns::RecoveryLuns::new(frontend))
}
