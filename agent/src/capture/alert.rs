//! The encryption detector of one VPG: its volumes' detectors, the
//! interval clock, and the alert they raise.
//!
//! An alert is stored (`detector-alert.json` in the VPG's log directory,
//! fsynced) before anything else happens, so a restart still asks the
//! recovery site to pin the last clean checkpoint: the newest checkpoint
//! before the first write of the anomalous window. The link asks once the
//! recovery site acknowledged everything before that write (so it holds
//! that checkpoint), and the answer is stored too. While an alert's
//! anomaly goes on no other alert is raised; a new one needs
//! `NEW_ALERT_AFTER` of quiet first.

use super::detector::{Anomaly, DetectionLimits, IntervalStats, VolumeDetector};
use super::error::CaptureError;
use crate::config::DetectionConfig;
use crate::durable::{replace_file, FileMode};
use crate::io_failure::Doing;
use crate::status::format_bytes;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, UNIX_EPOCH};

type Result<T, E = CaptureError> = std::result::Result<T, E>;

const ALERT_FILE: &str = "detector-alert.json";
/// Quiet time after an alert's last anomalous interval before another
/// alert may be raised.
const NEW_ALERT_AFTER: Duration = Duration::from_secs(600);
pub use crate::names::{names_last_clean, LAST_CLEAN};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Alert {
    pub volume: String,
    /// When the first write of the anomalous window was seen.
    pub started_ms: u64,
    pub detected_ms: u64,
    pub last_anomaly_ms: u64,
    /// The attack began at this seq or after: the checkpoint before it is
    /// the last clean one.
    pub since_seq: u64,
    /// `last-clean-<time the anomaly started>`.
    pub label: String,
    /// What was seen, for people.
    pub summary: String,
    /// The checkpoint the recovery site pinned, once it did.
    pub pinned: Option<u64>,
    /// Why the recovery site could not pin one.
    pub pin_error: Option<String>,
}

impl Alert {
    /// One line for status and the logs.
    pub fn describe(&self) -> String {
        let pin = match (&self.pinned, &self.pin_error) {
            (Some(id), _) => format!("checkpoint {id} is pinned at the recovery site as {:?}", self.label),
            (None, Some(e)) => format!("no checkpoint could be pinned: {e}"),
            (None, None) => "pinning the last clean checkpoint at the recovery site".to_string(),
        };
        format!(
            "possible encryption attack on volume {} since {}: {}; {pin}",
            self.volume,
            rfc3339(self.started_ms),
            self.summary
        )
    }
}

/// A volume's detector, and when the open interval's first write came.
type Watched = (VolumeDetector, Option<u64>);

/// The volumes' detectors and the VPG's alert.
pub struct Detection {
    dir: PathBuf,
    limits: DetectionLimits,
    pub interval: Duration,
    /// One per volume, with its name.
    volumes: Vec<(String, Mutex<Watched>)>,
    alert: Mutex<Option<Alert>>,
}

impl Detection {
    /// The VPG's detection, with the alert a previous run stored.
    /// `log_end` is the last seq the log held when it was opened: an alert
    /// not yet pinned that names a later seq saw records a power cut took
    /// (their seqs are used again), so it is moved back to there.
    pub fn open(dir: &Path, cfg: &DetectionConfig, volumes: &[(String, u64)], log_end: u64) -> Result<Detection> {
        let path = dir.join(ALERT_FILE);
        let mut alert: Option<Alert> = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(a) => Some(a),
                Err(e) => {
                    // Kept for people to read; never a reason not to start.
                    let aside = dir.join(format!("{ALERT_FILE}.damaged"));
                    tracing::error!("{} is damaged ({e}); moved to {}", path.display(), aside.display());
                    std::fs::rename(&path, &aside).doing(|| format!("moving {} aside", path.display()))?;
                    None
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Ok(Err(e).doing(|| format!("reading {}", path.display()))?),
        };
        if let Some(a) = alert.as_mut().filter(|a| a.pinned.is_none() && a.pin_error.is_none()) {
            a.since_seq = a.since_seq.min(log_end + 1);
        }
        Ok(Detection {
            dir: dir.to_path_buf(),
            limits: DetectionLimits { min_bytes: cfg.min_bytes, factor: cfg.factor },
            interval: cfg.interval,
            volumes: volumes
                .iter()
                .map(|(name, size)| (name.clone(), Mutex::new((VolumeDetector::new(*size), None))))
                .collect(),
            alert: Mutex::new(alert),
        })
    }

    /// Class-map memory of every volume.
    pub fn map_bytes(&self) -> usize {
        self.volumes.iter().map(|(_, v)| v.lock().expect("detector").0.map_bytes()).sum()
    }

    pub fn observe_write(&self, volume: u32, seq: u64, offset: u64, data: &[u8]) {
        self.observe_parts(volume, seq, &super::detector::classify_parts(offset, data));
    }

    /// A write classified (`detector::classify_parts`) before the VPG's
    /// write-order lock was taken.
    pub fn observe_parts(&self, volume: u32, seq: u64, parts: &[super::detector::Part]) {
        if let Some((_, v)) = self.volumes.get(volume as usize) {
            let mut v = v.lock().expect("detector");
            v.0.observe_parts(seq, parts);
            v.1.get_or_insert_with(crate::record::now_ms);
        }
    }

    pub fn observe_zero(&self, volume: u32, offset: u64, length: u64) {
        if let Some((_, v)) = self.volumes.get(volume as usize) {
            v.lock().expect("detector").0.observe_zero(offset, length);
        }
    }

    pub fn observe_contents(&self, volume: u32, offset: u64, data: &[u8]) {
        if let Some((_, v)) = self.volumes.get(volume as usize) {
            v.lock().expect("detector").0.observe_contents(offset, data);
        }
    }

    /// Closes every volume's interval; raises (and stores) an alert on an
    /// anomaly. Returns each volume's closed interval.
    pub fn end_interval(&self, vpg: &str) -> Result<Vec<IntervalStats>> {
        let mut closed = Vec::new();
        for (name, v) in &self.volumes {
            let (stats, anomaly, first_ms) = {
                let mut v = v.lock().expect("detector");
                let (stats, anomaly) = v.0.end_interval(self.limits);
                (stats, anomaly, v.1.take())
            };
            if let Some(anomaly) = anomaly {
                self.anomaly(vpg, name, &anomaly, first_ms.unwrap_or_else(crate::record::now_ms))?;
            }
            closed.push(stats);
        }
        Ok(closed)
    }

    fn anomaly(&self, vpg: &str, volume: &str, anomaly: &Anomaly, first_ms: u64) -> Result<()> {
        tracing::warn!(
            vpg,
            volume,
            "detector: anomalous window: {} of low-entropy data turned random-looking (threshold {})",
            format_bytes(anomaly.window_transition_bytes),
            format_bytes(anomaly.threshold_bytes)
        );
        let now = crate::record::now_ms();
        let mut alert = self.alert.lock().expect("alert");
        if let Some(a) = alert.as_mut() {
            if now.saturating_sub(a.last_anomaly_ms) < NEW_ALERT_AFTER.as_millis() as u64 {
                a.last_anomaly_ms = now;
                // Another volume (or a longer run) began earlier: until the
                // pin is asked, it is the point to keep.
                if a.pinned.is_none() && a.pin_error.is_none() {
                    a.since_seq = a.since_seq.min(anomaly.first_transition_seq);
                }
                return self.store(a);
            }
        }
        // The window began up to WINDOW_INTERVALS intervals ago.
        let window = self.interval * super::detector::WINDOW_INTERVALS as u32;
        let started_ms = first_ms.saturating_sub(window.as_millis() as u64 - self.interval.as_millis() as u64);
        let new = Alert {
            volume: volume.to_string(),
            started_ms,
            detected_ms: now,
            last_anomaly_ms: now,
            since_seq: anomaly.first_transition_seq,
            // No ':' in a label: the pin's reason is "<label>: ...".
            label: format!("{LAST_CLEAN}-{}", rfc3339(started_ms).replace(':', "")),
            summary: format!(
                "{} of low-entropy data overwritten with random-looking data in {} s ({:.0} % of the bytes \
                 written were random-looking; threshold {}, baseline {} per interval)",
                format_bytes(anomaly.window_transition_bytes),
                window.as_secs(),
                anomaly.high_share * 100.0,
                format_bytes(anomaly.threshold_bytes),
                format_bytes(anomaly.baseline_bytes as u64),
            ),
            pinned: None,
            pin_error: None,
        };
        self.store(&new)?;
        tracing::error!(vpg, "ALERT: {}", new.describe());
        *alert = Some(new);
        Ok(())
    }

    fn store(&self, alert: &Alert) -> Result<()> {
        let json =
            serde_json::to_vec_pretty(alert).map_err(|source| CaptureError::Encoding { what: ALERT_FILE, source })?;
        Ok(replace_file(&self.dir.join(ALERT_FILE), &json, FileMode::Public)?)
    }

    pub fn alert(&self) -> Option<Alert> {
        self.alert.lock().expect("alert").clone()
    }

    /// Clears the alert (an operator looked into it), durably; returns it.
    /// A pin it had not asked for yet is not asked for; one it made stays
    /// at the recovery site until `tidemark unpin`. The next anomaly
    /// raises a new alert at once.
    pub fn clear(&self) -> Result<Option<Alert>> {
        let mut alert = self.alert.lock().expect("alert");
        if alert.is_none() {
            return Ok(None);
        }
        crate::durable::remove_file(&self.dir.join(ALERT_FILE))?;
        Ok(alert.take())
    }

    /// The pin to ask for, if one is due and the recovery site holds
    /// everything before the attack (`acked_seq`).
    pub fn pin_due(&self, acked_seq: u64) -> Option<Alert> {
        let alert = self.alert.lock().expect("alert");
        alert.as_ref().filter(|a| a.pinned.is_none() && a.pin_error.is_none() && acked_seq + 1 >= a.since_seq).cloned()
    }

    /// The recovery site's answer to the pin request for `label`.
    pub fn pin_answered(&self, vpg: &str, label: &str, answer: std::result::Result<u64, String>) -> Result<()> {
        let mut alert = self.alert.lock().expect("alert");
        // A new alert since the request: the answer was not about it.
        let Some(a) = alert.as_mut().filter(|a| a.label == label) else { return Ok(()) };
        match answer {
            Ok(id) => a.pinned = Some(id),
            Err(e) => a.pin_error = Some(e),
        }
        self.store(a)?;
        match &a.pin_error {
            None => tracing::warn!(vpg, "{}", a.describe()),
            Some(_) => tracing::error!(vpg, "{}", a.describe()),
        }
        Ok(())
    }
}

/// The detector's clock: closes an interval every `interval`.
pub async fn run(vpg: String, detection: std::sync::Arc<Detection>) {
    let mut tick = tokio::time::interval(detection.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        // An anomaly fsyncs the alert file: not on a runtime thread.
        let (d, name) = (detection.clone(), vpg.clone());
        let closed = tokio::task::spawn_blocking(move || d.end_interval(&name)).await;
        match closed.unwrap_or_else(|source| Err(CaptureError::Task { what: "detector task", source })) {
            Ok(stats) => {
                for ((name, _), s) in detection.volumes.iter().zip(&stats) {
                    if s.bytes > 0 {
                        tracing::debug!(%vpg, volume = %name, ?s, "detector interval");
                    }
                }
            }
            Err(e) => tracing::error!(%vpg, "storing the detector's alert failed: {}", crate::error_chain::Chain(&e)),
        }
    }
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alert_survives_a_restart_and_asks_for_its_pin_once_the_journal_holds_what_came_before() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = DetectionConfig { enabled: true, interval: Duration::from_secs(10), factor: 8.0, min_bytes: 1 << 20 };
        let d = Detection::open(dir.path(), &cfg, &[("disk0".into(), 64 << 20)], 100).unwrap();
        let line = b"ordinary text, repeated, nothing random about it at all.\n";
        let text: Vec<u8> = line.iter().cycle().take(4 << 20).copied().collect();
        d.observe_write(0, 5, 0, &text);
        d.end_interval("v").unwrap();
        assert_eq!(d.alert(), None);
        let mut x = 88172645463325252u64;
        let random: Vec<u8> = (0..(2 << 20))
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        d.observe_write(0, 40, 0, &random);
        d.end_interval("v").unwrap();
        let alert = d.alert().expect("an alert");
        assert_eq!((alert.since_seq, alert.volume.as_str()), (40, "disk0"));
        assert!(alert.label.starts_with("last-clean-20"), "{}", alert.label);
        assert!(names_last_clean(&alert.label) && names_last_clean("last-clean") && !names_last_clean("last-cleaner"));
        assert_eq!(d.pin_due(30), None, "the journal does not hold seq 39 yet");
        assert!(!alert.label.contains(':'), "{}", alert.label);
        // After a power cut the log held seqs up to 35 only.
        let reopened = Detection::open(dir.path(), &cfg, &[("disk0".into(), 64 << 20)], 35).unwrap();
        assert_eq!(reopened.pin_due(35).map(|a| a.since_seq), Some(36));
        reopened.pin_answered("v", "another-label", Ok(99)).unwrap();
        assert_eq!(reopened.alert().unwrap().pinned, None, "an answer about another alert");
        reopened.pin_answered("v", &alert.label, Ok(33)).unwrap();
        assert_eq!(reopened.pin_due(100), None);
        let again = Detection::open(dir.path(), &cfg, &[("disk0".into(), 64 << 20)], 100).unwrap();
        assert_eq!(again.alert().unwrap().pinned, Some(33));
        assert!(again.alert().unwrap().describe().contains("checkpoint 33 is pinned"));
        // Cleared: gone for good (also after a restart), and once only.
        assert_eq!(again.clear().unwrap().map(|a| a.pinned), Some(Some(33)));
        assert_eq!(again.alert(), None);
        assert_eq!(again.pin_due(100), None);
        assert_eq!(again.clear().unwrap(), None);
        let cleared = Detection::open(dir.path(), &cfg, &[("disk0".into(), 64 << 20)], 100).unwrap();
        assert_eq!(cleared.alert(), None);
        std::fs::write(dir.path().join(ALERT_FILE), b"{not json").unwrap();
        let damaged = Detection::open(dir.path(), &cfg, &[("disk0".into(), 64 << 20)], 100).unwrap();
        assert_eq!(damaged.alert(), None, "a damaged file is moved aside, not fatal");
        assert!(dir.path().join("detector-alert.json.damaged").exists());
    }
}
