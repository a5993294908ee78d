//! Where log lines go: always to stderr (the console, or a test's log file),
//! and for commands that run with a config also to journald when its socket
//! exists, else to size-capped rotated files in `logging.dir`.
//!
//! Secrets stay out by construction: no code path formats a token, a key
//! or a password into a log line (tokens and keys are never `Debug`-printed
//! either; see `DiagConfig`), and the diagnostics bundle scrubs known
//! secret values from everything it collects as a second line of defence.

use crate::config::LoggingConfig;
use crate::io_failure::{Doing, IoFailure};

type Result<T, E = IoFailure> = std::result::Result<T, E>;
use file_rotate::{compression::Compression, suffix::AppendCount, ContentLimit, FileRotate};
use std::path::Path;
use std::sync::Mutex;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

const JOURNALD_SOCKET: &str = "/run/systemd/journal/socket";
pub const LOG_FILE_NAME: &str = "tidemark.log";

fn filter() -> EnvFilter {
    EnvFilter::try_from_env("TIDEMARK_LOG").unwrap_or_else(|_| "info".into())
}

fn stderr_layer<S>() -> impl Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi).with_target(false)
}

/// Commands without a config (keygen, fingerprint): stderr only.
pub fn init_stderr() {
    tracing_subscriber::registry().with(stderr_layer().with_filter(filter())).init();
}

/// stderr plus journald or files. On an error nothing is installed yet, so
/// the caller can fall back to `init_stderr`.
pub fn init(cfg: &LoggingConfig) -> Result<()> {
    let journald = if Path::new(JOURNALD_SOCKET).exists() { tracing_journald::layer().ok() } else { None };
    let files = match journald {
        Some(_) => None,
        None => {
            std::fs::create_dir_all(&cfg.dir).doing(|| format!("creating log dir {}", cfg.dir.display()))?;
            let path = cfg.dir.join(LOG_FILE_NAME);
            let rotating = FileRotate::new(
                &path,
                AppendCount::new(cfg.files_kept),
                ContentLimit::BytesSurpassed(cfg.file_bytes),
                Compression::None,
                None,
            );
            let layer = tracing_subscriber::fmt::layer().with_writer(Mutex::new(rotating)).with_ansi(false);
            Some(layer)
        }
    };
    tracing_subscriber::registry()
        .with(stderr_layer().with_filter(filter()))
        .with(journald.with_filter(filter()))
        .with(files.with_filter(filter()))
        .init();
    Ok(())
}
