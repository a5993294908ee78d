//! One segment file: a checksummed header followed by records
//! (`record.rs`). The protected log and the recovery journal are both
//! ordered lists of segments; this module reads and writes one of them.
//!
//! Header (little endian, `SEGMENT_HEADER_BYTES`):
//! `magic [u8;8], version u32, vpg_id u32, first_seq u64, stream_id u32,
//! header_crc u32` (crc32 of the 28 bytes before it). `stream_id` names the
//! stream a protected-log segment belongs to (0 in journal segments, which
//! hold several streams, and in segments of builds before stream ids).
//!
//! A segment appears under its name only once its header is durable: it is
//! written under a temporary name, fsynced, then renamed (a power cut must
//! never leave a named segment without its header).
//!
//! The protected log writes its records over the file of a retired
//! segment (`recycle_segment_on`), so bytes of the file's earlier use may
//! follow its records; each of its appends writes an end marker (a record
//! header of zeros, `END_MARKER`) after the record, which the next append
//! writes over. Its readers take zeros where a header is due for the end.

use crate::io_failure::{Doing, IoFailure};
use crate::record::{u32_at, u64_at, Record, RecordBody, RecordError, RECORD_HEADER_BYTES, RECORD_PAYLOAD_BYTES_MAX};
use crate::storage::{SequentialReader, Storage, StorageFile, REAL};
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const SEGMENT_HEADER_BYTES: usize = 32;
const SEGMENT_VERSION: u32 = 1;
/// Written after each record of the protected log: its readers stop there.
pub const END_MARKER: [u8; RECORD_HEADER_BYTES] = [0; RECORD_HEADER_BYTES];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentKind {
    ProtectedLog,
    Journal,
}

impl SegmentKind {
    fn magic(self) -> &'static [u8; 8] {
        match self {
            SegmentKind::ProtectedLog => b"TMLOGSEG",
            SegmentKind::Journal => b"TMJRNSEG",
        }
    }

    fn extension(self) -> &'static str {
        match self {
            SegmentKind::ProtectedLog => "tmlog",
            SegmentKind::Journal => "tmjrn",
        }
    }
}

/// The file name a segment starting at `first_seq` has in `dir`.
pub fn segment_path(dir: &Path, kind: SegmentKind, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.{}", kind.extension()))
}

/// Every segment of `kind` in `dir`, ordered by first sequence number.
pub fn list_segments(dir: &Path, kind: SegmentKind) -> Result<Vec<(u64, PathBuf)>, IoFailure> {
    list_segments_on(&REAL, dir, kind)
}

/// `list_segments` on `fs`.
pub fn list_segments_on(fs: &dyn Storage, dir: &Path, kind: SegmentKind) -> Result<Vec<(u64, PathBuf)>, IoFailure> {
    let mut found = Vec::new();
    for path in fs.list(dir).doing(|| format!("listing {}", dir.display()))? {
        if path.extension().and_then(|e| e.to_str()) != Some(kind.extension()) {
            continue;
        }
        let Some(first_seq) = path.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse::<u64>().ok()) else {
            continue;
        };
        found.push((first_seq, path));
    }
    found.sort();
    Ok(found)
}

/// A segment being created, before its rename into place.
const CREATING_EXTENSION: &str = "creating";

/// Removes what creations a stop cut short left (call at open, when no
/// creation can be under way: a listing while one runs must not).
pub fn remove_unfinished_creations(dir: &Path) -> Result<(), IoFailure> {
    remove_unfinished_creations_on(&REAL, dir)
}

/// `remove_unfinished_creations` on `fs`.
pub fn remove_unfinished_creations_on(fs: &dyn Storage, dir: &Path) -> Result<(), IoFailure> {
    for path in fs.list(dir).doing(|| format!("listing {}", dir.display()))? {
        if path.extension().and_then(|e| e.to_str()) == Some(CREATING_EXTENSION) {
            fs.remove_file(&path).doing(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(())
}

fn encode_header(kind: SegmentKind, vpg_id: u32, first_seq: u64, stream_id: u32) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut h = [0u8; SEGMENT_HEADER_BYTES];
    h[0..8].copy_from_slice(kind.magic());
    h[8..12].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&vpg_id.to_le_bytes());
    h[16..24].copy_from_slice(&first_seq.to_le_bytes());
    h[24..28].copy_from_slice(&stream_id.to_le_bytes());
    let crc = crc32fast::hash(&h[..28]);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Creates a new segment on `fs` holding `first` (encoded records, may be
/// empty) after its header, and makes it durable under its name (see the
/// module comment). Refused if a segment of that name exists.
pub fn create_segment_on(
    fs: &dyn Storage,
    dir: &Path,
    kind: SegmentKind,
    vpg_id: u32,
    first_seq: u64,
    stream_id: u32,
    first: &[u8],
) -> Result<(PathBuf, Arc<dyn StorageFile>), SegmentFileError> {
    let path = segment_path(dir, kind, first_seq);
    if fs.exists(&path) {
        return Err(SegmentFileError::Exists(path));
    }
    let creating = path.with_extension(CREATING_EXTENSION);
    let made = (|| {
        // Left by a creation a crash cut short.
        let _ = fs.remove_file(&creating);
        let file = fs.create_new(&creating).doing(|| format!("creating segment {}", creating.display()))?;
        file.append(&[&encode_header(kind, vpg_id, first_seq, stream_id), first])
            .doing(|| format!("writing {}", creating.display()))?;
        fail::fail_point!("segment-create-before-sync", |_| Err(IoFailure::new(
            "failpoint",
            std::io::Error::other("failpoint")
        )));
        file.sync_all().doing(|| format!("syncing {}", creating.display()))?;
        fs.rename(&creating, &path).doing(|| format!("naming {}", path.display()))?;
        Ok::<_, IoFailure>(file)
    })();
    let file = match made {
        Ok(f) => f,
        Err(e) => {
            let _ = fs.remove_file(&creating);
            return Err(e.into());
        }
    };
    name_durably(fs, dir, &path)?;
    Ok((path, file))
}

/// Makes the name a segment was just given at `path` durable. If that
/// fails, the segment is not made after all: a restart must not find it
/// named (its name may still come back in a power cut, as an empty
/// segment).
fn name_durably(fs: &dyn Storage, dir: &Path, path: &Path) -> Result<(), SegmentFileError> {
    if let Err(e) = fs.sync_dir(dir) {
        let _ = fs.remove_file(path);
        return Err(IoFailure::new(format!("syncing directory {}", dir.display()), e).into());
    }
    Ok(())
}

/// Makes the file of a retired segment, kept as `spare`, the segment
/// `first_seq` with no records: its header is written over the old one
/// and made durable before the file takes the segment's name, and the
/// name is made durable before this returns. The file keeps its old bytes
/// after the header, and its length up to `keep_bytes` (see the module
/// comment): the handle returned writes in place
/// (`StorageFile::write_at`). On an error the spare may be gone or half
/// rewritten; the segment is not named.
pub fn recycle_segment_on(
    fs: &dyn Storage,
    spare: &Path,
    keep_bytes: u64,
    kind: SegmentKind,
    vpg_id: u32,
    first_seq: u64,
    stream_id: u32,
) -> Result<(PathBuf, Arc<dyn StorageFile>), SegmentFileError> {
    let dir = spare.parent().unwrap_or(Path::new("."));
    let path = segment_path(dir, kind, first_seq);
    if fs.exists(&path) {
        return Err(SegmentFileError::Exists(path));
    }
    // The spare's name must be durable before its bytes change: a power
    // cut must not bring the retired segment's name back over a new header.
    fs.sync_dir(dir).doing(|| format!("syncing directory {}", dir.display()))?;
    let file = fs.open_rw(spare).doing(|| format!("opening spare segment {}", spare.display()))?;
    // Only now that no power cut can bring the retired segment's name back
    // may its length change: it would come back cut short.
    if file.size().doing(|| format!("sizing {}", spare.display()))? > keep_bytes {
        file.set_len(keep_bytes).doing(|| format!("cutting {}", spare.display()))?;
    }
    // The old records' end marker goes with them: until the first append,
    // the header is followed by an end.
    file.write_at(&[&encode_header(kind, vpg_id, first_seq, stream_id), &END_MARKER], 0)
        .doing(|| format!("writing {}", spare.display()))?;
    file.sync_all().doing(|| format!("syncing {}", spare.display()))?;
    fs.rename(spare, &path).doing(|| format!("naming {}", path.display()))?;
    name_durably(fs, dir, &path)?;
    Ok((path, file))
}

/// Creates a new segment with no records (see `create_segment_on`) and
/// opens it for appending.
pub fn create_segment(
    dir: &Path,
    kind: SegmentKind,
    vpg_id: u32,
    first_seq: u64,
) -> Result<(PathBuf, File), SegmentFileError> {
    let (path, _) = create_segment_on(&REAL, dir, kind, vpg_id, first_seq, 0, &[])?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .open(&path)
        .doing(|| format!("opening {}", path.display()))?;
    Ok((path, file))
}

/// Small enough that a large record's payload is mostly read straight
/// into its buffer, not copied through this one; large enough that small
/// records take few reads.
const READ_BUFFER_BYTES: usize = 64 << 10;
/// Reads past the page cache have no readahead: each fill is one
/// synchronous read of the disk, so fewer, larger ones.
const DIRECT_READ_BUFFER_BYTES: usize = 1 << 20;

/// Reads the records of one segment in order, verifying every checksum.
pub struct SegmentReader {
    path: PathBuf,
    reader: BufReader<SequentialReader>,
    /// File offset of the next record.
    offset: u64,
    buf: Vec<u8>,
    stream_id: u32,
    last_crcs: RecordCrcs,
    /// Zeros where a header is due are the end (`END_MARKER`), not damage.
    zeros_end: bool,
    /// An end marker was read (and consumed): the reader stays at the end.
    at_marker: bool,
    /// Records at or below this seq are passed over unread (`skip_through`).
    skip_through: u64,
}

/// The checksums a record's header carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecordCrcs {
    /// crc32 of the payload.
    pub payload: u32,
    /// crc32 of the header before it.
    pub header: u32,
}

/// Why reading a segment stopped before its end: the storage failed, or
/// the bytes read are not a good record. The two call for opposite
/// answers, so they are told apart here: a read error says nothing about
/// the data (retry, report, never cut or quarantine on it), damage is
/// known bad bytes (a torn tail is cut, corruption is quarantined).
#[derive(Debug)]
pub enum SegmentError {
    Io { path: PathBuf, offset: u64, source: std::io::Error },
    Damage(SegmentDamage),
}

impl std::fmt::Display for SegmentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SegmentError::Io { path, offset, source } => {
                write!(f, "{}: read error at offset {offset}: {source}", path.display())
            }
            SegmentError::Damage(d) => d.fmt(f),
        }
    }
}

impl std::error::Error for SegmentError {}

/// Why a segment file could not be listed, created or opened: the storage
/// failed, or its header is not a good one of the kind and VPG asked for.
#[derive(Debug, thiserror::Error)]
pub enum SegmentFileError {
    #[error(transparent)]
    Storage(#[from] IoFailure),
    #[error("segment {} exists already", .0.display())]
    Exists(PathBuf),
    #[error("{}: {problem}", path.display())]
    Header { path: PathBuf, problem: HeaderProblem },
}

/// What is wrong with a segment's header.
#[derive(Debug, thiserror::Error)]
pub enum HeaderProblem {
    #[error("shorter than a segment header")]
    Short,
    #[error("not a {0:?} segment (bad magic)")]
    Magic(SegmentKind),
    #[error("segment header checksum mismatch")]
    Checksum,
    #[error("unsupported segment version {0}")]
    Version(u32),
    #[error("segment belongs to another VPG (id {0:#x})")]
    OtherVpg(u32),
}

/// A record that fails its checks, and where.
#[derive(Debug)]
pub struct SegmentDamage {
    pub path: PathBuf,
    pub offset: u64,
    pub error: RecordError,
}

impl std::fmt::Display for SegmentDamage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = if self.error.is_incomplete() { "torn record" } else { "corrupt record" };
        write!(f, "{}: {what} at offset {}: {}", self.path.display(), self.offset, self.error)
    }
}

impl SegmentReader {
    /// Opens a segment and checks its header belongs to `kind` and `vpg_id`.
    pub fn open(path: &Path, kind: SegmentKind, vpg_id: u32) -> Result<(Self, u64), SegmentFileError> {
        Self::open_on(&REAL, path, kind, vpg_id)
    }

    /// `open` on `fs`.
    pub fn open_on(
        fs: &dyn Storage,
        path: &Path,
        kind: SegmentKind,
        vpg_id: u32,
    ) -> Result<(Self, u64), SegmentFileError> {
        let file = fs.open_read(path).doing(|| format!("opening segment {}", path.display()))?;
        Self::over(file, READ_BUFFER_BYTES, path, kind, vpg_id)
    }

    /// `open_on`, reading what the disk holds rather than the page cache
    /// (`Storage::open_direct`): for records about to be trusted as
    /// durable.
    pub fn open_direct_on(
        fs: &dyn Storage,
        path: &Path,
        kind: SegmentKind,
        vpg_id: u32,
    ) -> Result<(Self, u64), SegmentFileError> {
        let file = fs.open_direct(path).doing(|| format!("opening segment {}", path.display()))?;
        Self::over(file, DIRECT_READ_BUFFER_BYTES, path, kind, vpg_id)
    }

    fn over(
        file: Arc<dyn StorageFile>,
        buffer_bytes: usize,
        path: &Path,
        kind: SegmentKind,
        vpg_id: u32,
    ) -> Result<(Self, u64), SegmentFileError> {
        let mut h = [0u8; SEGMENT_HEADER_BYTES];
        let bad = |problem| SegmentFileError::Header { path: path.to_path_buf(), problem };
        // Read apart, not through the buffer: that would fill it from the
        // whole file, past an end a caller may yet limit it to (`set_limit`).
        match file.read_at(&mut h, 0) {
            Ok(SEGMENT_HEADER_BYTES) => {}
            Ok(_) => return Err(bad(HeaderProblem::Short)),
            Err(e) => return Err(IoFailure::new(format!("reading header of {}", path.display()), e).into()),
        }
        let reader = BufReader::with_capacity(buffer_bytes, SequentialReader::new(file, SEGMENT_HEADER_BYTES as u64));
        if &h[0..8] != kind.magic() {
            return Err(bad(HeaderProblem::Magic(kind)));
        }
        if crc32fast::hash(&h[..28]) != u32_at(&h, 28) {
            return Err(bad(HeaderProblem::Checksum));
        }
        if u32_at(&h, 8) != SEGMENT_VERSION {
            return Err(bad(HeaderProblem::Version(u32_at(&h, 8))));
        }
        if u32_at(&h, 12) != vpg_id {
            return Err(bad(HeaderProblem::OtherVpg(u32_at(&h, 12))));
        }
        let first_seq = u64_at(&h, 16);
        let stream_id = u32_at(&h, 24);
        let me = SegmentReader {
            path: path.to_path_buf(),
            reader,
            offset: SEGMENT_HEADER_BYTES as u64,
            buf: Vec::new(),
            stream_id,
            last_crcs: RecordCrcs::default(),
            zeros_end: kind == SegmentKind::ProtectedLog,
            at_marker: false,
            skip_through: 0,
        };
        Ok((me, first_seq))
    }

    /// The stream the header names (0: none, or a journal segment).
    pub fn stream_id(&self) -> u32 {
        self.stream_id
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The checksums of the last record returned (verified).
    pub fn last_crcs(&self) -> RecordCrcs {
        self.last_crcs
    }

    /// File offset just past the last record returned.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Reads go no further than `limit` (the file seems to end there) until
    /// it is moved: bytes past a segment's published end may still be
    /// written over, and must not be kept in the read buffer.
    pub fn set_limit(&mut self, limit: u64) {
        self.reader.get_mut().set_limit(limit);
    }

    /// Records whose (verified) header says seq `seq` or below are passed
    /// over: not returned, their payload not checked. For a recovery
    /// journal's records already in the replica: bit rot in one of them
    /// harms nothing, and taken for damage it cut every later record
    /// away (review of helper-50). A record's header is always checked:
    /// without it nothing says where the next one starts.
    pub fn skip_through(&mut self, seq: u64) {
        self.skip_through = seq;
    }

    /// Goes on reading at `offset`: a record's start (or the end) that the
    /// caller knows from elsewhere, past damage (`journal::summary_file::
    /// resume_past_damage`).
    pub fn resume_at(&mut self, offset: u64) {
        let buffered = self.reader.buffer().len();
        self.reader.consume(buffered);
        self.reader.get_mut().seek_to(offset);
        self.offset = offset;
    }

    /// The next record and its file offset; `Ok(None)` at a clean end.
    pub fn next_record(&mut self) -> Result<Option<(Record, u64)>, SegmentError> {
        let mut buf = std::mem::take(&mut self.buf);
        let next = self.next_record_into(&mut buf);
        let next = next.map(|found| {
            found.map(|(mut record, len, at)| {
                if let RecordBody::Write { data, .. } = &mut record.body {
                    *data = buf[RECORD_HEADER_BYTES..len].to_vec();
                }
                (record, at)
            })
        });
        self.buf = buf;
        next
    }

    /// The next record's bytes, checked in full, into `buf[..len]` (`buf`
    /// grows as needed and is never shrunk or zeroed again, so a reused
    /// one costs nothing but the read), with what the record is (a
    /// Write's data left empty: it is in `buf`), `len`, and its offset.
    pub fn next_record_into(&mut self, buf: &mut Vec<u8>) -> Result<Option<(Record, usize, u64)>, SegmentError> {
        loop {
            if let Some(found) = self.next_unskipped(buf)? {
                return Ok(found);
            }
        }
    }

    /// `next_record_into`'s one step: None when it passed a record over.
    #[allow(clippy::type_complexity)]
    fn next_unskipped(&mut self, buf: &mut Vec<u8>) -> Result<Option<Option<(Record, usize, u64)>>, SegmentError> {
        let at = self.offset;
        let damage = |error| SegmentError::Damage(SegmentDamage { path: self.path.clone(), offset: at, error });
        let io = |source| SegmentError::Io { path: self.path.clone(), offset: at, source };
        if self.at_marker {
            return Ok(Some(None));
        }
        grow(buf, RECORD_HEADER_BYTES);
        let got = read_fully(&mut self.reader, &mut buf[..RECORD_HEADER_BYTES]).map_err(io)?;
        if got == 0 {
            return Ok(Some(None));
        }
        if got < RECORD_HEADER_BYTES {
            return Err(damage(RecordError::Incomplete { needed: RECORD_HEADER_BYTES, have: got }));
        }
        if self.zeros_end && buf[..RECORD_HEADER_BYTES] == END_MARKER {
            self.at_marker = true;
            return Ok(Some(None));
        }
        // Only trust the length once the header checksum has passed.
        if let Err(
            e @ (RecordError::BadMagic(_)
            | RecordError::Zeros
            | RecordError::HeaderChecksum
            | RecordError::PayloadTooLarge(_)),
        ) = Record::decode_metadata(&buf[..RECORD_HEADER_BYTES])
        {
            return Err(damage(e));
        }
        let len = RECORD_HEADER_BYTES + u32_at(buf, 40) as usize;
        debug_assert!(len <= RECORD_HEADER_BYTES + RECORD_PAYLOAD_BYTES_MAX);
        grow(buf, len);
        let got = read_fully(&mut self.reader, &mut buf[RECORD_HEADER_BYTES..len]).map_err(io)?;
        if got < len - RECORD_HEADER_BYTES {
            return Err(damage(RecordError::Incomplete { needed: len, have: RECORD_HEADER_BYTES + got }));
        }
        if u64_at(buf, 8) <= self.skip_through {
            self.offset += len as u64;
            return Ok(None);
        }
        let (record, used) = Record::decode_metadata(&buf[..len]).map_err(damage)?;
        debug_assert_eq!(used, len);
        self.offset += used as u64;
        self.last_crcs = RecordCrcs { payload: u32_at(buf, 44), header: u32_at(buf, 48) };
        Ok(Some(Some((record, len, at))))
    }
}

/// Makes `buf` at least `len` long (zeroing only what is new).
fn grow(buf: &mut Vec<u8>, len: usize) {
    if buf.len() < len {
        buf.resize(len, 0);
    }
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_fully(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    fail::fail_point!("segment-read", |_| Err(std::io::Error::from_raw_os_error(rustix::io::Errno::IO.raw_os_error())));
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::RecordBody;
    use std::io::Write;

    fn write_records(file: &mut File, seqs: std::ops::Range<u64>) {
        for seq in seqs {
            let rec = Record {
                seq,
                vpg_id: 9,
                body: RecordBody::Write { volume: 0, offset: seq * 512, data: vec![seq as u8; 512] },
            };
            file.write_all(&rec.encode()).unwrap();
        }
    }

    #[test]
    fn torn_tail_is_reported_with_offset() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut file) = create_segment(dir.path(), SegmentKind::Journal, 9, 1).unwrap();
        write_records(&mut file, 1..4);
        let good_len = file.metadata().unwrap().len();
        file.write_all(&[1, 2, 3]).unwrap();
        let (mut r, first) = SegmentReader::open(&path, SegmentKind::Journal, 9).unwrap();
        assert_eq!(first, 1);
        for seq in 1..4 {
            assert_eq!(r.next_record().unwrap().unwrap().0.seq, seq);
        }
        let SegmentError::Damage(damage) = r.next_record().unwrap_err() else { panic!("not damage") };
        assert_eq!(damage.offset, good_len);
        assert!(damage.error.is_incomplete());
    }

    #[test]
    fn flipped_byte_is_corruption_not_data() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut file) = create_segment(dir.path(), SegmentKind::Journal, 9, 1).unwrap();
        write_records(&mut file, 1..4);
        drop(file);
        let mut bytes = std::fs::read(&path).unwrap();
        let second = SEGMENT_HEADER_BYTES + RECORD_HEADER_BYTES + 512 + RECORD_HEADER_BYTES + 100;
        bytes[second] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        let (mut r, _) = SegmentReader::open(&path, SegmentKind::Journal, 9).unwrap();
        assert_eq!(r.next_record().unwrap().unwrap().0.seq, 1);
        let SegmentError::Damage(damage) = r.next_record().unwrap_err() else { panic!("not damage") };
        assert!(!damage.error.is_incomplete());
    }

    #[test]
    fn wrong_vpg_or_kind_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = create_segment(dir.path(), SegmentKind::Journal, 9, 1).unwrap();
        assert!(SegmentReader::open(&path, SegmentKind::Journal, 10).is_err());
        assert!(SegmentReader::open(&path, SegmentKind::ProtectedLog, 9).is_err());
    }
}
