//! A frame: `magic u32 "TMWF", kind u8, reserved [u8;3], len u32, crc32 u32`
//! (little endian) followed by `len` payload bytes whose crc32 is `crc32`.
//! Any frame that fails a check ends the connection: garbage is never data.

use crate::io_failure::{Doing, IoFailure};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"TMWF");
pub const FRAME_HEADER_BYTES: usize = 16;
/// A batch holds at most one 32 MiB write plus headers.
pub const FRAME_PAYLOAD_BYTES_MAX: usize = 40 << 20;

/// Why a frame could not be read. `Io` covers a connection that closed or
/// failed, mid-frame too (the stream ended before the frame did); the
/// others are malformed bytes, which are never data.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error(transparent)]
    Io(#[from] IoFailure),
    #[error("bad frame magic {0:#010x}")]
    BadMagic(u32),
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("frame of {0} bytes is over the {FRAME_PAYLOAD_BYTES_MAX}-byte limit")]
    OverLimit(usize),
    #[error("{kind:?} frame of {len} bytes, over the {max} bytes this link takes")]
    OverLink { kind: FrameKind, len: usize, max: usize },
    #[error("frame checksum mismatch")]
    Checksum,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    Control = 1,
    Batch = 2,
}

impl FrameKind {
    fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(FrameKind::Control),
            2 => Some(FrameKind::Batch),
            _ => None,
        }
    }
}

pub fn encode_header(kind: FrameKind, payload: &[u8]) -> [u8; FRAME_HEADER_BYTES] {
    frame_header(kind, payload, crc32fast::hash(payload))
}

/// A header for `payload` whose crc32 the caller already knows (a batch's,
/// worked out from its records' checksums).
pub fn frame_header(kind: FrameKind, payload: &[u8], crc: u32) -> [u8; FRAME_HEADER_BYTES] {
    assert!(payload.len() <= FRAME_PAYLOAD_BYTES_MAX, "frame payload over the limit");
    debug_assert_eq!(crc, crc32fast::hash(payload), "a frame crc that does not match its payload");
    let mut h = [0u8; FRAME_HEADER_BYTES];
    h[0..4].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
    h[4] = kind as u8;
    h[8..12].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    h[12..16].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Checks a header and returns the kind, payload length and payload crc.
pub fn decode_header(h: &[u8; FRAME_HEADER_BYTES]) -> Result<(FrameKind, usize, u32), FrameError> {
    let magic = u32::from_le_bytes(h[0..4].try_into().expect("4"));
    if magic != FRAME_MAGIC {
        return Err(FrameError::BadMagic(magic));
    }
    let kind = FrameKind::from_u8(h[4]).ok_or(FrameError::UnknownKind(h[4]))?;
    let len = u32::from_le_bytes(h[8..12].try_into().expect("4")) as usize;
    if len > FRAME_PAYLOAD_BYTES_MAX {
        return Err(FrameError::OverLimit(len));
    }
    Ok((kind, len, u32::from_le_bytes(h[12..16].try_into().expect("4"))))
}

pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, kind: FrameKind, payload: &[u8]) -> std::io::Result<()> {
    w.write_all(&encode_header(kind, payload)).await?;
    w.write_all(payload).await?;
    w.flush().await?;
    Ok(())
}

pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<(FrameKind, Vec<u8>), FrameError> {
    let mut payload = Vec::new();
    let kind = read_frame_into(r, &mut payload).await?;
    Ok((kind, payload))
}

/// Reads a frame into `payload`, reusing its allocation: the data link
/// receives megabyte batches back to back.
pub async fn read_frame_into<R: AsyncRead + Unpin>(r: &mut R, payload: &mut Vec<u8>) -> Result<FrameKind, FrameError> {
    read_frame_within(r, payload, FRAME_PAYLOAD_BYTES_MAX).await
}

/// Reads a frame whose payload is at most `max` bytes (refused from its
/// header, before anything is allocated or read).
pub async fn read_frame_within<R: AsyncRead + Unpin>(
    r: &mut R,
    payload: &mut Vec<u8>,
    max: usize,
) -> Result<FrameKind, FrameError> {
    let mut h = [0u8; FRAME_HEADER_BYTES];
    r.read_exact(&mut h).await.doing(|| "reading frame header".to_string())?;
    let (kind, len, crc) = decode_header(&h)?;
    if len > max {
        return Err(FrameError::OverLink { kind, len, max });
    }
    payload.resize(len, 0);
    r.read_exact(payload).await.doing(|| "reading frame payload".to_string())?;
    if crc32fast::hash(payload) != crc {
        return Err(FrameError::Checksum);
    }
    Ok(kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn roundtrip_and_corruption() {
        let mut buf = Vec::new();
        write_frame(&mut buf, FrameKind::Batch, b"hello").await.unwrap();
        let (k, p) = read_frame(&mut &buf[..]).await.unwrap();
        assert_eq!((k, p.as_slice()), (FrameKind::Batch, &b"hello"[..]));
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x10;
            if (5..8).contains(&i) {
                continue; // reserved bytes
            }
            assert!(read_frame(&mut &bad[..]).await.is_err(), "flip at {i} undetected");
        }
    }

    #[test]
    fn oversized_length_is_refused() {
        let mut h = encode_header(FrameKind::Control, b"");
        h[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_header(&h).is_err());
    }
}
