//! A point-in-time view: a VPG's volumes as they were at one checkpoint,
//! read from the replica plus the journal records after it, without
//! copying anything. Opening it maps, per volume, which bytes the journal
//! changed (`extent_map`), from the segments' summaries where they have
//! them (`journal::catalog`), so it costs no data reads; a read is a
//! `pread` of the replica with those extents laid over it. A journal
//! record's data is checked against its crc the first time a read touches
//! it, so nothing unverified is ever returned. The view holds a lease
//! (`journal::lease`), taken before anything is read, so the applier
//! never moves the replica past it nor retires a segment it reads.

use super::JournalView;
use super::RecoveryError;
use crate::extent_hash::{extent_span, hash, zero_hash, ExtentHash};
use crate::io_failure::{Doing, IoFailure};
use crate::journal::catalog::walk_journal;
use crate::journal::extent_map::{ExtentMap, Source};
use crate::journal::index::CheckpointInfo;
use crate::journal::lease::Lease;
use crate::journal::replica::VolumeFiles;
use crate::journal::scan::Visit;
use crate::journal::summary::EntryKind;
use crate::wire::message::VolumeInfo;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

type Result<T, E = RecoveryError> = std::result::Result<T, E>;

/// Where one journal Write's data lies, and its checksum.
struct RecordData {
    seq: u64,
    segment: u32,
    at: u64,
    len: u32,
    crc: u32,
    verified: AtomicBool,
}

pub struct PitView {
    pub vpg: String,
    pub checkpoint: CheckpointInfo,
    pub volumes: Vec<VolumeInfo>,
    /// How the journal was read to open the view: (segments from
    /// summaries, segments scanned).
    pub read: (usize, usize),
    /// None while nothing was ever applied nor seeded: all zeros.
    replica: Option<VolumeFiles>,
    segments: Vec<File>,
    segment_paths: Vec<PathBuf>,
    records: Vec<RecordData>,
    maps: Vec<ExtentMap>,
    _lease: Lease,
}

impl PitView {
    /// Opens the view of `vpg` at `wanted` (id, tag, `latest`, `head`).
    pub fn open(journal_root: &Path, vpg: &str, wanted: &str, holder: &str) -> Result<PitView> {
        Self::open_with_stream(journal_root, vpg, wanted, holder).map(|(view, _)| view)
    }

    /// `open`, and the stream the journal holds (its newest).
    pub fn open_with_stream(journal_root: &Path, vpg: &str, wanted: &str, holder: &str) -> Result<(PitView, u32)> {
        let mut view = JournalView::open_leased(journal_root, vpg, holder)?;
        let (checkpoint, lease) = view.pin(wanted)?;
        let stream = view.index.stream_id;
        Ok((Self::build(vpg, view, checkpoint, lease)?, stream))
    }

    /// Opens the view of `vpg` at the journal's durable end, complete
    /// image or not: what a new stream's copy compares its volumes with
    /// (only what differs from it is sent). With the stream it ends in.
    pub fn open_head(journal_root: &Path, vpg: &str, holder: &str) -> Result<(PitView, u32)> {
        let mut view = JournalView::open_leased(journal_root, vpg, holder)?;
        let (checkpoint, lease) = view.pin_head()?;
        let stream = view.index.stream_id;
        Ok((Self::build(vpg, view, checkpoint, lease)?, stream))
    }

    fn build(vpg: &str, view: JournalView, checkpoint: CheckpointInfo, lease: Lease) -> Result<PitView> {
        let base = lease.info.base;
        let volumes = view.meta.volumes.clone();
        let replica = VolumeFiles::open_base(&view.dir, &volumes, base)?;
        let mut maps = vec![ExtentMap::default(); volumes.len()];
        let mut segments: Vec<File> = Vec::new();
        let mut segment_paths: Vec<PathBuf> = Vec::new();
        let mut records = Vec::new();
        let mut failure = None;
        let outcome = walk_journal(&view.dir, view.meta.vpg_id, base, |entry, path| {
            if entry.seq > checkpoint.id {
                return Visit::Stop;
            }
            let Some((volume, offset, length)) = entry.extent() else { return Visit::Continue };
            let fits =
                volumes.get(volume as usize).is_some_and(|v| offset.checked_add(length).is_some_and(|e| e <= v.size));
            if !fits {
                failure =
                    Some(RecoveryError::Unavailable(format!("seq {}: record outside volume {volume}", entry.seq)));
                return Visit::Stop;
            }
            let source = match entry.kind {
                EntryKind::Write { len, at, crc, .. } => {
                    if segment_paths.last().map(PathBuf::as_path) != Some(path) {
                        match File::open(path) {
                            Ok(f) => {
                                segments.push(f);
                                segment_paths.push(path.to_path_buf());
                            }
                            Err(e) => {
                                failure = Some(IoFailure::new(format!("opening {}", path.display()), e).into());
                                return Visit::Stop;
                            }
                        }
                    }
                    let segment = (segments.len() - 1) as u32;
                    records.push(RecordData {
                        seq: entry.seq,
                        segment,
                        at,
                        len,
                        crc,
                        verified: AtomicBool::new(false),
                    });
                    Source::Journal { record: (records.len() - 1) as u32, at }
                }
                _ => Source::Zero,
            };
            maps[volume as usize].insert(offset, length, source);
            Visit::Continue
        })?;
        if let Some(e) = failure {
            return Err(e);
        }
        let last_seq = outcome.last_seq.max(base);
        if last_seq < checkpoint.id {
            return Err(RecoveryError::Unavailable(format!(
                "journal ended at seq {last_seq} before checkpoint {}",
                checkpoint.id
            )));
        }
        Ok(PitView {
            vpg: vpg.to_string(),
            checkpoint,
            volumes,
            read: (outcome.summarized, outcome.scanned),
            replica,
            segments,
            segment_paths,
            records,
            maps,
            _lease: lease,
        })
    }

    /// Extents the journal holds over the replica, all volumes together.
    pub fn extent_count(&self) -> usize {
        self.maps.iter().map(ExtentMap::len).sum()
    }

    pub fn read_at(&self, volume: usize, buf: &mut [u8], offset: u64) -> Result<()> {
        let size = self.volumes[volume].size;
        if offset.checked_add(buf.len() as u64).is_none_or(|end| end > size) {
            return Err(RecoveryError::Unavailable(format!(
                "read [{offset}, +{}) past the end of volume {volume} ({size} bytes)",
                buf.len()
            )));
        }
        match &self.replica {
            Some(r) => r.files[volume].file.read_exact_at(buf, offset).doing(|| "reading the replica".to_string())?,
            None => buf.fill(0),
        }
        for (at, len, source) in self.maps[volume].overlapping(offset, buf.len() as u64) {
            let piece = &mut buf[(at - offset) as usize..][..len as usize];
            match source {
                Source::Journal { record, at } => {
                    let record = &self.records[record as usize];
                    // The first read serves the very bytes it checked.
                    match self.verify(record)? {
                        Some(data) => piece.copy_from_slice(&data[(at - record.at) as usize..][..piece.len()]),
                        None => self.segments[record.segment as usize]
                            .read_exact_at(piece, at)
                            .doing(|| "reading journal data".to_string())?,
                    }
                }
                Source::Zero => piece.fill(0),
            }
        }
        Ok(())
    }

    /// The hash of extent `extent` of `volume`: a region of holes the
    /// journal does not write is known to be zeros without reading it.
    pub fn hash_extent(&self, volume: usize, extent: u64) -> Result<ExtentHash> {
        let (offset, len) = extent_span(self.volumes[volume].size, extent);
        let written = self.maps[volume].overlapping(offset, len).iter().any(|(_, _, s)| !matches!(s, Source::Zero));
        let replica_data = match &self.replica {
            Some(r) => r.files[volume].has_data(offset, len)?,
            None => false,
        };
        if !written && !replica_data {
            return Ok(zero_hash(len));
        }
        let mut buf = vec![0u8; len as usize];
        self.read_at(volume, &mut buf, offset)?;
        Ok(hash(&buf))
    }

    /// Reads a record's data in full once and checks it against its crc;
    /// returns the data when this call checked it.
    fn verify(&self, record: &RecordData) -> Result<Option<Vec<u8>>> {
        if record.verified.load(Ordering::Acquire) {
            return Ok(None);
        }
        let mut data = vec![0u8; record.len as usize];
        let file = &self.segments[record.segment as usize];
        file.read_exact_at(&mut data, record.at).doing(|| "reading journal data".to_string())?;
        if crc32fast::hash(&data) != record.crc {
            return Err(RecoveryError::Unavailable(format!(
                "journal data of seq {} in {} at offset {} fails its checksum; not served",
                record.seq,
                self.segment_paths[record.segment as usize].display(),
                record.at
            )));
        }
        record.verified.store(true, Ordering::Release);
        Ok(Some(data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::summary::Summarizer;
    use crate::journal::JournalMeta;
    use crate::record::{Record, RecordBody};
    use crate::segment::{create_segment, SegmentKind};
    use std::io::Write;

    const VPG_ID: u32 = 12;
    const SIZE: u64 = 1 << 20;
    const CHECKPOINTS: u64 = 100_000;
    const SEGMENTS: u64 = 5;

    /// Every 100th record writes 4 KiB; the others are checkpoints.
    fn body_at(seq: u64) -> RecordBody {
        match seq {
            1 => RecordBody::StreamStart { time_ms: 0, stream_id: 4 },
            2 => RecordBody::CopyDone { volume: 0 },
            s if s % 100 == 0 => {
                RecordBody::Write { volume: 0, offset: (s / 100 * 4096) % SIZE, data: vec![(s / 100) as u8; 4096] }
            }
            s => RecordBody::Checkpoint {
                time_ms: s,
                tag: if s % 1000 == 1 { format!("k{s}") } else { String::new() },
                resync: false,
            },
        }
    }

    fn journal() -> (tempfile::TempDir, PathBuf, u64) {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("db");
        std::fs::create_dir(&dir).unwrap();
        let meta = JournalMeta {
            vpg: "db".into(),
            vpg_id: VPG_ID,
            volumes: vec![VolumeInfo { name: "v".into(), size: SIZE }],
        };
        std::fs::write(dir.join("journal.json"), serde_json::to_vec(&meta).unwrap()).unwrap();
        let last = 2 + CHECKPOINTS * 100 / 99 + 1;
        let per = last / SEGMENTS + 1;
        let mut seq = 1;
        while seq <= last {
            let (_, mut f) = create_segment(&dir, SegmentKind::Journal, VPG_ID, seq).unwrap();
            let mut bytes = Vec::new();
            for s in seq..(seq + per).min(last + 1) {
                Record { seq: s, vpg_id: VPG_ID, body: body_at(s) }.encode_into(&mut bytes);
            }
            f.write_all(&bytes).unwrap();
            seq += per;
        }
        (root, dir, last)
    }

    fn expected_at(checkpoint: u64) -> Vec<u8> {
        let mut image = vec![0u8; SIZE as usize];
        for s in (100..=checkpoint).step_by(100) {
            if let RecordBody::Write { offset, data, .. } = body_at(s) {
                image[offset as usize..][..data.len()].copy_from_slice(&data);
            }
        }
        image
    }

    #[test]
    fn a_journal_of_100k_checkpoints_lists_and_opens_from_its_summaries() {
        let (root, dir, last) = journal();
        let mut keeper = Summarizer::default();
        while keeper.pass(&dir, VPG_ID, 0, 0).unwrap() > 0 {}
        let view = JournalView::open(root.path(), "db").unwrap();
        assert!(view.index.checkpoints.len() as u64 >= CHECKPOINTS, "{}", view.index.checkpoints.len());
        assert_eq!((view.read.0, view.read.1), (SEGMENTS as usize - 1, 1), "sealed segments come from summaries");
        let middle = view.index.checkpoints[view.index.checkpoints.len() / 2].id;
        for wanted in [middle.to_string(), "latest".to_string(), "k1001".to_string()] {
            let pit = PitView::open(root.path(), "db", &wanted, "test").unwrap();
            assert!(pit.read.0 >= 1, "the view of {wanted} read summaries: {:?}", pit.read);
            let mut image = vec![0xee; SIZE as usize];
            pit.read_at(0, &mut image, 0).unwrap();
            assert!(image == expected_at(pit.checkpoint.id), "checkpoint {wanted} reads wrong");
        }
        assert!(last > CHECKPOINTS);
    }

    #[test]
    fn journal_data_that_fails_its_crc_is_never_served() {
        let (root, dir, _) = journal();
        let mut keeper = Summarizer::default();
        while keeper.pass(&dir, VPG_ID, 0, 0).unwrap() > 0 {}
        // Flip a byte of the data of seq 100 (written at offset 4096) in
        // the first, summarized segment.
        let first = crate::segment::list_segments(&dir, SegmentKind::Journal).unwrap()[0].1.clone();
        let mut bytes = std::fs::read(&first).unwrap();
        let header = Record { seq: 100, vpg_id: VPG_ID, body: body_at(100) }.encode();
        let at = bytes.windows(64).position(|w| w == &header[..64]).unwrap() + 100;
        bytes[at] ^= 0xff;
        std::fs::write(&first, &bytes).unwrap();
        let pit = PitView::open(root.path(), "db", "latest", "test").unwrap();
        let mut buf = vec![0; 4096];
        let err = pit.read_at(0, &mut buf, 0).err().map(|e| crate::error_chain::Chain(&e).to_string());
        assert!(err.is_none(), "an untouched region reads: {err:?}");
        // seq 100 wrote offset 4096, later writes to it come 25600 seqs on
        // (1 MiB / 4 KiB * 100); "k1001" is before any of them.
        let pit = PitView::open(root.path(), "db", "k1001", "test").unwrap();
        let err = format!("{:#}", pit.read_at(0, &mut buf, 4096).expect_err("damaged data was served"));
        assert!(err.contains("fails its checksum"), "{err}");
    }
}
