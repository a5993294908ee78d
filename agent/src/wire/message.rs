//! Control messages, carried as JSON in `Control` frames. They are small
//! and rare; the bulk data travels in binary `Batch` frames.

use serde::{Deserialize, Serialize};

pub const PROTOCOL_VERSION: u32 = 1;

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
    /// Recovery → protected while a promote is being applied.
    Promoting,
    /// Recovery → protected: the move step is done (`checkpoint` is 0
    /// for `MoveBegins`).
    Promoted {
        checkpoint: u64,
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
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("control messages always serialise")
    }

    pub fn from_bytes(bytes: &[u8]) -> anyhow::Result<Self> {
        serde_json::from_slice(bytes).map_err(|e| anyhow::anyhow!("malformed control message: {e}"))
    }
}
