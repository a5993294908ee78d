//! Restoring a checkpoint of a journal the simulator made: its segment
//! files, as a power cut left them on the simulated storage, are written
//! to a real directory, and the real `recovery::restore` (the CLI's
//! `tidemark restore`) replays them into image files, which must equal the
//! volumes the simulator's model has at that checkpoint: every record
//! appended before it, in seq order, and none after.

use crate::journal::JournalMeta;
use crate::record::{Record, RecordBody};
use crate::segment::{list_segments_on, SegmentKind};
use crate::storage::sim::SimStorage;
use crate::storage::Storage;
use anyhow::{ensure, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A directory of this process's own, gone when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Restores `checkpoint` of the journal in `dir` on `fs` and compares
/// every volume with the model's: `Err` says what differs (or why the
/// restore failed). `appended` holds each record's encoding by seq (None
/// for a StreamStart).
pub(super) fn restore_matches(
    fs: &SimStorage,
    dir: &Path,
    meta: &JournalMeta,
    appended: &BTreeMap<u64, Option<Vec<u8>>>,
    checkpoint: u64,
    seed: u64,
) -> Result<()> {
    // In memory where there is a tmpfs: the restore fsyncs its images.
    let shm = Path::new("/dev/shm");
    let base = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
    let scratch = Scratch(base.join(format!("tidemark-sim-{}-{seed}", std::process::id())));
    let _ = std::fs::remove_dir_all(&scratch.0);
    let journal = scratch.0.join("journals").join(&meta.vpg);
    std::fs::create_dir_all(&journal)?;
    meta.store(&journal)?;
    for (_, path) in list_segments_on(fs, dir, SegmentKind::Journal)? {
        let file = fs.open_read(&path)?;
        let mut bytes = vec![0u8; file.size()? as usize];
        let read = file.read_at(&mut bytes, 0)?;
        ensure!(read == bytes.len(), "{} read short", path.display());
        std::fs::write(journal.join(path.file_name().context("a segment name")?), &bytes)?;
    }
    let out = scratch.0.join("restored");
    let report =
        crate::recovery::restore::restore(&scratch.0.join("journals"), &meta.vpg, &checkpoint.to_string(), &out, false)
            .context("the restore failed")?;
    ensure!(report.checkpoint == checkpoint, "restored checkpoint {} where {checkpoint} was asked", report.checkpoint);
    let expected = volumes_at(meta, appended, checkpoint)?;
    for (i, (path, want)) in report.files.iter().zip(&expected).enumerate() {
        let got = std::fs::read(path)?;
        if let Some(at) = got.iter().zip(want).position(|(a, b)| a != b) {
            anyhow::bail!("volume {i} differs from the model's at byte {at}");
        }
        ensure!(got.len() == want.len(), "volume {i} is {} bytes, the model's {}", got.len(), want.len());
    }
    Ok(())
}

/// The volumes after every record through `checkpoint`, in seq order.
fn volumes_at(meta: &JournalMeta, appended: &BTreeMap<u64, Option<Vec<u8>>>, checkpoint: u64) -> Result<Vec<Vec<u8>>> {
    let mut volumes: Vec<Vec<u8>> = meta.volumes.iter().map(|v| vec![0u8; v.size as usize]).collect();
    for bytes in appended.range(..=checkpoint).filter_map(|(_, b)| b.as_ref()) {
        let (record, _) = Record::decode(bytes).context("a record the model keeps")?;
        match record.body {
            RecordBody::Write { volume, offset, data } => {
                volumes[volume as usize][offset as usize..][..data.len()].copy_from_slice(&data)
            }
            RecordBody::Zero { volume, offset, length } => {
                volumes[volume as usize][offset as usize..][..length as usize].fill(0)
            }
            _ => {}
        }
    }
    Ok(volumes)
}
