//! Moving the stream between sites. The protected side dials out
//! (`sender`); the recovery side listens (`receiver`). Control (4007)
//! carries the hello/resume handshake and keepalives; data (4008) carries
//! batches one way and acknowledgements of durable seqs the other.

mod error;
pub mod link_share;
pub mod peer;
pub mod receiver;
pub mod reverse;
pub mod reverse_runner;
pub mod sender;
pub mod slot;
pub mod switch_back;

pub use error::TransferError;

use crate::wire::frame::{read_frame_within, write_frame, FrameError, FrameKind};
use crate::wire::message::{ControlMessage, MessageError, CONTROL_BYTES_MAX};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// Time allowed for a TCP connect plus TLS handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
/// A link with no traffic for this long is considered dead.
pub const LINK_IDLE_TIMEOUT: Duration = Duration::from_secs(15);

/// Why a control message could not be sent or received: the link (closed,
/// failed, silent), a malformed frame, or a message this side refuses.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("sending a control message")]
    Send(#[source] std::io::Error),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("peer silent for {0:?}")]
    Silent(Duration),
    #[error("expected a control frame, got {0:?}")]
    NotControl(FrameKind),
    #[error(transparent)]
    Message(#[from] MessageError),
    #[error("control request task")]
    Task(#[source] tokio::task::JoinError),
}

pub async fn send_control<W: AsyncWrite + Unpin>(w: &mut W, msg: &ControlMessage) -> Result<(), ControlError> {
    write_frame(w, FrameKind::Control, &msg.to_bytes()?).await.map_err(ControlError::Send)
}

/// The next control message, as `recv_control`; one this side refuses
/// (malformed, over a limit) is answered with a `refused` naming why before
/// the error is returned, so the peer learns more than a closed link.
pub async fn recv_control_or_refuse<S: AsyncRead + AsyncWrite + Unpin>(
    link: &mut S,
) -> Result<ControlMessage, ControlError> {
    match recv_control(link).await {
        Err(ControlError::Message(e)) => {
            let _ = send_control(link, &ControlMessage::refused(e.to_string())).await;
            Err(ControlError::Message(e))
        }
        other => other,
    }
}

/// The next control message; a frame over `CONTROL_BYTES_MAX` is refused
/// from its header, before its payload is read. A peer silent for
/// `LINK_IDLE_TIMEOUT` is taken for dead.
pub async fn recv_control<R: AsyncRead + Unpin>(r: &mut R) -> Result<ControlMessage, ControlError> {
    tokio::time::timeout(LINK_IDLE_TIMEOUT, read_control(r))
        .await
        .map_err(|_| ControlError::Silent(LINK_IDLE_TIMEOUT))?
}

/// The next control message, however long it takes (`wait_frame` says
/// how long waiting still makes sense).
pub async fn read_control<R: AsyncRead + Unpin>(r: &mut R) -> Result<ControlMessage, ControlError> {
    let mut payload = Vec::new();
    let kind = read_frame_within(r, &mut payload, CONTROL_BYTES_MAX).await?;
    if kind != FrameKind::Control {
        return Err(ControlError::NotControl(kind));
    }
    Ok(ControlMessage::from_bytes(&payload)?)
}

/// How long a replication link's socket may hold sent bytes the peer
/// never acknowledges (nor opens its window for) before the kernel ends
/// the connection (`TCP_USER_TIMEOUT`). Without it a write to a peer that
/// vanished without a word (a cable pulled, a host frozen) blocks until
/// the kernel's retransmissions give up, about 15 minutes: a task that
/// writes without reading alongside (the old site's extent hashes for
/// reverse protection, the recovery site's answer to a hash question)
/// would hang that long, holding what it holds (review of helper-66).
/// Longer than `LINK_IDLE_TIMEOUT`, so where the agent waits for the
/// peer itself, its own limit (with its clearer error) ends the wait first.
const LINK_UNACKED_LIMIT: Duration = Duration::from_secs(20);
const _: () = assert!(LINK_UNACKED_LIMIT.as_secs() > LINK_IDLE_TIMEOUT.as_secs());

/// A replication link's socket (both ends, both links; also the checkpoint
/// coordinator's, which dials through `sender::dial`): TCP keepalive, so a
/// peer or path that died while the link was idle is noticed, and a
/// firewall or NAT on the way keeps the idle flow; and `LINK_UNACKED_LIMIT`
/// for one that died while this end was sending. With both set, the kernel
/// ends an idle connection whose probes go unanswered once it has heard
/// nothing for `LINK_UNACKED_LIMIT` (about 21 s), not after the probe count.
pub(crate) fn tune_link_socket(tcp: &tokio::net::TcpStream) -> std::io::Result<()> {
    const LINK_KEEPALIVE: crate::listen::Keepalive = crate::listen::Keepalive {
        idle: Duration::from_secs(5),
        interval: Duration::from_secs(2),
        probes: 4,
        unacked_limit: Some(LINK_UNACKED_LIMIT),
    };
    crate::listen::tune_connection(tcp, &LINK_KEEPALIVE)
}

/// Waits for `read` (a frame's read: never cancelled half way through
/// it), asking `alive` every `KEEPALIVE_INTERVAL` whether waiting on
/// still makes sense; its error ends the wait. A data link with nothing
/// to carry (nothing written, a long checkpoint interval) is silent for
/// as long as it is idle, which says nothing about the peer: the control
/// link's pings do.
pub(crate) async fn wait_frame<T>(
    read: impl std::future::Future<Output = Result<T, TransferError>>,
    mut alive: impl FnMut() -> Result<(), TransferError>,
) -> Result<T, TransferError> {
    tokio::pin!(read);
    loop {
        tokio::select! {
            r = &mut read => return r,
            _ = tokio::time::sleep(KEEPALIVE_INTERVAL) => alive()?,
        }
    }
}

/// Sends what `work` answers, telling the protected side it is still
/// working (`Promoting`) every few seconds until then.
pub(crate) async fn answer_when_done<S: AsyncRead + AsyncWrite + Unpin>(
    link: &mut S,
    mut work: tokio::task::JoinHandle<ControlMessage>,
) -> Result<(), ControlError> {
    let mut tick = tokio::time::interval(KEEPALIVE_INTERVAL);
    tick.tick().await;
    let reply = loop {
        tokio::select! {
            done = &mut work => break done.map_err(ControlError::Task)?,
            _ = tick.tick() => send_control(link, &ControlMessage::Promoting).await?,
        }
    };
    send_control(link, &reply).await
}
