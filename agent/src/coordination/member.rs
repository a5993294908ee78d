//! A member's side of 4009: coordinators whose certificates are pinned in
//! `[coordination] coordinators` hold this appliance's VPGs for their
//! checkpoints (`capture::group_hold`), one hold at a time per connection.
//! A coordinator that goes silent costs at most `hold_max` of held writes.

use super::message::{receive, send, FromMember, ToMember};
use super::CoordinationError;
use crate::capture::group_hold::HoldOutcome;
use crate::capture::vpg::VpgCapture;
use crate::config::{parse_fingerprint, CoordinationConfig};
use crate::wire::tls;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{oneshot, Semaphore};
use tokio_rustls::TlsAcceptor;

type Result<T, E = CoordinationError> = std::result::Result<T, E>;

/// Coordinators connected at once (each group of each coordinator holds
/// one connection), and from one address: a stranger's idle connections
/// cannot take every slot.
const CONNECTIONS_MAX: usize = 64;
const CONNECTIONS_PER_SOURCE_MAX: usize = 16;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection with no hold for this long is closed (coordinators drop
/// theirs sooner, `coordinator::CONNECTION_REUSE_MAX`).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// After "held", how much longer than `hold_max` the coordinator's word is
/// awaited before the connection is taken as lost (the hold itself has
/// ended by then).
pub const MARK_GRACE: Duration = Duration::from_secs(2);

pub type Vpgs = Arc<BTreeMap<String, Arc<VpgCapture>>>;

/// Listens on `[coordination] listen`, if it is set.
pub async fn start(cfg: &CoordinationConfig, identity: tls::Identity, vpgs: Vpgs) -> Result<()> {
    let Some(listen) = cfg.listen else { return Ok(()) };
    let allowed = cfg.coordinators.iter().map(|f| parse_fingerprint(f)).collect::<Result<Vec<_>, _>>()?;
    // No session tickets: the coordinator reads nothing unasked between
    // holds, and an unread ticket would look like a closed connection.
    let mut config = (*tls::server_config(identity, allowed)?).clone();
    config.send_tls13_tickets = 0;
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = crate::listen::bind_listener(listen, "checkpoint coordination").await?;
    let hold_max = cfg.hold_max;
    tracing::info!("checkpoint coordination on {listen} (writes held at most {hold_max:?})");
    let slots = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    let per_source = crate::limits::PerSource::new(CONNECTIONS_PER_SOURCE_MAX);
    tokio::spawn(async move {
        loop {
            let (tcp, from) = match listener.accept().await {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!("checkpoint coordination: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Some(source_slot) = per_source.enter(from.ip()) else {
                tracing::warn!(
                    "checkpoint coordination: {from} refused, {CONNECTIONS_PER_SOURCE_MAX} connections from there already"
                );
                continue;
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::warn!("checkpoint coordination: {from} refused, {CONNECTIONS_MAX} connections already");
                continue;
            };
            let (acceptor, vpgs) = (acceptor.clone(), vpgs.clone());
            tokio::spawn(async move {
                let _slot = (slot, source_slot);
                let _ = tcp.set_nodelay(true);
                let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => return tracing::warn!("checkpoint coordination: {from} refused: {e}"),
                    Err(_) => return tracing::warn!("checkpoint coordination: {from} did not finish its handshake"),
                };
                if let Err(e) = session(stream, &vpgs, hold_max).await {
                    tracing::info!(
                        "checkpoint coordination: connection from {from} closed: {e_chain}",
                        e_chain = crate::error_chain::Chain(&e)
                    );
                }
            });
        }
    });
    Ok(())
}

/// Serves one coordinator's holds until it closes, goes idle or says
/// something out of turn.
pub async fn session<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, vpgs: &Vpgs, hold_max: Duration) -> Result<()> {
    loop {
        let request = match tokio::time::timeout(IDLE_TIMEOUT, receive::<_, ToMember>(&mut stream)).await {
            Err(_) => return Ok(()),
            Ok(Err(e)) if is_closed(&e) => return Ok(()),
            Ok(r) => r?,
        };
        let ToMember::Hold { vpg, tag } = request else {
            return Err(CoordinationError::Failed("a mark with no hold before it".to_string()));
        };
        let refusal = match (vpgs.get(&vpg), crate::names::validate_group_tag(&tag)) {
            (None, _) => Some(format!("no VPG {vpg:?} on this appliance")),
            (_, Err(e)) => Some(crate::error_chain::Chain(&e).to_string()),
            (Some(_), Ok(())) => None,
        };
        if let Some(reason) = refusal {
            send(&mut stream, &FromMember::Refused { reason }).await?;
            continue;
        }
        let capture = vpgs.get(&vpg).expect("checked");
        let reply = hold_once(&mut stream, capture, &tag, hold_max).await?;
        send(&mut stream, &reply).await?;
    }
}

/// One hold, from "hold" to the reply that ends it. Err: the connection
/// is lost (the hold has ended, appending nothing, by then).
async fn hold_once<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    capture: &VpgCapture,
    tag: &str,
    hold_max: Duration,
) -> Result<FromMember> {
    let (held_tx, held_rx) = oneshot::channel();
    let (mark_tx, mark_rx) = oneshot::channel();
    let hold = async { Ok::<_, CoordinationError>(capture.hold_for_group(tag, hold_max, held_tx, mark_rx).await?) };
    tokio::pin!(hold);
    let holding = tokio::select! {
        ended = &mut hold => return Ok(reply_of(ended)),
        held = held_rx => held.is_ok(),
    };
    if !holding {
        return Ok(reply_of(hold.await));
    }
    // The hold runs out by itself at hold_max: it is polled while the
    // coordinator's word is awaited.
    let word = async {
        send(stream, &FromMember::Held).await?;
        let mark = match tokio::time::timeout(hold_max + MARK_GRACE, receive::<_, ToMember>(stream)).await {
            Ok(Ok(ToMember::Mark { mark })) => mark,
            Ok(Ok(other)) => return Err(CoordinationError::Failed(format!("{other:?} where a mark belongs"))),
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(CoordinationError::Failed(format!(
                    "no word from the coordinator within {:?}",
                    hold_max + MARK_GRACE
                )))
            }
        };
        let _ = mark_tx.send(mark);
        Ok(())
    };
    let (ended, word) = tokio::join!(hold, word);
    let reply = reply_of(ended);
    word.map(|()| reply)
}

fn reply_of(ended: Result<HoldOutcome>) -> FromMember {
    let us = |d: Duration| d.as_micros() as u64;
    match ended {
        Ok(HoldOutcome::Marked { id, held }) => FromMember::Marked { id, held_us: us(held) },
        Ok(HoldOutcome::Released { held }) => FromMember::Released { held_us: us(held) },
        Ok(HoldOutcome::TooLate { held }) => FromMember::TooLate { held_us: us(held) },
        Err(e) => FromMember::Refused { reason: crate::error_chain::Chain(&e).to_string() },
    }
}

/// The coordinator closed the connection between holds.
fn is_closed(e: &CoordinationError) -> bool {
    let eof = |io: &std::io::Error| io.kind() == std::io::ErrorKind::UnexpectedEof;
    if let CoordinationError::Io(io) = e {
        return eof(io);
    }
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        if c.downcast_ref::<std::io::Error>().is_some_and(eof) {
            return true;
        }
        cause = c.source();
    }
    false
}
