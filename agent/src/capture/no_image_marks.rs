//! The marks that say "the stream's end is no image from here": records
//! appended after one follow writes the stream does not hold (bitmap mode
//! began) or regions it does not hold yet (a resync began). The recovery
//! site takes `head` as inconsistent from the mark until the next
//! consistent checkpoint (docs/bitmap-mode.md).

use super::error::CaptureError;
use crate::log::ProtectedLog;
use crate::record::{now_ms, RecordBody};

type Result<T, E = CaptureError> = std::result::Result<T, E>;

/// The tag of the checkpoint that marks where bitmap mode began.
pub const BITMAP_START_TAG: &str = "bitmap-start";
/// The tag of the checkpoint that marks where a resync began.
pub const RESYNC_START_TAG: &str = "resync-start";

/// Where a mark that must come before anything logged from now went.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Marked {
    /// Appended.
    Now,
    /// The log had no room for it: it goes in before the next record.
    BeforeNextNoRoom,
    /// The log's disk did not take it: it goes in before the next record.
    BeforeNextDiskRefused,
}

/// Marks the stream's end as no image from here (`tag` says why), now if
/// the log has room and its disk takes it, else before whatever record
/// the log takes next (`ProtectedLog::precede_next_append`): either way
/// nothing is logged from here without the mark before it. `what` names
/// the mark in the warning a deferred one gets. Called under the
/// write-order lock, or before any writer exists.
///
/// Not for a caller that may wait for room instead (the resync's own
/// start, `wait_to_resync`): it appends with `mark_inconsistent_from_here`.
pub(super) fn mark_now_or_before_next_record(log: &ProtectedLog, tag: &str, vpg: &str, what: &str) -> Result<Marked> {
    let appended = (|| {
        fail::fail_point!("no-image-mark", |name: Option<String>| match name.as_deref() {
            Some(refused) if refused == tag => Err(CaptureError::Log(crate::log::LogError::Append {
                seq: 0,
                path: "failpoint".into(),
                source: std::io::Error::from_raw_os_error(28),
            })),
            _ => mark_inconsistent_from_here(log, tag),
        });
        mark_inconsistent_from_here(log, tag)
    })();
    let marked = match appended {
        Ok(true) => return Ok(Marked::Now),
        Ok(false) => {
            tracing::warn!(%vpg, "no room in the protected log to mark {what} now: it goes in before the next record");
            Marked::BeforeNextNoRoom
        }
        // A full disk must not keep the VMs from their disks (reviews of
        // helper-44 and -46): bitmap mode takes the writes; with it off
        // they fail as any write does there.
        Err(CaptureError::Log(e)) if e.is_storage_failure() => {
            tracing::warn!(
                %vpg,
                "marking {what} in the protected log: {}; it goes in before the next record",
                crate::error_chain::Chain(&e)
            );
            Marked::BeforeNextDiskRefused
        }
        Err(e) => return Err(e),
    };
    mark_before_next_record(log, tag);
    Ok(marked)
}

/// Appends the mark now. False, appending nothing, when the log has no
/// room for it now. Called under the write-order lock, or before any
/// writer exists.
pub(super) fn mark_inconsistent_from_here(log: &ProtectedLog, tag: &str) -> Result<bool> {
    let body = inconsistent_mark(tag);
    // A mark still to be written before the next record says the same
    // from the same place (nothing was logged since it was set): this one
    // takes its place, and needs room for one mark, not two (review of
    // helper-47). Set again if this one does not go in.
    let pending = log.take_preceding();
    let appended = (|| {
        let Some(space) = log.try_reserve_bytes(crate::log::encoded_bytes(&body)?) else { return Ok(false) };
        log.append_reserved(space, &body)?;
        Ok(true)
    })();
    if let (Some(pending), false) = (pending, matches!(appended, Ok(true))) {
        log.precede_next_append(pending).expect("it was taken as it is");
    }
    appended
}

/// The mark, written before whatever record the log takes next.
pub(super) fn mark_before_next_record(log: &ProtectedLog, tag: &str) {
    // Refused only for a tag over the limit: these are constants.
    log.precede_next_append(inconsistent_mark(tag)).expect("a mark's tag is within the limit");
}

/// The record the marks are.
fn inconsistent_mark(tag: &str) -> RecordBody {
    RecordBody::Checkpoint { time_ms: now_ms(), tag: tag.to_string(), resync: true }
}
