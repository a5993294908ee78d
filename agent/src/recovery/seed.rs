//! `tidemark seed`: pre-loads a VPG's replica at the recovery site from
//! image files (a shipped disk, a backup, a restore of an older
//! checkpoint) before the protected site first connects. The new stream's
//! initial copy then compares extent hashes with it and sends only what
//! differs, instead of every byte over the WAN.
//!
//! Only a VPG without a journal is seeded (the replica is the base of the
//! journal's history; seeding under a journal would change its past), and
//! only with the recovery agent stopped. Images are copied sparsely (zero
//! extents stay holes), fsynced, and only then given their final names.

use super::RecoveryError;
use crate::extent_hash::EXTENT_BYTES;
use crate::io_failure::Doing;
use crate::journal::replica::replica_dir;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

type Result<T, E = RecoveryError> = std::result::Result<T, E>;

const PROGRESS_INTERVAL: Duration = Duration::from_secs(2);
/// A seed image being written; renamed to `<volume>.img` once durable.
const PARTIAL_SUFFIX: &str = ".img.seeding";

#[derive(Debug)]
pub struct Seeded {
    pub volume: String,
    pub size: u64,
    /// Bytes that were not zeros (written; the rest stay holes).
    pub data_bytes: u64,
}

/// Copies each `(volume, image)` into `<journal_root>/<vpg>/replica/`.
pub fn seed(journal_root: &Path, vpg: &str, images: &[(String, PathBuf)], progress: bool) -> Result<Vec<Seeded>> {
    crate::config::validate_name("--vpg", vpg)?;
    if images.is_empty() {
        return Err(RecoveryError::Unavailable("name at least one --image VOLUME=FILE".to_string()));
    }
    let dir = crate::journal::vpg_dir(journal_root, vpg);
    std::fs::create_dir_all(&dir).doing(|| format!("creating {}", dir.display()))?;
    // A recovery agent that opens the journal meanwhile waits for the seed.
    let _lock = crate::journal::lease::ApplyLock::exclusive(&dir)?;
    for what in ["journal.json", "apply.json"] {
        if dir.join(what).exists() {
            return Err(RecoveryError::Unavailable(format!(
                "VPG {vpg:?} already has a journal in {}: its replica is the base of that history and cannot be \
                 replaced. To start over from a seed, stop the recovery agent, move {} aside, and seed again",
                dir.display(),
                dir.display()
            )));
        }
    }
    let replica = replica_dir(&dir);
    std::fs::create_dir_all(&replica).doing(|| format!("creating {}", replica.display()))?;
    let mut out = Vec::new();
    for (volume, image) in images {
        crate::config::validate_name("volume", volume)?;
        if images.iter().filter(|(v, _)| v == volume).count() > 1 {
            return Err(RecoveryError::Unavailable(format!("volume {volume:?} is named twice")));
        }
        let target = replica.join(format!("{volume}.img"));
        if target.exists() {
            return Err(RecoveryError::Unavailable(format!(
                "{} exists already (seeded before?); remove it to seed {volume:?} again",
                target.display()
            )));
        }
        out.push(copy_image(image, &replica, volume, progress)?);
    }
    crate::durable::sync_dir(&replica)?;
    crate::durable::sync_dir(&dir)?;
    crate::durable::sync_dir(journal_root)?;
    Ok(out)
}

fn copy_image(image: &Path, replica: &Path, volume: &str, progress: bool) -> Result<Seeded> {
    let mut from = File::open(image).doing(|| format!("opening {}", image.display()))?;
    // From the end, not the metadata: a block device's length is 0 there.
    let size =
        std::io::Seek::seek(&mut from, std::io::SeekFrom::End(0)).doing(|| format!("sizing {}", image.display()))?;
    if size == 0 {
        return Err(RecoveryError::Unavailable(format!(
            "{} is empty; a seed image holds the whole volume",
            image.display()
        )));
    }
    let partial = replica.join(format!("{volume}{PARTIAL_SUFFIX}"));
    let to = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&partial)
        .doing(|| format!("creating {}", partial.display()))?;
    to.set_len(size)?;
    let started = Instant::now();
    let mut shown = Instant::now();
    let mut buf = vec![0u8; (16 * EXTENT_BYTES) as usize];
    let (mut at, mut data_bytes) = (0u64, 0u64);
    while at < size {
        let len = (size - at).min(buf.len() as u64) as usize;
        from.read_exact_at(&mut buf[..len], at).doing(|| format!("reading {} at {at}", image.display()))?;
        for (i, piece) in buf[..len].chunks(EXTENT_BYTES as usize).enumerate() {
            if piece.iter().any(|b| *b != 0) {
                let offset = at + i as u64 * EXTENT_BYTES;
                to.write_all_at(piece, offset).doing(|| format!("writing {}", partial.display()))?;
                data_bytes += piece.len() as u64;
            }
        }
        at += len as u64;
        if progress && shown.elapsed() >= PROGRESS_INTERVAL {
            shown = Instant::now();
            let rate = at as f64 / started.elapsed().as_secs_f64().max(0.001);
            eprint!(
                "\rseed {volume}: {} of {} read ({}/s)   ",
                crate::status::format_bytes(at),
                crate::status::format_bytes(size),
                crate::status::format_bytes(rate as u64)
            );
        }
    }
    if progress {
        eprintln!("\rseed {volume}: {} read{:20}", crate::status::format_bytes(size), "");
    }
    to.sync_all().doing(|| format!("syncing {}", partial.display()))?;
    std::fs::rename(&partial, replica.join(format!("{volume}.img")))
        .doing(|| format!("naming {}", partial.display()))?;
    Ok(Seeded { volume: volume.to_string(), size, data_bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_sparsely_and_never_under_a_journal() {
        let root = tempfile::tempdir().unwrap();
        let image = root.path().join("disk.raw");
        let mut bytes = vec![0u8; (3 * EXTENT_BYTES + 10) as usize];
        bytes[EXTENT_BYTES as usize + 5] = 7;
        bytes[(3 * EXTENT_BYTES) as usize] = 9;
        std::fs::write(&image, &bytes).unwrap();
        let journal = root.path().join("journal");
        let seeded = seed(&journal, "db", &[("v0".into(), image.clone())], false).unwrap();
        assert_eq!((seeded[0].size, seeded[0].data_bytes), (bytes.len() as u64, EXTENT_BYTES + 10));
        let copy = journal.join("db/replica/v0.img");
        assert_eq!(std::fs::read(&copy).unwrap(), bytes);
        let again = seed(&journal, "db", &[("v0".into(), image.clone())], false).unwrap_err();
        assert!(format!("{again:#}").contains("exists already"), "{again:#}");
        std::fs::write(journal.join("db/journal.json"), b"{}").unwrap();
        let under = seed(&journal, "db", &[("v1".into(), image.clone())], false).unwrap_err();
        assert!(format!("{under:#}").contains("already has a journal"), "{under:#}");
        let twice = [("a".into(), image.clone()), ("a".into(), image)];
        assert!(seed(&journal, "other", &twice, false).is_err());
    }
}
