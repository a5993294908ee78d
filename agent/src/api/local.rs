//! The agent's local control socket, `<data_dir>/control.sock` (mode
//! 0600, root only; a Unix socket, so no network port). Console commands
//! use it to ask the running agent for what only it can do: insert a
//! record into the write order (protected side), serve a point in time or
//! run a test failover (recovery side).
//!
//! One JSON request per connection, one JSON reply:
//! `{"op":"checkpoint","vpg":"db","tag":"before upgrade","wait_ms":30000}` →
//! `{"ok":true,"id":N,"durable":true}` or `{"ok":false,"error":"..."}`.
//! An `export` lasts as long as its connection: the exports go when the
//! client closes it.

use crate::audit_trail::Actor;
use crate::capture::vpg::VpgCapture;
use crate::recovery::ops::RecoveryOps;
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

pub const SOCKET_FILE: &str = "control.sock";
/// A request line longer than this is refused (it holds at most a tag).
const REQUEST_BYTES_MAX: usize = 4096;
pub use crate::names::TAG_BYTES_MAX;
// A tag escaped as JSON (at most 6 bytes per byte, \u00XX) fits a request.
const _: () = assert!(6 * TAG_BYTES_MAX + 512 <= REQUEST_BYTES_MAX);
/// The longest a caller may ask to wait for the recovery side.
const WAIT_MS_MAX: u64 = 10 * 60 * 1000;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Protected: inserts a tagged checkpoint; waits up to `wait_ms` for
    /// the recovery journal to have it.
    Checkpoint { vpg: String, tag: String, wait_ms: u64 },
    /// Protected (a coordinator): takes one checkpoint across every
    /// member of `group` (`crate::coordination`); `tag` by default
    /// `<group>@<time>`.
    GroupCheckpoint {
        group: String,
        #[serde(default)]
        tag: Option<String>,
    },
    /// Protected: planned migration. Refuses new writes, flushes, inserts a
    /// final checkpoint, waits for the journal to have it, and has the
    /// recovery side fail over to it. With `cancel`, calls off an
    /// unfinished one instead.
    Move {
        vpg: String,
        wait_ms: u64,
        #[serde(default)]
        cancel: bool,
    },
    /// Protected (old site, after a failover or move): receive the VPG
    /// back; waits up to `wait_ms` for the delta copy.
    Reverse { vpg: String, wait_ms: u64 },
    /// Protected (old site, under reverse protection and in sync): run the
    /// VPG here again, protected forward (switch-back); waits up to
    /// `wait_ms` for each step. With `cancel`, calls off an unfinished one.
    MoveBack {
        vpg: String,
        wait_ms: u64,
        #[serde(default)]
        cancel: bool,
    },
    /// Protected: clears the encryption detector's alert on `vpg` (`by`:
    /// who asked, for the log).
    ClearAlert {
        vpg: String,
        #[serde(default)]
        by: String,
    },
    /// Protected: compares every volume of `vpg` with the recovery journal
    /// at a new checkpoint (online verify); with `repair`, resends the
    /// extents that differ.
    Verify { vpg: String, repair: bool },
    /// Recovery: commits the journal up to `checkpoint` into the replica,
    /// sets aside what came after, stops taking the stream, and serves the
    /// volumes writable over NBD (`serve`) or leaves them as files.
    Failover { vpg: String, checkpoint: String, serve: bool },
    /// Recovery: serves the VPG at `checkpoint` read-only over NBD while
    /// this connection stays open.
    Export { vpg: String, checkpoint: String },
    /// Recovery: writable exports at `checkpoint` over a scratch overlay.
    TestFailoverStart { vpg: String, checkpoint: String },
    /// Recovery: ends the test failover and discards its writes.
    TestFailoverStop { vpg: String },
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
    /// NBD URIs of the exports the request made.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exports: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// A verify's report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<crate::capture::verify::VerifyReport>,
}

impl Reply {
    pub(crate) fn done(message: String) -> Reply {
        Reply {
            ok: true,
            id: None,
            durable: false,
            error: None,
            exports: Vec::new(),
            message: Some(message),
            verify: None,
        }
    }

    pub(crate) fn served(served: &crate::recovery::ops::Served) -> Reply {
        Reply {
            ok: true,
            id: Some(served.checkpoint.id),
            durable: true,
            error: None,
            exports: served.uris.clone(),
            // Said only when the volumes could not be iSCSI LUNs as well.
            message: served.iscsi_problem.as_ref().map(|p| format!("not served over iSCSI: {p}")),
            verify: None,
        }
    }
}

/// Who answers on the socket.
#[derive(Clone)]
pub enum Agent {
    Protected(
        Arc<BTreeMap<String, Arc<VpgCapture>>>,
        Arc<crate::transfer::reverse_runner::ReverseRunner>,
        Arc<crate::coordination::coordinator::Coordinator>,
    ),
    Recovery(Arc<RecoveryOps>),
}

pub use crate::names::validate_tag;

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_FILE)
}

/// Binds the socket (replacing a stale one) and serves in the background.
pub fn start(data_dir: &Path, agent: Agent) -> Result<()> {
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
    let data_dir = Arc::new(data_dir.to_path_buf());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let agent = agent.clone();
            let data_dir = data_dir.clone();
            tokio::spawn(async move {
                if let Err(e) = serve_one(stream, &agent, &data_dir).await {
                    tracing::info!("control socket: {e:#}");
                }
            });
        }
    });
    Ok(())
}

async fn serve_one(stream: tokio::net::UnixStream, agent: &Agent, data_dir: &Path) -> Result<()> {
    let actor = match stream.peer_cred() {
        Ok(c) => Actor::local_peer(c.uid(), c.pid()),
        Err(_) => Actor::local_peer(u32::MAX, None),
    };
    let (read, mut write) = stream.into_split();
    let mut line = Vec::new();
    let mut reader = BufReader::new(read).take(REQUEST_BYTES_MAX as u64 + 1);
    reader.read_until(b'\n', &mut line).await?;
    let request = if line.len() > REQUEST_BYTES_MAX {
        Err(anyhow!("request longer than {REQUEST_BYTES_MAX} bytes"))
    } else {
        serde_json::from_slice::<Request>(&line).map_err(|e| anyhow::Error::new(e).context("malformed request"))
    };
    let request = match request {
        Ok(r) => r,
        Err(e) => {
            // What was sent is not kept: it may be anything.
            let params = serde_json::json!({ "bytes": line.len() });
            // Nor what the parser says of it: that quotes the sender.
            let why = match e.downcast_ref::<serde_json::Error>().map(serde_json::Error::classify) {
                Some(serde_json::error::Category::Data) => "refused: malformed request (not a known operation)",
                Some(_) => "refused: malformed request (not JSON)",
                None => "refused: malformed request (too long)",
            };
            super::record(data_dir, &actor, "invalid-request", params, why.into(), None).await;
            return send(&mut write, &failure(e)).await;
        }
    };
    let (op, params) = (op_name(&request), serde_json::to_value(&request)?);
    let started = super::record(data_dir, &actor, op, params.clone(), "started".into(), None).await;
    let outcome = |reply: &Reply| match &reply.error {
        None => "ok".to_string(),
        Some(e) => format!("failed: {e}"),
    };
    // An export lives while the client keeps the connection open.
    if let (Request::Export { vpg, checkpoint }, Agent::Recovery(ops)) = (&request, agent) {
        let served = match ops.export(vpg, checkpoint).await {
            Ok(s) => s,
            Err(e) => {
                let reply = failure(e.into());
                super::record(data_dir, &actor, op, params, outcome(&reply), started).await;
                return send(&mut write, &reply).await;
            }
        };
        let reply = Reply::served(&served);
        super::record(
            data_dir,
            &actor,
            op,
            params.clone(),
            format!("ok: serving {}", reply.exports.join(" ")),
            started,
        )
        .await;
        let sent = send(&mut write, &reply).await;
        if sent.is_ok() {
            // Served until the client closes; what it sends meanwhile is
            // read and dropped (review of helper-72: it was kept, without
            // bound, until the close).
            let mut client = reader.into_inner();
            let mut ignored = [0u8; 4096];
            while matches!(client.read(&mut ignored).await, Ok(n) if n > 0) {}
        }
        ops.unexport(&served).await;
        super::record(data_dir, &actor, op, params, "closed: the client ended the export".into(), started).await;
        return sent;
    }
    let reply = handle(request, agent).await.unwrap_or_else(failure);
    super::record(data_dir, &actor, op, params, outcome(&reply), started).await;
    send(&mut write, &reply).await
}

async fn send(write: &mut tokio::net::unix::OwnedWriteHalf, reply: &Reply) -> Result<()> {
    let mut text = serde_json::to_vec(reply)?;
    text.push(b'\n');
    write.write_all(&text).await?;
    Ok(())
}

pub(crate) fn failure(e: anyhow::Error) -> Reply {
    Reply {
        ok: false,
        id: None,
        durable: false,
        error: Some(format!("{e:#}")),
        exports: Vec::new(),
        message: None,
        verify: None,
    }
}

pub(crate) async fn handle(request: Request, agent: &Agent) -> Result<Reply> {
    let role = match agent {
        Agent::Protected(..) => "protected",
        Agent::Recovery(_) => "recovery",
    };
    match (request, agent) {
        (Request::TestFailoverStart { vpg, checkpoint }, Agent::Recovery(ops)) => {
            Ok(Reply::served(&ops.test_failover_start(&vpg, &checkpoint).await?))
        }
        (Request::TestFailoverStop { vpg }, Agent::Recovery(ops)) => {
            Ok(Reply::done(ops.test_failover_stop(&vpg).await?))
        }
        (Request::Failover { vpg, checkpoint, serve }, Agent::Recovery(ops)) => {
            let done = ops.failover(&vpg, &checkpoint, serve, crate::recovery_state::Commit::Failover).await?;
            Ok(Reply { exports: done.uris.clone(), id: Some(done.checkpoint.id), ..Reply::done(done.describe()) })
        }
        (Request::Reverse { vpg, wait_ms }, Agent::Protected(vpgs, runner, _)) => {
            let capture = vpgs.get(&vpg).ok_or_else(|| anyhow!("no VPG {vpg:?} here"))?;
            let wait = Duration::from_millis(wait_ms.min(WAIT_MS_MAX));
            Ok(Reply {
                durable: true,
                ..Reply::done(crate::transfer::reverse_runner::start(runner, capture, wait).await?)
            })
        }
        (Request::MoveBack { vpg, wait_ms, cancel }, Agent::Protected(vpgs, runner, _)) => {
            let capture = vpgs.get(&vpg).ok_or_else(|| anyhow!("no VPG {vpg:?} here"))?;
            let wait = Duration::from_millis(wait_ms.min(WAIT_MS_MAX));
            let message = match cancel {
                true => crate::transfer::switch_back::cancel(runner, capture, wait).await?,
                false => crate::transfer::switch_back::move_back(runner, capture, wait).await?,
            };
            Ok(Reply { durable: true, ..Reply::done(message) })
        }
        // The recovery site may call off a switch-back whose old site is gone.
        (Request::MoveBack { vpg, cancel: true, .. }, Agent::Recovery(ops)) => {
            crate::config::validate_name("--vpg", &vpg)?;
            match ops.move_back_cancel(&vpg).await? {
                crate::recovery::switch_back::MoveBackAnswer::Cancelled => Ok(Reply::done(format!(
                    "switch-back of VPG {vpg:?} cancelled here: the live volumes take writes again (the old site \
                     learns it at its next `tidemark move-back`)"
                ))),
                _ => bail!("VPG {vpg:?} is not failed over here; there is no switch-back to cancel"),
            }
        }
        (Request::Move { vpg, wait_ms, cancel }, Agent::Protected(vpgs, _, _)) => {
            let capture = vpgs.get(&vpg).ok_or_else(|| anyhow!("no VPG {vpg:?} here"))?;
            let wait = Duration::from_millis(wait_ms.min(WAIT_MS_MAX));
            if cancel {
                return Ok(Reply::done(crate::capture::moving::cancel_move(capture, wait).await?));
            }
            let (id, message) = crate::capture::moving::move_vpg(capture, wait).await?;
            Ok(Reply { id: Some(id), durable: true, ..Reply::done(message) })
        }
        (Request::ClearAlert { vpg, by }, Agent::Protected(vpgs, _, _)) => {
            let capture = vpgs.get(&vpg).ok_or_else(|| anyhow!("no VPG {vpg:?} here"))?;
            let detection = capture.detection().ok_or_else(|| anyhow!("VPG {vpg:?} has its detector off"))?;
            let Some(cleared) = detection.clear()? else { bail!("VPG {vpg:?} has no alert") };
            let pin = match (cleared.pinned, &cleared.pin_error) {
                (Some(id), _) => format!(
                    "checkpoint {id} was pinned at the recovery site as {:?} and stays so until `tidemark unpin`",
                    cleared.label
                ),
                (None, Some(e)) => format!("the last clean checkpoint was not pinned ({e})"),
                (None, None) => "the last clean checkpoint had not been pinned yet and will not be now".into(),
            };
            tracing::warn!(vpg = %vpg, "alert cleared by {}: {}; {pin}", if by.is_empty() { "?" } else { &by }, cleared.describe());
            Ok(Reply::done(format!("alert on VPG {vpg} cleared ({}); {pin}", cleared.summary)))
        }
        (Request::Checkpoint { vpg, tag, wait_ms }, Agent::Protected(vpgs, _, _)) => {
            validate_tag(&tag)?;
            let names: Vec<&String> = vpgs.keys().collect();
            let capture = vpgs.get(&vpg).ok_or_else(|| anyhow!("no VPG {vpg:?} here (VPGs: {names:?})"))?;
            let wait = Duration::from_millis(wait_ms.min(WAIT_MS_MAX));
            let (id, partial) = capture.tagged_checkpoint(&tag, wait).await?;
            tracing::info!(vpg = %vpg, "tagged checkpoint {id} {tag:?} inserted");
            // Acknowledged in its own stream: a checkpoint of a stream that
            // started over never reaches the journal.
            let durable = matches!(tokio::time::timeout(wait, capture.log.wait_acked(id)).await, Ok(Ok(true)));
            let message = partial.then(|| {
                format!(
                    "VPG {vpg}'s initial copy is still running ({}): this checkpoint is partial, not restorable; \
                     checkpoints after the copy completes are",
                    capture.copy_progress()
                )
            });
            Ok(Reply { id: Some(id), durable, message, ..Reply::done(String::new()) })
        }
        (Request::GroupCheckpoint { group, tag }, Agent::Protected(_, _, coordinator)) => {
            if let Some(tag) = &tag {
                validate_tag(tag)?;
            }
            let done = coordinator.checkpoint(&group, tag).await?;
            if !done.complete {
                bail!("{}", done.describe());
            }
            tracing::info!(group = %group, "{}", done.describe());
            Ok(Reply::done(done.describe()))
        }
        (Request::Verify { vpg, repair }, Agent::Protected(vpgs, _, _)) => {
            let capture = vpgs.get(&vpg).ok_or_else(|| anyhow!("no VPG {vpg:?} here"))?;
            let report = capture.verify(repair).await?;
            Ok(Reply { id: Some(report.checkpoint), verify: Some(report), ..Reply::done(String::new()) })
        }
        (other, _) => bail!("the {role} agent does not do {:?}", op_name(&other)),
    }
}

pub(crate) fn op_name(request: &Request) -> &'static str {
    match request {
        Request::Checkpoint { .. } => "checkpoint",
        Request::GroupCheckpoint { .. } => "group-checkpoint",
        Request::ClearAlert { .. } => "clear-alert",
        Request::Export { .. } => "export",
        Request::TestFailoverStart { .. } => "test-failover start",
        Request::TestFailoverStop { .. } => "test-failover stop",
        Request::Move { .. } => "move",
        Request::Reverse { .. } => "reverse",
        Request::MoveBack { .. } => "move-back",
        Request::Failover { .. } => "failover",
        Request::Verify { .. } => "verify",
    }
}

/// Client side, for the CLI: one request, one reply.
pub fn call(data_dir: &Path, request: &Request) -> Result<Reply> {
    call_and_hold(data_dir, request).map(|(reply, _)| reply)
}

/// Like `call`, and returns the connection: an export lasts until it is
/// closed (or the process exits).
pub fn call_and_hold(data_dir: &Path, request: &Request) -> Result<(Reply, std::os::unix::net::UnixStream)> {
    ask(connect(data_dir)?, request)
}

/// A connection to the running agent (an error that says so if it is not).
pub fn connect(data_dir: &Path) -> Result<std::os::unix::net::UnixStream> {
    let path = socket_path(data_dir);
    std::os::unix::net::UnixStream::connect(&path)
        .with_context(|| format!("connecting to the agent at {} (is it running?)", path.display()))
}

/// Sends one request on a connection from `connect` and reads the reply.
pub fn ask(
    mut stream: std::os::unix::net::UnixStream,
    request: &Request,
) -> Result<(Reply, std::os::unix::net::UnixStream)> {
    use std::io::{BufRead, Write};
    let mut text = serde_json::to_vec(request)?;
    text.push(b'\n');
    stream.write_all(&text)?;
    let mut reader = std::io::BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).context("reading the agent's reply")?;
    let reply =
        serde_json::from_str(&line).with_context(|| format!("the agent's reply is not understood: {line:?}"))?;
    Ok((reply, reader.into_inner()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_that_look_like_ids_or_keywords_are_refused() {
        for bad in ["", "  ", "latest", "head", "12345", "a\nb", &"x".repeat(257), &"€".repeat(100)] {
            assert!(validate_tag(bad).is_err(), "{bad:?}");
        }
        validate_tag("before upgrade 2.4").unwrap();
        // The limit is in bytes, as the record stores it: 85 × 3 = 255.
        validate_tag(&"€".repeat(85)).unwrap();
        validate_tag(&"x".repeat(256)).unwrap();
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
