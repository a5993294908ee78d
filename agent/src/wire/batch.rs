//! A batch: consecutive records of one VPG, compressed with zstd when that
//! pays. Header (little endian, `BATCH_HEADER_BYTES`): `first_seq u64,
//! last_seq u64, count u32, codec u8, reserved [u8;3], raw_len u32,
//! raw_crc u32`; then the body (raw or zstd) of the records' encodings.
//! Three checks guard the data: the frame crc, `raw_crc` over the
//! decompressed records, and each record's own crcs.

use crate::record::{Record, RecordError, RECORD_HEADER_BYTES, RECORD_PAYLOAD_BYTES_MAX};
use crate::wire::frame::FRAME_PAYLOAD_BYTES_MAX;
use crate::wire::link_pace::LinkPace;
use std::borrow::Cow;
use std::time::{Duration, Instant};

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
/// Buffers reused from batch to batch keep at most this much while their
/// link is idle, and at most twice a batch target after a larger batch:
/// memory stays bounded by the number of links, not by the largest write.
pub const IDLE_BUFFER_BYTES: usize = 256 << 10;
pub const BUSY_BUFFER_BYTES: usize = 2 * (BATCH_HEADER_BYTES + BATCH_RAW_BYTES_TARGET);

/// Gives back what a reused buffer holds beyond `keep` bytes of capacity;
/// what it holds is not kept when it shrinks (callers trim between uses).
pub fn trim_buffer(buf: &mut Vec<u8>, keep: usize) {
    if buf.capacity() > keep {
        buf.clear();
        buf.shrink_to(keep);
    }
}
/// Send compressed only when it saves at least this share of the bytes.
const COMPRESSION_WORTH_RATIO: f64 = 0.9;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Raw = 0,
    Zstd = 1,
}

/// One batch, encoded: the frame payload and its crc32 (worked out from
/// the records' own checksums where the bytes are the records', so the
/// sender passes over each byte once).
pub struct EncodedBatch<'a> {
    pub bytes: &'a [u8],
    pub crc: u32,
    pub raw_len: usize,
    pub codec: Codec,
    pub first_seq: u64,
    pub last_seq: u64,
}

/// The records of one batch as they travel: their verified encodings back
/// to back, exactly as the log holds them (nothing is decoded and encoded
/// again), after room for the batch header, so a raw batch goes out
/// without another copy. Reused from batch to batch (`clear`).
pub struct BatchBuilder {
    buf: Vec<u8>,
    first_seq: u64,
    last_seq: u64,
    count: usize,
    /// crc32 of the records' bytes, combined from their checksums.
    crc: crc32fast::Hasher,
}

impl Default for BatchBuilder {
    fn default() -> Self {
        BatchBuilder {
            buf: vec![0; BATCH_HEADER_BYTES],
            first_seq: 0,
            last_seq: 0,
            count: 0,
            crc: crc32fast::Hasher::new(),
        }
    }
}

impl BatchBuilder {
    /// A batch of `records` (tests and tools).
    pub fn of(records: &[Record]) -> Self {
        let mut b = BatchBuilder::default();
        for r in records {
            b.push_verified(r.seq, &r.encode());
        }
        b
    }

    pub fn clear(&mut self) {
        self.trim(BUSY_BUFFER_BYTES);
        self.count = 0;
        self.crc = crc32fast::Hasher::new();
    }

    /// Lets go of the buffer's memory while the link has nothing to send
    /// (the batch is empty).
    pub fn trim_idle(&mut self) {
        assert!(self.is_empty(), "trimming a batch that holds records");
        self.trim(IDLE_BUFFER_BYTES);
    }

    /// Keeps the room for the header; the records' bytes are dropped.
    fn trim(&mut self, keep: usize) {
        self.buf.truncate(BATCH_HEADER_BYTES);
        trim_buffer(&mut self.buf, keep);
        self.buf.resize(BATCH_HEADER_BYTES, 0);
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn count(&self) -> usize {
        self.count
    }

    /// Bytes of records so far.
    pub fn raw_len(&self) -> usize {
        self.buf.len() - BATCH_HEADER_BYTES
    }

    /// Adds a record's encoding, which the caller has checked in full (the
    /// log cursor reads each record with every check): the batch crc is
    /// derived from the record's header and payload crcs, not computed
    /// again. Seqs must ascend, and the batch must stay within what a
    /// receiver takes (`BATCH_RECORDS_MAX`, `BATCH_RAW_BYTES_MAX`).
    pub fn push_verified(&mut self, seq: u64, record: &[u8]) {
        debug_assert!(
            Record::decode_metadata(record).is_ok_and(|(r, used)| r.seq == seq && used == record.len()),
            "push_verified takes only whole, good records"
        );
        assert!(self.count < BATCH_RECORDS_MAX, "a batch of more than {BATCH_RECORDS_MAX} records");
        assert!(self.count == 0 || seq > self.last_seq, "batch seqs must ascend");
        assert!(
            self.raw_len() + record.len() <= BATCH_RAW_BYTES_MAX,
            "a batch over {BATCH_RAW_BYTES_MAX} raw bytes would be refused by the receiver"
        );
        self.crc.combine(&record_crc(record));
        self.buf.extend_from_slice(record);
        if self.count == 0 {
            self.first_seq = seq;
        }
        self.last_seq = seq;
        self.count += 1;
    }

    fn raw(&self) -> &[u8] {
        &self.buf[BATCH_HEADER_BYTES..]
    }
}

/// After batches that did not compress, up to this many are sent raw
/// before compression is tried again: 1, 2, 4, ... batches after 1, 2, 3
/// misses in a row (adaptive: an incompressible stream, such as an
/// encrypted guest, costs little compression CPU, and a mixed stream
/// finds its compressible parts again quickly).
const INCOMPRESSIBLE_SKIP_BATCHES: u32 = 16;

/// Encodes batches for one link, keeping a zstd context, its output buffer,
/// whether the stream has been compressing and, for a link that says how
/// fast it takes bytes, whether compressing pays on it.
pub struct BatchEncoder {
    zstd: zstd::bulk::Compressor<'static>,
    /// A batch header, then the compressed body.
    compressed: Vec<u8>,
    skip_compression: u32,
    misses_in_a_row: u32,
    /// None: compress whatever compresses (tests, tools, the simulator).
    pace: Option<LinkPace>,
    /// A batch at least this large was filled from a backlog (records
    /// were waiting for the link): half the sender's batch target. Only
    /// such a batch may go raw on a fast link, and only such batches
    /// measure the link. A stream that keeps up (smaller batches) spends
    /// idle CPU on compression and saves the link's bytes, as a WAN that
    /// is not full still wants.
    backlog_bytes: usize,
}

impl Default for BatchEncoder {
    fn default() -> Self {
        BatchEncoder {
            zstd: zstd::bulk::Compressor::new(ZSTD_LEVEL).expect("zstd level 1"),
            compressed: Vec::new(),
            skip_compression: 0,
            misses_in_a_row: 0,
            pace: None,
            backlog_bytes: usize::MAX,
        }
    }
}

impl BatchEncoder {
    /// An encoder for a link whose batches target `batch_target` raw
    /// bytes and that says how long each batch took to go out (`sent`):
    /// a backlog's batches are compressed only while that pays
    /// (`link_pace.rs`).
    pub fn paced(batch_target: usize) -> Self {
        BatchEncoder { pace: Some(LinkPace::default()), backlog_bytes: batch_target / 2, ..Self::default() }
    }

    /// A batch of `raw_bytes` (`wire_bytes` on the link) took `took` to go
    /// out (timed after it was encoded: compression's time is not the
    /// link's).
    pub fn sent(&mut self, raw_bytes: usize, wire_bytes: usize, took: Duration) {
        let backlog = self.is_backlog(raw_bytes);
        if let Some(pace) = self.pace.as_mut().filter(|_| backlog) {
            pace.sent(wire_bytes, took);
        }
    }

    /// Whether a batch of `raw_len` bytes was filled from a backlog
    /// (`backlog_bytes`): only such a batch may go raw on a fast link, and
    /// only such batches measure the link and compression.
    pub fn is_backlog(&self, raw_len: usize) -> bool {
        raw_len >= self.backlog_bytes
    }

    pub fn encode<'a>(&'a mut self, batch: &'a mut BatchBuilder) -> EncodedBatch<'a> {
        assert!(!batch.is_empty(), "an empty batch");
        let raw_len = batch.raw_len();
        let raw_crc = batch.crc.clone().finalize();
        debug_assert_eq!(raw_crc, crc32fast::hash(batch.raw()), "the combined batch crc");
        let backlog = self.is_backlog(raw_len);
        let compressed_len = if self.skip_compression > 0 {
            self.skip_compression -= 1;
            None
        } else if backlog && self.pace.as_mut().is_some_and(|p| !p.compress_next()) {
            None
        } else {
            let started = Instant::now();
            let n = self.compress(batch.raw());
            // Only a backlog's batches measure compression, as only they
            // measure the link: a small batch's time is mostly zstd's
            // fixed cost, and one 64-byte batch at 2 us per byte (the
            // first batch of a stream, in the appliance under QEMU TCG)
            // sent 115 MB of a 128 MiB backlog of 0xA5 blocks raw, and
            // encrypted, before the probes wore the figure down.
            if let (Some(pace), Some(n)) = (self.pace.as_mut().filter(|_| backlog), n) {
                pace.compressed(raw_len, n, started.elapsed());
            }
            n
        };
        let (first_seq, last_seq, count) = (batch.first_seq, batch.last_seq, batch.count);
        let header =
            |codec: Codec| BatchHeader { first_seq, last_seq, count, codec: codec as u8, raw_len, raw_crc }.to_bytes();
        match compressed_len {
            Some(n) if (n as f64) < raw_len as f64 * COMPRESSION_WORTH_RATIO => {
                self.misses_in_a_row = 0;
                self.compressed[..BATCH_HEADER_BYTES].copy_from_slice(&header(Codec::Zstd));
                let bytes = &self.compressed[..];
                let crc = crc32fast::hash(bytes);
                EncodedBatch { bytes, crc, raw_len, codec: Codec::Zstd, first_seq, last_seq }
            }
            compressed => {
                if compressed.is_some() {
                    self.misses_in_a_row += 1;
                    self.skip_compression =
                        (1u32 << (self.misses_in_a_row - 1).min(4)).min(INCOMPRESSIBLE_SKIP_BATCHES);
                }
                let h = header(Codec::Raw);
                batch.buf[..BATCH_HEADER_BYTES].copy_from_slice(&h);
                let crc = crc_followed_by(&h, raw_crc, raw_len).finalize();
                let bytes = &batch.buf[..];
                debug_assert_eq!(crc, crc32fast::hash(bytes), "the combined frame crc");
                EncodedBatch { bytes, crc, raw_len, codec: Codec::Raw, first_seq, last_seq }
            }
        }
    }

    /// Lets go of the compression buffer's memory while the link is idle.
    pub fn trim_idle(&mut self) {
        trim_buffer(&mut self.compressed, IDLE_BUFFER_BYTES);
    }

    /// Compresses `raw` after room for a header in `self.compressed`
    /// (written into its spare capacity, never zeroed first); the
    /// compressed length, or None if zstd failed.
    fn compress(&mut self, raw: &[u8]) -> Option<usize> {
        let mut out = std::io::Cursor::new(std::mem::take(&mut self.compressed));
        out.get_mut().clear();
        trim_buffer(out.get_mut(), BUSY_BUFFER_BYTES);
        out.get_mut().resize(BATCH_HEADER_BYTES, 0);
        out.get_mut().reserve(zstd::zstd_safe::compress_bound(raw.len()));
        out.set_position(BATCH_HEADER_BYTES as u64);
        let n = self.zstd.compress_to_buffer(raw, &mut out).ok();
        self.compressed = out.into_inner();
        n
    }
}

/// A batch's bytes and codec, owned (tests and tools).
pub struct OwnedBatch {
    pub bytes: Vec<u8>,
    pub codec: Codec,
}

/// Encodes one batch of `records` with a fresh encoder (tests and tools).
pub fn encode(records: &[Record]) -> OwnedBatch {
    let mut batch = BatchBuilder::of(records);
    let mut encoder = BatchEncoder::default();
    let encoded = encoder.encode(&mut batch);
    OwnedBatch { bytes: encoded.bytes.to_vec(), codec: encoded.codec }
}

/// Encodes `data` as 64 KiB write records in batches of
/// `BATCH_RAW_BYTES_TARGET`, as the sender does; returns the seconds spent
/// and the bytes that would go on the wire. For `tidemark bench-compress`.
pub fn bench_compress(data: &[u8]) -> (f64, usize) {
    const WRITE_BYTES: usize = 64 << 10;
    let records: Vec<Vec<u8>> = data
        .chunks(WRITE_BYTES)
        .enumerate()
        .map(|(i, c)| {
            let body =
                crate::record::RecordBody::Write { volume: 0, offset: (i * WRITE_BYTES) as u64, data: c.to_vec() };
            Record { seq: i as u64 + 1, vpg_id: 1, body }.encode()
        })
        .collect();
    let per_batch = BATCH_RAW_BYTES_TARGET / WRITE_BYTES;
    let mut encoder = BatchEncoder::default();
    let mut batch = BatchBuilder::default();
    let start = std::time::Instant::now();
    let mut wire = 0;
    for (b, chunk) in records.chunks(per_batch).enumerate() {
        batch.clear();
        for (i, r) in chunk.iter().enumerate() {
            batch.push_verified((b * per_batch + i) as u64 + 1, r);
        }
        wire += encoder.encode(&mut batch).bytes.len();
    }
    (start.elapsed().as_secs_f64(), wire)
}

/// A verified batch: its records (Write data left empty: it stays in
/// `raw`) and the raw bytes, with each record's start offset in `raw`.
/// A raw batch's bytes are borrowed from the frame, not copied.
pub struct DecodedBatch<'a> {
    pub raw: Cow<'a, [u8]>,
    pub records: Vec<Record>,
    pub offsets: Vec<usize>,
}

impl DecodedBatch<'_> {
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

    pub fn into_owned(self) -> DecodedBatch<'static> {
        DecodedBatch { raw: Cow::Owned(self.raw.into_owned()), records: self.records, offsets: self.offsets }
    }
}

/// The crc32 of `head` followed by `rest_len` bytes whose crc32 is
/// `rest_crc`, without a pass over those bytes.
fn crc_followed_by(head: &[u8], rest_crc: u32, rest_len: usize) -> crc32fast::Hasher {
    let mut crc = crc32fast::Hasher::new();
    crc.update(head);
    crc.combine(&crc32fast::Hasher::new_with_initial_len(rest_crc, rest_len as u64));
    crc
}

/// The crc32 of one record's bytes, from its header and its (verified)
/// payload crc: no pass over the payload.
fn record_crc(record: &[u8]) -> crc32fast::Hasher {
    let payload_crc = crate::record::u32_at(record, 44);
    crc_followed_by(&record[..RECORD_HEADER_BYTES], payload_crc, record.len() - RECORD_HEADER_BYTES)
}

/// The batch header, as the encoder writes it and the decoder reads it.
/// Why a batch is refused: all of them are malformed bytes (no I/O is
/// done here), and the link that carried them is ended.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("batch of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("batch header out of bounds: {count} records, {raw_len} raw bytes")]
    OutOfBounds { count: usize, raw_len: usize },
    #[error("unknown batch codec {0}")]
    UnknownCodec(u8),
    #[error("decompressing batch")]
    Decompress(#[source] std::io::Error),
    #[error("batch of {len} raw bytes where its header says {said} (seq {first_seq}..={last_seq})")]
    RawLength { len: usize, said: usize, first_seq: u64, last_seq: u64 },
    #[error("record at batch offset {at}")]
    Record {
        at: usize,
        #[source]
        error: RecordError,
    },
    #[error("record seq {seq} belongs to VPG id {found:#x}, not {vpg_id:#x}")]
    OtherVpg { seq: u64, found: u32, vpg_id: u32 },
    #[error("batch seqs do not ascend at seq {0}")]
    NotAscending(u64),
    #[error("batch checksum mismatch (seq {first_seq}..={last_seq})")]
    Checksum { first_seq: u64, last_seq: u64 },
    #[error("batch header does not match its records")]
    HeaderMismatch,
}

struct BatchHeader {
    first_seq: u64,
    last_seq: u64,
    count: usize,
    codec: u8,
    raw_len: usize,
    raw_crc: u32,
}

impl BatchHeader {
    fn to_bytes(&self) -> [u8; BATCH_HEADER_BYTES] {
        let mut h = [0u8; BATCH_HEADER_BYTES];
        h[0..8].copy_from_slice(&self.first_seq.to_le_bytes());
        h[8..16].copy_from_slice(&self.last_seq.to_le_bytes());
        h[16..20].copy_from_slice(&(self.count as u32).to_le_bytes());
        h[20] = self.codec;
        h[24..28].copy_from_slice(&(self.raw_len as u32).to_le_bytes());
        h[28..32].copy_from_slice(&self.raw_crc.to_le_bytes());
        h
    }

    fn read(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
        if bytes.len() < BATCH_HEADER_BYTES {
            return Err(BatchError::Short(bytes.len()));
        }
        let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8"));
        let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4"));
        let h = BatchHeader {
            first_seq: u64_at(0),
            last_seq: u64_at(8),
            count: u32_at(16) as usize,
            codec: bytes[20],
            raw_len: u32_at(24) as usize,
            raw_crc: u32_at(28),
        };
        if h.raw_len > BATCH_RAW_BYTES_MAX || h.count == 0 || h.count > BATCH_RECORDS_MAX {
            return Err(BatchError::OutOfBounds { count: h.count, raw_len: h.raw_len });
        }
        if h.codec > Codec::Zstd as u8 {
            return Err(BatchError::UnknownCodec(h.codec));
        }
        Ok(h)
    }
}

/// Decodes the batches of one link, reusing a zstd context and one buffer
/// for the decompressed ones.
pub struct BatchDecoder {
    zstd: zstd::bulk::Decompressor<'static>,
    decompressed: Vec<u8>,
}

impl Default for BatchDecoder {
    fn default() -> Self {
        BatchDecoder { zstd: zstd::bulk::Decompressor::new().expect("a zstd context"), decompressed: Vec::new() }
    }
}

impl BatchDecoder {
    /// `decode`, decompressing into this decoder's buffer.
    pub fn decode<'a>(&'a mut self, bytes: &'a [u8], vpg_id: u32) -> Result<DecodedBatch<'a>, BatchError> {
        let h = BatchHeader::read(bytes)?;
        let body = &bytes[BATCH_HEADER_BYTES..];
        let raw = if h.codec == Codec::Zstd as u8 {
            self.decompressed.clear();
            trim_buffer(&mut self.decompressed, BUSY_BUFFER_BYTES);
            self.decompressed.reserve(h.raw_len);
            // Into the spare capacity: more than `raw_len` is an error.
            self.zstd.decompress_to_buffer(body, &mut self.decompressed).map_err(BatchError::Decompress)?;
            &self.decompressed[..]
        } else {
            body
        };
        check_records(&h, Cow::Borrowed(raw), vpg_id)
    }
}

/// Decodes and verifies a batch; every record must belong to `vpg_id`.
pub fn decode(bytes: &[u8], vpg_id: u32) -> Result<DecodedBatch<'_>, BatchError> {
    let h = BatchHeader::read(bytes)?;
    let body = &bytes[BATCH_HEADER_BYTES..];
    let raw = if h.codec == Codec::Zstd as u8 {
        Cow::Owned(zstd::bulk::decompress(body, h.raw_len).map_err(BatchError::Decompress)?)
    } else {
        Cow::Borrowed(body)
    };
    check_records(&h, raw, vpg_id)
}

/// Checks every record in `raw` (both crcs each), that they are the ones
/// the header names, and the header's crc of them all: worked out from the
/// records' crcs, so each byte is checked once.
fn check_records<'a>(h: &BatchHeader, raw: Cow<'a, [u8]>, vpg_id: u32) -> Result<DecodedBatch<'a>, BatchError> {
    let (first_seq, last_seq, count) = (h.first_seq, h.last_seq, h.count);
    if raw.len() != h.raw_len {
        return Err(BatchError::RawLength { len: raw.len(), said: h.raw_len, first_seq, last_seq });
    }
    let mut records = Vec::with_capacity(count);
    let mut offsets = Vec::with_capacity(count);
    let mut crc = crc32fast::Hasher::new();
    let mut at = 0;
    while at < raw.len() {
        if records.len() == count {
            return Err(BatchError::HeaderMismatch);
        }
        let (rec, used) = Record::decode_metadata(&raw[at..]).map_err(|error| BatchError::Record { at, error })?;
        if rec.vpg_id != vpg_id {
            return Err(BatchError::OtherVpg { seq: rec.seq, found: rec.vpg_id, vpg_id });
        }
        if let Some(prev) = records.last().map(|r: &Record| r.seq) {
            if rec.seq <= prev {
                return Err(BatchError::NotAscending(rec.seq));
            }
        }
        crc.combine(&record_crc(&raw[at..at + used]));
        records.push(rec);
        offsets.push(at);
        at += used;
    }
    if crc.finalize() != h.raw_crc {
        return Err(BatchError::Checksum { first_seq, last_seq });
    }
    if records.len() != count || records[0].seq != first_seq || records[count - 1].seq != last_seq {
        return Err(BatchError::HeaderMismatch);
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
        let random = encode(&recs(vec![noise.clone()]));
        assert_eq!(random.codec, Codec::Raw);
        // A raw batch's frame crc is derived, not computed: it must match.
        let mut batch = BatchBuilder::of(&recs(vec![noise]));
        let mut encoder = BatchEncoder::default();
        let encoded = encoder.encode(&mut batch);
        assert_eq!((encoded.codec, encoded.crc), (Codec::Raw, crc32fast::hash(encoded.bytes)));
        assert_eq!(decode(&random.bytes, 3).unwrap().records.len(), 1);
    }

    #[test]
    fn incompressible_stream_skips_compression_then_probes_again() {
        let mut noise = vec![0u8; 65536];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut noise).unwrap();
        let mut enc = BatchEncoder::default();
        let zeros = || BatchBuilder::of(&recs(vec![vec![0u8; 65536]]));
        // Misses in a row: skip 1, then 2, then 4 batches.
        for skip in [1, 2, 4] {
            assert_eq!(enc.encode(&mut BatchBuilder::of(&recs(vec![noise.clone()]))).codec, Codec::Raw);
            for _ in 0..skip {
                // Skipped even though this batch would compress.
                assert_eq!(enc.encode(&mut zeros()).codec, Codec::Raw);
            }
        }
        // Probed again, it compresses, and the backoff resets.
        assert_eq!(enc.encode(&mut zeros()).codec, Codec::Zstd);
        assert_eq!(enc.encode(&mut BatchBuilder::of(&recs(vec![noise]))).codec, Codec::Raw);
        assert_eq!(enc.encode(&mut zeros()).codec, Codec::Raw);
        assert_eq!(enc.encode(&mut zeros()).codec, Codec::Zstd);
    }

    /// A paced encoder on a link faster than compression sends a
    /// backlog's batches raw, still compresses the small batches of a
    /// stream that keeps up, and compresses again once the link slows.
    #[test]
    fn a_fast_link_gets_a_backlog_raw_and_small_batches_compressed() {
        let mut enc = BatchEncoder::paced(BATCH_RAW_BYTES_TARGET);
        let backlog = || BatchBuilder::of(&recs(vec![vec![0u8; 1 << 20]; 3]));
        assert_eq!(enc.encode(&mut backlog()).codec, Codec::Zstd, "a new link is taken for a WAN");
        for _ in 0..60 {
            enc.sent(3 << 20, 4 << 20, Duration::from_micros(1));
        }
        assert_eq!(enc.encode(&mut backlog()).codec, Codec::Raw);
        assert_eq!(enc.encode(&mut BatchBuilder::of(&recs(vec![vec![0u8; 65536]]))).codec, Codec::Zstd);
        // A small batch's time does not count: it is mostly system calls.
        enc.sent(64 << 10, 64 << 10, Duration::from_secs(1));
        assert_eq!(enc.encode(&mut backlog()).codec, Codec::Raw);
        for _ in 0..30 {
            enc.sent(3 << 20, 4 << 20, Duration::from_millis(400));
        }
        assert_eq!(enc.encode(&mut backlog()).codec, Codec::Zstd, "10 MB/s");
        // Without a pace (tests, tools, the simulator) whatever compresses is.
        let mut unpaced = BatchEncoder::default();
        unpaced.sent(3 << 20, 4 << 20, Duration::from_micros(1));
        assert_eq!(unpaced.encode(&mut backlog()).codec, Codec::Zstd);
    }

    /// Small batches, compressed whatever the link, measure neither the
    /// link nor compression: their time is mostly fixed costs. The first
    /// backlog on a slow link is compressed whatever came before it.
    #[test]
    fn small_batches_do_not_measure_the_pace() {
        let mut enc = BatchEncoder::paced(BATCH_RAW_BYTES_TARGET);
        let before = format!("{:?}", enc.pace);
        for size in [16, 64, 4096, 65536] {
            let mut batch = BatchBuilder::of(&recs(vec![vec![0xA5u8; size]]));
            let codec = enc.encode(&mut batch).codec;
            assert!(codec == Codec::Zstd || size < 4096, "{size} bytes went {codec:?}");
            enc.sent(size, size, Duration::from_millis(1));
        }
        assert_eq!(format!("{:?}", enc.pace), before, "a small batch moved the pace");
        let backlog = || BatchBuilder::of(&recs(vec![vec![0xA5u8; 1 << 20]; 3]));
        for _ in 0..5 {
            assert_eq!(enc.encode(&mut backlog()).codec, Codec::Zstd);
            enc.sent(3 << 20, 300, Duration::from_millis(1));
        }
    }

    #[test]
    fn a_flipped_byte_or_a_wrong_batch_crc_is_refused() {
        // Checked once per byte (the records' crcs, the batch crc derived
        // from them), the way the receiver checks: still every change shows.
        let records = recs(vec![vec![5; 3000], vec![6; 100]]);
        let good = encode(&records).bytes;
        for at in (0..good.len()).step_by(7) {
            let mut bad = good.clone();
            bad[at] ^= 0x10;
            let reserved = (21..24).contains(&at);
            assert!(BatchDecoder::default().decode(&bad, 3).is_err() || reserved, "byte {at} flipped was taken");
        }
        let mut bad = good.clone();
        bad[28] ^= 1;
        let err = decode(&bad, 3).err().unwrap().to_string();
        assert!(err.contains("batch checksum mismatch"), "{err}");
    }

    #[test]
    fn a_decoder_reused_for_compressed_batches_of_any_size_gives_each_its_own() {
        let mut decoder = BatchDecoder::default();
        for (n, byte) in [(200_000, 1u8), (3000, 2), (70_000, 3)] {
            let b = encode(&recs(vec![vec![byte; n]]));
            assert_eq!(b.codec, Codec::Zstd);
            let d = decoder.decode(&b.bytes, 3).unwrap();
            assert_eq!(d.extent(0), Some((1, 0, n as u64)));
            assert!(d.raw[RECORD_HEADER_BYTES..].iter().all(|b| *b == byte));
            assert_eq!(d.raw.len(), RECORD_HEADER_BYTES + n);
        }
    }

    #[test]
    fn reused_buffers_keep_little_after_a_big_write_or_while_idle() {
        let mut batch = BatchBuilder::of(&recs(vec![vec![1; 20 << 20]]));
        let mut encoder = BatchEncoder::default();
        assert_eq!(encoder.encode(&mut batch).codec, Codec::Zstd);
        batch.clear();
        assert!(batch.buf.capacity() <= BUSY_BUFFER_BYTES, "{}", batch.buf.capacity());
        batch.push_verified(10, &recs(vec![vec![2; 1000]])[0].encode());
        encoder.encode(&mut batch);
        assert!(encoder.compressed.capacity() <= BUSY_BUFFER_BYTES, "{}", encoder.compressed.capacity());
        batch.clear();
        batch.trim_idle();
        encoder.trim_idle();
        assert!(batch.buf.capacity() <= IDLE_BUFFER_BYTES && encoder.compressed.capacity() <= IDLE_BUFFER_BYTES);
        assert_eq!(batch.buf.len(), BATCH_HEADER_BYTES, "the room for the header stays");
        batch.push_verified(11, &recs(vec![vec![0; 1], vec![3; 1000]])[1].encode());
        decode(encoder.encode(&mut batch).bytes, 3).unwrap();
        // A buffer whose length is its largest use (a frame payload, a
        // record read) shrinks too.
        let mut payload = vec![0u8; 36 << 20];
        trim_buffer(&mut payload, BUSY_BUFFER_BYTES);
        assert!(payload.capacity() <= BUSY_BUFFER_BYTES);
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
            // The crcs worked out from the records' own match the bytes.
            let mut batch = BatchBuilder::of(&records);
            let mut encoder = BatchEncoder::default();
            let encoded = encoder.encode(&mut batch);
            prop_assert_eq!(encoded.crc, crc32fast::hash(encoded.bytes));
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
