//! What one VPG is doing at the recovery site, and every way that changes.
//!
//! The receiver (does the journal take the stream?), the applier (may the
//! replica move?), the recovery operations (may a failover, a move or a
//! test failover begin?) and status all ask this one value; none keeps a
//! flag of its own. Every change is an `Event` given to `VpgState::next`,
//! a pure function that returns the new state or why the event is refused;
//! the VPG's slot (`transfer::slot`) applies it under its state lock.
//!
//! ```text
//!                 TestStart            TestStarted
//!   Replicating ───────────► TestChanging ───────────► Testing
//!    ▲  ▲  │ ▲ ◄──────────────── (TestGone)  ◄──────────── (TestStop)
//!    │  │  │ │
//!    │  │  │ └── MoveEnd, MoveCancel ── Moving ◄── MoveBegin ── (from Replicating)
//!    │  │  │                  │ CommitBegin(Move, its mark)
//!    │  │  └ CommitBegin(Failover) ─► Committing ── CommitFailed ─► Replicating / Moving
//!    │  │                               │ Committed
//!    │  │                               ▼
//!    │  └───────── Reopening ◄──── FailedOver
//!    └ Reopened      (SwitchBackEnds, also again from Reopening)
//! ```
//!
//! What must survive a crash is on disk, one durable write per change:
//! - `Committed` follows the failover record (`failover.json`), written by
//!   `recovery::failover::commit` before anything is set aside; at start a
//!   VPG with a record is `FailedOver` (`VpgState::at_start`);
//! - `Reopened` follows the removal of that record, the last step of a
//!   switch-back (`recovery::switch_back::finish_on_disk`).
//!
//! Nothing else is persisted, on purpose: a test failover does not outlive
//! the agent (its scratch is removed at start), a move's mark lives as long
//! as the link that announced it, and a commit or switch-back cut short is
//! finished from disk at the next start.
//!
//! Lock order: a slot's journal lock, then its state lock. Nothing waits or
//! does I/O while it holds the state lock.

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};

/// How a VPG's volumes came to be live at the recovery site.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum How {
    /// An operator chose a checkpoint (disaster, or a drill gone live).
    Failover,
    /// A planned move: the protected side stopped writes and sent a final
    /// checkpoint; nothing was lost.
    Move,
}

impl How {
    fn noun(self) -> &'static str {
        match self {
            How::Failover => "failover",
            How::Move => "move",
        }
    }

    pub fn past_participle(self) -> &'static str {
        match self {
            How::Failover => "failed over",
            How::Move => "moved",
        }
    }
}

/// What a commit makes live: an operator's failover, or the promote of
/// the move announced on the link holding `mark` (and no other).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    Failover,
    Move { mark: u64 },
}

impl Commit {
    pub fn how(self) -> How {
        match self {
            Commit::Failover => How::Failover,
            Commit::Move { .. } => How::Move,
        }
    }
}

/// One VPG's life at the recovery site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VpgState {
    /// The journal takes the protected side's stream; history moves on.
    Replicating,
    /// A test failover is being set up or taken down; replication goes on.
    TestChanging,
    /// A test failover serves writable copies of `checkpoint`; replication
    /// goes on.
    Testing { checkpoint: u64 },
    /// The protected side announced a move on the link holding `mark`:
    /// replication goes on until it promotes; other failovers and test
    /// failovers are refused.
    Moving { mark: u64 },
    /// A failover, or a move's promote, is being committed: the stream is
    /// closed. `mark`: the move's link still holds its mark (a commit that
    /// fails then goes back to `Moving`).
    Committing { how: How, mark: Option<u64> },
    /// Failed over at `checkpoint` (at `time_ms`): the replica is live and
    /// the history closed.
    FailedOver { checkpoint: u64, how: How, time_ms: u64 },
    /// A switch-back ends the failover and the journal is reopened: a hello
    /// is asked to come back.
    Reopening,
}

/// What happens to a VPG at the recovery site.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    TestStart,
    TestStarted {
        checkpoint: u64,
    },
    TestStop,
    /// A test failover's start failed, or its stop ended (however).
    TestGone,
    /// A link announces a move; `mark` names it (`new_move_mark`).
    MoveBegin {
        mark: u64,
    },
    /// The link holding `mark` lets go (cancelled, closed). A mark that no
    /// longer holds the VPG (its move committed) changes nothing.
    MoveEnd {
        mark: u64,
    },
    /// The protected side called its move off (on any of its links: it
    /// takes writes again once this is confirmed). Whatever link holds
    /// the move, its promote is refused from now on.
    MoveCancel,
    CommitBegin(Commit),
    Committed {
        checkpoint: u64,
        how: How,
        time_ms: u64,
    },
    CommitFailed,
    SwitchBackEnds,
    Reopened,
}

/// Why an event is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    TestChanging,
    TestRunning {
        checkpoint: u64,
    },
    NoTest,
    /// A move is announced, or a failover or move is being committed.
    Busy(How),
    FailedOver {
        checkpoint: u64,
        how: How,
        time_ms: u64,
    },
    Reopening,
    /// A move's promote on a link whose move has ended: called off, or
    /// its link replaced.
    MoveEnded,
    /// The event cannot happen in this state: a bug in the caller.
    OutOfOrder {
        state: VpgState,
        event: Event,
    },
}

impl Refusal {
    /// The refusal as the operator reads it.
    pub fn message(&self, vpg: &str) -> String {
        match self {
            Refusal::TestChanging => {
                format!("a test failover of VPG {vpg:?} is starting or stopping; try again in a moment")
            }
            Refusal::TestRunning { checkpoint } => format!(
                "a test failover of VPG {vpg:?} is running (checkpoint {checkpoint}); stop it first with `tidemark \
                 test-failover stop --vpg {vpg}`"
            ),
            Refusal::NoTest => {
                format!("no test failover of VPG {vpg:?} is running (start one with `tidemark test-failover start`)")
            }
            Refusal::Busy(how) => {
                format!("a {} of VPG {vpg:?} is already running here; wait for it to finish", how.noun())
            }
            Refusal::FailedOver { checkpoint, how, time_ms } => failed_over_message(vpg, *how, *checkpoint, *time_ms),
            Refusal::Reopening => format!(
                "VPG {vpg:?} is switching back to the old site and its journal is being reopened; try again in a \
                 moment"
            ),
            Refusal::MoveEnded => format!(
                "the move of VPG {vpg:?} announced on this link has ended (it was cancelled, or the link was \
                 replaced); nothing was promoted: run `tidemark move` again"
            ),
            Refusal::OutOfOrder { state, event } => {
                format!("internal error: {event:?} cannot happen to VPG {vpg:?} while it is {state:?}")
            }
        }
    }
}

/// The error for anything that wants a failed-over VPG's history.
pub fn failed_over_message(vpg: &str, how: How, checkpoint: u64, time_ms: u64) -> String {
    format!(
        "VPG {vpg:?} was {} at checkpoint {checkpoint} on {}; its volumes are live now and its history is closed",
        how.past_participle(),
        crate::status::format_time_ms(time_ms)
    )
}

/// A name for a move's mark, never given twice in this process.
pub fn new_move_mark() -> u64 {
    static MARKS: AtomicU64 = AtomicU64::new(1);
    MARKS.fetch_add(1, Ordering::Relaxed)
}

impl VpgState {
    /// A VPG's state when its journal is opened: failed over if the disk
    /// says so (`(checkpoint, how, time_ms)` from its failover record).
    pub fn at_start(failed_over: Option<(u64, How, u64)>) -> VpgState {
        match failed_over {
            Some((checkpoint, how, time_ms)) => VpgState::FailedOver { checkpoint, how, time_ms },
            None => VpgState::Replicating,
        }
    }

    /// The state after `event`, or why it is refused. Every transition of
    /// a VPG at the recovery site is in this one function.
    pub fn next(&self, event: Event) -> Result<VpgState, Refusal> {
        use Event as E;
        use VpgState as S;
        let next = match (self, event) {
            (S::Replicating, E::TestStart) => S::TestChanging,
            (S::TestChanging, E::TestStarted { checkpoint }) => S::Testing { checkpoint },
            (S::Testing { .. }, E::TestStop) => S::TestChanging,
            (S::TestChanging, E::TestGone) => S::Replicating,
            (S::Replicating, E::MoveBegin { mark }) => S::Moving { mark },
            (S::Moving { mark }, E::MoveEnd { mark: ended }) if *mark == ended => S::Replicating,
            (S::Committing { how, mark: Some(m) }, E::MoveEnd { mark }) if *m == mark => {
                S::Committing { how: *how, mark: None }
            }
            // A mark that no longer holds the VPG: its move committed, or
            // was refused and another link's move runs now.
            (_, E::MoveEnd { .. }) => self.clone(),
            // One protected side: a cancel on any of its links calls off
            // the move whichever link announced it.
            (S::Moving { .. }, E::MoveCancel) => S::Replicating,
            (S::Replicating | S::TestChanging | S::Testing { .. }, E::MoveCancel) => self.clone(),
            (S::Replicating, E::CommitBegin(Commit::Failover)) => S::Committing { how: How::Failover, mark: None },
            (S::Moving { mark }, E::CommitBegin(Commit::Move { mark: promoted })) if *mark == promoted => {
                S::Committing { how: How::Move, mark: Some(*mark) }
            }
            (S::Committing { mark, .. }, E::CommitFailed) => match mark {
                Some(mark) => S::Moving { mark: *mark },
                None => S::Replicating,
            },
            (S::Committing { how, .. }, E::Committed { checkpoint, how: committed, time_ms }) if *how == committed => {
                S::FailedOver { checkpoint, how: committed, time_ms }
            }
            // Asked again after an end that failed half-way (its disk
            // steps are idempotent).
            (S::FailedOver { .. } | S::Reopening, E::SwitchBackEnds) => S::Reopening,
            (S::Reopening, E::Reopened) => S::Replicating,
            (_, event) => return Err(self.refusal(event)),
        };
        Ok(next)
    }

    /// Why `event` is refused here (`next` found no transition).
    fn refusal(&self, event: Event) -> Refusal {
        use Event as E;
        use VpgState as S;
        let out_of_order = Refusal::OutOfOrder { state: self.clone(), event };
        // Only these come from outside (an operator, a link); any other
        // event refused is a bug in the caller.
        let asked =
            matches!(event, E::TestStart | E::TestStop | E::MoveBegin { .. } | E::MoveCancel | E::CommitBegin(_));
        if !asked {
            return out_of_order;
        }
        match (self, event) {
            (
                S::Replicating | S::Moving { .. } | S::Committing { .. } | S::FailedOver { .. } | S::Reopening,
                E::TestStop,
            ) => Refusal::NoTest,
            // A promote whose move is no longer the one running.
            (S::Replicating | S::Moving { .. }, E::CommitBegin(Commit::Move { .. })) => Refusal::MoveEnded,
            (S::Replicating, _) => out_of_order,
            (S::TestChanging, _) => Refusal::TestChanging,
            (S::Testing { checkpoint }, _) => Refusal::TestRunning { checkpoint: *checkpoint },
            (S::Moving { .. }, _) => Refusal::Busy(How::Move),
            (S::Committing { how, .. }, _) => Refusal::Busy(*how),
            (S::FailedOver { checkpoint, how, time_ms }, _) => {
                Refusal::FailedOver { checkpoint: *checkpoint, how: *how, time_ms: *time_ms }
            }
            (S::Reopening, _) => Refusal::Reopening,
        }
    }

    /// Why the journal takes no stream now, if it does not.
    pub fn stream_refusal(&self) -> Option<Refusal> {
        match self {
            VpgState::Replicating | VpgState::TestChanging | VpgState::Testing { .. } | VpgState::Moving { .. } => None,
            VpgState::Committing { how, .. } => Some(Refusal::Busy(*how)),
            VpgState::FailedOver { checkpoint, how, time_ms } => {
                Some(Refusal::FailedOver { checkpoint: *checkpoint, how: *how, time_ms: *time_ms })
            }
            VpgState::Reopening => Some(Refusal::Reopening),
        }
    }

    /// Whether the applier may move the replica forward (it is not live,
    /// nor being made live).
    pub fn replica_moves(&self) -> bool {
        self.stream_refusal().is_none()
    }

    /// The checkpoint the VPG was failed over at, once that is committed.
    pub fn failed_over_at(&self) -> Option<u64> {
        match self {
            VpgState::FailedOver { checkpoint, .. } => Some(*checkpoint),
            _ => None,
        }
    }

    /// The checkpoint a running test failover serves.
    pub fn testing_at(&self) -> Option<u64> {
        match self {
            VpgState::Testing { checkpoint } => Some(*checkpoint),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Event as E;
    use VpgState as S;

    const CHECKPOINT: u64 = 42;
    const MARK: u64 = 7;
    const OTHER_MARK: u64 = 8;

    fn failed_over() -> VpgState {
        S::FailedOver { checkpoint: CHECKPOINT, how: How::Failover, time_ms: 1 }
    }

    /// One of every state.
    fn states() -> Vec<VpgState> {
        vec![
            S::Replicating,
            S::TestChanging,
            S::Testing { checkpoint: CHECKPOINT },
            S::Moving { mark: MARK },
            S::Committing { how: How::Failover, mark: None },
            S::Committing { how: How::Move, mark: Some(MARK) },
            S::Committing { how: How::Move, mark: None },
            failed_over(),
            S::Reopening,
        ]
    }

    /// One of every event.
    fn events() -> Vec<Event> {
        vec![
            E::TestStart,
            E::TestStarted { checkpoint: CHECKPOINT },
            E::TestStop,
            E::TestGone,
            E::MoveBegin { mark: MARK },
            E::MoveEnd { mark: MARK },
            E::MoveEnd { mark: OTHER_MARK },
            E::CommitBegin(Commit::Failover),
            E::CommitBegin(Commit::Move { mark: MARK }),
            E::CommitBegin(Commit::Move { mark: OTHER_MARK }),
            E::MoveCancel,
            E::Committed { checkpoint: CHECKPOINT, how: How::Failover, time_ms: 1 },
            E::Committed { checkpoint: CHECKPOINT, how: How::Move, time_ms: 1 },
            E::CommitFailed,
            E::SwitchBackEnds,
            E::Reopened,
        ]
    }

    /// Every transition there is, and nothing else: each (state, event)
    /// pair not listed is refused (or, for a stale move mark, no change).
    #[test]
    fn the_transitions_are_these_and_no_others() {
        let moved = S::FailedOver { checkpoint: CHECKPOINT, how: How::Move, time_ms: 1 };
        let allowed: Vec<(VpgState, Event, VpgState)> = vec![
            (S::Replicating, E::TestStart, S::TestChanging),
            (S::TestChanging, E::TestStarted { checkpoint: CHECKPOINT }, S::Testing { checkpoint: CHECKPOINT }),
            (S::Testing { checkpoint: CHECKPOINT }, E::TestStop, S::TestChanging),
            (S::TestChanging, E::TestGone, S::Replicating),
            (S::Replicating, E::MoveBegin { mark: MARK }, S::Moving { mark: MARK }),
            (S::Moving { mark: MARK }, E::MoveEnd { mark: MARK }, S::Replicating),
            (
                S::Committing { how: How::Move, mark: Some(MARK) },
                E::MoveEnd { mark: MARK },
                S::Committing { how: How::Move, mark: None },
            ),
            (S::Replicating, E::CommitBegin(Commit::Failover), S::Committing { how: How::Failover, mark: None }),
            (
                S::Moving { mark: MARK },
                E::CommitBegin(Commit::Move { mark: MARK }),
                S::Committing { how: How::Move, mark: Some(MARK) },
            ),
            (S::Moving { mark: MARK }, E::MoveCancel, S::Replicating),
            (S::Replicating, E::MoveCancel, S::Replicating),
            (S::TestChanging, E::MoveCancel, S::TestChanging),
            (S::Testing { checkpoint: CHECKPOINT }, E::MoveCancel, S::Testing { checkpoint: CHECKPOINT }),
            (S::Committing { how: How::Failover, mark: None }, E::CommitFailed, S::Replicating),
            (S::Committing { how: How::Move, mark: Some(MARK) }, E::CommitFailed, S::Moving { mark: MARK }),
            (S::Committing { how: How::Move, mark: None }, E::CommitFailed, S::Replicating),
            (
                S::Committing { how: How::Failover, mark: None },
                E::Committed { checkpoint: CHECKPOINT, how: How::Failover, time_ms: 1 },
                failed_over(),
            ),
            (
                S::Committing { how: How::Move, mark: Some(MARK) },
                E::Committed { checkpoint: CHECKPOINT, how: How::Move, time_ms: 1 },
                moved.clone(),
            ),
            (
                S::Committing { how: How::Move, mark: None },
                E::Committed { checkpoint: CHECKPOINT, how: How::Move, time_ms: 1 },
                moved,
            ),
            (failed_over(), E::SwitchBackEnds, S::Reopening),
            (S::Reopening, E::SwitchBackEnds, S::Reopening),
            (S::Reopening, E::Reopened, S::Replicating),
        ];
        for state in states() {
            for event in events() {
                let got = state.next(event);
                match allowed.iter().find(|(s, e, _)| *s == state && *e == event) {
                    Some((_, _, to)) => assert_eq!(got, Ok(to.clone()), "{state:?} + {event:?}"),
                    None if matches!(event, E::MoveEnd { .. }) => {
                        assert_eq!(got, Ok(state.clone()), "a stale mark changes nothing: {state:?} + {event:?}")
                    }
                    None => assert!(got.is_err(), "{state:?} + {event:?} must be refused, got {got:?}"),
                }
            }
        }
    }

    /// What an operator or a link asks for is refused with a reason they
    /// can act on; anything else refused is a caller's bug.
    #[test]
    fn refusals_say_why() {
        let refused = |state: VpgState, event: Event| state.next(event).unwrap_err();
        assert_eq!(refused(S::TestChanging, E::TestStart), Refusal::TestChanging);
        assert_eq!(refused(S::TestChanging, E::TestStop), Refusal::TestChanging);
        assert_eq!(refused(S::TestChanging, E::CommitBegin(Commit::Failover)), Refusal::TestChanging);
        let running = Refusal::TestRunning { checkpoint: CHECKPOINT };
        for event in [E::TestStart, E::MoveBegin { mark: MARK }, E::CommitBegin(Commit::Failover)] {
            assert_eq!(refused(S::Testing { checkpoint: CHECKPOINT }, event), running);
        }
        for state in [S::Replicating, S::Moving { mark: MARK }, failed_over(), S::Reopening] {
            assert_eq!(refused(state, E::TestStop), Refusal::NoTest);
        }
        let moving = S::Moving { mark: MARK };
        for event in [E::TestStart, E::MoveBegin { mark: OTHER_MARK }, E::CommitBegin(Commit::Failover)] {
            assert_eq!(refused(moving.clone(), event), Refusal::Busy(How::Move));
        }
        let committing = S::Committing { how: How::Failover, mark: None };
        for event in [E::TestStart, E::MoveBegin { mark: MARK }, E::CommitBegin(Commit::Failover)] {
            assert_eq!(refused(committing.clone(), event), Refusal::Busy(How::Failover));
        }
        let closed = Refusal::FailedOver { checkpoint: CHECKPOINT, how: How::Failover, time_ms: 1 };
        for event in
            [E::TestStart, E::MoveBegin { mark: MARK }, E::CommitBegin(Commit::Move { mark: MARK }), E::MoveCancel]
        {
            assert_eq!(refused(failed_over(), event), closed);
        }
        assert_eq!(refused(S::Reopening, E::MoveBegin { mark: MARK }), Refusal::Reopening);
        assert_eq!(refused(S::Reopening, E::MoveCancel), Refusal::Reopening);
        // A promote of a move that is not the one running: called off, or
        // another link's.
        let promote = E::CommitBegin(Commit::Move { mark: MARK });
        assert_eq!(refused(S::Replicating, promote), Refusal::MoveEnded);
        assert_eq!(refused(S::Moving { mark: OTHER_MARK }, promote), Refusal::MoveEnded);
        // Caller bugs.
        for (state, event) in [
            (S::Replicating, E::TestStarted { checkpoint: CHECKPOINT }),
            (S::Replicating, E::CommitFailed),
            (S::Testing { checkpoint: CHECKPOINT }, E::TestGone),
            (
                S::Committing { how: How::Move, mark: None },
                E::Committed { checkpoint: 1, how: How::Failover, time_ms: 1 },
            ),
            (S::Replicating, E::SwitchBackEnds),
            (failed_over(), E::Reopened),
        ] {
            assert!(matches!(refused(state.clone(), event), Refusal::OutOfOrder { .. }), "{state:?} + {event:?}");
        }
    }

    /// The stream and the applier stop exactly while a failover is
    /// committed, lasts, or is being ended.
    #[test]
    fn the_stream_is_closed_from_commit_to_reopened() {
        for state in states() {
            let closed = matches!(state, S::Committing { .. } | S::FailedOver { .. } | S::Reopening);
            assert_eq!(state.stream_refusal().is_some(), closed, "{state:?}");
            assert_eq!(state.replica_moves(), !closed, "{state:?}");
        }
        assert_eq!(failed_over().failed_over_at(), Some(CHECKPOINT));
        assert_eq!(S::Committing { how: How::Failover, mark: None }.failed_over_at(), None);
        assert_eq!(S::Testing { checkpoint: 3 }.testing_at(), Some(3));
    }

    /// Messages tests and operators rely on.
    #[test]
    fn messages_name_the_vpg_and_the_way_out() {
        assert!(Refusal::Busy(How::Move).message("v").contains("a move of VPG \"v\" is already running"));
        assert!(Refusal::TestRunning { checkpoint: 4 }
            .message("v")
            .contains("is running (checkpoint 4); stop it first"));
        assert!(Refusal::NoTest.message("v").starts_with("no test failover"));
        let closed = Refusal::FailedOver { checkpoint: 4, how: How::Move, time_ms: 0 }.message("v");
        assert!(closed.contains("was moved at checkpoint 4") && closed.contains("history is closed"), "{closed}");
        assert_eq!(S::at_start(Some((4, How::Move, 0))), S::FailedOver { checkpoint: 4, how: How::Move, time_ms: 0 });
        assert_eq!(S::at_start(None), S::Replicating);
    }

    /// A cancel is confirmed only where no failover is committed or being
    /// committed: in the middle of one, the protected side would take
    /// writes while the recovery site goes live. And once confirmed, no
    /// promote of the cancelled move (read late, from the same link or
    /// another) can commit: both sites would take writes.
    #[test]
    fn a_cancelled_move_is_never_promoted() {
        for state in states() {
            let refused = state.next(E::MoveCancel).err();
            let may_go_live = matches!(state, S::Committing { .. } | S::FailedOver { .. } | S::Reopening);
            assert_eq!(refused.is_some(), may_go_live, "{state:?}");
        }
        assert_eq!(
            S::Committing { how: How::Move, mark: Some(MARK) }.next(E::MoveCancel),
            Err(Refusal::Busy(How::Move))
        );
        // Link A announced the move; link B (the same protected side,
        // reconnected) cancels it; A's promote is read after that.
        let cancelled = S::Replicating.next(E::MoveBegin { mark: MARK }).unwrap().next(E::MoveCancel).unwrap();
        assert_eq!(cancelled, S::Replicating);
        assert_eq!(cancelled.next(E::CommitBegin(Commit::Move { mark: MARK })), Err(Refusal::MoveEnded));
        // A's link drops later: nothing changes.
        assert_eq!(cancelled.next(E::MoveEnd { mark: MARK }), Ok(S::Replicating));
        assert!(Refusal::MoveEnded.message("v").contains("nothing was promoted: run `tidemark move` again"));
    }

    #[test]
    fn move_marks_are_never_given_twice() {
        let (a, b) = (new_move_mark(), new_move_mark());
        assert_ne!(a, b);
    }
}
