//! The state of bitmap mode for one VPG (docs/bitmap-mode.md): its mode,
//! the marks that move it between modes, the dirty map with its version,
//! and the resync's progress for status. What the modes do is in
//! `bitmap_mode`; this file is a leaf both it and `vpg` use.

use super::dirty_map::{DirtyMap, MapFile, VolumeShape};
use super::error::CaptureError;
use crate::config::BitmapConfig;
use crate::status::{format_bytes, BitmapStatus};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::watch;

type Result<T, E = CaptureError> = std::result::Result<T, E>;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Waters {
    /// A write that would take the log past this goes to bitmap mode.
    pub(super) high: u64,
    /// A VPG in bitmap mode resyncs once the log is below this.
    pub(super) low: u64,
    /// A resync's reads fill the log up to here, leaving the rest to
    /// writes (so they do not go back to bitmap mode because of it).
    pub(super) resync_ceiling: u64,
}

/// The marks of bitmap mode, in percent of the log's capacity.
#[derive(Debug, Clone, Copy)]
struct Levels {
    high: u64,
    low: u64,
}

impl Levels {
    fn of(self, capacity: u64) -> Waters {
        let at = |percent: u64| capacity / 100 * percent;
        Waters { high: at(self.high), low: at(self.low), resync_ceiling: at((self.low + self.high) / 2) }
    }
}

pub(super) struct Map {
    pub(super) map: DirtyMap,
    /// Bumped on every change (under the write-order lock).
    pub(super) version: u64,
}

pub(super) struct Progress {
    /// When the VPG entered its current mode, and why.
    pub(super) since: Instant,
    pub(super) why: String,
    /// Bytes read back into the stream since the resync began.
    pub(super) resynced: u64,
    /// Dirty bytes when the resync began.
    pub(super) resync_total: u64,
    /// The resync's start was logged (a start's resync is logged at its
    /// first read).
    pub(super) announced: bool,
}

/// The log's disk did not take appends: what it took, and when a resync
/// may try it again.
#[derive(Default)]
struct LogFailures {
    /// What the log held at the failure: the marks are taken of this
    /// while it is under the configured capacity.
    cap: Option<u64>,
    /// The last failure, and the failures since a resync last finished.
    last: Option<Instant>,
    count: u32,
}

/// The first pause after a failed append before a resync tries the log
/// again; it doubles with each failure up to `RETRY_AFTER_FAILURE_MAX`.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);
const RETRY_AFTER_FAILURE_MAX: Duration = Duration::from_secs(60);

/// A VPG's bitmap-mode state, part of `VpgCapture`.
pub struct BitmapState {
    /// None: bitmap mode is off, a full log holds writers back (a start's
    /// re-reading still uses the map and a resync).
    levels: Option<Levels>,
    /// The log's capacity as configured.
    capacity: u64,
    /// Appends the log's disk did not take (`log_failed`).
    failures: Mutex<LogFailures>,
    mode: watch::Sender<CaptureMode>,
    pub(super) map: Mutex<Map>,
    /// The map's file and the version of the map last stored in it; a
    /// store of an older snapshot is skipped (two epochs can overlap).
    /// Held while storing; `stored` is the version for readers that must
    /// not wait for a store's fsync.
    file: Mutex<(u64, MapFile)>,
    stored: AtomicU64,
    pub(super) progress: Mutex<Progress>,
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
    /// `map` holds the regions a start must read again (empty: none);
    /// `in_bitmap`: the start could not mark its resync's start, so the
    /// VPG starts in bitmap mode (whose resync marks it first).
    pub fn new(
        cfg: &BitmapConfig,
        capacity: u64,
        map: DirtyMap,
        why: String,
        file: MapFile,
        in_bitmap: bool,
    ) -> BitmapState {
        let levels =
            Some(cfg).filter(|c| c.enabled).map(|c| Levels { high: c.high_water as u64, low: c.low_water as u64 });
        let mode = match () {
            _ if map.is_empty() => CaptureMode::Logging,
            _ if in_bitmap => CaptureMode::Bitmap,
            _ => CaptureMode::Resync,
        };
        let resync_total = map.dirty_bytes();
        BitmapState {
            levels,
            capacity,
            failures: Mutex::new(LogFailures::default()),
            mode: watch::channel(mode).0,
            // Version 1, stored 0: the first epoch stores what the start found.
            map: Mutex::new(Map { map, version: 1 }),
            file: Mutex::new((0, file)),
            stored: AtomicU64::new(0),
            progress: Mutex::new(Progress { since: Instant::now(), why, resynced: 0, resync_total, announced: false }),
        }
    }

    /// The marks in effect: None with bitmap mode off.
    pub(super) fn waters(&self) -> Option<Waters> {
        let cap = self.failures.lock().expect("failures lock").cap;
        self.levels.map(|l| l.of(cap.map_or(self.capacity, |c| c.min(self.capacity))))
    }

    /// The high-water mark of the configured capacity, whatever the cap.
    pub(super) fn uncapped_high(&self) -> u64 {
        self.levels.map_or(self.capacity, |l| l.of(self.capacity).high)
    }

    /// The log's disk did not take a record with the log holding `held`
    /// bytes: from now on the marks are taken of that, so the log goes to
    /// bitmap mode before its disk is full again and a resync's reads stay
    /// under it; a resync waits a while before it tries the log again
    /// (`resync_not_before`). Returns the high-water mark now.
    pub(super) fn log_failed(&self, held: u64) -> u64 {
        let mut f = self.failures.lock().expect("failures lock");
        f.cap = Some(f.cap.map_or(held, |c| c.min(held)));
        f.last = Some(Instant::now());
        f.count += 1;
        drop(f);
        self.waters().map_or(0, |w| w.high)
    }

    /// When a resync may try the log again after failed appends: 5 s after
    /// the last, doubled for each failure since a resync last read a region back,
    /// at most a minute.
    pub(super) fn resync_not_before(&self) -> Option<Instant> {
        let f = self.failures.lock().expect("failures lock");
        let pause = RETRY_AFTER_FAILURE.saturating_mul(1 << f.count.saturating_sub(1).min(4));
        f.last.map(|at| at + pause.min(RETRY_AFTER_FAILURE_MAX))
    }

    /// A resync read a region back (or finished): the next failure waits
    /// the shortest pause. A disk that takes a log's worth at a time then
    /// resyncs in steps of that, not ever slower.
    pub(super) fn resync_progressed(&self) {
        self.failures.lock().expect("failures lock").count = 0;
    }

    /// The capacity the marks are taken of while it is under the
    /// configured one, after a failed append.
    pub fn capped(&self) -> Option<u64> {
        self.failures.lock().expect("failures lock").cap.filter(|c| *c < self.capacity)
    }

    /// The log's disk takes `takes` bytes of log now (`ProtectedLog::disk_takes`):
    /// a cap under that is raised to it, and lifted once it reaches the
    /// configured capacity. Returns the cap lifted, if it was.
    pub(super) fn recheck_cap(&self, takes: u64) -> Option<u64> {
        let mut f = self.failures.lock().expect("failures lock");
        let cap = f.cap?;
        if takes >= self.capacity {
            f.cap = None;
            return Some(cap);
        }
        f.cap = Some(cap.max(takes));
        None
    }

    pub fn mode(&self) -> CaptureMode {
        *self.mode.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<CaptureMode> {
        self.mode.subscribe()
    }

    /// Under the write-order lock.
    pub(super) fn set_mode(&self, vpg: &str, mode: CaptureMode, why: &str) {
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
                tracing::warn!(
                    vpg,
                    "resync: {why}; reading {dirty} of changed regions back into the stream (checkpoints taken \
                     until it is done are marked inconsistent)"
                )
            }
            CaptureMode::Logging => tracing::info!(vpg, "logging: {why}"),
        }
        self.mode.send_replace(mode);
    }

    /// Under the write-order lock.
    pub(super) fn mark(&self, volume: u32, offset: u64, length: u64) {
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
    pub fn store(&self, snapshot: &MapSnapshot) -> Result<()> {
        let Some((version, map)) = &snapshot.changed else { return Ok(()) };
        let mut file = self.file.lock().expect("map file lock");
        let (stored, file) = &mut *file;
        if *version > *stored {
            file.store(map)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A map file these tests never store in.
    fn unused_file() -> MapFile {
        MapFile::new(std::path::Path::new("/nonexistent"), 1)
    }

    #[test]
    fn the_waters_follow_the_config_and_off_means_none() {
        let cfg = BitmapConfig::default();
        let shapes = [VolumeShape { name: "d".into(), size: 1 << 20 }];
        let state =
            BitmapState::new(&cfg, 100 << 20, DirtyMap::new(64 << 10, &shapes), String::new(), unused_file(), false);
        let w = state.waters().expect("on by default");
        assert_eq!((w.high, w.low, w.resync_ceiling), (90 << 20, 50 << 20, 70 << 20));
        assert_eq!(state.mode(), CaptureMode::Logging);
        assert!(state.status().is_none());
        let off = BitmapConfig { enabled: false, ..cfg };
        let mut map = DirtyMap::new(64 << 10, &shapes);
        map.mark(0, 0, 1);
        let state = BitmapState::new(&off, 100 << 20, map, "start".into(), unused_file(), false);
        assert!(state.waters().is_none());
        // Regions a start must read again: a resync, even with bitmap mode off.
        assert_eq!(state.mode(), CaptureMode::Resync);
        assert_eq!(state.status().expect("resync").dirty_bytes, 64 << 10);
    }

    #[test]
    fn a_failure_caps_the_waters_which_follow_the_disk_up_to_the_capacity() {
        let shapes = [VolumeShape { name: "d".into(), size: 1 << 20 }];
        let state = BitmapState::new(
            &BitmapConfig::default(),
            100 << 20,
            DirtyMap::new(64 << 10, &shapes),
            String::new(),
            unused_file(),
            false,
        );
        assert!(state.resync_not_before().is_none());
        assert_eq!(state.log_failed(40_000_000), 36_000_000);
        let w = state.waters().expect("on");
        assert_eq!((w.high, w.low, w.resync_ceiling), (36_000_000, 20_000_000, 28_000_000));
        assert_eq!(state.capped(), Some(40_000_000));
        let pause = |s: &BitmapState| s.resync_not_before().expect("after a failure") - Instant::now();
        assert!(pause(&state) <= RETRY_AFTER_FAILURE && pause(&state) > RETRY_AFTER_FAILURE / 2);
        // A later failure with more held keeps the lower cap, and waits longer.
        assert_eq!(state.log_failed(60 << 20), 36_000_000);
        assert!(pause(&state) > RETRY_AFTER_FAILURE);
        for _ in 0..10 {
            state.log_failed(60 << 20);
        }
        assert!(pause(&state) <= RETRY_AFTER_FAILURE_MAX && pause(&state) > RETRY_AFTER_FAILURE_MAX / 2);
        state.resync_progressed();
        state.log_failed(60 << 20);
        assert!(pause(&state) <= RETRY_AFTER_FAILURE);
        // What the disk takes raises the cap, up to the capacity.
        assert_eq!(state.recheck_cap(30 << 20), None);
        assert_eq!(state.capped(), Some(40_000_000));
        assert_eq!(state.recheck_cap(50 << 20), None);
        assert_eq!(state.capped(), Some(50 << 20));
        assert_eq!(state.recheck_cap(100 << 20), Some(50 << 20));
        assert_eq!(state.waters().expect("on").high, 90 << 20);
        assert_eq!(state.capped(), None);
        assert_eq!(state.recheck_cap(10 << 20), None);
        assert_eq!(state.capped(), None);
        // A cap over the capacity changes nothing.
        assert_eq!(state.log_failed(200 << 20), 90 << 20);
        assert_eq!(state.capped(), None);
    }
}
