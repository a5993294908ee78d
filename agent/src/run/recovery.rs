//! The recovery appliance: TLS listeners for control and data, one
//! journal per VPG, status.

use crate::config::{parse_fingerprint, RecoveryConfig};
use crate::status::{self, CheckpointSummary, VpgStatus, STATUS_INTERVAL_MS};
use crate::transfer::receiver::{accept_loop, Receiver};
use crate::wire::tls;
use anyhow::{Context, Result};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::TlsAcceptor;

pub async fn run(cfg: RecoveryConfig) -> Result<()> {
    let identity = tls::load_identity(&cfg.node.cert, &cfg.node.key)?;
    let allowed = cfg.listen.peer_fingerprints.iter().map(|f| parse_fingerprint(f)).collect::<Result<Vec<_>>>()?;
    let acceptor = TlsAcceptor::from(tls::server_config(identity, allowed)?);
    let journal_root = cfg.node.data_dir.join("journal");
    std::fs::create_dir_all(&journal_root).with_context(|| format!("creating {}", journal_root.display()))?;
    let receiver = Receiver::new(journal_root);
    let control = super::bind_listener((cfg.listen.address, cfg.listen.control_port).into(), "control").await?;
    let data = super::bind_listener((cfg.listen.address, cfg.listen.data_port).into(), "data").await?;
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
        _ = status_writer(&cfg, &receiver) => {}
    }
    Ok(())
}

async fn status_writer(cfg: &RecoveryConfig, receiver: &Arc<Receiver>) {
    let mut prev: std::collections::HashMap<String, u64> = Default::default();
    let mut tick = tokio::time::interval(Duration::from_millis(STATUS_INTERVAL_MS));
    loop {
        tick.tick().await;
        let slots: Vec<(String, Arc<_>)> =
            receiver.vpgs.lock().expect("vpgs lock").iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let mut vpgs = Vec::new();
        for (name, slot) in slots {
            let received = slot.received_bytes.load(Ordering::Relaxed);
            let throughput = received.saturating_sub(prev.get(&name).copied().unwrap_or(0)) * 1000 / STATUS_INTERVAL_MS;
            prev.insert(name.clone(), received);
            let journal = slot.journal.lock().expect("journal lock");
            let index = &journal.index;
            // The newest checkpoint that can be restored (complete).
            let last = index.latest_consistent();
            let lag_seconds = last.map_or(0.0, |c| crate::record::now_ms().saturating_sub(c.time_ms) as f64 / 1000.0);
            let state = if index.initial_copy_complete() { "protected" } else { "initial copy in progress" };
            vpgs.push(VpgStatus {
                name,
                state: state.into(),
                lag_bytes: 0,
                lag_seconds,
                throughput_bytes_per_sec: throughput,
                head_seq: index.durable_seq,
                acked_seq: index.durable_seq,
                last_checkpoint: last.map(|c| CheckpointSummary { id: c.id, time_ms: c.time_ms, tag: c.tag.clone() }),
                note: index.damage.clone().map(|d| format!("journal was damaged: {d}")).unwrap_or_default(),
            });
        }
        vpgs.sort_by(|a, b| a.name.cmp(&b.name));
        status::publish(&cfg.node, "recovery", vpgs);
    }
}
