//! Volume image files written from journal records: the replica (the
//! VPG at the oldest point of its history window, in `<vpg>/replica/`)
//! and the outputs of a restore. Records are applied in seq order; a
//! record naming an unknown volume or a range past its end is refused.

use super::error::JournalError;
use crate::capture::volume::zero_file_range;
use crate::io_failure::{Doing, IoFailure};
use crate::record::RecordBody;
use crate::wire::message::VolumeInfo;
use rustix::fs::SeekFrom;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

type Result<T> = std::result::Result<T, JournalError>;

const REPLICA_DIR: &str = "replica";

pub struct VolumeFile {
    pub path: PathBuf,
    pub file: File,
    pub size: u64,
}

/// One image file per volume of a VPG, in volume order.
pub struct VolumeFiles {
    pub files: Vec<VolumeFile>,
}

pub fn replica_dir(vpg_dir: &Path) -> PathBuf {
    vpg_dir.join(REPLICA_DIR)
}

fn image_path(dir: &Path, volume: &VolumeInfo) -> PathBuf {
    dir.join(format!("{}.img", volume.name))
}

impl VolumeFiles {
    /// New sparse files in `dir`; an existing file is never overwritten.
    pub fn create_new(dir: &Path, volumes: &[VolumeInfo]) -> Result<VolumeFiles> {
        std::fs::create_dir_all(dir).doing(|| format!("creating {}", dir.display()))?;
        let mut files = Vec::new();
        for v in volumes {
            let path = image_path(dir, v);
            let file = OpenOptions::new()
                .create_new(true)
                .read(true)
                .write(true)
                .open(&path)
                .doing(|| format!("creating {} (remove it or pick another directory)", path.display()))?;
            file.set_len(v.size).doing(|| format!("sizing {}", path.display()))?;
            files.push(VolumeFile { path, file, size: v.size });
        }
        Ok(VolumeFiles { files })
    }

    /// The replica of a VPG. Writable opens create missing images (a new
    /// VPG's replica is all zeros); read-only opens need them to exist,
    /// unless nothing was ever applied.
    pub fn open_replica(vpg_dir: &Path, volumes: &[VolumeInfo], writable: bool) -> Result<VolumeFiles> {
        let dir = replica_dir(vpg_dir);
        if writable {
            std::fs::create_dir_all(&dir).doing(|| format!("creating {}", dir.display()))?;
        }
        let mut files = Vec::new();
        let mut created = false;
        for v in volumes {
            let path = image_path(&dir, v);
            let file = OpenOptions::new()
                .read(true)
                .write(writable)
                .create(writable)
                .truncate(false)
                .open(&path)
                .doing(|| format!("opening replica image {}", path.display()))?;
            let len = file.metadata().doing(|| format!("sizing {}", path.display()))?.len();
            if writable && len == 0 {
                file.set_len(v.size).doing(|| format!("sizing {}", path.display()))?;
                created = true;
            } else if len != v.size {
                let why =
                    format!("replica image {} is {len} bytes; volume {:?} is {} bytes", path.display(), v.name, v.size);
                return Err(JournalError::Replica(why));
            }
            files.push(VolumeFile { path, file, size: v.size });
        }
        // The applier retires journal segments once apply.json says the
        // replica holds them: the images' names must be as durable as
        // their data.
        if created {
            crate::durable::sync_dir(&dir)?;
            crate::durable::sync_dir(vpg_dir)?;
        }
        Ok(VolumeFiles { files })
    }

    /// What a reader starts from, when the replica holds seq `applied_seq`:
    /// the replica once anything was applied or it was seeded (`tidemark
    /// seed` put images there before any apply); None while it is all
    /// zeros (nothing applied, nothing seeded: the images may not exist).
    pub fn open_base(vpg_dir: &Path, volumes: &[VolumeInfo], applied_seq: u64) -> Result<Option<VolumeFiles>> {
        if applied_seq == 0 && !replica_dir(vpg_dir).exists() {
            return Ok(None);
        }
        Self::open_replica(vpg_dir, volumes, false).map(Some)
    }

    /// Writes one journal record's data (checkpoints and stream markers
    /// change nothing).
    pub fn apply(&self, body: &RecordBody) -> Result<()> {
        let Some((volume, offset, length)) = body.extent() else { return Ok(()) };
        let Some(target) = self.files.get(volume as usize) else {
            return Err(JournalError::Replica(format!("record for unknown volume {volume}")));
        };
        if offset.checked_add(length).is_none_or(|end| end > target.size) {
            let why =
                format!("record [{offset}, +{length}) lies outside {} ({} bytes)", target.path.display(), target.size);
            return Err(JournalError::Replica(why));
        }
        // The replica's disk is full.
        fail::fail_point!("replica-apply", |_| Err(crate::io_failure::IoFailure::new(
            format!("writing {}", target.path.display()),
            std::io::Error::from_raw_os_error(28)
        )
        .into()));
        Ok(match body {
            RecordBody::Write { data, .. } => target.file.write_all_at(data, offset),
            _ => zero_file_range(&target.file, offset, length),
        }
        .doing(|| format!("writing {}", target.path.display()))?)
    }

    pub fn sync_all(&self) -> Result<()> {
        for f in &self.files {
            f.file.sync_all().doing(|| format!("syncing {}", f.path.display()))?;
        }
        Ok(())
    }

    /// Copies `src` into these (fresh, all-zero) files, skipping holes.
    /// Returns the bytes copied; `progress` is called after each extent.
    pub fn copy_from(&self, src: &VolumeFiles, mut progress: impl FnMut(u64)) -> Result<u64> {
        let mut copied = 0;
        for (from, to) in src.files.iter().zip(&self.files) {
            let mut at = 0u64;
            while at < from.size {
                let Some(data) = seek(&from.file, SeekFrom::Data(at))? else { break };
                let end = seek(&from.file, SeekFrom::Hole(data))?.unwrap_or(from.size).min(from.size);
                let (mut off_in, mut off_out) = (data, data);
                while off_in < end {
                    let chunk = ((end - off_in) as usize).min(1 << 30);
                    let n = copy_range(from, to, &mut off_in, &mut off_out, chunk).map_err(|e| {
                        e.within(|| format!("copying {} to {}", from.path.display(), to.path.display()))
                    })?;
                    if n == 0 {
                        return Err(JournalError::Replica(format!("{} ended early at {off_in}", from.path.display())));
                    }
                    copied += n as u64;
                }
                progress(copied);
                at = end;
            }
        }
        Ok(copied)
    }
}

impl VolumeFile {
    /// Whether `[offset, offset+len)` holds any data (not only a hole).
    pub fn has_data(&self, offset: u64, len: u64) -> Result<bool> {
        Ok(seek(&self.file, SeekFrom::Data(offset))?.is_some_and(|at| at < offset + len))
    }
}

/// Copies up to `len` bytes at the offsets (moving them on) in the
/// kernel, or, where it cannot (another file system type: a restore from
/// the data disk to a tmpfs is EXDEV), through a buffer.
fn copy_range(
    from: &VolumeFile,
    to: &VolumeFile,
    off_in: &mut u64,
    off_out: &mut u64,
    len: usize,
) -> std::result::Result<usize, IoFailure> {
    use rustix::io::Errno;
    match rustix::fs::copy_file_range(&from.file, Some(off_in), &to.file, Some(off_out), len) {
        Ok(n) => return Ok(n),
        Err(Errno::XDEV | Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => {}
        Err(e) => return Err(IoFailure::new(format!("copy_file_range at {off_in}"), e.into())),
    }
    let mut buf = vec![0u8; len.min(COPY_BUFFER_BYTES)];
    let n = from.file.read_at(&mut buf, *off_in).doing(|| format!("reading at {off_in}"))?;
    to.file.write_all_at(&buf[..n], *off_out).doing(|| format!("writing at {off_out}"))?;
    *off_in += n as u64;
    *off_out += n as u64;
    Ok(n)
}

/// The buffer of a copy the kernel cannot make by itself.
const COPY_BUFFER_BYTES: usize = 1 << 20;

/// SEEK_DATA / SEEK_HOLE; `None` when there is no more data.
fn seek(file: &File, whence: SeekFrom) -> Result<Option<u64>> {
    match rustix::fs::seek(file, whence) {
        Ok(at) => Ok(Some(at)),
        Err(rustix::io::Errno::NXIO) => Ok(None),
        Err(e) => Err(IoFailure::new("seeking data in a replica image", e.into()).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volumes() -> Vec<VolumeInfo> {
        vec![VolumeInfo { name: "a".into(), size: 1 << 20 }, VolumeInfo { name: "b".into(), size: 4096 }]
    }

    #[test]
    fn apply_refuses_out_of_range_and_copy_keeps_data() {
        let dir = tempfile::tempdir().unwrap();
        let replica = VolumeFiles::open_replica(dir.path(), &volumes(), true).unwrap();
        replica.apply(&RecordBody::Write { volume: 0, offset: 512 << 10, data: vec![7; 4096] }).unwrap();
        replica.apply(&RecordBody::Write { volume: 1, offset: 0, data: vec![9; 4096] }).unwrap();
        assert!(replica.apply(&RecordBody::Write { volume: 1, offset: 1, data: vec![9; 4096] }).is_err());
        assert!(replica.apply(&RecordBody::Zero { volume: 2, offset: 0, length: 1 }).is_err());
        replica.sync_all().unwrap();
        let out = VolumeFiles::create_new(&dir.path().join("out"), &volumes()).unwrap();
        let copied = out.copy_from(&replica, |_| {}).unwrap();
        assert!(copied >= 8192, "{copied}");
        for (a, b) in replica.files.iter().zip(&out.files) {
            assert_eq!(std::fs::read(&a.path).unwrap(), std::fs::read(&b.path).unwrap());
        }
        // A second restore into the same place is refused, not overwritten.
        assert!(VolumeFiles::create_new(&dir.path().join("out"), &volumes()).is_err());
        // The wrong size is caught.
        let wrong = vec![VolumeInfo { name: "a".into(), size: 2 << 20 }];
        assert!(VolumeFiles::open_replica(dir.path(), &wrong, false).is_err());
    }
}
