//! `GET /metrics` on the management API (a viewer's session or token):
//! the agent's status as Prometheus/OpenMetrics text, named after
//! node_exporter's and drbd-reactor's conventions (`_seconds`, `_bytes`,
//! `_total`, one series per state with value 1). Read from the status the
//! agent publishes every second, so a scrape costs no lock in the
//! pipeline.

use crate::status::AgentStatus;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::AtomicU64;

type FloatGauge = Gauge<f64, AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Agent {
    role: String,
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Vpg {
    vpg: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VpgState {
    vpg: String,
    state: String,
}

/// A VPG's state as a short, fixed word (the status's text also says why,
/// which would make a new series for every reason).
pub fn state_class(state: &str) -> &'static str {
    const CLASSES: [&str; 12] = [
        "in sync",
        "replicating",
        "initial copy",
        "disconnected",
        "stopped",
        "bitmap",
        "resync",
        "reverse protection",
        "protected",
        "failover in progress",
        "failed over",
        "moved",
    ];
    CLASSES.into_iter().find(|c| state.starts_with(c)).unwrap_or("other")
}

/// The OpenMetrics text of `status`; `fresh` says whether it is recent
/// (the agent published it in the last few seconds).
pub fn render(status: &AgentStatus, fresh: bool) -> anyhow::Result<String> {
    let mut registry = Registry::with_prefix("tidemark");
    let up = Family::<Agent, Gauge>::default();
    registry.register("agent_up", "Whether the agent published its status in the last seconds", up.clone());
    up.get_or_create(&Agent { role: status.role.clone(), node: status.node.clone() }).set(i64::from(fresh));
    let lag_seconds = Family::<Vpg, FloatGauge>::default();
    registry.register_with_unit(
        "vpg_lag",
        "Protected: age of the oldest write the recovery site has not acknowledged; recovery: age of the newest \
         restorable checkpoint (the RPO now)",
        Unit::Seconds,
        lag_seconds.clone(),
    );
    let lag_bytes =
        family::<Gauge>(&mut registry, "vpg_lag", "Bytes written here and not yet acknowledged", Unit::Bytes);
    let transferred = Family::<Vpg, Counter>::default();
    registry.register_with_unit(
        "vpg_transferred",
        "Record bytes sent (protected) or received (recovery) since the agent started, before compression",
        Unit::Bytes,
        transferred.clone(),
    );
    let throughput = family::<Gauge>(
        &mut registry,
        "vpg_throughput",
        "Record bytes per second, the last second",
        Unit::Other("bytes_per_second".into()),
    );
    let rpo_target = Family::<Vpg, FloatGauge>::default();
    registry.register_with_unit(
        "vpg_rpo_target",
        "The VPG's RPO target (rpo_alert)",
        Unit::Seconds,
        rpo_target.clone(),
    );
    let over_target = gauge(&mut registry, "vpg_rpo_over_target", "1 while the lag is over the RPO target");
    let connected = gauge(&mut registry, "link_connected", "1 while the VPG's replication link is up (protected side)");
    let state = Family::<VpgState, Gauge>::default();
    registry.register("vpg_state", "The VPG's state: 1 for the state it is in", state.clone());
    let journal = family::<Gauge>(
        &mut registry,
        "vpg_journal",
        "Bytes of journal kept for the history window (recovery)",
        Unit::Bytes,
    );
    let history = family::<Gauge>(
        &mut registry,
        "vpg_history",
        "How far back the oldest restorable checkpoint is (recovery)",
        Unit::Seconds,
    );
    let alert =
        gauge(&mut registry, "vpg_encryption_alert", "1 while the encryption detector's alert is raised (protected)");
    let sync_suspended = gauge(
        &mut registry,
        "vpg_sync_suspended",
        "1 while sync mode is suspended: a FLUSH waited longer than sync_timeout for the recovery journal (protected)",
    );
    let log_held = family::<Gauge>(
        &mut registry,
        "vpg_log_held",
        "Bytes the protected log holds (protected; its capacity is vpg_log_capacity_bytes)",
        Unit::Bytes,
    );
    let log_capacity =
        family::<Gauge>(&mut registry, "vpg_log_capacity", "The protected log's capacity (protected)", Unit::Bytes);
    let log_capped = gauge(
        &mut registry,
        "vpg_log_disk_capped",
        "1 while the protected log's high-water mark is capped because its disk did not take a record; lifted once \
         the disk could hold the log's capacity (protected)",
    );
    let dirty = family::<Gauge>(
        &mut registry,
        "vpg_dirty",
        "Bytes of volume marked in bitmap mode's dirty map and not yet read back (protected)",
        Unit::Bytes,
    );
    let iscsi_sessions =
        gauge(&mut registry, "iscsi_sessions", "Initiator sessions logged in to the VPG's iSCSI targets");
    let iscsi_unserved = gauge(
        &mut registry,
        "iscsi_targets_unserved",
        "The VPG's iSCSI targets that are not served now (status says why; each is tried again)",
    );
    for v in &status.vpgs {
        let key = Vpg { vpg: v.name.clone() };
        if let Some(l) = &v.log {
            log_held.get_or_create(&key).set(saturate(l.held_bytes));
            log_capacity.get_or_create(&key).set(saturate(l.capacity_bytes));
            log_capped.get_or_create(&key).set(i64::from(l.disk_full_cap_bytes.is_some()));
            dirty.get_or_create(&key).set(saturate(v.bitmap.as_ref().map_or(0, |b| b.dirty_bytes)));
        }
        if !v.iscsi.is_empty() {
            let logged_in = v.iscsi.iter().flat_map(|t| &t.sessions).filter(|s| s.state == "LOGGED_IN").count();
            iscsi_sessions.get_or_create(&key).set(logged_in as i64);
            iscsi_unserved.get_or_create(&key).set(v.iscsi.iter().filter(|t| t.error.is_some()).count() as i64);
        }
        lag_seconds.get_or_create(&key).set(v.lag_seconds);
        lag_bytes.get_or_create(&key).set(saturate(v.lag_bytes));
        transferred.get_or_create(&key).inc_by(v.transferred_bytes);
        throughput.get_or_create(&key).set(saturate(v.throughput_bytes_per_sec));
        if let Some(target) = v.rpo_target_seconds {
            rpo_target.get_or_create(&key).set(target);
            over_target.get_or_create(&key).set(i64::from(v.rpo_over_target));
        }
        if let Some(up) = v.link_connected {
            connected.get_or_create(&key).set(i64::from(up));
        }
        state.get_or_create(&VpgState { vpg: v.name.clone(), state: state_class(&v.state).to_string() }).set(1);
        if let Some(h) = &v.history {
            journal.get_or_create(&key).set(saturate(h.journal_bytes));
            history.get_or_create(&key).set(saturate(h.window_seconds));
        }
        if status.role == "protected" {
            alert.get_or_create(&key).set(i64::from(v.alert.is_some()));
            sync_suspended.get_or_create(&key).set(i64::from(v.sync_suspended.is_some()));
        }
    }
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(text)
}

fn family<
    M: prometheus_client::metrics::TypedMetric
        + Default
        + prometheus_client::encoding::EncodeMetric
        + Send
        + Sync
        + std::fmt::Debug
        + 'static,
>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    unit: Unit,
) -> Family<Vpg, M> {
    let family = Family::<Vpg, M>::default();
    registry.register_with_unit(name, help, unit, family.clone());
    family
}

/// A per-VPG gauge with no unit (a count, or 1/0).
fn gauge(registry: &mut Registry, name: &str, help: &str) -> Family<Vpg, Gauge> {
    let family = Family::<Vpg, Gauge>::default();
    registry.register(name, help, family.clone());
    family
}

fn saturate(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::VpgStatus;

    #[test]
    fn status_becomes_openmetrics_with_one_state_series_per_vpg() {
        let vpg: VpgStatus = serde_json::from_value(serde_json::json!({
            "name": "db", "state": "disconnected (writes are kept in the protected log): refused",
            "lag_bytes": 4096, "lag_seconds": 2.5, "throughput_bytes_per_sec": 10, "transferred_bytes": 123456,
            "link_connected": false, "head_seq": 9, "acked_seq": 7, "last_checkpoint": null, "note": "",
            "rpo_target_seconds": 30.0, "rpo_over_target": false,
            "log": {"held_bytes": 900, "spare_bytes": 0, "capacity_bytes": 1000, "disk_full_cap_bytes": 800},
            "bitmap": {"mode": "bitmap", "why": "full", "since_seconds": 3, "dirty_bytes": 65536, "resynced_bytes": 0,
                       "resync_total_bytes": 0, "resync_rate_bytes_per_sec": 0, "resync_eta_seconds": null},
            "iscsi": [
                {"target": "iqn.a", "luns": [], "sessions": [
                    {"initiator": "iqn.esx1", "state": "LOGGED_IN", "addresses": ["10.0.0.5"]},
                    {"initiator": "iqn.esx2", "state": "FAILED", "addresses": []}]},
                {"target": "iqn.b", "luns": [], "sessions": [], "error": "refused: no CHAP secret"}
            ]
        }))
        .unwrap();
        let status = AgentStatus {
            role: "protected".into(),
            node: "a".into(),
            pid: 1,
            updated_ms: 0,
            vpgs: vec![vpg],
            groups: Vec::new(),
        };
        let text = render(&status, true).unwrap();
        for line in [
            "tidemark_agent_up{role=\"protected\",node=\"a\"} 1",
            "tidemark_vpg_lag_seconds{vpg=\"db\"} 2.5",
            "tidemark_vpg_lag_bytes{vpg=\"db\"} 4096",
            "tidemark_vpg_transferred_bytes_total{vpg=\"db\"} 123456",
            "tidemark_link_connected{vpg=\"db\"} 0",
            "tidemark_vpg_state{vpg=\"db\",state=\"disconnected\"} 1",
            "tidemark_vpg_rpo_target_seconds{vpg=\"db\"} 30.0",
            "tidemark_vpg_encryption_alert{vpg=\"db\"} 0",
            "tidemark_vpg_log_held_bytes{vpg=\"db\"} 900",
            "tidemark_vpg_log_capacity_bytes{vpg=\"db\"} 1000",
            "tidemark_vpg_log_disk_capped{vpg=\"db\"} 1",
            "tidemark_vpg_dirty_bytes{vpg=\"db\"} 65536",
            "tidemark_iscsi_sessions{vpg=\"db\"} 1",
            "tidemark_iscsi_targets_unserved{vpg=\"db\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
        // A VPG whose log is not capped, with no bitmap and no LUNs.
        let mut calm = status.vpgs[0].clone();
        calm.log.as_mut().unwrap().disk_full_cap_bytes = None;
        calm.bitmap = None;
        calm.iscsi.clear();
        let text = render(&AgentStatus { vpgs: vec![calm], ..status.clone() }, true).unwrap();
        for line in ["tidemark_vpg_log_disk_capped{vpg=\"db\"} 0", "tidemark_vpg_dirty_bytes{vpg=\"db\"} 0"] {
            assert!(text.lines().any(|l| l == line), "{line} missing from:\n{text}");
        }
        assert!(!text.contains("tidemark_iscsi_sessions{"), "a VPG with no LUNs has no iSCSI series:\n{text}");
        assert_eq!(state_class("failed over at checkpoint 7 (volumes live here)"), "failed over");
        assert_eq!(state_class("something new"), "other");
    }
}
