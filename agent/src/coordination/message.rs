//! What a coordinator and a member say on 4009: JSON in the replication
//! link's frames (`wire::frame`: magic, length, crc32), one message per
//! frame, each direction taking turns.
//!
//! coordinator → member: `{"op":"hold","vpg":"db","tag":"erp@..."}`
//! member → coordinator: `{"reply":"held"}` or `{"reply":"refused","reason":"..."}`
//! coordinator → member: `{"op":"mark","mark":true}` (false: let go, append nothing)
//! member → coordinator: `{"reply":"marked","id":N,"held_us":U}`,
//!   `{"reply":"released","held_us":U}` or `{"reply":"too_late","held_us":U}`

use super::CoordinationError;
use crate::wire::frame::{read_frame_within, write_frame, FrameKind};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};

type Result<T, E = CoordinationError> = std::result::Result<T, E>;

/// A message is a VPG name and a tag at most: anything longer is refused
/// from its frame header, before it is read.
pub const MESSAGE_BYTES_MAX: usize = 4096;
// A tag escaped as JSON (6 bytes per byte at most) and a VPG name fit.
const _: () = assert!(6 * crate::record::CHECKPOINT_TAG_BYTES_MAX + 6 * 64 + 128 <= MESSAGE_BYTES_MAX);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum ToMember {
    /// Hold `vpg`'s writes for a checkpoint tagged `tag`.
    Hold { vpg: String, tag: String },
    /// Every member holds (`true`): append the checkpoint; or not.
    Mark { mark: bool },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case", deny_unknown_fields)]
pub enum FromMember {
    Held,
    Refused { reason: String },
    Marked { id: u64, held_us: u64 },
    Released { held_us: u64 },
    TooLate { held_us: u64 },
}

pub async fn send<W: AsyncWrite + Unpin, M: Serialize>(w: &mut W, message: &M) -> Result<()> {
    let bytes =
        serde_json::to_vec(message).map_err(|e| CoordinationError::from(e).at("encoding a coordination message"))?;
    // What the reader would refuse is never sent.
    if bytes.len() > MESSAGE_BYTES_MAX {
        return Err(CoordinationError::Failed(format!(
            "a coordination message of {} bytes, over the {MESSAGE_BYTES_MAX}-byte limit",
            bytes.len()
        )));
    }
    Ok(write_frame(w, FrameKind::Control, &bytes).await?)
}

pub async fn receive<R: AsyncRead + Unpin, M: DeserializeOwned>(r: &mut R) -> Result<M> {
    let mut payload = Vec::new();
    let kind = read_frame_within(r, &mut payload, MESSAGE_BYTES_MAX).await?;
    if kind != FrameKind::Control {
        return Err(CoordinationError::Failed(format!("a {kind:?} frame where a coordination message belongs")));
    }
    serde_json::from_slice(&payload).map_err(|e| CoordinationError::from(e).at("a malformed coordination message"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trips_and_refuses_garbage() {
        let hold = ToMember::Hold { vpg: "db".into(), tag: "€".repeat(crate::record::CHECKPOINT_TAG_BYTES_MAX / 3) };
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        send(&mut a, &hold).await.unwrap();
        assert_eq!(receive::<_, ToMember>(&mut b).await.unwrap(), hold);
        let marked = FromMember::Marked { id: u64::MAX, held_us: 7 };
        send(&mut a, &marked).await.unwrap();
        assert_eq!(receive::<_, FromMember>(&mut b).await.unwrap(), marked);
        // The tag limit's worst case in escapes fits a message.
        let worst =
            ToMember::Hold { vpg: "v".repeat(64), tag: "\u{1}".repeat(crate::record::CHECKPOINT_TAG_BYTES_MAX) };
        send(&mut a, &worst).await.unwrap();
        assert_eq!(receive::<_, ToMember>(&mut b).await.unwrap(), worst);
        // Unknown fields and ops are refused.
        write_frame(&mut a, FrameKind::Control, br#"{"op":"hold","vpg":"db","tag":"t","x":1}"#).await.unwrap();
        assert!(receive::<_, ToMember>(&mut b).await.is_err());
        write_frame(&mut a, FrameKind::Control, br#"{"op":"format"}"#).await.unwrap();
        assert!(receive::<_, ToMember>(&mut b).await.is_err());
        write_frame(&mut a, FrameKind::Batch, br#"{"op":"mark","mark":true}"#).await.unwrap();
        assert!(receive::<_, ToMember>(&mut b).await.is_err());
    }
}
