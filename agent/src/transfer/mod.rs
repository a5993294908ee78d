//! Moving the stream between sites. The protected side dials out
//! (`sender`); the recovery side listens (`receiver`). Control (4007)
//! carries the hello/resume handshake and keepalives; data (4008) carries
//! batches one way and acknowledgements of durable seqs the other.

pub mod peer;
pub mod receiver;
pub mod reverse;
pub mod sender;
pub mod slot;

use crate::wire::frame::{read_frame, write_frame, FrameKind};
use crate::wire::message::ControlMessage;
use anyhow::{bail, Result};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// Time allowed for a TCP connect plus TLS handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
/// A link with no traffic for this long is considered dead.
pub const LINK_IDLE_TIMEOUT: Duration = Duration::from_secs(15);

pub async fn send_control<W: AsyncWrite + Unpin>(w: &mut W, msg: &ControlMessage) -> Result<()> {
    write_frame(w, FrameKind::Control, &msg.to_bytes()).await
}

pub async fn recv_control<R: AsyncRead + Unpin>(r: &mut R) -> Result<ControlMessage> {
    let (kind, payload) = tokio::time::timeout(LINK_IDLE_TIMEOUT, read_frame(r))
        .await
        .map_err(|_| anyhow::anyhow!("peer silent for {LINK_IDLE_TIMEOUT:?}"))??;
    if kind != FrameKind::Control {
        bail!("expected a control frame, got {kind:?}");
    }
    ControlMessage::from_bytes(&payload)
}
