//! Encryption-attack detection in the write path, per volume.
//!
//! Every write is classified as it is captured: a byte histogram of up to
//! `SAMPLE_BYTES_MAX` sampled bytes of each 64 KiB extent it touches gives
//! a Shannon entropy, "high" when it is within `HIGH_ENTROPY_MARGIN` bits
//! of what random data of that sample size shows. A class map keeps 2 bits
//! per extent (unknown, zero, low, high), so a write of random-looking
//! data over an extent that held low-entropy data (a *transition*) is
//! known without reading the old data. Ransomware that encrypts files in
//! place makes exactly that; new compressed files in free space, random
//! data copied into a new file and database overwrites of compressible
//! pages do not.
//!
//! Per interval the volume's transition bytes are compared with a baseline
//! (a slow average of the quiet intervals): transitions over the last
//! `WINDOW_INTERVALS` intervals at least `min_bytes` and `factor` times the
//! baseline are an anomaly. The method and its blind spots are in
//! docs/detection.md.

use serde::Serialize;

pub const EXTENT_BYTES: u64 = 64 << 10;
/// Bytes sampled per extent touched (16 runs of 64: cheap, and runs keep
/// the byte pairs of text and tables together).
const SAMPLE_BYTES_MAX: usize = 1024;
const SAMPLE_RUN_BYTES: usize = 64;
/// A write part with fewer bytes says too little to classify.
const SAMPLE_BYTES_MIN: usize = 256;
/// Bits below the entropy of random data that still count as random.
const HIGH_ENTROPY_MARGIN: f64 = 0.5;
/// A high part this large replaces a low extent's class; smaller ones
/// (one encrypted 4 KiB block in 64 KiB) count as transitions and leave
/// the extent low, so intermittent encryption keeps counting.
const WHOLE_ENOUGH_BYTES: u64 = EXTENT_BYTES / 2;
/// Intervals summed for the decision (a slow attack spreads over several).
pub const WINDOW_INTERVALS: usize = 3;
/// Of the random-looking bytes written over the window, at least this
/// share must be transitions: encryption in place is nearly all
/// transitions, while a new random or compressed file that fills the free
/// blocks left inside extents of older files makes a few.
const TRANSITION_SHARE_MIN: f64 = 0.25;
/// Weight of a quiet interval in the baseline.
const BASELINE_WEIGHT: f64 = 0.05;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Unknown = 0,
    Zero = 1,
    Low = 2,
    High = 3,
}

impl Class {
    fn from_bits(b: u8) -> Class {
        match b & 3 {
            1 => Class::Zero,
            2 => Class::Low,
            3 => Class::High,
            _ => Class::Unknown,
        }
    }
}

/// What the detector needs to decide.
#[derive(Debug, Clone, Copy)]
pub struct DetectionLimits {
    /// Transition bytes over the window below this are never an anomaly.
    pub min_bytes: u64,
    /// How many times the baseline the window must reach.
    pub factor: f64,
}

/// The class of `data` (all of it one extent's part, or less).
pub fn classify(data: &[u8]) -> Option<Class> {
    if data.len() < SAMPLE_BYTES_MIN {
        return None;
    }
    let mut counts = [0u32; 256];
    let mut n = 0usize;
    let mut add = |part: &[u8]| {
        for b in part {
            counts[*b as usize] += 1;
        }
        n += part.len();
    };
    if data.len() <= SAMPLE_BYTES_MAX {
        add(data);
    } else {
        let runs = SAMPLE_BYTES_MAX / SAMPLE_RUN_BYTES;
        let span = data.len() - SAMPLE_RUN_BYTES;
        for i in 0..runs {
            let at = span * i / (runs - 1);
            add(&data[at..at + SAMPLE_RUN_BYTES]);
        }
    }
    if counts[0] as usize == n {
        return Some(Class::Zero);
    }
    // H = log2 n − Σ c·log2 c / n, with c·log2 c from a table (n ≤ 1024).
    let table = c_log2_c();
    let sum: f64 = counts.iter().map(|c| table[*c as usize]).sum();
    let entropy = (n as f64).log2() - sum / n as f64;
    Some(if entropy >= random_entropy(n) - HIGH_ENTROPY_MARGIN { Class::High } else { Class::Low })
}

/// c·log2(c) for every count a histogram of at most `SAMPLE_BYTES_MAX`
/// samples can hold.
fn c_log2_c() -> &'static [f64; SAMPLE_BYTES_MAX + 1] {
    static TABLE: std::sync::OnceLock<[f64; SAMPLE_BYTES_MAX + 1]> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| std::array::from_fn(|c| if c == 0 { 0.0 } else { c as f64 * (c as f64).log2() }))
}

/// One extent's part of a write, classified (None: too small to say).
#[derive(Debug, Clone, Copy)]
pub struct Part {
    extent: u64,
    len: u64,
    class: Option<Class>,
}

/// Classifies each extent's part of a write of `data` at `offset`: pure,
/// so it runs before the VPG's write-order lock is taken.
pub fn classify_parts(offset: u64, data: &[u8]) -> Vec<Part> {
    let mut parts = Vec::with_capacity((data.len() as u64 / EXTENT_BYTES + 2) as usize);
    for_each_part(offset, data.len() as u64, |extent, start, len| {
        parts.push(Part { extent, len, class: classify(&data[start as usize..(start + len) as usize]) });
    });
    parts
}

/// The entropy random bytes show in a histogram of `n` samples (the
/// plug-in estimate's bias, Miller–Madow: (k−1)/(2n ln 2) below 8 bits).
fn random_entropy(n: usize) -> f64 {
    8.0 - 255.0 / (2.0 * n as f64 * std::f64::consts::LN_2)
}

/// 2 bits per 64 KiB extent: 4 MiB of memory per TiB of volume.
pub struct ClassMap {
    bits: Vec<u8>,
}

impl ClassMap {
    pub fn new(volume_bytes: u64) -> Self {
        let extents = volume_bytes.div_ceil(EXTENT_BYTES);
        ClassMap { bits: vec![0; extents.div_ceil(4) as usize] }
    }

    pub fn get(&self, extent: u64) -> Class {
        let byte = self.bits.get((extent / 4) as usize).copied().unwrap_or(0);
        Class::from_bits(byte >> ((extent % 4) * 2))
    }

    pub fn set(&mut self, extent: u64, class: Class) {
        if let Some(byte) = self.bits.get_mut((extent / 4) as usize) {
            let shift = (extent % 4) * 2;
            *byte = (*byte & !(3 << shift)) | ((class as u8) << shift);
        }
    }

    pub fn bytes(&self) -> usize {
        self.bits.len()
    }
}

/// One interval's features of a volume.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct IntervalStats {
    pub bytes: u64,
    /// Bytes classified high.
    pub high_bytes: u64,
    /// High bytes written over extents that held low-entropy data.
    pub transition_bytes: u64,
    /// Bytes written over extents that held data (low or high).
    pub overwrite_bytes: u64,
    /// The first write of the interval that was a transition.
    #[serde(skip)]
    pub first_transition_seq: Option<u64>,
}

/// What an anomalous window looked like.
#[derive(Debug, Clone, PartialEq)]
pub struct Anomaly {
    pub window_transition_bytes: u64,
    pub threshold_bytes: u64,
    pub baseline_bytes: f64,
    /// The first transition of the run of intervals with transitions that
    /// ends with this one: the attack began at or after it.
    pub first_transition_seq: u64,
    pub high_share: f64,
}

pub struct VolumeDetector {
    map: ClassMap,
    current: IntervalStats,
    /// The last `WINDOW_INTERVALS` closed intervals, newest last.
    window: std::collections::VecDeque<IntervalStats>,
    /// Average transition bytes of a quiet interval.
    baseline: f64,
    /// The first transition since the last interval without any: an
    /// attack that ramps up before the window still names its start.
    run_first_seq: Option<u64>,
}

impl VolumeDetector {
    pub fn new(volume_bytes: u64) -> Self {
        VolumeDetector {
            map: ClassMap::new(volume_bytes),
            current: IntervalStats::default(),
            window: Default::default(),
            baseline: 0.0,
            run_first_seq: None,
        }
    }

    pub fn map_bytes(&self) -> usize {
        self.map.bytes()
    }

    /// A guest write (`seq` in the log) of `data` at `offset`.
    pub fn observe_write(&mut self, seq: u64, offset: u64, data: &[u8]) {
        self.observe_parts(seq, &classify_parts(offset, data));
    }

    /// A guest write (`seq` in the log), classified by `classify_parts`.
    pub fn observe_parts(&mut self, seq: u64, parts: &[Part]) {
        for &Part { extent, len, class } in parts {
            self.current.bytes += len;
            let Some(class) = class else { continue };
            let before = self.map.get(extent);
            if matches!(before, Class::Low | Class::High) {
                self.current.overwrite_bytes += len;
            }
            if class == Class::High {
                self.current.high_bytes += len;
                if before == Class::Low {
                    self.current.transition_bytes += len;
                    self.current.first_transition_seq.get_or_insert(seq);
                }
            }
            let whole = len >= WHOLE_ENOUGH_BYTES;
            let keep = !whole && matches!((before, class), (Class::Low, Class::High) | (Class::High, Class::Low));
            if !keep {
                self.map.set(extent, class);
            }
        }
    }

    /// Data read from the volume itself (the initial copy, a range read
    /// again): it tells what the extents hold, and is no guest activity.
    pub fn observe_contents(&mut self, offset: u64, data: &[u8]) {
        for_each_part(offset, data.len() as u64, |extent, start, len| {
            if let Some(class) = classify(&data[start as usize..(start + len) as usize]) {
                if len >= WHOLE_ENOUGH_BYTES || self.map.get(extent) == Class::Unknown {
                    self.map.set(extent, class);
                }
            }
        });
    }

    /// A zero or trim: whole extents in it hold zeros now.
    pub fn observe_zero(&mut self, offset: u64, length: u64) {
        for_each_part(offset, length, |extent, _, len| {
            if len == EXTENT_BYTES {
                self.map.set(extent, Class::Zero);
            }
        });
    }

    /// Closes the interval; an anomaly if the window's transitions passed
    /// the limits.
    pub fn end_interval(&mut self, limits: DetectionLimits) -> (IntervalStats, Option<Anomaly>) {
        let closed = std::mem::take(&mut self.current);
        self.window.push_back(closed.clone());
        if self.window.len() > WINDOW_INTERVALS {
            self.window.pop_front();
        }
        self.run_first_seq = match closed.first_transition_seq {
            None => None,
            Some(seq) => Some(self.run_first_seq.unwrap_or(seq)),
        };
        let window_bytes: u64 = self.window.iter().map(|s| s.transition_bytes).sum();
        let threshold = (self.baseline * limits.factor * WINDOW_INTERVALS as f64).max(limits.min_bytes as f64) as u64;
        // Over the intervals that had transitions: a random file copied in
        // an interval before the attack does not dilute it.
        let high: u64 = self.window.iter().filter(|s| s.transition_bytes > 0).map(|s| s.high_bytes).sum();
        let share = if high == 0 { 0.0 } else { window_bytes as f64 / high as f64 };
        if window_bytes >= threshold && window_bytes > 0 && share >= TRANSITION_SHARE_MIN {
            let written: u64 = self.window.iter().map(|s| s.bytes).sum();
            let high: u64 = self.window.iter().map(|s| s.high_bytes).sum();
            let window_first = self.window.iter().find_map(|s| s.first_transition_seq);
            let first = self.run_first_seq.or(window_first).expect("transitions were counted");
            let anomaly = Anomaly {
                window_transition_bytes: window_bytes,
                threshold_bytes: threshold,
                baseline_bytes: self.baseline,
                first_transition_seq: first,
                high_share: if written == 0 { 0.0 } else { high as f64 / written as f64 },
            };
            self.learn(&closed);
            return (closed, Some(anomaly));
        }
        self.learn(&closed);
        (closed, None)
    }
}

impl VolumeDetector {
    /// Every interval teaches the baseline slowly: an attack has raised
    /// its alert long before it moves it, and a volume whose normal work
    /// turns data random (rare) stops alerting once that is learned.
    fn learn(&mut self, closed: &IntervalStats) {
        self.baseline += (closed.transition_bytes as f64 - self.baseline) * BASELINE_WEIGHT;
    }
}

/// Calls `f(extent, start_in_data, len)` for each extent `offset..+length`
/// touches.
fn for_each_part(offset: u64, length: u64, mut f: impl FnMut(u64, u64, u64)) {
    let mut at = offset;
    let end = offset + length;
    while at < end {
        let extent = at / EXTENT_BYTES;
        let len = ((extent + 1) * EXTENT_BYTES).min(end) - at;
        f(extent, at - offset, len);
        at += len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(n: usize, seed: u64) -> Vec<u8> {
        // xorshift: deterministic, and random enough for a histogram.
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    fn text(n: usize) -> Vec<u8> {
        let line = b"2026-12-03 09:41:07 INFO request served path=/api/v1/items status=200 bytes=5120\n";
        line.iter().cycle().take(n).copied().collect()
    }

    const LIMITS: DetectionLimits = DetectionLimits { min_bytes: 1 << 20, factor: 8.0 };

    #[test]
    fn random_text_and_zeros_are_told_apart_at_every_size() {
        for n in [512, 4096, 65536, 1 << 20] {
            assert_eq!(classify(&random(n, n as u64)), Some(Class::High), "{n} random bytes");
            assert_eq!(classify(&text(n)), Some(Class::Low), "{n} bytes of text");
            assert_eq!(classify(&vec![0; n]), Some(Class::Zero), "{n} zeros");
        }
        assert_eq!(classify(&[7; 100]), None, "too few bytes to say");
        // A zstd frame of text is high: compressed data looks random.
        let packed = zstd::encode_all(&text(1 << 20)[..], 3).unwrap();
        let packed = zstd::encode_all(&[&packed[..], &random(8192, 5)].concat()[..], 19).unwrap();
        assert_eq!(classify(&packed), Some(Class::High));
    }

    #[test]
    fn the_class_map_keeps_two_bits_per_extent() {
        let mut map = ClassMap::new(10 * EXTENT_BYTES + 1);
        assert_eq!(map.bytes(), 3);
        for (e, c) in [(0, Class::High), (1, Class::Low), (2, Class::Zero), (10, Class::High)] {
            map.set(e, c);
        }
        assert_eq!(
            [map.get(0), map.get(1), map.get(2), map.get(3), map.get(10)],
            [Class::High, Class::Low, Class::Zero, Class::Unknown, Class::High]
        );
        map.set(99, Class::High); // past the end: ignored, never a panic
    }

    #[test]
    fn overwriting_text_with_random_data_is_an_anomaly_and_new_random_files_are_not() {
        let mut d = VolumeDetector::new(64 << 20);
        // Text files in the first 16 MiB; quiet intervals.
        d.observe_write(1, 0, &text(16 << 20));
        for _ in 0..5 {
            assert_eq!(d.end_interval(LIMITS).1, None);
        }
        // Random data into never-written space (a new archive): no transition.
        d.observe_write(2, 32 << 20, &random(16 << 20, 1));
        let (stats, anomaly) = d.end_interval(LIMITS);
        assert_eq!((stats.transition_bytes, stats.high_bytes, anomaly), (0, 16 << 20, None));
        // Compressible overwrites of the text (a database): no transition.
        d.observe_write(3, 4096, &text(8192));
        assert_eq!(d.end_interval(LIMITS).1, None);
        // Encryption in place, 4 KiB at a time from seq 10.
        for i in 0..512u64 {
            d.observe_write(10 + i, i * 4096, &random(4096, i + 7));
        }
        let (stats, anomaly) = d.end_interval(LIMITS);
        assert_eq!(stats.transition_bytes, 2 << 20);
        let anomaly = anomaly.expect("2 MiB of text turned random");
        assert_eq!(anomaly.first_transition_seq, 10);
        assert!(anomaly.high_share > 0.99, "{anomaly:?}");
    }

    #[test]
    fn a_large_random_file_that_fills_the_gaps_left_by_small_files_is_no_anomaly() {
        let mut d = VolumeDetector::new(256 << 20);
        // 64 small files of 40 KiB, one per extent: 24 KiB free in each.
        for i in 0..64u64 {
            d.observe_write(1 + i, i * EXTENT_BYTES, &text(40 << 10));
        }
        assert_eq!(d.end_interval(LIMITS).1, None);
        // A 24 MiB random file: the gaps first (1.5 MiB of transitions),
        // then free space.
        for i in 0..64u64 {
            d.observe_write(100 + i, i * EXTENT_BYTES + (40 << 10), &random(24 << 10, i + 1));
        }
        d.observe_write(200, 64 << 20, &random(22 << 20, 9));
        let (stats, anomaly) = d.end_interval(LIMITS);
        assert_eq!(stats.transition_bytes, 3 << 19);
        assert_eq!(anomaly, None, "6 % of the random bytes were transitions");
    }

    #[test]
    fn a_slow_start_before_the_window_is_where_the_attack_began() {
        let mut d = VolumeDetector::new(64 << 20);
        d.observe_write(1, 0, &text(32 << 20));
        d.end_interval(LIMITS);
        // Five intervals of a trickle (64 KiB each, under the floor) ...
        for i in 0..5u64 {
            d.observe_write(10 + i, i * EXTENT_BYTES, &random(EXTENT_BYTES as usize, i + 1));
            assert_eq!(d.end_interval(LIMITS).1, None);
        }
        // ... then the flood.
        d.observe_write(100, 1 << 20, &random(4 << 20, 3));
        let anomaly = d.end_interval(LIMITS).1.expect("an anomaly");
        assert_eq!(anomaly.first_transition_seq, 10, "the trickle's first write, not the window's");
    }

    #[test]
    fn intermittent_encryption_keeps_counting_in_a_low_extent() {
        let mut d = VolumeDetector::new(64 << 20);
        d.observe_write(1, 0, &text(32 << 20));
        // Every 4th 4 KiB block of the first 16 MiB.
        for (i, at) in (0..(16u64 << 20)).step_by(16384).enumerate() {
            d.observe_write(100 + i as u64, at, &random(4096, at + 1));
        }
        let (stats, anomaly) = d.end_interval(LIMITS);
        assert_eq!(stats.transition_bytes, 4 << 20);
        assert!(anomaly.is_some());
    }

    #[test]
    fn a_steady_rate_of_transitions_becomes_the_baseline_and_zeroing_resets_extents() {
        let mut d = VolumeDetector::new(256 << 20);
        d.observe_write(1, 0, &text(256 << 20));
        // Eight extents turned random and back every interval: 512 KiB of
        // transitions each time, 1.5 MiB over the window, over the floor.
        let mut seq = 2;
        let mut alerts = Vec::new();
        for round in 0..200u64 {
            for k in 0..8u64 {
                let at = (round % 100) * (1 << 20) + k * EXTENT_BYTES;
                d.observe_write(seq, at, &random(EXTENT_BYTES as usize, seq));
                d.observe_write(seq + 1, at, &text(EXTENT_BYTES as usize));
                seq += 2;
            }
            alerts.push(d.end_interval(LIMITS).1.is_some());
        }
        assert!(alerts[0..3].iter().any(|a| *a), "new behaviour is an anomaly at first");
        assert!(alerts[100..].iter().all(|a| !a), "and normal once the baseline learned it");
        d.observe_zero(0, 1 << 20);
        d.observe_write(seq, 0, &random(1 << 20, 3));
        assert_eq!(d.end_interval(LIMITS).0.transition_bytes, 0, "zeroed extents are not low");
    }
}
