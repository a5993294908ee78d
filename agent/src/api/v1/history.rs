//! The last hour of each VPG's lag (RPO) and throughput, sampled from the
//! published status every `SAMPLE_INTERVAL`, for the dashboard's chart
//! (`GET /api/v1/history`). In memory: a restart starts the hour again.

use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);
/// One hour of samples.
const SAMPLES_KEPT: usize = 720;
/// VPGs one sample holds at most (the config bounds them anyway).
const VPGS_PER_SAMPLE_MAX: usize = 256;

#[derive(Debug, Clone, Serialize)]
pub struct Point {
    pub lag_seconds: f64,
    pub throughput_bytes_per_sec: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub time_ms: u64,
    pub vpgs: BTreeMap<String, Point>,
}

#[derive(Default)]
pub struct History {
    samples: Mutex<VecDeque<Sample>>,
}

impl History {
    pub fn push(&self, sample: Sample) {
        let mut samples = self.samples.lock().expect("history lock");
        if samples.len() == SAMPLES_KEPT {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    pub fn snapshot(&self) -> Vec<Sample> {
        self.samples.lock().expect("history lock").iter().cloned().collect()
    }
}

/// Samples the status file for as long as the agent runs.
pub fn start(data_dir: PathBuf) -> Arc<History> {
    let history = Arc::new(History::default());
    let kept = history.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
        loop {
            tick.tick().await;
            let dir = data_dir.clone();
            let Ok(Ok(status)) = tokio::task::spawn_blocking(move || crate::status::read(&dir)).await else { continue };
            let vpgs = status
                .vpgs
                .iter()
                .take(VPGS_PER_SAMPLE_MAX)
                .map(|v| {
                    let point =
                        Point { lag_seconds: v.lag_seconds, throughput_bytes_per_sec: v.throughput_bytes_per_sec };
                    (v.name.clone(), point)
                })
                .collect();
            kept.push(Sample { time_ms: crate::record::now_ms(), vpgs });
        }
    });
    history
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_hour_is_kept_and_no_more() {
        let history = History::default();
        for t in 0..SAMPLES_KEPT as u64 + 10 {
            history.push(Sample { time_ms: t, vpgs: BTreeMap::new() });
        }
        let kept = history.snapshot();
        assert_eq!(kept.len(), SAMPLES_KEPT);
        assert_eq!(kept[0].time_ms, 10);
    }
}
