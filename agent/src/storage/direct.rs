//! Reading what the disk holds rather than what the page cache shows
//! (O_DIRECT). After a failed writeback Linux marks the pages it could not
//! write clean and keeps showing their bytes; a later fsync succeeds
//! without writing them, for this process or a successor after a kill. A
//! log that reopens reads its unverified tail this way, so it never
//! trusts bytes the disk does not have.
//!
//! Where the file system refuses O_DIRECT (tmpfs before Linux 6.6) the
//! page cache is read instead, with a warning: nothing on such a file
//! system survives a power cut anyway.

use super::StorageFile;
use std::fs::{File, OpenOptions};
use std::io::{Error, ErrorKind};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Offsets, lengths and buffers of direct reads are multiples of this
/// (the largest logical block size in use).
const ALIGN: u64 = 4096;

static WARNED: AtomicBool = AtomicBool::new(false);

/// A read-only handle on `path` that bypasses the page cache.
pub(super) fn open(path: &Path) -> std::io::Result<Arc<dyn StorageFile>> {
    let flags = rustix::fs::OFlags::DIRECT.bits() as i32;
    match OpenOptions::new().read(true).custom_flags(flags).open(path) {
        Ok(file) => Ok(Arc::new(DirectFile { file })),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
            if !WARNED.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "{}: the file system refuses O_DIRECT; a reopened log reads its tail from the page cache",
                    path.display()
                );
            }
            Ok(Arc::new(File::open(path)?))
        }
        Err(e) => Err(e),
    }
}

struct DirectFile {
    file: File,
}

fn read_only() -> Error {
    Error::new(ErrorKind::Unsupported, "a direct-read handle is read-only")
}

impl StorageFile for DirectFile {
    fn append(&self, _parts: &[&[u8]]) -> std::io::Result<()> {
        Err(read_only())
    }

    fn write_at(&self, _parts: &[&[u8]], _offset: u64) -> std::io::Result<()> {
        Err(read_only())
    }

    /// Reads the aligned blocks around the range into an aligned scratch
    /// buffer and copies the range out.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        let start = offset - offset % ALIGN;
        let end = (offset + buf.len() as u64).div_ceil(ALIGN) * ALIGN;
        let span = (end - start) as usize;
        let mut scratch = vec![0u8; span + ALIGN as usize];
        let skip = scratch.as_ptr().align_offset(ALIGN as usize);
        let aligned = &mut scratch[skip..skip + span];
        let mut filled = 0;
        while filled < span {
            match FileExt::read_at(&self.file, &mut aligned[filled..], start + filled as u64) {
                // A short read is the end of the file (a partial block).
                Ok(n) if n % ALIGN as usize != 0 || n == 0 => {
                    filled += n;
                    break;
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let skipped = (offset - start) as usize;
        let n = filled.saturating_sub(skipped).min(buf.len());
        buf[..n].copy_from_slice(&aligned[skipped..skipped + n]);
        Ok(n)
    }

    fn size(&self) -> std::io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn set_len(&self, _len: u64) -> std::io::Result<()> {
        Err(read_only())
    }

    fn sync_data(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }

    fn sync_all(&self) -> std::io::Result<()> {
        self.file.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn reads_any_range_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let bytes: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
        File::create(&path).unwrap().write_all(&bytes).unwrap();
        File::open(&path).unwrap().sync_all().unwrap();
        let f = open(&path).unwrap();
        for (offset, len) in [(0, 10), (4095, 2), (4096, 4096), (5000, 15_000), (19_990, 100), (30_000, 8)] {
            let mut buf = vec![0u8; len];
            let n = f.read_at(&mut buf, offset as u64).unwrap();
            let want = &bytes[offset.min(bytes.len())..(offset + len).min(bytes.len())];
            assert_eq!(&buf[..n], want, "offset {offset} len {len}");
        }
        assert_eq!(f.size().unwrap(), 20_000);
        assert!(f.append(&[b"x"]).is_err());
    }
}
