//! The two long-running roles, wiring the pipeline's parts together.

pub mod protected;
pub mod recovery;

/// Present on the appliance image only.
pub const APPLIANCE_MARKER: &str = "/etc/tidemark-release";

/// Started by init on the appliance (not by a person or a test).
pub fn on_appliance() -> bool {
    rustix::process::getppid().is_none_or(|p| p.as_raw_nonzero().get() == 1)
        && std::path::Path::new(APPLIANCE_MARKER).exists()
}

/// What runs beside either role: hardening first when init started us on
/// the appliance (nothing listens before it succeeds), then the
/// diagnostics endpoint when the config has a `[diag]` section.
pub async fn start_appliance_services(
    cfg: crate::config::Config,
    config_path: std::path::PathBuf,
) -> anyhow::Result<()> {
    use anyhow::Context;
    if on_appliance() {
        crate::harden::harden(&cfg).context("hardening at start failed; not starting")?;
    }
    if cfg.system().diag.is_some() {
        crate::api::diag::start(std::sync::Arc::new(cfg), config_path).await?;
    }
    Ok(())
}

/// Waits for SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
