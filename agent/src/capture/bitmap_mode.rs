//! Bitmap mode and delta resync of one VPG (docs/bitmap-mode.md).
//!
//! `logging` is the normal path: every write is logged. When the log
//! reaches its high-water mark, writes stop waiting for it: the VPG goes
//! to `bitmap`, where a write goes to its volume and only marks its
//! regions in the dirty map. Once the link has drained the log below the
//! low-water mark, `resync` logs writes again and reads the dirty regions
//! back from the volumes into the stream, in passes, until the map is
//! empty; then `logging` again. Checkpoints are held outside `logging`:
//! none could name an image the recovery side will hold.
//!
//! Durability: before a write that is not logged, its extent is marked in
//! the activity log (whose resync flag is set when bitmap mode begins, so
//! any next start reads the marks again); each activity epoch stores the
//! dirty map before the activity log forgets those marks. A region is
//! cleared from the map only under the write-order lock, right after its
//! contents were appended to the log, and on disk only at an epoch that
//! made that append durable first.

use super::bitmap_state::CaptureMode;
use super::error::CaptureError;
use super::no_image_marks::{mark_now_or_before_next_record, BITMAP_START_TAG, RESYNC_START_TAG};
use super::vpg::{VpgCapture, COPY_CHUNK_BYTES};
use crate::error_chain::Chain;
use crate::log::{LogError, LogSpace};
use crate::record::RECORD_HEADER_BYTES;
use crate::status::format_bytes;
use std::time::{Duration, Instant};

type Result<T, E = CaptureError> = std::result::Result<T, E>;

/// How often a VPG in bitmap mode looks whether the log drained enough,
/// and a resync whether there is room for its next read.
const POLL: Duration = Duration::from_millis(100);
/// Pause before a failed resync step is tried again.
const RESYNC_RETRY: Duration = Duration::from_secs(5);
/// Reads per resync pass (of up to `COPY_CHUNK_BYTES` each).
const PASS_CHUNKS_MAX: usize = 256;

impl VpgCapture {
    /// Room in the log for a write of `bytes` encoded, or None when the
    /// write must take the bitmap path. With bitmap mode on, never waits
    /// for the log: a write that would take it past the high-water mark
    /// switches the VPG to bitmap mode instead.
    pub(super) async fn log_room(&self, bytes: u64) -> Result<Option<LogSpace<'_>>> {
        loop {
            let Some(waters) = self.bitmap.waters() else {
                return Ok(self.log.reserve_bytes(bytes).await.map(Some)?);
            };
            if self.bitmap.mode() == CaptureMode::Bitmap {
                return Ok(None);
            }
            if let Some(space) = self.log.try_reserve_below(bytes, waters.high) {
                return Ok(Some(space));
            }
            if let Some(why) = self.log.broken() {
                self.log_failed(&LogError::Broken(why)).await?;
                continue;
            }
            if self.recheck_cap() {
                continue;
            }
            let (used, capacity) = self.log.usage();
            let capped = self.bitmap.capped().map_or(String::new(), |c| {
                format!(", capped to {} since its disk did not take a record", format_bytes(c))
            });
            let why = format!(
                "the protected log holds {} of its {}{capped} (high-water mark {})",
                format_bytes(used),
                format_bytes(capacity),
                format_bytes(waters.high)
            );
            self.enter_bitmap(&why).await?;
        }
    }

    /// A write's append failed. If the log's disk did not take it (full
    /// or failing) and bitmap mode is on, the VPG goes to bitmap mode
    /// (`log_failed`) and the write is to be taken again there: Ok.
    /// Otherwise the error, for the write. Call without the order lock.
    pub(super) async fn degrade_after(&self, error: LogError) -> Result<()> {
        if self.bitmap.waters().is_none() || !error.is_storage_failure() {
            return Err(error.into());
        }
        self.log_failed(&error).await
    }

    /// The log's disk did not take a record (`LogError::is_storage_failure`):
    /// the marks are taken of what the log held from now on
    /// (`BitmapState::log_failed`), and the VPG goes to bitmap mode, so
    /// production goes on without the log. Call without the order lock.
    async fn log_failed(&self, error: &LogError) -> Result<()> {
        let high = self.bitmap.log_failed(self.log_takes());
        let why = format!(
            "the protected log could not take a record ({}); its high-water mark is {} from now on (90 % of what \
             its files took then), and follows what the disk takes until that is the log's capacity again",
            Chain(error),
            format_bytes(high)
        );
        self.enter_bitmap(&why).await
    }

    /// After failed appends: raises the cap to what the log's disk takes
    /// now, and lifts it once that is the log's configured capacity.
    /// Whether the cap was raised or lifted.
    fn recheck_cap(&self) -> bool {
        let Some(cap) = self.bitmap.capped() else { return false };
        let takes = match self.log.disk_takes() {
            Ok(takes) => takes,
            Err(e) => {
                tracing::warn!(vpg = %self.name, "{}", Chain(&e));
                return false;
            }
        };
        if let Some(lifted) = self.bitmap.recheck_cap(takes) {
            tracing::warn!(
                vpg = %self.name,
                "the protected log's disk has room for its {} again: its high-water mark is no longer capped to {}",
                format_bytes(self.log.usage().1),
                format_bytes(lifted)
            );
            return true;
        }
        self.bitmap.capped() > Some(cap)
    }

    /// Switches to bitmap mode (from logging or a resync). The activity
    /// log says durably first that its marks must be read again.
    async fn enter_bitmap(&self, why: &str) -> Result<()> {
        let _order = self.order.lock().await;
        if self.bitmap.mode() == CaptureMode::Bitmap {
            return Ok(());
        }
        self.activity.lock().expect("activity lock").use_map()?;
        // Before the first write that is not logged: from here the
        // stream's end is no image (copy or repair records may still be
        // appended after unlogged writes). The mark is small and the log
        // below its high-water mark; without room (or with a disk that
        // takes nothing) the log writes it before whatever it takes next
        // (a copy's or a verify's record in bitmap mode, the resync's
        // start; review of helper-47).
        mark_now_or_before_next_record(&self.log, BITMAP_START_TAG, &self.name, "where bitmap mode began")?;
        self.bitmap.set_mode(&self.name, CaptureMode::Bitmap, why);
        Ok(())
    }

    /// A write or zero of `[offset, offset + length)` in bitmap mode:
    /// `apply` does it on the volume. Returns the seq everything before it
    /// is durable with, or None if the VPG left bitmap mode meanwhile (the
    /// caller logs it).
    pub(super) async fn write_unlogged(
        &self,
        volume: u32,
        offset: u64,
        length: u64,
        apply: impl FnOnce() -> Result<()>,
    ) -> Result<Option<u64>> {
        let _order = self.order.lock().await;
        self.check_writable()?;
        // A resync (or logging) began meanwhile: the write is logged.
        if self.bitmap.mode() != CaptureMode::Bitmap {
            return Ok(None);
        }
        self.mark_active(volume, offset, length).await?;
        // Marked before the volume changes: a failed write leaves the
        // region dirty, and the resync sends whatever the volume holds.
        self.bitmap.mark(volume, offset, length);
        apply()?;
        Ok(Some(self.log.appended_seq()))
    }

    /// Waits while the VPG is in bitmap mode and resyncs when it is in
    /// resync mode, for as long as the VPG exists.
    pub(super) async fn resync_loop(self: std::sync::Arc<Self>) {
        let mut mode = self.bitmap.subscribe();
        loop {
            let now = *mode.borrow_and_update();
            let step = match now {
                CaptureMode::Logging => None,
                CaptureMode::Bitmap => Some(self.wait_to_resync().await),
                CaptureMode::Resync => Some(self.resync_pass().await),
            };
            match step {
                None => {
                    if mode.changed().await.is_err() {
                        return;
                    }
                }
                Some(Ok(())) => {}
                Some(Err(e)) => {
                    tracing::error!(vpg = %self.name, "resync step failed (retrying): {e_chain}", e_chain = crate::error_chain::Chain(&e));
                    tokio::time::sleep(RESYNC_RETRY).await;
                }
            }
        }
    }

    /// In bitmap mode: once the link has drained the log below the
    /// low-water mark, or acknowledged all of it (the current segment is
    /// never retired, and nothing is appended to roll it), begins the
    /// resync.
    async fn wait_to_resync(&self) -> Result<()> {
        loop {
            if self.bitmap.mode() != CaptureMode::Bitmap {
                return Ok(());
            }
            // After a failed append the log is tried again only after a
            // pause, longer with each failure.
            if self.bitmap.resync_not_before().is_some_and(|at| Instant::now() < at) {
                tokio::time::sleep(POLL).await;
                continue;
            }
            self.recheck_cap();
            let low = self.bitmap.waters().map_or(u64::MAX, |w| w.low);
            let (used, _) = self.log.usage();
            if used < low || self.log_all_acked() {
                let order = self.order.lock().await;
                if self.bitmap.mode() == CaptureMode::Bitmap {
                    let why = format!("the protected log drained to {}", format_bytes(used));
                    // Before any write is logged again: from here the
                    // stream's end is no image until the resync is done.
                    // Without room for the mark, no resync yet.
                    match super::no_image_marks::mark_inconsistent_from_here(&self.log, RESYNC_START_TAG) {
                        Ok(true) => {}
                        Ok(false) => {
                            drop(order);
                            tokio::time::sleep(POLL).await;
                            continue;
                        }
                        Err(CaptureError::Log(e)) if e.is_storage_failure() => {
                            let high = self.bitmap.log_failed(self.log_takes());
                            tracing::warn!(
                                vpg = %self.name,
                                "no resync yet: the protected log could not take its start ({}); high-water mark {}",
                                Chain(&e),
                                format_bytes(high)
                            );
                            continue;
                        }
                        Err(e) => return Err(e),
                    }
                    self.bitmap.set_mode(&self.name, CaptureMode::Resync, &why);
                }
                return Ok(());
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// One pass over the dirty regions as they are now: each chunk is read
    /// under the write-order lock (so after every write before it, and
    /// before every write after it, which the log then carries after it),
    /// appended, and cleared from the map. An empty map ends the resync.
    async fn resync_pass(&self) -> Result<()> {
        // A bounded batch per pass: the map lock is held while it is taken.
        let ranges: Vec<(u32, u64, u64)> = {
            let m = self.bitmap.map.lock().expect("map lock");
            m.map.ranges().flat_map(chunks).take(PASS_CHUNKS_MAX).collect()
        };
        if ranges.is_empty() {
            return self.finish_resync().await;
        }
        for (volume, offset, length) in ranges {
            let Some(space) = self.resync_room(RECORD_HEADER_BYTES as u64 + length).await? else {
                return Ok(());
            };
            let order = self.order.lock().await;
            if self.bitmap.mode() != CaptureMode::Resync {
                return Ok(());
            }
            match self.append_volume_range(space, volume, offset, length) {
                Ok(_) => {}
                // Back to bitmap mode: the region stays dirty.
                Err(CaptureError::Log(e)) if e.is_storage_failure() => {
                    drop(order);
                    return self.log_failed(&e).await;
                }
                Err(e) => return Err(e),
            }
            {
                let mut m = self.bitmap.map.lock().expect("map lock");
                m.map.clear(volume, offset, length);
                m.version += 1;
            }
            self.bitmap.resync_progressed();
            let mut progress = self.bitmap.progress.lock().expect("progress lock");
            progress.resynced += length;
            if !std::mem::replace(&mut progress.announced, true) {
                tracing::warn!(
                    vpg = %self.name,
                    "resync: reading {} of changed regions back into the stream ({})",
                    format_bytes(progress.resync_total),
                    progress.why
                );
            }
        }
        Ok(())
    }

    /// Room for a resync read below the resync ceiling (below the
    /// high-water mark when the log is all acknowledged: its current
    /// segment alone may be over the ceiling, and only an append rolls
    /// it); None if the VPG left resync mode meanwhile.
    async fn resync_room(&self, bytes: u64) -> Result<Option<LogSpace<'_>>> {
        loop {
            let Some(waters) = self.bitmap.waters() else {
                return Ok(self.log.reserve_bytes(bytes).await.map(Some)?);
            };
            if self.bitmap.mode() != CaptureMode::Resync {
                return Ok(None);
            }
            // All acknowledged, the log holds only its current segment,
            // which no ack retires and only an append rolls: the resync
            // may fill it up to the mark of the configured capacity, not
            // a cap (a cap under that segment would leave no room for
            // good; the disk says whether it has room).
            let limit = if self.log_all_acked() { self.bitmap.uncapped_high() } else { waters.resync_ceiling };
            if let Some(space) = self.log.try_reserve_below(bytes, limit) {
                return Ok(Some(space));
            }
            if let Some(why) = self.log.broken() {
                self.log_failed(&LogError::Broken(why)).await?;
                return Ok(None);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// What the marks are to be taken of after the log's disk did not take
    /// a record: what its files take there (what it holds, and its spares).
    pub(super) fn log_takes(&self) -> u64 {
        let status = self.log.space_status();
        status.held_bytes + status.spare_bytes
    }

    fn log_all_acked(&self) -> bool {
        self.log.acked_seq() >= self.log.appended_seq()
    }

    /// The map is empty: back to logging, then an epoch makes the resync's
    /// appends durable and removes the stored map. Checkpoints may come
    /// before that epoch: a checkpoint's record follows the resync's in
    /// the log, and only what the log made durable is ever sent.
    async fn finish_resync(&self) -> Result<()> {
        {
            let _order = self.order.lock().await;
            let empty = self.bitmap.map.lock().expect("map lock").map.is_empty();
            if !empty || self.bitmap.mode() != CaptureMode::Resync {
                return Ok(());
            }
            let resynced = self.bitmap.progress.lock().expect("progress lock").resynced;
            let why = format!(
                "resync done ({} read back); the stream is consistent again and checkpoints resume",
                format_bytes(resynced)
            );
            self.bitmap.set_mode(&self.name, CaptureMode::Logging, &why);
            self.bitmap.resync_progressed();
        }
        self.epoch().await
    }
}

/// A run of dirty regions as reads of at most `COPY_CHUNK_BYTES`.
fn chunks((volume, offset, length): (u32, u64, u64)) -> impl Iterator<Item = (u32, u64, u64)> {
    (0..length.div_ceil(COPY_CHUNK_BYTES)).map(move |i| {
        let at = offset + i * COPY_CHUNK_BYTES;
        (volume, at, (offset + length - at).min(COPY_CHUNK_BYTES))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_read_in_chunks_that_cover_them_exactly() {
        let c: Vec<_> = chunks((2, 64 << 10, COPY_CHUNK_BYTES * 2 + 4096)).collect();
        assert_eq!(
            c,
            vec![
                (2, 64 << 10, COPY_CHUNK_BYTES),
                (2, (64 << 10) + COPY_CHUNK_BYTES, COPY_CHUNK_BYTES),
                (2, (64 << 10) + 2 * COPY_CHUNK_BYTES, 4096)
            ]
        );
        assert_eq!(chunks((0, 0, 0)).count(), 0);
    }
}
