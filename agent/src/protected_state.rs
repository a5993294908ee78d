//! Why a VPG takes no writes at a site that captures it, typed, and every
//! change of it in one pure function (`next`), tested change by change.
//!
//! The refusal is persisted in the capture state (`log::state`): a restart
//! keeps refusing. Before this type it was free text, and a move told its
//! own refusal from others by comparing strings. The text every build
//! wrote stays readable (`from_text`), and is still written beside the
//! typed value, so an older build started on the same disk keeps refusing
//! with the same words.
//!
//! What else holds a VPG's capture lives elsewhere, by design: reverse
//! protection and a switch-back's marker (`log::state`, persisted with
//! this), a failed volume write and a start's new stream (in memory: a
//! restart clears them), bitmap mode (`capture::bitmap_state`).
//! docs/vpg-states.md draws all of them.

use serde::{Deserialize, Serialize};

/// Why writes are refused here, for good until an operation ends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WritesRefused {
    /// A move to the recovery site began (`tidemark move`) and has neither
    /// committed nor been cancelled.
    Moving,
    /// The move committed: the recovery site runs the VPG from this
    /// checkpoint.
    Moved { checkpoint: u64 },
    /// The recovery site said, over the link, that it failed the VPG over.
    FailedOver { checkpoint: u64 },
    /// A switch-back to the old site began here (`tidemark move-back`,
    /// the live side of reverse protection).
    MovingBack,
    /// A refusal text no build types (kept word for word).
    Other { text: String },
}

const MOVING_TEXT: &str = "a move to the recovery site is in progress";
const MOVING_BACK_TEXT: &str =
    "the VPG is switching back to the old site (`tidemark move-back`); writes are refused here";
const MOVED_MIDDLE: &str = " was moved to the recovery site (checkpoint ";
const FAILED_OVER_MIDDLE: &str = " runs at the recovery site now (failed over at checkpoint ";
const FAILED_OVER_END: &str = "); `tidemark reverse` replicates it back";

impl WritesRefused {
    /// What the operator and NBD clients are told (the words every build
    /// has used, which the end-to-end tests read).
    pub fn message(&self, vpg: &str) -> String {
        match self {
            WritesRefused::Moving => MOVING_TEXT.to_string(),
            WritesRefused::Moved { checkpoint } => format!("VPG {vpg:?}{MOVED_MIDDLE}{checkpoint})"),
            WritesRefused::FailedOver { checkpoint } => {
                format!("VPG {vpg}{FAILED_OVER_MIDDLE}{checkpoint}{FAILED_OVER_END}")
            }
            WritesRefused::MovingBack => MOVING_BACK_TEXT.to_string(),
            WritesRefused::Other { text } => text.clone(),
        }
    }

    /// The refusal a text written by `message` (by any build) stands for.
    pub fn from_text(text: &str) -> WritesRefused {
        let checkpoint_between = |middle: &str, end: &str| {
            let (_, rest) = text.split_once(middle)?;
            rest.strip_suffix(end)?.parse::<u64>().ok()
        };
        if text == MOVING_TEXT {
            WritesRefused::Moving
        } else if text == MOVING_BACK_TEXT {
            WritesRefused::MovingBack
        } else if let Some(checkpoint) = checkpoint_between(MOVED_MIDDLE, ")") {
            WritesRefused::Moved { checkpoint }
        } else if let Some(checkpoint) = checkpoint_between(FAILED_OVER_MIDDLE, FAILED_OVER_END) {
            WritesRefused::FailedOver { checkpoint }
        } else {
            WritesRefused::Other { text: text.to_string() }
        }
    }
}

/// What changes whether a VPG takes writes here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// `tidemark move`, once the recovery side agreed (also to continue an
    /// unfinished move).
    MoveBegin,
    /// The recovery side runs the moved VPG from `checkpoint`.
    MoveCommitted { checkpoint: u64 },
    /// `tidemark move --cancel`, once the recovery side confirmed it has
    /// not taken over.
    MoveCancelled,
    /// The link said the recovery site failed the VPG over.
    FailedOverHeard { checkpoint: u64 },
    /// `tidemark reverse` at the old site: it receives the VPG back from
    /// the recovery site, which must run it (refusals unchanged).
    ReverseBegin,
    /// A switch-back begins at the live side of reverse protection.
    MoveBackBegin,
    /// That switch-back did not begin after all, or was cancelled.
    MoveBackUndone,
    /// Reverse protection ended here (switched back): writes are taken.
    ReverseEnded,
}

/// Why a change was not made; `message` says it to the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A move cannot begin: writes are refused for another reason.
    RefusedAlready(WritesRefused),
    /// There is no move to cancel: writes are taken.
    NoMoveToCancel,
    /// There is no unfinished move to cancel: writes are refused for
    /// another reason.
    NotMoving(WritesRefused),
    /// Nothing to reverse: this site protects the VPG (or switches it
    /// back), the recovery site does not run it.
    NothingToReverse,
    /// A move is unfinished: the recovery site may or may not run the VPG.
    ReverseWhileMoving,
    /// An event the agent sends only after another (a bug if seen).
    OutOfOrder { from: Option<WritesRefused>, event: Event },
}

impl Refusal {
    pub fn message(&self, vpg: &str) -> String {
        match self {
            Refusal::RefusedAlready(r) => format!("VPG {vpg:?} takes no writes here already: {}", r.message(vpg)),
            Refusal::NoMoveToCancel => format!("VPG {vpg:?} has no move to cancel: it takes writes"),
            Refusal::NotMoving(r) => format!("VPG {vpg:?} has no unfinished move to cancel: {}", r.message(vpg)),
            Refusal::NothingToReverse => format!(
                "VPG {vpg:?} is protected from this site (not failed over or moved); there is nothing to reverse"
            ),
            Refusal::ReverseWhileMoving => format!(
                "VPG {vpg:?} has an unfinished move: finish it with `tidemark move` or call it off with \
                 `tidemark move --cancel` before reversing; nothing was changed"
            ),
            Refusal::OutOfOrder { from, event } => {
                let from = from.as_ref().map_or("writes are taken".to_string(), |r| r.message(vpg));
                format!("VPG {vpg:?}: {event:?} cannot follow \"{from}\" (a bug: please report it)")
            }
        }
    }
}

/// The refusal after `event`, from `now` (None: writes are taken). Every
/// change of whether a VPG takes writes here is one of these.
pub fn next(now: Option<&WritesRefused>, event: Event) -> Result<Option<WritesRefused>, Refusal> {
    use WritesRefused::*;
    let out_of_order = || Err(Refusal::OutOfOrder { from: now.cloned(), event });
    match (now, event) {
        (None | Some(Moving), Event::MoveBegin) => Ok(Some(Moving)),
        (Some(other), Event::MoveBegin) => Err(Refusal::RefusedAlready(other.clone())),
        // The link may say "failed over" (the move's promote) before the
        // move hears its own answer.
        (Some(Moving | FailedOver { .. } | Moved { .. }), Event::MoveCommitted { checkpoint }) => {
            Ok(Some(Moved { checkpoint }))
        }
        (_, Event::MoveCommitted { .. }) => out_of_order(),
        (Some(Moving), Event::MoveCancelled) => Ok(None),
        (None, Event::MoveCancelled) => Err(Refusal::NoMoveToCancel),
        (Some(other), Event::MoveCancelled) => Err(Refusal::NotMoving(other.clone())),
        (_, Event::FailedOverHeard { checkpoint }) => Ok(Some(FailedOver { checkpoint })),
        // The recovery site runs it (moved, failed over, or a refusal an
        // earlier build wrote, which its reverse hello confirms or not).
        (Some(r @ (Moved { .. } | FailedOver { .. } | Other { .. })), Event::ReverseBegin) => Ok(Some(r.clone())),
        (Some(Moving), Event::ReverseBegin) => Err(Refusal::ReverseWhileMoving),
        (None | Some(MovingBack), Event::ReverseBegin) => Err(Refusal::NothingToReverse),
        (None, Event::MoveBackBegin) => Ok(Some(MovingBack)),
        // Refused already (a begin asked again after a stop): kept.
        (Some(other), Event::MoveBackBegin) => Ok(Some(other.clone())),
        (_, Event::MoveBackUndone | Event::ReverseEnded) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Option<WritesRefused>> {
        vec![
            None,
            Some(WritesRefused::Moving),
            Some(WritesRefused::Moved { checkpoint: 7 }),
            Some(WritesRefused::FailedOver { checkpoint: 9 }),
            Some(WritesRefused::MovingBack),
            Some(WritesRefused::Other { text: "disk on fire".into() }),
        ]
    }

    fn events() -> Vec<Event> {
        vec![
            Event::MoveBegin,
            Event::MoveCommitted { checkpoint: 11 },
            Event::MoveCancelled,
            Event::FailedOverHeard { checkpoint: 12 },
            Event::MoveBackBegin,
            Event::MoveBackUndone,
            Event::ReverseEnded,
            Event::ReverseBegin,
        ]
    }

    /// Every pair of a sample state and an event: the listed ones change
    /// to the state given, every other one is refused.
    #[test]
    fn every_state_and_event_pair_has_its_one_outcome() {
        use WritesRefused::*;
        let states = samples();
        let (none, moving, moved, failed, back, other) = (0, 1, 2, 3, 4, 5);
        let (begin, commit, cancel, heard, back_begin, undone, ended, reverse) = (0, 1, 2, 3, 4, 5, 6, 7);
        let mut allowed: Vec<(usize, usize, Option<WritesRefused>)> = vec![
            (none, begin, Some(Moving)),
            (moving, begin, Some(Moving)),
            (moving, commit, Some(Moved { checkpoint: 11 })),
            (moved, commit, Some(Moved { checkpoint: 11 })),
            (failed, commit, Some(Moved { checkpoint: 11 })),
            (moving, cancel, None),
            (none, back_begin, Some(MovingBack)),
        ];
        for s in [moving, moved, failed, back, other] {
            allowed.push((s, back_begin, states[s].clone()));
        }
        for s in [moved, failed, other] {
            allowed.push((s, reverse, states[s].clone()));
        }
        for s in 0..states.len() {
            allowed.push((s, heard, Some(FailedOver { checkpoint: 12 })));
            allowed.push((s, undone, None));
            allowed.push((s, ended, None));
        }
        let mut changes = 0;
        for (s, now) in states.iter().enumerate() {
            for (e, event) in events().into_iter().enumerate() {
                let got = next(now.as_ref(), event);
                match allowed.iter().find(|(ks, ke, _)| (*ks, *ke) == (s, e)) {
                    Some((_, _, want)) => {
                        assert_eq!(got.as_ref(), Ok(want), "{now:?} + {event:?}");
                        changes += 1;
                    }
                    None => assert!(got.is_err(), "{now:?} + {event:?} must be refused, not {got:?}"),
                }
            }
        }
        assert_eq!(changes, 33);
        assert!(matches!(next(Some(&moved_sample()), Event::MoveBegin), Err(Refusal::RefusedAlready(_))));
    }

    fn moved_sample() -> WritesRefused {
        WritesRefused::Moved { checkpoint: 7 }
    }

    #[test]
    fn only_a_running_move_is_cancelled_and_only_a_move_commits() {
        assert_eq!(next(Some(&WritesRefused::Moving), Event::MoveCancelled), Ok(None));
        for now in samples().into_iter().filter(|s| s != &Some(WritesRefused::Moving)) {
            assert!(next(now.as_ref(), Event::MoveCancelled).is_err(), "{now:?}");
        }
        for now in [None, Some(WritesRefused::MovingBack), Some(WritesRefused::Other { text: "x".into() })] {
            assert!(matches!(
                next(now.as_ref(), Event::MoveCommitted { checkpoint: 1 }),
                Err(Refusal::OutOfOrder { .. })
            ));
        }
    }

    #[test]
    fn every_message_reads_back_as_its_refusal() {
        for vpg in ["vpg1", "ναι \"quoted\" vpg"] {
            for refused in samples().into_iter().flatten() {
                assert_eq!(WritesRefused::from_text(&refused.message(vpg)), refused, "{vpg}");
            }
        }
    }

    #[test]
    fn texts_of_earlier_builds_keep_their_meaning() {
        let moved = format!("VPG {:?} was moved to the recovery site (checkpoint 42)", "db");
        assert_eq!(WritesRefused::from_text(&moved), WritesRefused::Moved { checkpoint: 42 });
        let failed = "VPG db runs at the recovery site now (failed over at checkpoint 5); `tidemark reverse` \
                      replicates it back";
        assert_eq!(WritesRefused::from_text(failed), WritesRefused::FailedOver { checkpoint: 5 });
        assert_eq!(WritesRefused::from_text("a move to the recovery site is in progress"), WritesRefused::Moving);
        let odd = "VPG db was moved to the recovery site (checkpoint soon)";
        assert_eq!(WritesRefused::from_text(odd), WritesRefused::Other { text: odd.into() });
    }

    #[test]
    fn refusals_say_what_to_do() {
        let moved = WritesRefused::Moved { checkpoint: 3 };
        assert_eq!(
            Refusal::RefusedAlready(moved.clone()).message("db"),
            "VPG \"db\" takes no writes here already: VPG \"db\" was moved to the recovery site (checkpoint 3)"
        );
        assert_eq!(Refusal::NoMoveToCancel.message("db"), "VPG \"db\" has no move to cancel: it takes writes");
        assert_eq!(next(Some(&WritesRefused::Moving), Event::ReverseBegin), Err(Refusal::ReverseWhileMoving));
        assert!(Refusal::ReverseWhileMoving.message("db").contains("unfinished move"));
        assert_eq!(next(None, Event::ReverseBegin), Err(Refusal::NothingToReverse));
        assert!(Refusal::NotMoving(moved).message("db").starts_with("VPG \"db\" has no unfinished move to cancel: "));
    }
}
