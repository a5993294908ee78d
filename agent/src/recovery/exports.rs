//! The recovery side's NBD exports of a point-in-time view: read-only
//! (`PitVolume`, for `tidemark export`), or writable over a scratch
//! overlay (`OverlayVolume`, for a test failover). Overlay writes land in a
//! sparse scratch file, block by block; the view, the replica and the
//! journal are never written. Closing the overlay makes later I/O fail and
//! lets go of the view (and its lease).

use super::view::PitView;
use super::RecoveryError;
use crate::capture::volume::zero_file_range;
use crate::io_failure::Doing;
use crate::nbd::export::{self, BlockExport, BoxFuture, ExportError};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

type Result<T, E = RecoveryError> = std::result::Result<T, E>;

pub struct PitVolume {
    /// None once the export was closed: the view (and its lease) is let go
    /// even while a client still holds its connection.
    view: RwLock<Option<Arc<PitView>>>,
    volume: usize,
    /// Where the export starts in the volume: 0 but for a window.
    start: u64,
    size: u64,
    read_errors: AtomicU64,
}

impl PitVolume {
    pub fn new(view: Arc<PitView>, volume: usize) -> PitVolume {
        let size = view.volumes[volume].size;
        Self::window(view, volume, 0, size).expect("a volume is inside itself")
    }

    /// `bytes` of the volume from `start` (one partition), as an export
    /// of its own.
    pub fn window(view: Arc<PitView>, volume: usize, start: u64, bytes: u64) -> Result<PitVolume> {
        let size = view.volumes[volume].size;
        if start.checked_add(bytes).is_none_or(|end| end > size) {
            return Err(RecoveryError::Unavailable(format!(
                "bytes {start}..+{bytes} are not inside volume {volume} ({size} bytes)"
            )));
        }
        Ok(PitVolume { view: RwLock::new(Some(view)), volume, start, size: bytes, read_errors: AtomicU64::new(0) })
    }

    /// Reads that failed (a journal record that fails its checksum, an
    /// I/O error): a checker's findings then say nothing about the file
    /// system.
    pub fn read_errors(&self) -> u64 {
        self.read_errors.load(Ordering::Relaxed)
    }
}

impl BlockExport for PitVolume {
    fn size(&self) -> u64 {
        self.size
    }

    fn writable(&self) -> bool {
        false
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> export::Result<()> {
        let view = self.view.read().expect("pit view").clone().ok_or_else(closed("the export was closed"))?;
        let result = view.read_at(self.volume, buf, self.start + offset);
        if result.is_err() {
            self.read_errors.fetch_add(1, Ordering::Relaxed);
        }
        result.map_err(ExportError::failed)
    }

    fn close(&self) {
        self.view.write().expect("pit view").take();
    }

    fn write(&self, _offset: u64, _data: Vec<u8>) -> BoxFuture<'_, export::Result<u64>> {
        Box::pin(async { Err(ExportError::Refused("a point-in-time export is read-only".into())) })
    }

    fn zero(&self, _offset: u64, _length: u64) -> BoxFuture<'_, export::Result<u64>> {
        Box::pin(async { Err(ExportError::Refused("a point-in-time export is read-only".into())) })
    }

    fn make_durable(self: Arc<Self>, _token: u64) -> BoxFuture<'static, export::Result<()>> {
        Box::pin(async { Ok(()) })
    }

    fn last_token(&self) -> u64 {
        0
    }
}

/// The error of I/O on an export whose view was let go.
fn closed(why: &'static str) -> impl FnOnce() -> ExportError {
    move || ExportError::failed(why)
}

/// Overlay granularity: a partly written block is filled from the view.
const BLOCK: u64 = 4096;

pub struct OverlayVolume {
    view: RwLock<Option<Arc<PitView>>>,
    volume: usize,
    size: u64,
    scratch: File,
    pub scratch_path: PathBuf,
    /// One bit per block: set when the scratch file holds the block.
    written: Mutex<Vec<u64>>,
}

impl OverlayVolume {
    pub fn create(view: Arc<PitView>, volume: usize, scratch_path: PathBuf) -> Result<OverlayVolume> {
        let size = view.volumes[volume].size;
        let scratch = std::fs::OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&scratch_path)
            .doing(|| format!("creating scratch overlay {}", scratch_path.display()))?;
        scratch.set_len(size).doing(|| format!("sizing scratch overlay {}", scratch_path.display()))?;
        let blocks = size.div_ceil(BLOCK);
        Ok(OverlayVolume {
            view: RwLock::new(Some(view)),
            volume,
            size,
            scratch,
            scratch_path,
            written: Mutex::new(vec![0; blocks.div_ceil(64) as usize]),
        })
    }

    fn view(&self) -> export::Result<Arc<PitView>> {
        self.view.read().expect("overlay view").clone().ok_or_else(closed("the test failover was stopped"))
    }

    /// Blocks changed in the overlay (for status and the stop report).
    pub fn blocks_written(&self) -> u64 {
        self.written.lock().expect("overlay bitmap").iter().map(|w| w.count_ones() as u64).sum()
    }

    /// Makes sure the scratch file holds every block the range touches
    /// only partly, copying it from the view first.
    fn fill_partial(&self, view: &PitView, bits: &mut [u64], offset: u64, length: u64) -> export::Result<()> {
        let end = offset + length;
        for block in [offset / BLOCK, (end - 1) / BLOCK] {
            let (start, stop) = (block * BLOCK, ((block + 1) * BLOCK).min(self.size));
            let whole = offset <= start && end >= stop;
            if whole || is_set(bits, block) {
                continue;
            }
            let mut buf = vec![0u8; (stop - start) as usize];
            view.read_at(self.volume, &mut buf, start).map_err(ExportError::failed)?;
            self.scratch
                .write_all_at(&buf, start)
                .doing(|| format!("writing the overlay at {start}"))
                .map_err(ExportError::failed)?;
            set(bits, block);
        }
        Ok(())
    }

    fn update(&self, offset: u64, length: u64, data: Option<&[u8]>) -> export::Result<u64> {
        let view = self.view()?;
        let mut bits = self.written.lock().expect("overlay bitmap");
        self.fill_partial(&view, &mut bits, offset, length)?;
        let written = match data {
            Some(d) => self.scratch.write_all_at(d, offset),
            None => zero_file_range(&self.scratch, offset, length),
        };
        written.doing(|| format!("writing the overlay at {offset}")).map_err(ExportError::failed)?;
        for block in offset / BLOCK..=(offset + length - 1) / BLOCK {
            set(&mut bits, block);
        }
        Ok(0)
    }
}

fn is_set(bits: &[u64], block: u64) -> bool {
    bits[(block / 64) as usize] & (1 << (block % 64)) != 0
}

fn set(bits: &mut [u64], block: u64) {
    bits[(block / 64) as usize] |= 1 << (block % 64);
}

impl BlockExport for OverlayVolume {
    fn size(&self) -> u64 {
        self.size
    }

    fn writable(&self) -> bool {
        true
    }

    /// Runs of blocks come from the scratch file or the view, whichever
    /// holds them.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> export::Result<()> {
        let view = self.view()?;
        let bits = self.written.lock().expect("overlay bitmap");
        let end = offset + buf.len() as u64;
        let mut at = offset;
        while at < end {
            let from_scratch = is_set(&bits, at / BLOCK);
            let mut run_end = ((at / BLOCK) + 1) * BLOCK;
            while run_end < end && is_set(&bits, run_end / BLOCK) == from_scratch {
                run_end += BLOCK;
            }
            let run_end = run_end.min(end);
            let piece = &mut buf[(at - offset) as usize..(run_end - offset) as usize];
            if from_scratch {
                self.scratch
                    .read_exact_at(piece, at)
                    .doing(|| format!("reading the overlay at {at}"))
                    .map_err(ExportError::failed)?;
            } else {
                view.read_at(self.volume, piece, at).map_err(ExportError::failed)?;
            }
            at = run_end;
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: Vec<u8>) -> BoxFuture<'_, export::Result<u64>> {
        Box::pin(async move { self.update(offset, data.len() as u64, Some(&data)) })
    }

    fn zero(&self, offset: u64, length: u64) -> BoxFuture<'_, export::Result<u64>> {
        Box::pin(async move { self.update(offset, length, None) })
    }

    /// A test's writes are thrown away at stop: nothing to make durable.
    fn make_durable(self: Arc<Self>, _token: u64) -> BoxFuture<'static, export::Result<()>> {
        Box::pin(async { Ok(()) })
    }

    fn last_token(&self) -> u64 {
        0
    }

    /// Ends the overlay: later I/O fails, and the view is let go.
    fn close(&self) {
        self.view.write().expect("overlay view").take();
    }
}

/// Where a failed-over VPG's writes go: straight to the image files, or,
/// once reverse protection starts, through a capture that logs them for
/// the old site. Shared by the VPG's volumes.
pub type LiveCapture = Arc<RwLock<Option<Arc<crate::capture::vpg::VpgCapture>>>>;

/// A recovered volume after a failover: the replica image itself, served
/// writable; FLUSH and FUA fsync it. Under reverse protection its writes go
/// through the capture (and so to the old site).
pub struct LiveVolume {
    pub file: Arc<File>,
    pub size: u64,
    pub volume: u32,
    pub capture: LiveCapture,
    /// Concurrent FLUSHes share one fsync.
    pub syncs: crate::durable::SyncGroup,
}

impl LiveVolume {
    fn capture(&self) -> Option<Arc<crate::capture::vpg::VpgCapture>> {
        self.capture.read().expect("live capture").clone()
    }
}

impl BlockExport for LiveVolume {
    fn size(&self) -> u64 {
        self.size
    }

    fn writable(&self) -> bool {
        true
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> export::Result<()> {
        self.file.read_exact_at(buf, offset).doing(|| format!("reading at {offset}")).map_err(ExportError::failed)
    }

    fn write(&self, offset: u64, data: Vec<u8>) -> BoxFuture<'_, export::Result<u64>> {
        Box::pin(async move {
            // The read guard is held across a direct write, so switching to
            // the capture waits for every direct write to finish.
            let direct = {
                let guard = self.capture.read().expect("live capture");
                match guard.as_ref() {
                    Some(c) => Err(c.clone()),
                    None => {
                        Ok(self.file.write_all_at(&data, offset).map(|()| 0).doing(|| format!("writing at {offset}")))
                    }
                }
            };
            match direct {
                Ok(written) => written.map_err(ExportError::failed),
                Err(capture) => Ok(capture.write(self.volume, offset, data).await?),
            }
        })
    }

    fn zero(&self, offset: u64, length: u64) -> BoxFuture<'_, export::Result<u64>> {
        Box::pin(async move {
            let direct = {
                let guard = self.capture.read().expect("live capture");
                match guard.as_ref() {
                    Some(c) => Err(c.clone()),
                    None => Ok(zero_file_range(&self.file, offset, length)
                        .map(|()| 0)
                        .doing(|| format!("zeroing at {offset}"))),
                }
            };
            match direct {
                Ok(written) => written.map_err(ExportError::failed),
                Err(capture) => Ok(capture.zero(self.volume, offset, length).await?),
            }
        })
    }

    fn make_durable(self: Arc<Self>, token: u64) -> BoxFuture<'static, export::Result<()>> {
        Box::pin(async move {
            let file = self.file.clone();
            let synced =
                self.syncs.sync(move || file.sync_data().doing(|| "syncing an exported volume".to_string())).await;
            synced.map_err(ExportError::failed)?;
            if let Some(capture) = self.capture() {
                capture.make_durable(token).await?;
            }
            Ok(())
        })
    }

    fn last_token(&self) -> u64 {
        self.capture().map_or(0, |c| c.log.appended_seq())
    }
}
