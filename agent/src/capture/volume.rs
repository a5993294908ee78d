//! I/O on one protected volume: a regular file or a block device.

use super::error::CaptureError;
use crate::io_failure::Doing;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

type Result<T, E = CaptureError> = std::result::Result<T, E>;

/// Chunk used when a range has to be zeroed by writing.
const ZERO_CHUNK_BYTES: usize = 1 << 20;

#[derive(Clone)]
pub struct Volume {
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
    file: Arc<File>,
}

impl Volume {
    pub fn open(name: &str, path: &Path) -> Result<Volume> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .doing(|| format!("opening volume {name:?} at {}", path.display()))?;
        let size = file.seek(SeekFrom::End(0)).doing(|| format!("sizing {}", path.display()))?;
        if size == 0 {
            return Err(CaptureError::EmptyVolume { name: name.to_string(), path: path.to_path_buf() });
        }
        Ok(Volume { name: name.to_string(), path: path.to_path_buf(), size, file: Arc::new(file) })
    }

    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        Ok(self
            .file
            .read_exact_at(buf, offset)
            .doing(|| format!("reading {} bytes at {offset} of {}", buf.len(), self.name))?)
    }

    pub fn write_at(&self, data: &[u8], offset: u64) -> Result<()> {
        assert!(offset + data.len() as u64 <= self.size, "write past the end of {}", self.name);
        Ok(self
            .file
            .write_all_at(data, offset)
            .doing(|| format!("writing {} bytes at {offset} of {}", data.len(), self.name))?)
    }

    /// Makes `[offset, offset+length)` read as zeros: punch a hole where the
    /// file system can, write zeros where it cannot.
    pub fn zero_range(&self, offset: u64, length: u64) -> Result<()> {
        assert!(offset + length <= self.size, "zeroing past the end of {}", self.name);
        Ok(zero_file_range(&self.file, offset, length)
            .doing(|| format!("zeroing {length} bytes at {offset} of {}", self.name))?)
    }

    /// Drops clean cached pages of a range that was read once (the
    /// initial copy): a full scan must not evict the VM's working set, and
    /// large read-ahead folios would make every later 4 KiB write into
    /// them slow.
    pub fn drop_cache(&self, offset: u64, length: u64) {
        let _ =
            rustix::fs::fadvise(&*self.file, offset, std::num::NonZeroU64::new(length), rustix::fs::Advice::DontNeed);
    }

    pub fn sync(&self) -> Result<()> {
        fail::fail_point!("volume-sync", |_| Err(CaptureError::Failpoint("volume sync failed")));
        Ok(self.file.sync_data().doing(|| format!("syncing volume {}", self.name))?)
    }
}

pub fn zero_file_range(file: &File, offset: u64, length: u64) -> std::io::Result<()> {
    use rustix::fs::{fallocate, FallocateFlags};
    if length == 0 {
        return Ok(());
    }
    if fallocate(file, FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE, offset, length).is_ok() {
        return Ok(());
    }
    let zeros = vec![0u8; ZERO_CHUNK_BYTES.min(length as usize)];
    let mut at = offset;
    let end = offset + length;
    while at < end {
        let n = ((end - at) as usize).min(zeros.len());
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}
