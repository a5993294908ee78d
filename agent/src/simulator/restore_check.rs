//! Restoring a checkpoint of a journal the simulator made: its segment
//! files, as a power cut left them on the simulated storage, are written
//! to a real directory, and the real `recovery::restore` (the CLI's
//! `tidemark restore`) replays them into image files, which must equal the
//! volumes the simulator's model has at that checkpoint: every record
//! appended before it, in seq order, and none after.

use crate::error_chain::Chain;
use crate::journal::JournalMeta;
use crate::record::{Record, RecordBody};
use crate::segment::{list_segments_on, SegmentKind};
use crate::storage::sim::SimStorage;
use crate::storage::Storage;

/// Why a restore does not match the model, for the violation's report.
type Result<T> = std::result::Result<T, String>;

fn failed(what: &str, e: &(dyn std::error::Error + Send + Sync + 'static)) -> String {
    format!("{what}: {}", Chain(e))
}
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
    std::fs::create_dir_all(&journal).map_err(|e| failed("creating the scratch journal", &e))?;
    meta.store(&journal).map_err(|e| failed("storing the journal's meta", &e))?;
    let listed = list_segments_on(fs, dir, SegmentKind::Journal).map_err(|e| failed("listing", &e))?;
    for (_, path) in listed {
        let copy = || -> std::io::Result<bool> {
            let file = fs.open_read(&path)?;
            let mut bytes = vec![0u8; file.size()? as usize];
            let read = file.read_at(&mut bytes, 0)?;
            std::fs::write(journal.join(path.file_name().expect("a listed segment has a name")), &bytes)?;
            Ok(read == bytes.len())
        };
        match copy() {
            Ok(true) => {}
            Ok(false) => return Err(format!("{} read short", path.display())),
            Err(e) => return Err(failed(&format!("copying {}", path.display()), &e)),
        }
    }
    let out = scratch.0.join("restored");
    let report =
        crate::recovery::restore::restore(&scratch.0.join("journals"), &meta.vpg, &checkpoint.to_string(), &out, false)
            .map_err(|e| failed("the restore failed", &e))?;
    if report.checkpoint != checkpoint {
        return Err(format!("restored checkpoint {} where {checkpoint} was asked", report.checkpoint));
    }
    let expected = volumes_at(meta, appended, checkpoint)?;
    for (i, (path, want)) in report.files.iter().zip(&expected).enumerate() {
        let got = std::fs::read(path).map_err(|e| failed(&format!("reading {}", path.display()), &e))?;
        if let Some(at) = got.iter().zip(want).position(|(a, b)| a != b) {
            return Err(format!("volume {i} differs from the model's at byte {at}"));
        }
        if got.len() != want.len() {
            return Err(format!("volume {i} is {} bytes, the model's {}", got.len(), want.len()));
        }
    }
    Ok(())
}

/// The volumes after every record through `checkpoint`, in seq order.
fn volumes_at(meta: &JournalMeta, appended: &BTreeMap<u64, Option<Vec<u8>>>, checkpoint: u64) -> Result<Vec<Vec<u8>>> {
    let mut volumes: Vec<Vec<u8>> = meta.volumes.iter().map(|v| vec![0u8; v.size as usize]).collect();
    for bytes in appended.range(..=checkpoint).filter_map(|(_, b)| b.as_ref()) {
        let (record, _) = Record::decode(bytes).map_err(|e| failed("a record the model keeps", &e))?;
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
