//! A VPG's checkpoints as `tidemark checkpoints` and the management API
//! list them: each with its pin, whether it came after an encryption
//! alert, and its file-system check verdict.

use super::JournalView;
use crate::journal::index::CheckpointInfo;
use crate::journal::pins::Pin;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Serialize, Deserialize)]
pub struct Listed {
    #[serde(flatten)]
    pub info: CheckpointInfo,
    pub pinned: bool,
    /// After the oldest checkpoint the encryption detector pinned: it may
    /// hold encrypted data.
    pub after_alert: bool,
    /// The file-system check's verdict, if one was run.
    pub check: Option<String>,
}

impl Listed {
    /// The STATE column.
    pub fn state(&self) -> &'static str {
        match (self.info.consistent, self.pinned) {
            (true, true) => "pinned",
            (true, false) if self.after_alert => "suspect",
            _ => self.info.listed_state(),
        }
    }
}

pub struct Listing {
    pub checkpoints: Vec<Listed>,
    pub pins: Vec<Pin>,
    /// The oldest checkpoint the encryption detector pinned.
    pub last_clean: Option<u64>,
    /// What could not be read but did not stop the list.
    pub warnings: Vec<String>,
    /// How the index was read (see `JournalView::read`).
    pub read: (usize, usize, u64),
}

pub fn list(data_dir: &Path, vpg: &str) -> Result<Listing> {
    let mut view = JournalView::open(&data_dir.join("journal"), vpg)?;
    let pins = crate::journal::pins::load(&view.dir)?;
    let last_clean = pins.iter().filter(|p| super::pinning::is_detector_pin(&p.reason)).map(|p| p.checkpoint).min();
    let mut warnings = Vec::new();
    // A damaged verdicts file costs the column, never the list.
    let verdicts = super::fs_check::load(&view.dir).unwrap_or_else(|e| {
        warnings.push(format!("{e:#}"));
        Default::default()
    });
    if let Some(d) = &view.corruption {
        warnings.push(format!("journal damaged, checkpoints after it are not listed: {d}"));
    }
    let checkpoints = std::mem::take(&mut view.index.checkpoints)
        .into_iter()
        .map(|info| Listed {
            pinned: pins.binary_search_by_key(&info.id, |p| p.checkpoint).is_ok(),
            after_alert: last_clean.is_some_and(|c| info.id > c),
            check: verdicts.get(&info.id).map(|r| r.verdict.as_str().to_string()),
            info,
        })
        .collect();
    Ok(Listing { checkpoints, pins, last_clean, warnings, read: view.read })
}
