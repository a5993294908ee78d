//! Switch-back over the link (`docs/switch-back.md`): the old protected
//! site, under reverse protection and in sync, takes the VPG back. It
//! dials, as always; each step is one control connection of its own, so a
//! step works whatever state the reverse session is in:
//!
//! 1. `MoveBackBegin`: the recovery site refuses writes on the live volumes
//!    and ends the reverse log with a marker checkpoint (`MoveBackMarked`);
//! 2. this site applies the reverse log through the marker, in sync, and
//!    records the marker (durably);
//! 3. `MoveBackFinish`: the recovery site ends the failover (`MoveBackDone`);
//! 4. this site starts a new forward stream (its copy compares extent
//!    hashes with the recovery replica, equal to these volumes), then takes
//!    writes again and ends reverse protection in one durable write, and
//!    its sender starts.
//!
//! Run again after any interruption, it takes up where it stopped: the
//! recovery site answers a repeated begin with the same marker, and
//! `NotFailedOver` once it has ended the failover (this site recorded the
//! marker before asking, so that answer means "finished").

use super::answer_when_done;
use super::reverse_runner::{take_back, ReverseRunner};
use super::sender::dial;
use super::TransferError;
use super::{recv_control, send_control};
use crate::capture::vpg::VpgCapture;
use crate::recovery::ops::RecoveryOps;
use crate::recovery::switch_back::MoveBackAnswer;
use crate::wire::message::{ControlMessage, PROTOCOL_VERSION};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

type Result<T, E = TransferError> = std::result::Result<T, E>;

/// How often the wait for the marker looks at what was applied.
const APPLIED_POLL: Duration = Duration::from_millis(100);

// ---- the old protected site ----

/// `tidemark move-back`: runs the VPG here again, protected forward.
pub async fn move_back(runner: &ReverseRunner, vpg: &Arc<VpgCapture>, wait: Duration) -> Result<String> {
    let _running = vpg
        .moving
        .try_lock()
        .map_err(|_| TransferError::Peer(format!("a move or switch-back of VPG {:?} is already running", vpg.name)))?;
    let Some(reverse) = vpg.reverse_state() else {
        match vpg.writes_refused() {
            None => {
                return Err(TransferError::Peer(format!(
                    "VPG {:?} is protected from this site already; there is nothing to switch back",
                    vpg.name
                )))
            }
            Some(why) => {
                return Err(TransferError::Peer(format!(
                    "VPG {:?} is not under reverse protection here ({why}); run `tidemark reverse` first",
                    vpg.name
                )))
            }
        }
    };
    let name = &vpg.name;
    if !reverse.in_sync && vpg.move_back_marker().is_none() {
        return Err(TransferError::Peer(format!(
            "reverse protection of VPG {name:?} is not in sync yet (applied seq {}); wait until `status` says \
             \"in sync\" (or `tidemark reverse` returns); nothing was changed",
            reverse.applied_seq
        )));
    }
    let deadline = Instant::now() + wait;
    let begin = ControlMessage::MoveBackBegin { protocol: PROTOCOL_VERSION, vpg: name.clone() };
    let lost = "if the recovery site got the request it refuses writes now: run `tidemark move-back` again, or \
                `tidemark move-back --cancel`";
    let marker = match ask(runner, &begin, deadline).await.map_err(|e| e.at(lost))? {
        ControlMessage::MoveBackMarked { marker } => marker,
        ControlMessage::NotFailedOver { switched_back_at } if vpg.move_back_marker() == Some(switched_back_at) => {
            return take_back(runner, vpg, 0).await;
        }
        ControlMessage::NotFailedOver { .. } => {
            return Err(TransferError::Peer(format!(
            "the recovery site has no failover of VPG {name:?}; there is nothing to switch back (nothing was changed)"
        )))
        }
        ControlMessage::Refused { reason } => {
            return Err(TransferError::Peer(format!(
                "the recovery site refused the switch-back of VPG {name:?}: {reason}; nothing was changed"
            )))
        }
        other => return Err(TransferError::Peer(format!("unexpected answer to a switch-back: {other:?}"))),
    };
    tracing::info!(vpg = %name, marker, "switch-back: the recovery site refuses writes; applying its log through checkpoint {marker}");
    let applied = loop {
        match vpg.reverse_state() {
            Some(r) if r.in_sync && r.applied_seq >= marker => break r.applied_seq,
            _ if Instant::now() >= deadline => {
                return Err(TransferError::Peer(format!(
                    "this site has not applied the recovery site's log through its final checkpoint {marker} within \
                 {wait:?} (link down?); writes stay refused at both sites: run `tidemark move-back` again to \
                 finish, or `tidemark move-back --cancel`"
                )))
            }
            _ => tokio::time::sleep(APPLIED_POLL).await,
        }
    };
    let v = vpg.clone();
    tokio::task::spawn_blocking(move || v.set_move_back_marker(Some(marker)))
        .await
        .map_err(|source| TransferError::Task { what: "recording the marker", source })??;
    fail::fail_point!("move-back-before-finish", |_| std::process::abort());
    let finish =
        ControlMessage::MoveBackFinish { protocol: PROTOCOL_VERSION, vpg: name.clone(), marker, applied_seq: applied };
    let unfinished = "writes stay refused at both sites: run `tidemark move-back` again to finish";
    match ask(runner, &finish, deadline).await.map_err(|e| e.at(unfinished.to_string()))? {
        ControlMessage::MoveBackDone { journal_seq } => take_back(runner, vpg, journal_seq + 1).await,
        ControlMessage::NotFailedOver { switched_back_at } if switched_back_at == marker => {
            take_back(runner, vpg, 0).await
        }
        ControlMessage::NotFailedOver { .. } => Err(TransferError::Peer(format!(
            "the recovery site has no failover of VPG {name:?} any more, ended by another switch-back; {unfinished}"
        ))),
        ControlMessage::Refused { reason } => {
            Err(TransferError::Peer(format!("the recovery site did not end its failover: {reason}")))
        }
        other => Err(TransferError::Peer(format!("unexpected answer to a switch-back: {other:?}; {unfinished}"))),
    }
}

/// `tidemark move-back --cancel`: the recovery site takes writes again.
pub async fn cancel(runner: &ReverseRunner, vpg: &Arc<VpgCapture>, wait: Duration) -> Result<String> {
    let _running = vpg.moving.try_lock().map_err(|_| {
        TransferError::Peer(format!("a switch-back of VPG {:?} is running; cancel it after it gives up", vpg.name))
    })?;
    if vpg.reverse_state().is_none() {
        return Err(TransferError::Peer(format!(
            "VPG {:?} is not under reverse protection here; there is no switch-back to cancel",
            vpg.name
        )));
    }
    let request = ControlMessage::MoveBackCancel { protocol: PROTOCOL_VERSION, vpg: vpg.name.clone() };
    let unchanged = "nothing was changed";
    match ask(runner, &request, Instant::now() + wait).await.map_err(|e| e.at(unchanged))? {
        ControlMessage::Promoted { .. } => {}
        ControlMessage::NotFailedOver { .. } => {
            return Err(TransferError::Peer(format!(
                "the recovery site has already ended its failover of VPG {:?}: finish with `tidemark move-back`",
                vpg.name
            )))
        }
        ControlMessage::Refused { reason } => {
            return Err(TransferError::Peer(format!("the recovery site refused the cancel: {reason}")))
        }
        other => return Err(TransferError::Peer(format!("unexpected answer to a cancel: {other:?}"))),
    }
    let v = vpg.clone();
    tokio::task::spawn_blocking(move || v.set_move_back_marker(None))
        .await
        .map_err(|source| TransferError::Task { what: "forgetting the marker", source })??;
    Ok(format!(
        "switch-back of VPG {:?} cancelled: the recovery site takes writes again; reverse protection goes on",
        vpg.name
    ))
}

/// One request on a control connection of its own; its answer, however
/// long the recovery site works on it (it says so every few seconds).
async fn ask(runner: &ReverseRunner, request: &ControlMessage, deadline: Instant) -> Result<ControlMessage> {
    let exchange = async {
        let connector = TlsConnector::from(runner.tls.clone());
        let mut link = dial(&connector, &runner.peer.address, runner.peer.control_port).await?;
        send_control(&mut link, request).await?;
        loop {
            match recv_control(&mut link).await? {
                ControlMessage::Promoting => {}
                answer => return Ok(answer),
            }
        }
    };
    tokio::time::timeout_at(deadline, exchange)
        .await
        .map_err(|_| TransferError::Peer("the recovery site did not answer in time (link down?)".to_string()))?
}

// ---- the recovery site ----

/// Answers one switch-back request (the first message of its connection,
/// whose peer and protocol the receiver checked).
/// The work goes on if the link drops: a finish is finished.
pub(super) async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut link: S,
    ops: Arc<RecoveryOps>,
    peer: [u8; 32],
    request: ControlMessage,
) -> Result<()> {
    let Some((_, vpg)) = request.move_back_target() else {
        return Err(TransferError::Peer(format!("not a switch-back request: {request:?}")));
    };
    let work = tokio::spawn(async move {
        let answer = match request {
            ControlMessage::MoveBackBegin { .. } => ops.move_back_begin(&vpg, &peer).await,
            ControlMessage::MoveBackFinish { marker, applied_seq, .. } => {
                tracing::info!(%vpg, marker, applied_seq, "the old site applied the reverse log and asks to end the failover");
                ops.move_back_finish(&vpg, marker, &peer).await
            }
            _ => ops.move_back_cancel(&vpg).await,
        };
        match answer {
            Ok(MoveBackAnswer::Marked(marker)) => ControlMessage::MoveBackMarked { marker },
            Ok(MoveBackAnswer::Done { journal_seq }) => ControlMessage::MoveBackDone { journal_seq },
            Ok(MoveBackAnswer::Cancelled) => ControlMessage::Promoted { checkpoint: 0 },
            Ok(MoveBackAnswer::NotFailedOver { switched_back_at }) => {
                ControlMessage::NotFailedOver { switched_back_at }
            }
            Err(e) => {
                tracing::warn!(%vpg, "switch-back request refused: {e_chain}", e_chain = crate::error_chain::Chain(&e));
                ControlMessage::refused(crate::error_chain::Chain(&e).to_string())
            }
        }
    });
    Ok(answer_when_done(&mut link, work).await?)
}
