//! One VPG's part in a coordinated checkpoint (`crate::coordination`).
//!
//! The hold takes the VPG's write-order lock: from then on no write is
//! logged, applied or completed, so the log's end is where the VPG stands
//! while every member is held. Once the coordinator has heard that every
//! member holds, it says "mark": the checkpoint is appended at that end
//! and the lock is let go. A write completed on one member before the
//! hold began is therefore in that member's checkpoint; a write issued
//! after it was completed can only be logged on another member after that
//! member's hold ends, which is after every member marked, so after its
//! checkpoint. No checkpoint ever holds a write without the writes that
//! completed before it was issued, on whichever member.
//!
//! A hold lasts at most `hold_max`. Past it, or when the coordinator says
//! "no" or goes away, the writes go on and nothing is appended: a member
//! whose writes went on unmarked has no checkpoint with that tag, so the
//! group's checkpoint is incomplete and is never taken as one.

use super::error::CaptureError;
use super::vpg::VpgCapture;
use crate::record::{now_ms, RecordBody};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

type Result<T, E = CaptureError> = std::result::Result<T, E>;

/// Holds are kept to a tenth of the time, however often coordinators ask
/// (a timer, a loop of API calls, several groups, a hostile coordinator):
/// each hold adds its length to a debt that writes going on pay back at
/// 1/`HOLD_REST_FACTOR` of the time passing, and no hold begins while the
/// debt is over `HOLD_DEBT_MAX`. Holds of a few milliseconds every few
/// hundred never come near it; after a hold that ran to a 100 ms hold_max,
/// the next waits about 0.7 s.
pub const HOLD_REST_FACTOR: u32 = 9;
pub const HOLD_DEBT_MAX: Duration = Duration::from_millis(20);

/// How a hold ended, with how long writes were held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldOutcome {
    /// The checkpoint `id` was appended.
    Marked { id: u64, held: Duration },
    /// The coordinator said no (another member could not hold), or went
    /// away: nothing was appended.
    Released { held: Duration },
    /// `hold_max` ran out before the coordinator spoke: nothing appended.
    TooLate { held: Duration },
}

impl VpgCapture {
    /// Refuses a hold while more than `HOLD_DEBT_MAX` is owed.
    fn check_hold_debt(&self) -> Result<()> {
        let owed = self.hold_debt();
        if owed > HOLD_DEBT_MAX {
            return Err(CaptureError::Unavailable(format!(
                "VPG {}'s writes were held {owed:?} more than a tenth of the time allows lately (coordinated \
                 checkpoints too often, or a hold that ran to hold_max); the next may begin in {:?}",
                self.name,
                (owed - HOLD_DEBT_MAX) * HOLD_REST_FACTOR
            )));
        }
        Ok(())
    }

    /// What is owed of the hold debt now.
    fn hold_debt(&self) -> Duration {
        match *self.last_group_hold.lock().expect("hold lock") {
            Some((at, owed)) => owed.saturating_sub(at.elapsed() / HOLD_REST_FACTOR),
            None => Duration::ZERO,
        }
    }

    /// Holds this VPG's writes for a checkpoint tagged `tag`: sends on
    /// `held` once they are held, then waits for `mark` (true: append the
    /// checkpoint; false or dropped: do not) for at most `hold_max` from
    /// the moment the hold began. Refused (nothing held) when no
    /// restorable checkpoint can be taken now, or when room in the log or
    /// the lock is not had within `hold_max`.
    pub async fn hold_for_group(
        &self,
        tag: &str,
        hold_max: Duration,
        held: oneshot::Sender<()>,
        mark: oneshot::Receiver<bool>,
    ) -> Result<HoldOutcome> {
        if let Some(why) = self.checkpoint_refusal() {
            return Err(CaptureError::Unavailable(why));
        }
        self.check_hold_debt()?;
        let body = RecordBody::Checkpoint { time_ms: now_ms(), tag: tag.to_string(), resync: false };
        let Ok(space) = tokio::time::timeout(hold_max, self.log.reserve(&body)).await else {
            return Err(CaptureError::Unavailable(format!(
                "VPG {}'s protected log had no room for a checkpoint within {hold_max:?}",
                self.name
            )));
        };
        let space = space?;
        let Ok(order) = tokio::time::timeout(hold_max, self.order.lock()).await else {
            return Err(CaptureError::Unavailable(format!(
                "VPG {}'s writes could not be held within {hold_max:?} (a write, its fsync or another hold kept \
                 the lock that long)",
                self.name
            )));
        };
        let began = Instant::now();
        // Anything may have changed while the lock was awaited, the debt
        // too (another hold may have had the lock meanwhile): checked again
        // before anything is held.
        if let Some(why) = self.checkpoint_refusal() {
            return Err(CaptureError::Unavailable(why));
        }
        self.check_hold_debt()?;
        let outcome = async {
            if held.send(()).is_err() {
                return Ok(HoldOutcome::Released { held: began.elapsed() });
            }
            let decision = tokio::time::timeout_at((began + hold_max).into(), mark).await;
            Ok(match decision {
                Ok(Ok(true)) => {
                    fail::fail_point!("group-hold-before-mark", |_| Err(CaptureError::Failpoint(
                        "before the group checkpoint"
                    )));
                    match self.append_checkpoint_held(space, body, false, || {})? {
                        Some(id) => HoldOutcome::Marked { id, held: began.elapsed() },
                        None => {
                            return Err(CaptureError::Unavailable(format!(
                                "VPG {} left logging mode during the hold",
                                self.name
                            )))
                        }
                    }
                }
                Ok(Ok(false)) | Ok(Err(_)) => HoldOutcome::Released { held: began.elapsed() },
                Err(_) => HoldOutcome::TooLate { held: began.elapsed() },
            })
        }
        .await;
        // Owed before the lock goes, whatever the outcome: a hold queued
        // behind this one sees it.
        let owed = self.hold_debt() + began.elapsed();
        *self.last_group_hold.lock().expect("hold lock") = Some((Instant::now(), owed));
        drop(order);
        if let Ok(HoldOutcome::TooLate { held }) = outcome {
            tracing::warn!(
                vpg = %self.name,
                "coordinated checkpoint {tag:?}: the coordinator did not answer within {held:?}; writes go on, no checkpoint"
            );
        }
        outcome
    }
}
