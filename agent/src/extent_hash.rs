//! Extent hashes: SHA-256 of a volume's 64 KiB extents, as both sites
//! compute them to find what differs (a new stream's initial copy, reverse
//! protection, online verify), and their hex form on the control link.

use std::sync::OnceLock;

/// The unit of comparison (the last extent of a volume may be shorter).
pub const EXTENT_BYTES: u64 = 64 << 10;

pub type ExtentHash = [u8; 32];

/// A question for the recovery side's extent hashes (`AskExtentHashes`):
/// `count` extents of `volume` from `first_extent`, as the journal holds
/// them at `at` (`head` or a checkpoint id), once it holds `stream_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashQuestion {
    pub stream_id: u32,
    pub at: String,
    pub volume: u32,
    pub first_extent: u64,
    pub count: u32,
}

/// Extents of a volume of `size` bytes.
pub fn extent_count(size: u64) -> u64 {
    size.div_ceil(EXTENT_BYTES)
}

/// The bytes of extent `extent` of a volume of `size` bytes (`offset`, `len`).
pub fn extent_span(size: u64, extent: u64) -> (u64, u64) {
    let offset = extent * EXTENT_BYTES;
    (offset, size.saturating_sub(offset).min(EXTENT_BYTES))
}

pub fn hash(data: &[u8]) -> ExtentHash {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    digest.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

/// The hash of `len` zero bytes (a hole), without reading anything for
/// the common full-length extent.
pub fn zero_hash(len: u64) -> ExtentHash {
    static FULL: OnceLock<ExtentHash> = OnceLock::new();
    if len == EXTENT_BYTES {
        return *FULL.get_or_init(|| hash(&[0u8; EXTENT_BYTES as usize]));
    }
    hash(&vec![0u8; len as usize])
}

pub fn to_hex(h: &ExtentHash) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Debug, thiserror::Error)]
#[error("an extent hash must be 64 hex digits")]
pub struct NotAHash;

/// Peer data: checked as bytes, never sliced as text (a multi-byte
/// character once made a byte slice panic and took the agent down).
pub fn parse_hex(text: &str) -> Result<ExtentHash, NotAHash> {
    let digits = text.as_bytes();
    if digits.len() != 64 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err(NotAHash);
    }
    let nibble = |d: u8| (d as char).to_digit(16).expect("checked hex") as u8;
    let mut out = [0u8; 32];
    for (b, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *b = nibble(pair[0]) << 4 | nibble(pair[1]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_spans_and_hex() {
        assert_eq!(extent_count(1), 1);
        assert_eq!(extent_count(EXTENT_BYTES), 1);
        assert_eq!(extent_count(EXTENT_BYTES + 1), 2);
        assert_eq!(extent_span(EXTENT_BYTES + 1, 1), (EXTENT_BYTES, 1));
        assert_eq!(extent_span(EXTENT_BYTES * 2, 0), (0, EXTENT_BYTES));
        assert_ne!(hash(b"a"), hash(b"b"));
        assert_eq!(zero_hash(EXTENT_BYTES), hash(&[0u8; EXTENT_BYTES as usize]));
        assert_eq!(zero_hash(100), hash(&[0u8; 100]));
        let h = hash(b"x");
        assert_eq!(parse_hex(&to_hex(&h)).unwrap(), h);
    }

    #[test]
    fn extent_hashes_from_the_peer_are_checked_not_trusted() {
        let hex: String = (0u8..32).map(|b| format!("{b:02x}")).collect();
        assert_eq!(parse_hex(&hex).unwrap().to_vec(), (0u8..32).collect::<Vec<_>>());
        assert_eq!(parse_hex(&hex.to_uppercase()).unwrap(), parse_hex(&hex).unwrap());
        // 64 bytes with a character across a digit pair: once a panic (the
        // pair was sliced as text), now an error. And "+f" is not a digit.
        let split = [format!("0é{}", &hex[..61]), format!("€{}", &hex[..61]), "é".repeat(32)];
        for bad in split.into_iter().chain(["+f".repeat(32), hex[..62].to_string(), String::new()]) {
            assert!(parse_hex(&bad).is_err(), "{bad:?}");
        }
    }
}
