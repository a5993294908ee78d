//! A batch: consecutive records of one VPG, compressed with zstd when that
//! pays. Header (little endian, `BATCH_HEADER_BYTES`): `first_seq u64,
//! last_seq u64, count u32, codec u8, reserved [u8;3], raw_len u32,
//! raw_crc u32`; then the body (raw or zstd) of the records' encodings.
//! Three checks guard the data: the frame crc, `raw_crc` over the
//! decompressed records, and each record's own crcs.

use crate::record::{Record, RECORD_HEADER_BYTES, RECORD_PAYLOAD_BYTES_MAX};
use crate::wire::frame::FRAME_PAYLOAD_BYTES_MAX;
use anyhow::{bail, Context, Result};

pub const BATCH_HEADER_BYTES: usize = 32;
/// Soft target for the raw size of one batch.
pub const BATCH_RAW_BYTES_TARGET: usize = 4 << 20;
pub const BATCH_RECORDS_MAX: usize = 4096;
/// Hard limit on a decompressed batch (one maximal write plus slack). The
/// cursor makes a batch either one record or at most the target, so every
/// batch it makes fits (`LogCursor::fill`).
pub const BATCH_RAW_BYTES_MAX: usize = 36 << 20;
const _: () = assert!(BATCH_RAW_BYTES_TARGET <= BATCH_RAW_BYTES_MAX);
const _: () = assert!(RECORD_HEADER_BYTES + RECORD_PAYLOAD_BYTES_MAX <= BATCH_RAW_BYTES_MAX);
// A batch is sent raw unless compression makes it smaller: it fits a frame.
const _: () = assert!(BATCH_HEADER_BYTES + BATCH_RAW_BYTES_MAX <= FRAME_PAYLOAD_BYTES_MAX);
const ZSTD_LEVEL: i32 = 1;
/// Send compressed only when it saves at least this share of the bytes.
const COMPRESSION_WORTH_RATIO: f64 = 0.9;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Raw = 0,
    Zstd = 1,
}

pub struct EncodedBatch {
    pub bytes: Vec<u8>,
    pub raw_len: usize,
    pub codec: Codec,
    pub first_seq: u64,
    pub last_seq: u64,
}

/// After batches that did not compress, up to this many are sent raw
/// before compression is tried again: 1, 2, 4, ... batches after 1, 2, 3
/// misses in a row (adaptive: an incompressible stream, such as an
/// encrypted guest, costs little compression CPU, and a mixed stream
/// finds its compressible parts again quickly).
const INCOMPRESSIBLE_SKIP_BATCHES: u32 = 16;

/// Encodes batches for one link, keeping a zstd context and remembering
/// whether the stream has been compressing.
pub struct BatchEncoder {
    zstd: zstd::bulk::Compressor<'static>,
    skip_compression: u32,
    misses_in_a_row: u32,
}

impl Default for BatchEncoder {
    fn default() -> Self {
        BatchEncoder {
            zstd: zstd::bulk::Compressor::new(ZSTD_LEVEL).expect("zstd level 1"),
            skip_compression: 0,
            misses_in_a_row: 0,
        }
    }
}

impl BatchEncoder {
    pub fn encode(&mut self, records: &[Record]) -> EncodedBatch {
        assert!(!records.is_empty() && records.len() <= BATCH_RECORDS_MAX);
        assert!(records.windows(2).all(|w| w[0].seq < w[1].seq), "batch seqs must ascend");
        let mut raw = Vec::with_capacity(records.iter().map(Record::encoded_len).sum());
        for r in records {
            r.encode_into(&mut raw);
        }
        let (raw_len, raw_crc) = (raw.len(), crc32fast::hash(&raw));
        assert!(raw_len <= BATCH_RAW_BYTES_MAX, "a batch of {raw_len} raw bytes would be refused by the receiver");
        let compressed = if self.skip_compression > 0 {
            self.skip_compression -= 1;
            None
        } else {
            self.zstd.compress(&raw).ok()
        };
        let (codec, body) = match compressed {
            Some(c) if (c.len() as f64) < raw_len as f64 * COMPRESSION_WORTH_RATIO => {
                self.misses_in_a_row = 0;
                (Codec::Zstd, c)
            }
            Some(_) => {
                self.misses_in_a_row += 1;
                self.skip_compression = (1u32 << (self.misses_in_a_row - 1).min(4)).min(INCOMPRESSIBLE_SKIP_BATCHES);
                (Codec::Raw, raw)
            }
            None => (Codec::Raw, raw),
        };
        let first_seq = records[0].seq;
        let last_seq = records[records.len() - 1].seq;
        let mut bytes = Vec::with_capacity(BATCH_HEADER_BYTES + body.len());
        bytes.extend_from_slice(&first_seq.to_le_bytes());
        bytes.extend_from_slice(&last_seq.to_le_bytes());
        bytes.extend_from_slice(&(records.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&[codec as u8, 0, 0, 0]);
        bytes.extend_from_slice(&(raw_len as u32).to_le_bytes());
        bytes.extend_from_slice(&raw_crc.to_le_bytes());
        bytes.extend_from_slice(&body);
        EncodedBatch { bytes, raw_len, codec, first_seq, last_seq }
    }
}

/// Encodes one batch with a fresh encoder (tests and tools).
pub fn encode(records: &[Record]) -> EncodedBatch {
    BatchEncoder::default().encode(records)
}

/// Encodes `data` as 64 KiB write records in batches of
/// `BATCH_RAW_BYTES_TARGET`, as the sender does; returns the seconds spent
/// and the bytes that would go on the wire. For `tidemark bench-compress`.
pub fn bench_compress(data: &[u8]) -> (f64, usize) {
    const WRITE_BYTES: usize = 64 << 10;
    let records: Vec<Record> = data
        .chunks(WRITE_BYTES)
        .enumerate()
        .map(|(i, c)| Record {
            seq: i as u64 + 1,
            vpg_id: 1,
            body: crate::record::RecordBody::Write { volume: 0, offset: (i * WRITE_BYTES) as u64, data: c.to_vec() },
        })
        .collect();
    let per_batch = BATCH_RAW_BYTES_TARGET / WRITE_BYTES;
    let mut encoder = BatchEncoder::default();
    let start = std::time::Instant::now();
    let wire = records.chunks(per_batch).map(|b| encoder.encode(b).bytes.len()).sum();
    (start.elapsed().as_secs_f64(), wire)
}

/// A verified batch: its records (Write data left empty: it stays in
/// `raw`) and the raw bytes, with each record's start offset in `raw`.
pub struct DecodedBatch {
    pub raw: Vec<u8>,
    pub records: Vec<Record>,
    pub offsets: Vec<usize>,
}

impl DecodedBatch {
    /// The range of a volume record `i` changes: (volume, offset, length);
    /// None for markers. (A Write's data is in `raw`, so its length is
    /// read from its header, not from its empty `data`.)
    pub fn extent(&self, i: usize) -> Option<(u32, u64, u64)> {
        match &self.records[i].body {
            crate::record::RecordBody::Write { volume, offset, .. } => {
                let payload_len = crate::record::u32_at(&self.raw, self.offsets[i] + 40) as u64;
                Some((*volume, *offset, payload_len))
            }
            body => body.extent(),
        }
    }
}

/// Decodes and verifies a batch; every record must belong to `vpg_id`.
pub fn decode(bytes: &[u8], vpg_id: u32) -> Result<DecodedBatch> {
    if bytes.len() < BATCH_HEADER_BYTES {
        bail!("batch of {} bytes is shorter than its header", bytes.len());
    }
    let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8"));
    let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4"));
    let (first_seq, last_seq, count) = (u64_at(0), u64_at(8), u32_at(16) as usize);
    let raw_len = u32_at(24) as usize;
    let raw_crc = u32_at(28);
    if raw_len > BATCH_RAW_BYTES_MAX || count == 0 || count > BATCH_RECORDS_MAX {
        bail!("batch header out of bounds: {count} records, {raw_len} raw bytes");
    }
    let body = &bytes[BATCH_HEADER_BYTES..];
    let raw = match bytes[20] {
        0 => body.to_vec(),
        1 => zstd::bulk::decompress(body, raw_len).context("decompressing batch")?,
        other => bail!("unknown batch codec {other}"),
    };
    if raw.len() != raw_len || crc32fast::hash(&raw) != raw_crc {
        bail!("batch checksum mismatch (seq {first_seq}..={last_seq})");
    }
    let mut records = Vec::with_capacity(count);
    let mut offsets = Vec::with_capacity(count);
    let mut at = 0;
    while at < raw.len() {
        let (rec, used) =
            Record::decode_metadata(&raw[at..]).with_context(|| format!("record at batch offset {at}"))?;
        if rec.vpg_id != vpg_id {
            bail!("record seq {} belongs to VPG id {:#x}, not {vpg_id:#x}", rec.seq, rec.vpg_id);
        }
        if let Some(prev) = records.last().map(|r: &Record| r.seq) {
            if rec.seq <= prev {
                bail!("batch seqs do not ascend at seq {}", rec.seq);
            }
        }
        records.push(rec);
        offsets.push(at);
        at += used;
    }
    if records.len() != count || records[0].seq != first_seq || records[count - 1].seq != last_seq {
        bail!("batch header does not match its records");
    }
    Ok(DecodedBatch { raw, records, offsets })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::RecordBody;
    use proptest::prelude::*;

    fn recs(data: Vec<Vec<u8>>) -> Vec<Record> {
        data.into_iter()
            .enumerate()
            .map(|(i, d)| Record {
                seq: 10 + i as u64,
                vpg_id: 3,
                body: RecordBody::Write { volume: 1, offset: 0, data: d },
            })
            .collect()
    }

    #[test]
    fn compressible_batches_are_compressed_and_random_ones_not() {
        let zeros = encode(&recs(vec![vec![0u8; 65536]; 4]));
        assert_eq!(zeros.codec, Codec::Zstd);
        let mut noise = vec![0u8; 65536];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut noise).unwrap();
        let random = encode(&recs(vec![noise]));
        assert_eq!(random.codec, Codec::Raw);
        assert_eq!(decode(&random.bytes, 3).unwrap().records.len(), 1);
    }

    #[test]
    fn incompressible_stream_skips_compression_then_probes_again() {
        let mut noise = vec![0u8; 65536];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut noise).unwrap();
        let mut enc = BatchEncoder::default();
        let zeros = || recs(vec![vec![0u8; 65536]]);
        // Misses in a row: skip 1, then 2, then 4 batches.
        for skip in [1, 2, 4] {
            assert_eq!(enc.encode(&recs(vec![noise.clone()])).codec, Codec::Raw);
            for _ in 0..skip {
                // Skipped even though this batch would compress.
                assert_eq!(enc.encode(&zeros()).codec, Codec::Raw);
            }
        }
        // Probed again, it compresses, and the backoff resets.
        assert_eq!(enc.encode(&zeros()).codec, Codec::Zstd);
        assert_eq!(enc.encode(&recs(vec![noise])).codec, Codec::Raw);
        assert_eq!(enc.encode(&zeros()).codec, Codec::Raw);
        assert_eq!(enc.encode(&zeros()).codec, Codec::Zstd);
    }

    #[test]
    fn wrong_vpg_is_refused() {
        let b = encode(&recs(vec![vec![1; 10]]));
        assert!(decode(&b.bytes, 4).is_err());
    }

    proptest! {
        #[test]
        fn roundtrip(data in proptest::collection::vec(proptest::collection::vec(0u8..4, 0..3000), 1..20)) {
            let records = recs(data);
            let b = encode(&records);
            let d = decode(&b.bytes, 3).unwrap();
            prop_assert_eq!(d.records.iter().map(|r| r.seq).collect::<Vec<_>>(), records.iter().map(|r| r.seq).collect::<Vec<_>>());
            // The data stays in `raw`, at the offsets given, byte for byte.
            for (off, want) in d.offsets.iter().zip(&records) {
                prop_assert_eq!(&Record::decode(&d.raw[*off..]).unwrap().0, want);
            }
        }

        #[test]
        fn garbage_never_decodes_to_data(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes, 3); // must not panic
        }
    }
}
