//! Control messages, carried as JSON in `Control` frames. They are small
//! and rare; the bulk data travels in binary `Batch` frames.

use crate::names::{is_plain, NAME_BYTES_MAX, VOLUMES_PER_VPG_MAX};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Both sides must speak the same version (no negotiation yet). 2: a
/// Checkpoint record may carry the `resync` flag, which version 1
/// decoders refuse.
pub const PROTOCOL_VERSION: u32 = 2;
/// The largest control message either side sends or takes: a batch of
/// extent hashes is the largest there is.
pub const CONTROL_BYTES_MAX: usize = 1 << 20;
/// Extent hashes in one `ExtentHashes` message (about 0.5 MiB of JSON).
pub const EXTENT_HASHES_PER_MESSAGE_MAX: usize = 8192;
/// A hash as sent: SHA-256 in hex.
pub const EXTENT_HASH_HEX_BYTES: usize = 64;
/// The longest reason a `Refused` carries (longer ones are cut, `refused`).
pub const REASON_BYTES_MAX: usize = 1024;
/// The longest sender name a hello carries.
pub const SENDER_BYTES_MAX: usize = 255;
/// What JSON adds around one value at most: a key, quotes, escapes of a
/// plain name or hex (none), separators. Generous on purpose.
const JSON_PER_VALUE_BYTES_MAX: usize = 64;
// Everything the decoder accepts, the encoder can send within the limit,
// and the limit fits a frame.
const _: () = assert!(
    EXTENT_HASHES_PER_MESSAGE_MAX * (EXTENT_HASH_HEX_BYTES + 3) + 16 * JSON_PER_VALUE_BYTES_MAX <= CONTROL_BYTES_MAX
);
// (Names are plain, so JSON escapes nothing in them; free text such as a
// sender or a reason may be escaped, up to 6 bytes for each byte.)
const _: () = assert!(
    VOLUMES_PER_VPG_MAX * (NAME_BYTES_MAX + 2 * JSON_PER_VALUE_BYTES_MAX)
        + NAME_BYTES_MAX
        + 6 * SENDER_BYTES_MAX
        + 16 * JSON_PER_VALUE_BYTES_MAX
        <= CONTROL_BYTES_MAX
);
const _: () = assert!(6 * REASON_BYTES_MAX + 16 * JSON_PER_VALUE_BYTES_MAX <= CONTROL_BYTES_MAX);
const _: () = assert!(CONTROL_BYTES_MAX <= super::frame::FRAME_PAYLOAD_BYTES_MAX);

/// Why a control message is refused, on either side of the link.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum MessageError {
    #[error("control message of {0} bytes, over the {CONTROL_BYTES_MAX}-byte limit")]
    TooLarge(usize),
    #[error("malformed control message: {0}")]
    Malformed(String),
    #[error("control message {kind}: {what}")]
    Invalid { kind: &'static str, what: String },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VolumeInfo {
    pub name: String,
    pub size: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ControlMessage {
    /// Protected → recovery on the control link: who we are and what we
    /// send: the stream the protected log holds (`stream_id`).
    Hello {
        protocol: u32,
        vpg: String,
        vpg_id: u32,
        volumes: Vec<VolumeInfo>,
        sender: String,
        #[serde(default)]
        stream_id: u32,
    },
    /// Recovery → protected: the journal holds `stream_id` through
    /// `durable_seq`; resume after it if the log holds that same stream, or
    /// with a StreamStart of the log's; attach data with `session`.
    Welcome {
        durable_seq: u64,
        session: u64,
        #[serde(default)]
        stream_id: u32,
    },
    /// Protected → recovery on the data link: join the control session.
    Attach {
        vpg: String,
        session: u64,
    },
    /// Recovery → protected on the data link: `seq` and all before it are fsynced.
    Ack {
        seq: u64,
    },
    /// Old protected → recovery on the control link, after a failover or
    /// move: replicate the VPG back to me. `applied_seq` is how far a
    /// previous reverse session got (0: never).
    ReverseHello {
        protocol: u32,
        vpg: String,
        vpg_id: u32,
        volumes: Vec<VolumeInfo>,
        applied_seq: u64,
        /// The stream `applied_seq` belongs to.
        #[serde(default)]
        stream_id: u32,
        /// The old site applied the delta copy of every volume of that
        /// stream (false from a build before this was sent).
        #[serde(default)]
        in_sync: bool,
    },
    /// Recovery → old protected: attach the data link with `session`; when
    /// `need_hashes`, send every volume's extent hashes first.
    ReverseWelcome {
        session: u64,
        need_hashes: bool,
    },
    /// Old protected → recovery: SHA-256 (hex) of 64 KiB extents
    /// `first_extent..` of `volume`.
    ExtentHashes {
        volume: u32,
        first_extent: u64,
        hashes: Vec<String>,
    },
    HashesDone,
    /// Protected → recovery on the control link: the hashes of `count`
    /// extents of `volume` from `first_extent`, as the journal holds them
    /// at `at` (`head`: its durable end, whether or not a copy is complete;
    /// or a checkpoint's id), once the journal holds stream `stream_id`.
    /// Answered `ExtentHashes` (after `Promoting` every few seconds while
    /// it reads) or `Refused`.
    AskExtentHashes {
        stream_id: u32,
        at: String,
        volume: u32,
        first_extent: u64,
        count: u32,
    },
    /// Keepalive on the control link, both ways.
    Ping,
    Pong,
    /// Protected → recovery on the control link: a move of the VPG begins;
    /// answered `Promoted` (agreed) or `Refused`.
    MoveBegins,
    /// Protected → recovery on the control link (a move): fail over to
    /// this checkpoint, which the journal already holds.
    Promote {
        checkpoint: u64,
    },
    /// Protected → recovery on the control link: an unfinished move is
    /// called off; answered `Promoted` (not failed over here, the move's
    /// mark is dropped) or `Refused` (it was).
    MoveCancel,
    /// Protected → recovery on the control link: the encryption detector
    /// raised an alert; pin the newest complete checkpoint before
    /// `since_seq` with `reason` (which starts with its
    /// `last-clean-<time>` label). Answered `Promoted { checkpoint }` (the
    /// one pinned) or `Refused`.
    PinLastClean {
        since_seq: u64,
        reason: String,
    },
    /// Recovery → protected while a promote is being applied.
    Promoting,
    /// Recovery → protected: the move step is done (`checkpoint` is 0
    /// for `MoveBegins`).
    Promoted {
        checkpoint: u64,
    },
    /// Old protected → recovery, first on a control connection of its own
    /// (switch-back, `docs/switch-back.md`): refuse writes on the live
    /// volumes and mark the end of the reverse log. Answered
    /// `MoveBackMarked`, `NotFailedOver` or `Refused` (after `Promoting`).
    MoveBackBegin {
        protocol: u32,
        vpg: String,
    },
    /// Recovery → old protected: writes are refused; the reverse log ends
    /// at the checkpoint `marker`.
    MoveBackMarked {
        marker: u64,
    },
    /// Old protected → recovery: this site applied the reverse log through
    /// `marker` (`applied_seq`, in sync): end the failover. Answered
    /// `MoveBackDone`, `NotFailedOver` or `Refused` (after `Promoting`).
    MoveBackFinish {
        protocol: u32,
        vpg: String,
        marker: u64,
        applied_seq: u64,
    },
    /// Recovery → old protected: the failover is over; the journal is at
    /// `journal_seq` and takes a new stream after it.
    MoveBackDone {
        journal_seq: u64,
    },
    /// Old protected → recovery: call off an unfinished switch-back (writes
    /// are taken on the live volumes again). Answered `Promoted`,
    /// `NotFailedOver` or `Refused`.
    MoveBackCancel {
        protocol: u32,
        vpg: String,
    },
    /// Recovery → old protected: the VPG is not failed over here (any
    /// more). `switched_back_at`: the marker of the last switch-back that
    /// ended a failover of it (0: none); the old site takes the VPG back
    /// on this answer only if it holds that marker.
    NotFailedOver {
        switched_back_at: u64,
    },
    /// Recovery → protected, instead of a welcome or a pong: the VPG was
    /// failed over at the recovery site; stop capturing it.
    FailedOver {
        checkpoint: u64,
    },
    /// The other side refuses and says why; the connection then closes.
    Refused {
        reason: String,
    },
}

impl ControlMessage {
    /// A refusal, its reason cut to `REASON_BYTES_MAX` (at a character
    /// boundary): a refusal must always be sendable.
    pub fn refused(reason: impl Into<String>) -> ControlMessage {
        let mut reason = reason.into();
        if reason.len() > REASON_BYTES_MAX {
            let mut end = REASON_BYTES_MAX - 3;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
            reason.push_str("...");
        }
        ControlMessage::Refused { reason }
    }

    /// The protocol and VPG of a switch-back request (None for others).
    pub fn move_back_target(&self) -> Option<(u32, String)> {
        match self {
            ControlMessage::MoveBackBegin { protocol, vpg }
            | ControlMessage::MoveBackFinish { protocol, vpg, .. }
            | ControlMessage::MoveBackCancel { protocol, vpg } => Some((*protocol, vpg.clone())),
            _ => None,
        }
    }

    /// What the decoder refuses in this message, checked on both sides:
    /// the sender never sends what the receiver would refuse. (A refusal's
    /// reason over the limit is never sent either; the decoder cuts it.)
    pub fn check(&self) -> Result<(), MessageError> {
        let invalid = |kind, what: String| Err(MessageError::Invalid { kind, what });
        match self {
            ControlMessage::Hello { vpg, volumes, sender, .. } => {
                check_vpg("hello", vpg, volumes)?;
                if sender.len() > SENDER_BYTES_MAX {
                    return invalid("hello", format!("sender name of {} bytes", sender.len()));
                }
            }
            ControlMessage::ReverseHello { vpg, volumes, .. } => check_vpg("reverse_hello", vpg, volumes)?,
            ControlMessage::MoveBackBegin { vpg, .. }
            | ControlMessage::MoveBackFinish { vpg, .. }
            | ControlMessage::MoveBackCancel { vpg, .. }
                if !is_plain(vpg) =>
            {
                return invalid("move_back", format!("VPG name {vpg:?}"));
            }
            ControlMessage::Attach { vpg, .. } if !is_plain(vpg) => {
                return invalid("attach", format!("VPG name {vpg:?}"));
            }
            ControlMessage::ExtentHashes { hashes, .. } => {
                if hashes.len() > EXTENT_HASHES_PER_MESSAGE_MAX {
                    return invalid("extent_hashes", format!("{} hashes", hashes.len()));
                }
                let bad = |h: &String| h.len() != EXTENT_HASH_HEX_BYTES || !h.bytes().all(|b| b.is_ascii_hexdigit());
                if let Some(h) = hashes.iter().find(|h| bad(h)) {
                    return invalid("extent_hashes", format!("{h:?} is not a SHA-256 in hex"));
                }
            }
            ControlMessage::AskExtentHashes { at, count, .. } => {
                if *count == 0 || *count as usize > EXTENT_HASHES_PER_MESSAGE_MAX {
                    return invalid("ask_extent_hashes", format!("{count} hashes"));
                }
                if !is_hash_point(at) {
                    return invalid("ask_extent_hashes", format!("point {at:?} (head or a checkpoint id)"));
                }
            }
            ControlMessage::PinLastClean { reason, .. } if !crate::names::is_pin_reason(reason) => {
                return invalid("pin_last_clean", format!("a reason of {} bytes or over one line", reason.len()));
            }
            ControlMessage::Refused { reason } if reason.len() > REASON_BYTES_MAX => {
                return invalid("refused", format!("reason of {} bytes", reason.len()));
            }
            _ => {}
        }
        Ok(())
    }

    /// The message as sent; refused (never sent) if the receiver would
    /// refuse it.
    pub fn to_bytes(&self) -> Result<Vec<u8>, MessageError> {
        self.check()?;
        let bytes = serde_json::to_vec(self).expect("control messages always serialise");
        if bytes.len() > CONTROL_BYTES_MAX {
            return Err(MessageError::TooLarge(bytes.len()));
        }
        Ok(bytes)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, MessageError> {
        if bytes.len() > CONTROL_BYTES_MAX {
            return Err(MessageError::TooLarge(bytes.len()));
        }
        let mut message: ControlMessage =
            serde_json::from_slice(bytes).map_err(|e| MessageError::Malformed(e.to_string()))?;
        // A reason is only shown: a long one (an older peer does not cut
        // them) is cut here rather than lost with the whole message.
        if let ControlMessage::Refused { reason } = message {
            message = ControlMessage::refused(reason);
        }
        message.check()?;
        Ok(message)
    }
}

/// `head` or a checkpoint id (a u64 in decimal).
fn is_hash_point(at: &str) -> bool {
    at == "head"
        || (!at.is_empty() && at.len() <= 20 && at.bytes().all(|b| b.is_ascii_digit()) && at.parse::<u64>().is_ok())
}

fn check_vpg(kind: &'static str, vpg: &str, volumes: &[VolumeInfo]) -> Result<(), MessageError> {
    let invalid = |what: String| Err(MessageError::Invalid { kind, what });
    if !is_plain(vpg) {
        return invalid(format!("VPG name {vpg:?}"));
    }
    if volumes.len() > VOLUMES_PER_VPG_MAX {
        return invalid(format!("{} volumes, over {VOLUMES_PER_VPG_MAX}", volumes.len()));
    }
    if let Some(v) = volumes.iter().find(|v| !is_plain(&v.name)) {
        return invalid(format!("volume name {:?}", v.name));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn name(c: char) -> String {
        std::iter::repeat_n(c, NAME_BYTES_MAX).collect()
    }

    /// The largest message of each kind that carries lists or text.
    fn largest() -> Vec<ControlMessage> {
        let volumes: Vec<VolumeInfo> =
            (0..VOLUMES_PER_VPG_MAX).map(|i| VolumeInfo { name: format!("{i:0>64}"), size: u64::MAX }).collect();
        vec![
            ControlMessage::Hello {
                protocol: u32::MAX,
                vpg: name('v'),
                vpg_id: u32::MAX,
                volumes: volumes.clone(),
                sender: "\u{1}".repeat(SENDER_BYTES_MAX),
                stream_id: u32::MAX,
            },
            ControlMessage::ReverseHello {
                protocol: u32::MAX,
                vpg: name('v'),
                vpg_id: u32::MAX,
                volumes,
                applied_seq: u64::MAX,
                stream_id: u32::MAX,
                in_sync: false,
            },
            ControlMessage::ExtentHashes {
                volume: u32::MAX,
                first_extent: u64::MAX,
                hashes: vec!["f".repeat(EXTENT_HASH_HEX_BYTES); EXTENT_HASHES_PER_MESSAGE_MAX],
            },
            ControlMessage::refused("\u{1}".repeat(10 * REASON_BYTES_MAX)),
            ControlMessage::Attach { vpg: name('a'), session: u64::MAX },
            ControlMessage::MoveBackFinish {
                protocol: u32::MAX,
                vpg: name('m'),
                marker: u64::MAX,
                applied_seq: u64::MAX,
            },
            ControlMessage::AskExtentHashes {
                stream_id: u32::MAX,
                at: u64::MAX.to_string(),
                volume: u32::MAX,
                first_extent: u64::MAX,
                count: EXTENT_HASHES_PER_MESSAGE_MAX as u32,
            },
            ControlMessage::PinLastClean {
                since_seq: u64::MAX,
                reason: "é".repeat(crate::names::PIN_REASON_BYTES_MAX / 2),
            },
        ]
    }

    #[test]
    fn the_largest_of_each_kind_is_sent_and_read_back() {
        for message in largest() {
            let bytes = message.to_bytes().unwrap_or_else(|e| panic!("{message:?}: {e}"));
            assert!(bytes.len() <= CONTROL_BYTES_MAX);
            assert_eq!(ControlMessage::from_bytes(&bytes).unwrap(), message);
        }
    }

    #[test]
    fn what_the_decoder_refuses_is_never_sent() {
        for reason in ["x".repeat(crate::names::PIN_REASON_BYTES_MAX + 1), "two\nlines".into()] {
            let pin = ControlMessage::PinLastClean { since_seq: 1, reason };
            assert!(pin.to_bytes().is_err(), "{pin:?}");
        }
        let too_many = ControlMessage::ExtentHashes {
            volume: 0,
            first_extent: 0,
            hashes: vec!["0".repeat(64); EXTENT_HASHES_PER_MESSAGE_MAX + 1],
        };
        let not_hex = ControlMessage::ExtentHashes { volume: 0, first_extent: 0, hashes: vec!["g".repeat(64)] };
        let volumes = vec![VolumeInfo { name: "disk0".into(), size: 1 }; VOLUMES_PER_VPG_MAX + 1];
        let hello = |vpg: &str, volumes: Vec<VolumeInfo>| ControlMessage::Hello {
            protocol: 1,
            vpg: vpg.into(),
            vpg_id: 1,
            volumes,
            sender: String::new(),
            stream_id: 0,
        };
        let ask = |at: &str, count: u32| ControlMessage::AskExtentHashes {
            stream_id: 1,
            at: at.into(),
            volume: 0,
            first_extent: 0,
            count,
        };
        for (message, says) in [
            (ask("head", 0), "0 hashes"),
            (ask("head", EXTENT_HASHES_PER_MESSAGE_MAX as u32 + 1), "8193 hashes"),
            (ask("latest", 1), "point"),
            (ask("18446744073709551616", 1), "point"),
            (ask("", 1), "point"),
            (too_many, "8193 hashes"),
            (not_hex, "not a SHA-256"),
            (hello("vm1", volumes), "257 volumes"),
            (ControlMessage::MoveBackBegin { protocol: 1, vpg: "a/b".into() }, "VPG name"),
            (hello("../etc", Vec::new()), "VPG name"),
            (hello("vm1", vec![VolumeInfo { name: "a/b".into(), size: 1 }]), "volume name"),
        ] {
            let err = message.to_bytes().unwrap_err().to_string();
            assert!(err.contains(says), "{err}");
            let bytes = serde_json::to_vec(&message).unwrap();
            assert!(ControlMessage::from_bytes(&bytes).is_err(), "the decoder took {says}");
        }
        // A long reason is never sent, but read and cut if a peer sends it.
        let long = ControlMessage::Refused { reason: "x".repeat(REASON_BYTES_MAX + 1) };
        assert!(long.to_bytes().unwrap_err().to_string().contains("reason of"));
        let read = ControlMessage::from_bytes(&serde_json::to_vec(&long).unwrap()).unwrap();
        assert_eq!(read, ControlMessage::refused("x".repeat(REASON_BYTES_MAX + 1)));
        let huge = vec![b' '; CONTROL_BYTES_MAX + 1];
        assert_eq!(ControlMessage::from_bytes(&huge), Err(MessageError::TooLarge(CONTROL_BYTES_MAX + 1)));
    }

    proptest! {
        /// Any reason, in any script, makes a refusal that is sent and read
        /// back as sent (cut at a character boundary if long).
        #[test]
        fn any_refusal_is_sendable(reason in "\\PC{0,1500}") {
            let message = ControlMessage::refused(reason.clone());
            let ControlMessage::Refused { reason: sent } = &message else { unreachable!() };
            prop_assert!(sent.len() <= REASON_BYTES_MAX);
            prop_assert!(reason.starts_with(sent.trim_end_matches("...")));
            let bytes = message.to_bytes().unwrap();
            prop_assert_eq!(ControlMessage::from_bytes(&bytes).unwrap(), message);
        }
    }
}
