//! Move (planned migration) of a VPG to the recovery site, protected side:
//! 0. tell the recovery side a move begins (it may refuse, saying why);
//! 1. refuse every new write (EPERM; persisted, so a restart keeps it);
//! 2. make everything written so far durable;
//! 3. insert a final checkpoint, tagged "move";
//! 4. wait until the recovery journal has it;
//! 5. have the recovery side fail over to exactly that checkpoint.
//!
//! Every write acknowledged before step 1 is in that checkpoint; every
//! write after it got an error. If the link is down, step 4 or 5 waits up
//! to the given time and the move can simply be run again: writes stay
//! refused, and a repeated promote of the same checkpoint is accepted.
//! Or it can be cancelled: once the recovery side confirms, over the link,
//! that it has not failed the VPG over, writes are taken here again.

use super::error::CaptureError;
use super::vpg::{MoveStep, VpgCapture};
use crate::protected_state::{Event, WritesRefused};
use std::time::Duration;

type Result<T, E = CaptureError> = std::result::Result<T, E>;

pub const MOVE_TAG: &str = "move";

pub async fn move_vpg(vpg: &VpgCapture, wait: Duration) -> Result<(u64, String)> {
    let _running = vpg
        .moving
        .try_lock()
        .map_err(|_| CaptureError::Unavailable(format!("a move of VPG {:?} is already running", vpg.name)))?;
    vpg.check_writes_change(Event::MoveBegin)?;
    if vpg.refusal() == Some(WritesRefused::Moving) {
        tracing::info!(vpg = %vpg.name, "continuing an unfinished move");
    }
    // The recovery side must agree first (no test failover or failover of
    // the VPG running there); until then nothing is refused.
    tokio::time::timeout(wait, vpg.move_step(MoveStep::Begin))
        .await
        .map_err(|_| {
            CaptureError::Link(format!("the recovery side is not reachable (waited {wait:?}); nothing was changed"))
        })?
        .map_err(|e| e.step("the recovery side refused the move; nothing was changed"))?;
    vpg.change_writes(Event::MoveBegin).await?;
    vpg.flush().await.map_err(|e| e.step("flushing before the final checkpoint"))?;
    let id = vpg.checkpoint(MOVE_TAG, wait).await?;
    tracing::info!(vpg = %vpg.name, "move: final checkpoint {id}; waiting for the recovery journal");
    let deadline = tokio::time::Instant::now() + wait;
    let acked = tokio::time::timeout_at(deadline, vpg.log.wait_acked(id)).await.map_err(|_| {
        CaptureError::Link(format!(
            "the recovery journal did not confirm the final checkpoint {id} within {wait:?} (link down?); \
             writes stay refused; run `tidemark move` again when the link is back"
        ))
    })??;
    if !acked {
        return Err(CaptureError::Unavailable(format!(
            "the stream started over (the recovery journal could not continue it) before the final checkpoint {id} \
             arrived; writes stay refused; run `tidemark move` again once the new copy is through"
        )));
    }
    tokio::time::timeout_at(deadline, vpg.move_step(MoveStep::Promote(id)))
        .await
        .map_err(|_| {
            CaptureError::Link(format!(
                "the recovery side did not finish the failover within {wait:?}; run the move again"
            ))
        })?
        .map_err(|e| e.step("the recovery side could not fail over"))?;
    let message = format!(
        "moved VPG {:?}: final checkpoint {id} is live at the recovery site; writes here are refused from now on",
        vpg.name
    );
    vpg.change_writes(Event::MoveCommitted { checkpoint: id }).await?;
    tracing::info!("{message}");
    Ok((id, message))
}

/// Calls off an unfinished move (writes refused here, the recovery side
/// not live). Only the recovery side knows whether it already failed over
/// (a promote whose answer the link lost): it must say so over the link
/// before writes are taken again. Without the link, nothing changes.
pub async fn cancel_move(vpg: &VpgCapture, wait: Duration) -> Result<String> {
    let _running = vpg.moving.try_lock().map_err(|_| {
        CaptureError::Unavailable(format!(
            "a move of VPG {:?} is running; cancel it after it gives up (its --wait)",
            vpg.name
        ))
    })?;
    vpg.check_writes_change(Event::MoveCancelled)?;
    tokio::time::timeout(wait, vpg.move_step(MoveStep::Cancel))
        .await
        .map_err(|_| {
            CaptureError::Link(format!(
                "the recovery side is not reachable (waited {wait:?}); it may already have taken over, so writes \
                 stay refused: cancel again when the link is back, or finish with `tidemark move`"
            ))
        })?
        .map_err(|e| e.step("the recovery side did not agree; writes stay refused"))?;
    vpg.change_writes(Event::MoveCancelled).await?;
    Ok(format!(
        "move of VPG {:?} cancelled: the recovery site confirmed it has not taken over; writes are taken here again",
        vpg.name
    ))
}
