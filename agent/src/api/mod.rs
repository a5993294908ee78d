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
    let appended =
        tokio::task::spawn_blocking(move || crate::audit_trail::append_or_log(&dir, &who, &what, params, &outcome, of))
            .await;
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
