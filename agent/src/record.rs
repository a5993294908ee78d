//! One record of a VPG's write stream, as it is stored in the protected log,
//! sent on the wire and kept in the recovery journal. The same bytes travel
//! the whole pipeline, so one checksum covers a write from capture to apply.
//!
//! Layout (little endian), `RECORD_HEADER_BYTES` followed by the payload:
//! ```text
//!  0 magic u32 "TMRC"   4 kind u8   5 reserved [u8;3]
//!  8 seq u64           16 vpg_id u32   20 volume u32
//! 24 offset u64        32 length u64   40 payload_len u32
//! 44 payload_crc u32   48 header_crc u32 (crc32 of bytes 0..48)
//! ```

use std::borrow::Cow;
use thiserror::Error;

pub const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"TMRC");
pub const RECORD_HEADER_BYTES: usize = 52;
/// Seqs stay below this (2^53), exact as JSON numbers.
pub const SEQ_LIMIT: u64 = 1 << 53;
/// Largest payload a record may carry: one NBD write (32 MiB) or a tag.
pub const RECORD_PAYLOAD_BYTES_MAX: usize = 32 * 1024 * 1024;
/// Longest checkpoint tag, in bytes of UTF-8 (not characters).
pub const CHECKPOINT_TAG_BYTES_MAX: usize = 256;
const _: () = assert!(8 + CHECKPOINT_TAG_BYTES_MAX <= RECORD_PAYLOAD_BYTES_MAX);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordBody {
    /// Bytes written to a volume.
    Write { volume: u32, offset: u64, data: Vec<u8> },
    /// A range that reads as zeros afterwards (WRITE_ZEROES or TRIM).
    Zero { volume: u32, offset: u64, length: u64 },
    /// A point in the stream: everything before it. Crash-consistent,
    /// unless `resync`: taken while the VPG read changed regions back
    /// after bitmap mode, so the image is a mix of times (listed
    /// `inconsistent`, never restored).
    Checkpoint { time_ms: u64, tag: String, resync: bool },
    /// The initial copy of `volume` is complete in the stream up to here.
    CopyDone { volume: u32 },
    /// The first record of a stream (a fresh protected log, or a log that
    /// started over); the recovery side must not treat the stream as
    /// consistent again until every volume has a CopyDone after it.
    /// `stream_id` names the stream (random, never 0 in a new one; 0 in
    /// records of builds before stream ids): a journal continues a stream
    /// only for a protected log that says it is the same stream.
    StreamStart { time_ms: u64, stream_id: u32 },
}

impl RecordBody {
    /// What the decoder would refuse in this body, checked before anything
    /// is encoded: an encoder that writes only what its decoder accepts
    /// (a 300-byte tag once stalled a sender for good, refused by every
    /// decoder after it had been logged).
    pub fn check(&self) -> Result<(), RecordError> {
        match self {
            RecordBody::Write { data, .. } if data.len() > RECORD_PAYLOAD_BYTES_MAX => {
                Err(RecordError::PayloadTooLarge(data.len()))
            }
            RecordBody::Checkpoint { tag, .. } if tag.len() > CHECKPOINT_TAG_BYTES_MAX => {
                Err(RecordError::TagTooLong(tag.len()))
            }
            _ => Ok(()),
        }
    }

    /// The range of a volume a Write or Zero changes: (volume, offset,
    /// length); None for markers. A Write's length is its data's, so not
    /// for records decoded with `decode_metadata`.
    pub fn extent(&self) -> Option<(u32, u64, u64)> {
        match self {
            RecordBody::Write { volume, offset, data } => Some((*volume, *offset, data.len() as u64)),
            RecordBody::Zero { volume, offset, length } => Some((*volume, *offset, *length)),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub vpg_id: u32,
    pub body: RecordBody,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("record is cut short: need {needed} bytes, have {have}")]
    Incomplete { needed: usize, have: usize },
    #[error("bad record magic {0:#010x}")]
    BadMagic(u32),
    /// A whole header of zeros: what a disk holds where a write never
    /// reached it (a failed fsync, or a power cut before one).
    #[error("zeros where a record should start (a write that never reached the disk)")]
    Zeros,
    #[error("record header checksum mismatch")]
    HeaderChecksum,
    #[error("record payload checksum mismatch (seq {seq})")]
    PayloadChecksum { seq: u64 },
    #[error("unknown record kind {0}")]
    UnknownKind(u8),
    #[error("record payload of {0} bytes is over the limit")]
    PayloadTooLarge(usize),
    #[error("checkpoint tag of {0} bytes is over the {CHECKPOINT_TAG_BYTES_MAX}-byte limit")]
    TagTooLong(usize),
    #[error("malformed record: {0}")]
    Malformed(&'static str),
}

impl RecordError {
    /// A torn tail (the writer died mid-append) rather than corruption.
    pub fn is_incomplete(&self) -> bool {
        matches!(self, RecordError::Incomplete { .. })
    }
}

const KIND_WRITE: u8 = 1;
const KIND_ZERO: u8 = 2;
const KIND_CHECKPOINT: u8 = 3;
const KIND_COPY_DONE: u8 = 4;
const KIND_STREAM_START: u8 = 5;
/// A Checkpoint's header `volume` field: its flags.
const CHECKPOINT_FLAG_RESYNC: u32 = 1;

impl Record {
    /// Bytes this record occupies once encoded.
    pub fn encoded_len(&self) -> usize {
        RECORD_HEADER_BYTES + self.payload_len()
    }

    fn payload_len(&self) -> usize {
        payload_len(&self.body)
    }

    /// Bytes of volume data this record changes (for lag accounting).
    pub fn data_bytes(&self) -> u64 {
        match &self.body {
            RecordBody::Write { data, .. } => data.len() as u64,
            _ => 0,
        }
    }

    pub fn encode_into(&self, out: &mut Vec<u8>) {
        encode_parts(self.seq, self.vpg_id, &self.body, out)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode_into(&mut out);
        out
    }

    /// Decodes one record from the front of `buf`, verifying both
    /// checksums. Returns the record and the bytes it used.
    pub fn decode(buf: &[u8]) -> Result<(Record, usize), RecordError> {
        Self::decode_inner(buf, true)
    }

    /// Like `decode`, with every check, but a Write's data is left empty:
    /// for callers that keep the raw bytes and only need what the record
    /// is (the receiver journals verified batches as they came).
    pub fn decode_metadata(buf: &[u8]) -> Result<(Record, usize), RecordError> {
        Self::decode_inner(buf, false)
    }

    fn decode_inner(buf: &[u8], keep_data: bool) -> Result<(Record, usize), RecordError> {
        if buf.len() < RECORD_HEADER_BYTES {
            return Err(RecordError::Incomplete { needed: RECORD_HEADER_BYTES, have: buf.len() });
        }
        let magic = u32_at(buf, 0);
        if magic != RECORD_MAGIC {
            if buf[..RECORD_HEADER_BYTES].iter().all(|b| *b == 0) {
                return Err(RecordError::Zeros);
            }
            return Err(RecordError::BadMagic(magic));
        }
        if crc32fast::hash(&buf[..48]) != u32_at(buf, 48) {
            return Err(RecordError::HeaderChecksum);
        }
        let kind = buf[4];
        let seq = u64_at(buf, 8);
        let vpg_id = u32_at(buf, 16);
        let volume = u32_at(buf, 20);
        let offset = u64_at(buf, 24);
        let length = u64_at(buf, 32);
        let payload_len = u32_at(buf, 40) as usize;
        if payload_len > RECORD_PAYLOAD_BYTES_MAX {
            return Err(RecordError::PayloadTooLarge(payload_len));
        }
        let total = RECORD_HEADER_BYTES + payload_len;
        if buf.len() < total {
            return Err(RecordError::Incomplete { needed: total, have: buf.len() });
        }
        let payload = &buf[RECORD_HEADER_BYTES..total];
        if crc32fast::hash(payload) != u32_at(buf, 44) {
            return Err(RecordError::PayloadChecksum { seq });
        }
        // Only canonical records: fields a kind does not use must be zero,
        // so every accepted record re-encodes to exactly the same bytes.
        if buf[5..8] != [0, 0, 0] {
            return Err(RecordError::Malformed("reserved header bytes are set"));
        }
        let unused_zero = |fields_zero: bool| {
            if fields_zero {
                Ok(())
            } else {
                Err(RecordError::Malformed("a field this kind does not use is set"))
            }
        };
        match kind {
            KIND_ZERO => unused_zero(payload_len == 0)?,
            KIND_COPY_DONE => unused_zero(payload_len == 0 && offset == 0 && length == 0)?,
            KIND_CHECKPOINT => unused_zero(volume & !CHECKPOINT_FLAG_RESYNC == 0 && offset == 0 && length == 0)?,
            KIND_STREAM_START => unused_zero(volume == 0 && offset == 0 && length == 0)?,
            _ => {}
        }
        let body = match kind {
            KIND_WRITE => {
                if length != payload_len as u64 {
                    return Err(RecordError::Malformed("write length differs from payload length"));
                }
                RecordBody::Write { volume, offset, data: if keep_data { payload.to_vec() } else { Vec::new() } }
            }
            KIND_ZERO => RecordBody::Zero { volume, offset, length },
            KIND_CHECKPOINT => {
                if payload_len < 8 {
                    return Err(RecordError::Malformed("checkpoint payload size"));
                }
                if payload_len - 8 > CHECKPOINT_TAG_BYTES_MAX {
                    return Err(RecordError::TagTooLong(payload_len - 8));
                }
                let tag = std::str::from_utf8(&payload[8..])
                    .map_err(|_| RecordError::Malformed("checkpoint tag is not UTF-8"))?;
                RecordBody::Checkpoint {
                    time_ms: u64_at(payload, 0),
                    tag: tag.to_string(),
                    resync: volume & CHECKPOINT_FLAG_RESYNC != 0,
                }
            }
            KIND_COPY_DONE => RecordBody::CopyDone { volume },
            KIND_STREAM_START => {
                // 8 bytes: a stream of an earlier build (id 0); 12: with its
                // id, which is then never 0 (one encoding per record).
                let stream_id = match payload_len {
                    8 => 0,
                    12 if u32_at(payload, 8) != 0 => u32_at(payload, 8),
                    _ => return Err(RecordError::Malformed("stream start payload")),
                };
                RecordBody::StreamStart { time_ms: u64_at(payload, 0), stream_id }
            }
            other => return Err(RecordError::UnknownKind(other)),
        };
        Ok((Record { seq, vpg_id, body }, total))
    }
}

/// Encodes a record from its parts, so callers that keep the body (the
/// capture path writes the same bytes to the volume) need not copy it.
/// The body must pass `RecordBody::check` (callers check first and turn a
/// refusal into an error; reaching here with one is a bug).
pub fn encode_parts(seq: u64, vpg_id: u32, body: &RecordBody, out: &mut Vec<u8>) {
    let (header, payload) = encode_split(seq, vpg_id, body);
    out.reserve(header.len() + payload.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(&payload);
}

/// A record as its header and its payload, apart: the header carries both
/// checksums, and a Write's payload is its data, borrowed (the log writes
/// the two with one `writev`, so a write's bytes are never copied to be
/// logged). The body must pass `RecordBody::check`, as for `encode_parts`.
pub fn encode_split(seq: u64, vpg_id: u32, body: &RecordBody) -> ([u8; RECORD_HEADER_BYTES], Cow<'_, [u8]>) {
    if let Err(e) = body.check() {
        panic!("encoding seq {seq}: {e}: the decoder would refuse this record");
    }
    split_unchecked(seq, vpg_id, body)
}

fn split_unchecked(seq: u64, vpg_id: u32, body: &RecordBody) -> ([u8; RECORD_HEADER_BYTES], Cow<'_, [u8]>) {
    let (kind, volume, offset, length) = match body {
        RecordBody::Write { volume, offset, data } => (KIND_WRITE, *volume, *offset, data.len() as u64),
        RecordBody::Zero { volume, offset, length } => (KIND_ZERO, *volume, *offset, *length),
        RecordBody::Checkpoint { resync, .. } => {
            (KIND_CHECKPOINT, if *resync { CHECKPOINT_FLAG_RESYNC } else { 0 }, 0, 0)
        }
        RecordBody::CopyDone { volume } => (KIND_COPY_DONE, *volume, 0, 0),
        RecordBody::StreamStart { .. } => (KIND_STREAM_START, 0, 0, 0),
    };
    let payload: Cow<'_, [u8]> = match body {
        RecordBody::Write { data, .. } => Cow::Borrowed(data),
        RecordBody::Checkpoint { time_ms, tag, .. } => {
            Cow::Owned([&time_ms.to_le_bytes()[..], tag.as_bytes()].concat())
        }
        RecordBody::StreamStart { time_ms, stream_id } => {
            let mut p = time_ms.to_le_bytes().to_vec();
            if *stream_id != 0 {
                p.extend_from_slice(&stream_id.to_le_bytes());
            }
            Cow::Owned(p)
        }
        RecordBody::Zero { .. } | RecordBody::CopyDone { .. } => Cow::Borrowed(&[]),
    };
    debug_assert_eq!(payload.len(), payload_len(body));
    let mut h = [0u8; RECORD_HEADER_BYTES];
    h[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
    h[4] = kind;
    h[8..16].copy_from_slice(&seq.to_le_bytes());
    h[16..20].copy_from_slice(&vpg_id.to_le_bytes());
    h[20..24].copy_from_slice(&volume.to_le_bytes());
    h[24..32].copy_from_slice(&offset.to_le_bytes());
    h[32..40].copy_from_slice(&length.to_le_bytes());
    h[40..44].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    h[44..48].copy_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    let header_crc = crc32fast::hash(&h[..48]);
    h[48..52].copy_from_slice(&header_crc.to_le_bytes());
    (h, payload)
}

pub fn payload_len(body: &RecordBody) -> usize {
    match body {
        RecordBody::Write { data, .. } => data.len(),
        RecordBody::Checkpoint { tag, .. } => 8 + tag.len(),
        RecordBody::StreamStart { stream_id: 0, .. } => 8,
        RecordBody::StreamStart { .. } => 12,
        RecordBody::Zero { .. } | RecordBody::CopyDone { .. } => 0,
    }
}

pub(crate) fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes"))
}

pub(crate) fn u64_at(buf: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(buf[at..at + 8].try_into().expect("8 bytes"))
}

/// A stable 32-bit id for a VPG name, stamped into every record so a
/// record can never be applied to the wrong protection group.
pub fn vpg_id(name: &str) -> u32 {
    crc32fast::hash(name.as_bytes())
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Zeros where a header should be are named as such (what a disk
    /// holds where a write never reached it); other garbage is a bad magic.
    #[test]
    fn a_header_of_zeros_is_told_from_a_bad_magic() {
        assert_eq!(Record::decode(&[0u8; RECORD_HEADER_BYTES]).unwrap_err(), RecordError::Zeros);
        let mut header = [0u8; RECORD_HEADER_BYTES];
        header[20] = 1;
        assert_eq!(Record::decode(&header).unwrap_err(), RecordError::BadMagic(0));
        header[..4].copy_from_slice(&0xdead_beef_u32.to_le_bytes());
        assert_eq!(Record::decode(&header).unwrap_err(), RecordError::BadMagic(0xdead_beef));
    }
    use proptest::prelude::*;

    /// Any text, ASCII or not, cut at a character boundary to the limit.
    fn tag_strategy() -> impl Strategy<Value = String> {
        "\\PC{0,120}".prop_map(|t| {
            let mut end = t.len().min(CHECKPOINT_TAG_BYTES_MAX);
            while !t.is_char_boundary(end) {
                end -= 1;
            }
            t[..end].to_string()
        })
    }

    fn body_strategy() -> impl Strategy<Value = RecordBody> {
        prop_oneof![
            (any::<u32>(), any::<u64>(), proptest::collection::vec(any::<u8>(), 0..2048))
                .prop_map(|(volume, offset, data)| RecordBody::Write { volume, offset, data }),
            (any::<u32>(), any::<u64>(), any::<u64>())
                .prop_map(|(volume, offset, length)| { RecordBody::Zero { volume, offset, length } }),
            (any::<u64>(), tag_strategy(), any::<bool>()).prop_map(|(time_ms, tag, resync)| RecordBody::Checkpoint {
                time_ms,
                tag,
                resync
            }),
            any::<u32>().prop_map(|volume| RecordBody::CopyDone { volume }),
            (any::<u64>(), any::<u32>())
                .prop_map(|(time_ms, stream_id)| RecordBody::StreamStart { time_ms, stream_id }),
        ]
    }

    #[test]
    fn largest_records_round_trip() {
        let tag = "€".repeat(CHECKPOINT_TAG_BYTES_MAX / 3);
        assert_eq!(tag.len(), 255);
        let data = vec![0xa5; RECORD_PAYLOAD_BYTES_MAX];
        for body in [
            RecordBody::Checkpoint { time_ms: 9, tag: format!("{tag}x"), resync: true },
            RecordBody::Write { volume: 1, offset: 1 << 40, data },
        ] {
            let rec = Record { seq: 77, vpg_id: 5, body };
            assert_eq!(Record::decode(&rec.encode()).unwrap().0, rec);
        }
    }

    #[test]
    fn a_tag_over_the_limit_in_bytes_is_refused_before_encoding() {
        // 100 characters, 300 bytes: the unit is bytes.
        let body = RecordBody::Checkpoint { time_ms: 1, tag: "€".repeat(100), resync: false };
        assert_eq!(body.check(), Err(RecordError::TagTooLong(300)));
        let too_big = RecordBody::Write { volume: 0, offset: 0, data: vec![0; RECORD_PAYLOAD_BYTES_MAX + 1] };
        assert!(matches!(too_big.check(), Err(RecordError::PayloadTooLarge(_))));
        let encode = std::panic::catch_unwind(|| Record { seq: 1, vpg_id: 1, body }.encode());
        assert!(encode.is_err(), "the encoder must refuse what the decoder refuses");
    }

    proptest! {
        #[test]
        fn roundtrip(seq in any::<u64>(), vpg in any::<u32>(), body in body_strategy()) {
            let rec = Record { seq, vpg_id: vpg, body };
            let bytes = rec.encode();
            prop_assert_eq!(bytes.len(), rec.encoded_len());
            let (back, used) = Record::decode(&bytes).unwrap();
            prop_assert_eq!(used, bytes.len());
            prop_assert_eq!(back, rec);
        }

        #[test]
        fn any_flipped_byte_is_detected(body in body_strategy(), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
            let rec = Record { seq: 7, vpg_id: 1, body };
            let mut bytes = rec.encode();
            let i = pos.index(bytes.len());
            bytes[i] ^= 1 << bit;
            prop_assert!(Record::decode(&bytes).is_err());
        }

        #[test]
        fn only_canonical_records_decode(body in body_strategy(), pos in 0usize..48, byte in any::<u8>()) {
            // Change one header byte and fix the header crc: the result either
            // fails to decode or re-encodes to exactly the same bytes.
            let mut bytes = Record { seq: 3, vpg_id: 1, body }.encode();
            bytes[pos] = byte;
            let crc = crc32fast::hash(&bytes[..48]);
            bytes[48..52].copy_from_slice(&crc.to_le_bytes());
            if let Ok((rec, used)) = Record::decode(&bytes) {
                prop_assert_eq!(rec.encode(), bytes[..used].to_vec());
            }
        }

        #[test]
        fn encoder_and_decoder_agree_on_tags(tag in "\\PC{0,200}") {
            // Whatever `check` accepts encodes and decodes back; whatever it
            // refuses, the decoder refuses too, for the same reason.
            let body = RecordBody::Checkpoint { time_ms: 1, tag: tag.clone(), resync: false };
            let (header, payload) = split_unchecked(4, 1, &body);
            let bytes = [&header[..], &payload].concat();
            match body.check() {
                Ok(()) => prop_assert_eq!(Record::decode(&bytes).unwrap().0.body, body),
                Err(e) => {
                    prop_assert!(tag.len() > CHECKPOINT_TAG_BYTES_MAX);
                    prop_assert_eq!(Record::decode(&bytes).unwrap_err(), e);
                }
            }
        }

        #[test]
        fn truncation_is_incomplete(body in body_strategy(), cut in any::<prop::sample::Index>()) {
            let bytes = Record { seq: 1, vpg_id: 1, body }.encode();
            let n = cut.index(bytes.len());
            let err = Record::decode(&bytes[..n]).unwrap_err();
            prop_assert!(err.is_incomplete(), "{err:?}");
        }
    }
}
