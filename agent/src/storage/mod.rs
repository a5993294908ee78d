//! The seam between the code that keeps data durable (segments, the
//! protected log) and the files it keeps it in. `RealStorage` is the
//! kernel's file system; `sim::SimStorage` (built for tests and `make
//! simulate` only) is an in-memory one that a seeded simulator tears,
//! fails and cuts the power of, dropping whatever was not fsynced, file
//! data and directory entries apart.
//!
//! The surface is what that code needs and no more: appends, writes in
//! place (the protected log reuses retired segment files), positional
//! reads, truncation, the two fsyncs, and the directory
//! operations whose durability a power cut tests (create, rename, remove,
//! sync of the directory).

mod direct;
#[cfg(any(test, feature = "simulate"))]
pub mod sim;

use std::io::{IoSlice, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A directory tree of files, as the kernel (or a simulation of it) keeps
/// it: what is not fsynced may be lost in a power cut.
pub trait Storage: Send + Sync {
    fn create_dir_all(&self, dir: &Path) -> std::io::Result<()>;
    /// The paths of the entries of `dir`, in no order.
    fn list(&self, dir: &Path) -> std::io::Result<Vec<PathBuf>>;
    fn exists(&self, path: &Path) -> bool;
    fn size_of(&self, path: &Path) -> std::io::Result<u64>;
    /// A new file for reading and appending; refused if `path` exists.
    fn create_new(&self, path: &Path) -> std::io::Result<Arc<dyn StorageFile>>;
    /// An existing file for reading and appending.
    fn open_append(&self, path: &Path) -> std::io::Result<Arc<dyn StorageFile>>;
    /// An existing file for reading and writing in place (`write_at`).
    fn open_rw(&self, path: &Path) -> std::io::Result<Arc<dyn StorageFile>>;
    fn open_read(&self, path: &Path) -> std::io::Result<Arc<dyn StorageFile>>;
    /// An existing file for reading what the disk holds, not the page
    /// cache (after a failed fsync the page cache may show bytes the disk
    /// never got, and a later fsync succeeds without writing them).
    fn open_direct(&self, path: &Path) -> std::io::Result<Arc<dyn StorageFile>>;
    /// Replaces `to` with `from`; durable once their directory is synced.
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()>;
    /// Durable once its directory is synced.
    fn remove_file(&self, path: &Path) -> std::io::Result<()>;
    /// Makes the entries of `dir` (names created, renamed, removed) durable.
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()>;
    /// Bytes an unprivileged writer may still take on the file system of
    /// `dir`, and the file system's size.
    fn space(&self, dir: &Path) -> std::io::Result<FsSpace>;

    /// Stops the process after a failure that leaves it nothing true to
    /// say, such as a failed fsync (the kernel may have dropped the dirty
    /// pages: a retry would succeed and lie). Returns only in a simulation,
    /// where the simulated process is dead from then on.
    fn stop_process(&self, why: &str) {
        tracing::error!("{why}; stopping");
        std::process::exit(70);
    }
}

/// Room on a file system (`Storage::space`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsSpace {
    pub available: u64,
    pub total: u64,
}

/// One open file.
pub trait StorageFile: Send + Sync {
    /// Appends the parts in order. On an error, any prefix of them may
    /// have reached the file (the caller undoes it with `set_len`).
    fn append(&self, parts: &[&[u8]]) -> std::io::Result<()>;
    /// Writes the parts in order from `offset`, over what is there and past
    /// the end. Only on a handle from `open_rw` (an appending handle puts
    /// them at the end). On an error, any prefix of them may have reached
    /// the file.
    fn write_at(&self, parts: &[&[u8]], offset: u64) -> std::io::Result<()>;
    /// Reads at `offset`; fewer bytes than asked only at the file's end
    /// (0 past it).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize>;
    fn size(&self) -> std::io::Result<u64>;
    fn set_len(&self, len: u64) -> std::io::Result<()>;
    /// Makes the file's data durable (not its size changes' metadata
    /// beyond what the data needs; not its name).
    fn sync_data(&self) -> std::io::Result<()>;
    /// Makes the file's data and metadata durable (not its name).
    fn sync_all(&self) -> std::io::Result<()>;
}

/// The kernel's file system.
pub struct RealStorage;

/// The storage every production path uses.
pub static REAL: RealStorage = RealStorage;

impl Storage for RealStorage {
    fn create_dir_all(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
        std::fs::read_dir(dir)?.map(|e| e.map(|e| e.path())).collect()
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn size_of(&self, path: &Path) -> std::io::Result<u64> {
        Ok(std::fs::metadata(path)?.len())
    }

    fn create_new(&self, path: &Path) -> std::io::Result<Arc<dyn StorageFile>> {
        let file = std::fs::OpenOptions::new().create_new(true).read(true).append(true).open(path)?;
        Ok(Arc::new(file))
    }

    fn open_append(&self, path: &Path) -> std::io::Result<Arc<dyn StorageFile>> {
        Ok(Arc::new(std::fs::OpenOptions::new().read(true).append(true).open(path)?))
    }

    fn open_rw(&self, path: &Path) -> std::io::Result<Arc<dyn StorageFile>> {
        Ok(Arc::new(std::fs::OpenOptions::new().read(true).write(true).open(path)?))
    }

    fn open_read(&self, path: &Path) -> std::io::Result<Arc<dyn StorageFile>> {
        Ok(Arc::new(std::fs::File::open(path)?))
    }

    fn open_direct(&self, path: &Path) -> std::io::Result<Arc<dyn StorageFile>> {
        direct::open(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> std::io::Result<()> {
        std::fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }

    fn space(&self, dir: &Path) -> std::io::Result<FsSpace> {
        let st = rustix::fs::statvfs(dir)?;
        Ok(FsSpace { available: st.f_bavail * st.f_frsize, total: st.f_blocks * st.f_frsize })
    }
}

impl StorageFile for std::fs::File {
    fn append(&self, parts: &[&[u8]]) -> std::io::Result<()> {
        let mut file = self;
        write_all_parts(parts, |slices, _| file.write_vectored(slices))
    }

    fn write_at(&self, parts: &[&[u8]], offset: u64) -> std::io::Result<()> {
        write_all_parts(parts, |slices, done| Ok(rustix::io::pwritev(self, slices, offset + done)?))
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        let mut filled = 0;
        while filled < buf.len() {
            match FileExt::read_at(self, &mut buf[filled..], offset + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(filled)
    }

    fn size(&self) -> std::io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        std::fs::File::set_len(self, len)
    }

    fn sync_data(&self) -> std::io::Result<()> {
        std::fs::File::sync_data(self)
    }

    fn sync_all(&self) -> std::io::Result<()> {
        std::fs::File::sync_all(self)
    }
}

/// Writes all of `parts` with as few vectored writes as the kernel allows
/// (one, unless short): `write` is given what is left and how many bytes
/// went before it.
fn write_all_parts(
    parts: &[&[u8]],
    mut write: impl FnMut(&[IoSlice<'_>], u64) -> std::io::Result<usize>,
) -> std::io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
    let mut slices = &mut slices[..];
    let mut done = 0u64;
    while !slices.is_empty() {
        match write(slices, done) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                IoSlice::advance_slices(&mut slices, n);
                done += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads a file front to back (for a `BufReader`), never past `limit`:
/// bytes past a file's published end may still change (the protected
/// log writes over them), and a buffer must not keep them.
pub struct SequentialReader {
    file: Arc<dyn StorageFile>,
    offset: u64,
    limit: u64,
}

impl SequentialReader {
    pub fn new(file: Arc<dyn StorageFile>, offset: u64) -> Self {
        SequentialReader { file, offset, limit: u64::MAX }
    }

    /// Reads stop at `limit` (as at the file's end) until it is moved.
    pub fn set_limit(&mut self, limit: u64) {
        self.limit = limit;
    }

    /// The next read starts at `offset`.
    pub fn seek_to(&mut self, offset: u64) {
        self.offset = offset;
    }
}

impl Read for SequentialReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let room = self.limit.saturating_sub(self.offset).min(buf.len() as u64) as usize;
        if room == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..room], self.offset)?;
        self.offset += n as u64;
        Ok(n)
    }
}
