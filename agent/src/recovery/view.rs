//! A point-in-time view: a VPG's volumes as they were at one checkpoint,
//! read from the replica plus the journal records after it, without
//! copying anything. Opening it verifies every record up to the
//! checkpoint and maps, per volume, which bytes the journal changed
//! (`extent_map`); a read is a `pread` of the replica with those extents
//! laid over it. The view holds a lease (`journal::lease`), so the applier
//! never moves the replica past it nor retires a segment it reads.

use super::JournalView;
use crate::journal::extent_map::{ExtentMap, Source};
use crate::journal::index::CheckpointInfo;
use crate::journal::lease::{self, Lease};
use crate::journal::replica::VolumeFiles;
use crate::journal::scan::{scan_journal_until, Visit};
use crate::record::{RecordBody, RECORD_HEADER_BYTES};
use crate::wire::message::VolumeInfo;
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub struct PitView {
    pub vpg: String,
    pub checkpoint: CheckpointInfo,
    pub volumes: Vec<VolumeInfo>,
    /// None while nothing was ever applied: the replica is all zeros.
    replica: Option<VolumeFiles>,
    segments: Vec<File>,
    maps: Vec<ExtentMap>,
    _lease: Lease,
}

impl PitView {
    /// Opens the view of `vpg` at `wanted` (id, tag, `latest`, `head`).
    pub fn open(journal_root: &Path, vpg: &str, wanted: &str, holder: &str) -> Result<PitView> {
        let view = JournalView::open(journal_root, vpg)?;
        let checkpoint = view.resolve(wanted)?;
        let lease = lease::take(&view.dir, holder, checkpoint.id)?;
        let base = lease.info.base;
        let volumes = view.meta.volumes.clone();
        let replica = if base > 0 { Some(VolumeFiles::open_replica(&view.dir, &volumes, false)?) } else { None };
        let mut maps = vec![ExtentMap::default(); volumes.len()];
        let mut segments: Vec<File> = Vec::new();
        let mut segment_paths: Vec<PathBuf> = Vec::new();
        let mut failure = None;
        let mut last_seq = base;
        scan_journal_until(&view.dir, view.meta.vpg_id, |rec, at| {
            if rec.seq <= base {
                return Visit::Continue;
            }
            if rec.seq > checkpoint.id {
                return Visit::Stop;
            }
            last_seq = rec.seq;
            let Some((volume, offset, length)) = rec.body.extent() else { return Visit::Continue };
            let fits =
                volumes.get(volume as usize).is_some_and(|v| offset.checked_add(length).is_some_and(|e| e <= v.size));
            if !fits {
                failure = Some(anyhow::anyhow!("seq {}: record outside volume {volume}", rec.seq));
                return Visit::Stop;
            }
            let source = match &rec.body {
                RecordBody::Write { .. } => {
                    if segment_paths.last().map(PathBuf::as_path) != Some(at.path) {
                        match File::open(at.path) {
                            Ok(f) => {
                                segments.push(f);
                                segment_paths.push(at.path.to_path_buf());
                            }
                            Err(e) => {
                                failure = Some(anyhow::Error::new(e).context(format!("opening {}", at.path.display())));
                                return Visit::Stop;
                            }
                        }
                    }
                    let segment = (segments.len() - 1) as u32;
                    Source::Journal { segment, at: at.offset + RECORD_HEADER_BYTES as u64 }
                }
                _ => Source::Zero,
            };
            maps[volume as usize].insert(offset, length, source);
            Visit::Continue
        })?;
        if let Some(e) = failure {
            return Err(e);
        }
        if last_seq < checkpoint.id {
            bail!("journal ended at seq {last_seq} before checkpoint {}", checkpoint.id);
        }
        Ok(PitView { vpg: vpg.to_string(), checkpoint, volumes, replica, segments, maps, _lease: lease })
    }

    /// Extents the journal holds over the replica, all volumes together.
    pub fn extent_count(&self) -> usize {
        self.maps.iter().map(ExtentMap::len).sum()
    }

    pub fn read_at(&self, volume: usize, buf: &mut [u8], offset: u64) -> Result<()> {
        let size = self.volumes[volume].size;
        if offset.checked_add(buf.len() as u64).is_none_or(|end| end > size) {
            bail!("read [{offset}, +{}) past the end of volume {volume} ({size} bytes)", buf.len());
        }
        match &self.replica {
            Some(r) => r.files[volume].file.read_exact_at(buf, offset).context("reading the replica")?,
            None => buf.fill(0),
        }
        for (at, len, source) in self.maps[volume].overlapping(offset, buf.len() as u64) {
            let piece = &mut buf[(at - offset) as usize..][..len as usize];
            match source {
                Source::Journal { segment, at } => {
                    self.segments[segment as usize].read_exact_at(piece, at).context("reading journal data")?
                }
                Source::Zero => piece.fill(0),
            }
        }
        Ok(())
    }
}
