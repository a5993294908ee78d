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

use super::dirty_map::{DirtyMap, VolumeShape};
use super::vpg::{VpgCapture, COPY_CHUNK_BYTES};
use crate::config::BitmapConfig;
use crate::log::LogSpace;
use crate::record::RECORD_HEADER_BYTES;
use crate::status::{format_bytes, BitmapStatus};
use anyhow::{bail, Result};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How often a VPG in bitmap mode looks whether the log drained enough,
/// and a resync whether there is room for its next read.
const POLL: Duration = Duration::from_millis(100);
/// Pause before a failed resync step is tried again.
const RESYNC_RETRY: Duration = Duration::from_secs(5);
/// Reads per resync pass (of up to `COPY_CHUNK_BYTES` each).
const PASS_CHUNKS_MAX: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptureMode {
    /// Every write is logged, in order.
    Logging,
    /// Writes go to the volumes and mark the dirty map; nothing is logged.
    Bitmap,
    /// Writes are logged again; the dirty regions are read back.
    Resync,
}

impl CaptureMode {
    pub fn name(self) -> &'static str {
        match self {
            CaptureMode::Logging => "logging",
            CaptureMode::Bitmap => "bitmap",
            CaptureMode::Resync => "resync",
        }
    }
}

/// The log levels, in bytes, that move a VPG between the modes.
#[derive(Debug, Clone, Copy)]
struct Waters {
    /// A write that would take the log past this goes to bitmap mode.
    high: u64,
    /// A VPG in bitmap mode resyncs once the log is below this.
    low: u64,
    /// A resync's reads fill the log up to here, leaving the rest to
    /// writes (so they do not go back to bitmap mode because of it).
    resync_ceiling: u64,
}

struct Map {
    map: DirtyMap,
    /// Bumped on every change (under the write-order lock).
    version: u64,
}

struct Progress {
    /// When the VPG entered its current mode, and why.
    since: Instant,
    why: String,
    /// Bytes read back into the stream since the resync began.
    resynced: u64,
    /// Dirty bytes when the resync began.
    resync_total: u64,
    /// The resync's start was logged (a start's resync is logged at its
    /// first read).
    announced: bool,
}

/// A VPG's bitmap-mode state, part of `VpgCapture`.
pub struct BitmapState {
    /// None: bitmap mode is off, a full log holds writers back (a start's
    /// re-reading still uses the map and a resync).
    waters: Option<Waters>,
    mode: watch::Sender<CaptureMode>,
    map: Mutex<Map>,
    /// The version of the map last stored; a store of an older snapshot
    /// is skipped (two epochs can overlap). Held while storing; `stored`
    /// is its value for readers that must not wait for a store's fsync.
    stored_version: Mutex<u64>,
    stored: AtomicU64,
    progress: Mutex<Progress>,
}

/// What an epoch stores: the map as it was under the write-order lock,
/// if it changed since the last store, and whether it is in use.
pub struct MapSnapshot {
    changed: Option<(u64, DirtyMap)>,
    pub in_use: bool,
}

impl MapSnapshot {
    /// The map changed since it was last stored.
    pub fn changed(&self) -> bool {
        self.changed.is_some()
    }
}

impl BitmapState {
    /// `map` holds the regions a start must read again (empty: none).
    pub fn new(cfg: Option<&BitmapConfig>, capacity: u64, map: DirtyMap, why: String) -> BitmapState {
        let waters = cfg.filter(|c| c.enabled).map(|c| {
            let at = |percent: u64| capacity / 100 * percent;
            Waters {
                high: at(c.high_water as u64),
                low: at(c.low_water as u64),
                resync_ceiling: at((c.low_water as u64 + c.high_water as u64) / 2),
            }
        });
        let mode = if map.is_empty() { CaptureMode::Logging } else { CaptureMode::Resync };
        let resync_total = map.dirty_bytes();
        BitmapState {
            waters,
            mode: watch::channel(mode).0,
            // Version 1, stored 0: the first epoch stores what the start found.
            map: Mutex::new(Map { map, version: 1 }),
            stored_version: Mutex::new(0),
            stored: AtomicU64::new(0),
            progress: Mutex::new(Progress { since: Instant::now(), why, resynced: 0, resync_total, announced: false }),
        }
    }

    pub fn mode(&self) -> CaptureMode {
        *self.mode.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<CaptureMode> {
        self.mode.subscribe()
    }

    /// Under the write-order lock.
    fn set_mode(&self, vpg: &str, mode: CaptureMode, why: &str) {
        let dirty_bytes = self.dirty_bytes();
        let mut progress = self.progress.lock().expect("progress lock");
        progress.since = Instant::now();
        progress.why = why.to_string();
        if mode == CaptureMode::Resync {
            progress.resynced = 0;
            progress.resync_total = dirty_bytes;
            progress.announced = true;
        }
        drop(progress);
        let dirty = format_bytes(dirty_bytes);
        match mode {
            CaptureMode::Bitmap => tracing::warn!(
                vpg,
                "bitmap mode: {why}; writes are no longer logged, only their regions are marked ({dirty} marked); \
                 write order is given up for them and checkpoints are held until a resync"
            ),
            CaptureMode::Resync => {
                tracing::warn!(vpg, "resync: {why}; reading {dirty} of changed regions back into the stream")
            }
            CaptureMode::Logging => tracing::info!(vpg, "logging: {why}"),
        }
        self.mode.send_replace(mode);
    }

    /// Under the write-order lock.
    fn mark(&self, volume: u32, offset: u64, length: u64) {
        let mut m = self.map.lock().expect("map lock");
        if m.map.mark(volume, offset, length) {
            m.version += 1;
        }
    }

    pub fn dirty_bytes(&self) -> u64 {
        self.map.lock().expect("map lock").map.dirty_bytes()
    }

    /// The map as it is, for an epoch (under the write-order lock).
    pub fn snapshot(&self) -> MapSnapshot {
        let m = self.map.lock().expect("map lock");
        let stored = self.stored.load(Ordering::SeqCst);
        MapSnapshot {
            changed: (m.version > stored).then(|| (m.version, m.map.clone())),
            in_use: self.mode() != CaptureMode::Logging || !m.map.is_empty(),
        }
    }

    /// Stores the snapshot unless a newer one was stored already.
    pub fn store(&self, snapshot: &MapSnapshot, dir: &Path, vpg_id: u32) -> Result<()> {
        let Some((version, map)) = &snapshot.changed else { return Ok(()) };
        let mut stored = self.stored_version.lock().expect("stored lock");
        if *version > *stored {
            map.store(dir, vpg_id)?;
            *stored = *version;
            self.stored.store(*version, Ordering::SeqCst);
        }
        Ok(())
    }

    /// For status: None while logging with nothing to resync.
    pub fn status(&self) -> Option<BitmapStatus> {
        let mode = self.mode();
        if mode == CaptureMode::Logging {
            return None;
        }
        let dirty_bytes = self.dirty_bytes();
        let p = self.progress.lock().expect("progress lock");
        let seconds = p.since.elapsed().as_secs_f64();
        let (rate, eta) = match mode {
            CaptureMode::Resync if p.resynced > 0 && seconds > 0.0 => {
                let rate = p.resynced as f64 / seconds;
                (rate as u64, Some((dirty_bytes as f64 / rate).ceil() as u64))
            }
            _ => (0, None),
        };
        Some(BitmapStatus {
            mode: mode.name().to_string(),
            why: p.why.clone(),
            since_seconds: seconds as u64,
            dirty_bytes,
            resynced_bytes: p.resynced,
            resync_total_bytes: p.resync_total.max(p.resynced + dirty_bytes),
            resync_rate_bytes_per_sec: rate,
            resync_eta_seconds: eta,
        })
    }
}

/// The shapes a VPG's dirty map must match.
pub fn shapes(volumes: &[super::volume::Volume]) -> Vec<VolumeShape> {
    volumes.iter().map(|v| VolumeShape { name: v.name.clone(), size: v.size }).collect()
}

impl VpgCapture {
    /// Room in the log for a write of `bytes` encoded, or None when the
    /// write must take the bitmap path. With bitmap mode on, never waits
    /// for the log: a write that would take it past the high-water mark
    /// switches the VPG to bitmap mode instead.
    pub(super) async fn log_room(&self, bytes: u64) -> Result<Option<LogSpace<'_>>> {
        let Some(waters) = self.bitmap.waters else { return self.log.reserve_bytes(bytes).await.map(Some) };
        loop {
            if self.bitmap.mode() == CaptureMode::Bitmap {
                return Ok(None);
            }
            if let Some(space) = self.log.try_reserve_below(bytes, waters.high) {
                return Ok(Some(space));
            }
            if let Some(why) = self.log.broken() {
                bail!("the protected log takes no more records: {why}");
            }
            let (used, capacity) = self.log.usage();
            let why = format!(
                "the protected log holds {} of its {} (high-water mark {})",
                format_bytes(used),
                format_bytes(capacity),
                format_bytes(waters.high)
            );
            self.enter_bitmap(&why).await?;
        }
    }

    /// Switches to bitmap mode (from logging or a resync). The activity
    /// log says durably first that its marks must be read again.
    async fn enter_bitmap(&self, why: &str) -> Result<()> {
        let _order = self.order.lock().await;
        if self.bitmap.mode() == CaptureMode::Bitmap {
            return Ok(());
        }
        self.activity.lock().expect("activity lock").use_map()?;
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
                    tracing::error!(vpg = %self.name, "resync step failed (retrying): {e:#}");
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
        let low = self.bitmap.waters.map_or(u64::MAX, |w| w.low);
        loop {
            if self.bitmap.mode() != CaptureMode::Bitmap {
                return Ok(());
            }
            let (used, _) = self.log.usage();
            if used < low || self.log_all_acked() {
                let _order = self.order.lock().await;
                if self.bitmap.mode() == CaptureMode::Bitmap {
                    let why = format!("the protected log drained to {}", format_bytes(used));
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
            let _order = self.order.lock().await;
            if self.bitmap.mode() != CaptureMode::Resync {
                return Ok(());
            }
            self.append_volume_range(space, volume, offset, length)?;
            {
                let mut m = self.bitmap.map.lock().expect("map lock");
                m.map.clear(volume, offset, length);
                m.version += 1;
            }
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
        let Some(waters) = self.bitmap.waters else { return self.log.reserve_bytes(bytes).await.map(Some) };
        loop {
            if self.bitmap.mode() != CaptureMode::Resync {
                return Ok(None);
            }
            let limit = if self.log_all_acked() { waters.high } else { waters.resync_ceiling };
            if let Some(space) = self.log.try_reserve_below(bytes, limit) {
                return Ok(Some(space));
            }
            if let Some(why) = self.log.broken() {
                bail!("the protected log takes no more records: {why}");
            }
            tokio::time::sleep(POLL).await;
        }
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

    #[test]
    fn the_waters_follow_the_config_and_off_means_none() {
        let cfg = BitmapConfig::default();
        let shapes = [VolumeShape { name: "d".into(), size: 1 << 20 }];
        let state = BitmapState::new(Some(&cfg), 100 << 20, DirtyMap::new(64 << 10, &shapes), String::new());
        let w = state.waters.expect("on by default");
        assert_eq!((w.high, w.low, w.resync_ceiling), (90 << 20, 50 << 20, 70 << 20));
        assert_eq!(state.mode(), CaptureMode::Logging);
        assert!(state.status().is_none());
        let off = BitmapConfig { enabled: false, ..cfg };
        let mut map = DirtyMap::new(64 << 10, &shapes);
        map.mark(0, 0, 1);
        let state = BitmapState::new(Some(&off), 100 << 20, map, "start".into());
        assert!(state.waters.is_none());
        // Regions a start must read again: a resync, even with bitmap mode off.
        assert_eq!(state.mode(), CaptureMode::Resync);
        assert_eq!(state.status().expect("resync").dirty_bytes, 64 << 10);
    }
}
