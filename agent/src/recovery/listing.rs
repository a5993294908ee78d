//! A VPG's checkpoints as `tidemark checkpoints` and the management API
//! list them: each with its pin, whether it came after an encryption
//! alert, and its file-system check verdict.

use super::JournalView;
use super::RecoveryError;
use crate::journal::index::CheckpointInfo;
use crate::journal::pins::Pin;
use serde::{Deserialize, Serialize};
use std::path::Path;

type Result<T, E = RecoveryError> = std::result::Result<T, E>;

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
        warnings.push(crate::error_chain::Chain(&e).to_string());
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

/// A tag that names a restorable checkpoint in every VPG asked about: a
/// coordinated checkpoint taken on every member (`crate::coordination`).
#[derive(Debug, Serialize, Deserialize)]
pub struct CommonTag {
    pub tag: String,
    /// The first VPG's checkpoint time.
    pub time_ms: u64,
    /// Each VPG's checkpoint id with that tag (the newest, as `--checkpoint`
    /// takes it), in the order the VPGs were named.
    pub ids: Vec<u64>,
}

/// The tags restorable in every one of `vpgs` on this appliance, oldest
/// first (by the first VPG's order). A tag whose newest checkpoint in some
/// VPG cannot be restored is left out.
pub fn common_tags(data_dir: &Path, vpgs: &[String]) -> Result<Vec<CommonTag>> {
    let mut per_vpg = Vec::new();
    for vpg in vpgs {
        let listing = list(data_dir, vpg)?;
        // The newest checkpoint of each tag, as a restore by tag finds it.
        let mut newest = std::collections::BTreeMap::new();
        for c in listing.checkpoints.into_iter().filter(|c| !c.info.tag.is_empty()) {
            newest.insert(c.info.tag.clone(), c.info);
        }
        per_vpg.push(newest);
    }
    let Some((first, rest)) = per_vpg.split_first() else { return Ok(Vec::new()) };
    let mut common: Vec<CommonTag> = first
        .values()
        .filter_map(|c| {
            let mut ids = vec![c.id];
            for other in rest {
                let found = other.get(&c.tag)?;
                ids.push(found.id);
                found.not_restorable_why().is_none().then_some(())?;
            }
            c.not_restorable_why().is_none().then(|| CommonTag { tag: c.tag.clone(), time_ms: c.time_ms, ids })
        })
        .collect();
    common.sort_by_key(|t| t.ids[0]);
    Ok(common)
}
