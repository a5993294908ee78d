//! The protected agent's local control socket, `<data_dir>/control.sock`
//! (mode 0600, root only; a Unix socket, so no network port). Console
//! commands such as `tidemark checkpoint` use it to ask the running agent
//! for something only it can do: insert a record into the write order.
//!
//! One JSON request per connection, one JSON reply:
//! `{"op":"checkpoint","vpg":"db","tag":"before upgrade","wait_ms":30000}` →
//! `{"ok":true,"id":N,"durable":true}` or `{"ok":false,"error":"..."}`.

use crate::capture::vpg::VpgCapture;
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

pub const SOCKET_FILE: &str = "control.sock";
/// A request line longer than this is refused (a tag is at most 128 chars).
const REQUEST_BYTES_MAX: usize = 4096;
pub const TAG_CHARS_MAX: usize = 128;
/// The longest a caller may ask to wait for the recovery side.
const WAIT_MS_MAX: u64 = 10 * 60 * 1000;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Inserts a tagged checkpoint; waits up to `wait_ms` for the recovery
    /// journal to have it.
    Checkpoint { vpg: String, tag: String, wait_ms: u64 },
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// The recovery journal acknowledged the checkpoint within the wait.
    #[serde(default)]
    pub durable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Tags name checkpoints wherever an id does: they must not look like one.
pub fn validate_tag(tag: &str) -> Result<()> {
    if tag.trim().is_empty() || tag.chars().count() > TAG_CHARS_MAX {
        bail!("tag: must be 1-{TAG_CHARS_MAX} characters");
    }
    if tag.chars().any(char::is_control) {
        bail!("tag: must not contain control characters");
    }
    if tag == "latest" || tag == "head" || tag.chars().all(|c| c.is_ascii_digit()) {
        bail!("tag: {tag:?} would be read as a checkpoint id or keyword; choose another");
    }
    Ok(())
}

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_FILE)
}

/// Binds the socket (replacing a stale one) and serves in the background.
pub fn start(data_dir: &Path, vpgs: BTreeMap<String, Arc<VpgCapture>>) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let path = socket_path(data_dir);
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing the stale {}", path.display())),
    }
    let listener = tokio::net::UnixListener::bind(&path).with_context(|| format!("listening on {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let vpgs = Arc::new(vpgs);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let vpgs = vpgs.clone();
            tokio::spawn(async move {
                if let Err(e) = serve_one(stream, &vpgs).await {
                    tracing::info!("control socket: {e:#}");
                }
            });
        }
    });
    Ok(())
}

async fn serve_one(stream: tokio::net::UnixStream, vpgs: &BTreeMap<String, Arc<VpgCapture>>) -> Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = Vec::new();
    let mut reader = BufReader::new(read).take(REQUEST_BYTES_MAX as u64 + 1);
    reader.read_until(b'\n', &mut line).await?;
    let reply = if line.len() > REQUEST_BYTES_MAX {
        failure(anyhow!("request longer than {REQUEST_BYTES_MAX} bytes"))
    } else {
        match serde_json::from_slice::<Request>(&line) {
            Ok(request) => handle(request, vpgs).await.unwrap_or_else(failure),
            Err(e) => failure(anyhow!("malformed request: {e}")),
        }
    };
    let mut text = serde_json::to_vec(&reply)?;
    text.push(b'\n');
    write.write_all(&text).await?;
    Ok(())
}

fn failure(e: anyhow::Error) -> Reply {
    Reply { ok: false, id: None, durable: false, error: Some(format!("{e:#}")) }
}

async fn handle(request: Request, vpgs: &BTreeMap<String, Arc<VpgCapture>>) -> Result<Reply> {
    match request {
        Request::Checkpoint { vpg, tag, wait_ms } => {
            validate_tag(&tag)?;
            let names: Vec<&String> = vpgs.keys().collect();
            let capture = vpgs.get(&vpg).ok_or_else(|| anyhow!("no VPG {vpg:?} here (VPGs: {names:?})"))?;
            let id = capture.checkpoint(&tag).await?;
            tracing::info!(vpg = %vpg, "tagged checkpoint {id} {tag:?} inserted");
            let mut acked = capture.log.watch_acked();
            let wait = Duration::from_millis(wait_ms.min(WAIT_MS_MAX));
            let durable = matches!(tokio::time::timeout(wait, acked.wait_for(|a| *a >= id)).await, Ok(Ok(_)));
            Ok(Reply { ok: true, id: Some(id), durable, error: None })
        }
    }
}

/// Client side, for the CLI: one request, one reply.
pub fn call(data_dir: &Path, request: &Request) -> Result<Reply> {
    use std::io::{BufRead, Write};
    let path = socket_path(data_dir);
    let mut stream = std::os::unix::net::UnixStream::connect(&path)
        .with_context(|| format!("connecting to the protected agent at {} (is it running?)", path.display()))?;
    let mut text = serde_json::to_vec(request)?;
    text.push(b'\n');
    stream.write_all(&text)?;
    let mut line = String::new();
    std::io::BufReader::new(stream).read_line(&mut line).context("reading the agent's reply")?;
    serde_json::from_str(&line).with_context(|| format!("the agent's reply is not understood: {line:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_that_look_like_ids_or_keywords_are_refused() {
        for bad in ["", "  ", "latest", "head", "12345", "a\nb", &"x".repeat(129)] {
            assert!(validate_tag(bad).is_err(), "{bad:?}");
        }
        validate_tag("before upgrade 2.4").unwrap();
    }

    #[test]
    fn request_round_trips_and_unknown_fields_are_refused() {
        let r = Request::Checkpoint { vpg: "db".into(), tag: "t".into(), wait_ms: 5 };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(text, r#"{"op":"checkpoint","vpg":"db","tag":"t","wait_ms":5}"#);
        assert!(
            serde_json::from_str::<Request>(r#"{"op":"checkpoint","vpg":"db","tag":"t","wait_ms":5,"x":1}"#).is_err()
        );
        assert!(serde_json::from_str::<Request>(r#"{"op":"format_disk"}"#).is_err());
    }
}
