//! Pinned checkpoints: points in history an operator (or, later, the
//! encryption detector) wants kept whatever the window and the journal
//! limit say. `<vpg>/pins.json` lists them; the applier never moves the
//! replica past the oldest, so every pinned checkpoint stays restorable
//! and the journal grows past `journal_limit` while a pin holds (status
//! warns). A pin goes only by an explicit `tidemark unpin`.
//!
//! Pins change under the exclusive apply lock, so an applier pass sees
//! the list before a change or after it, and a pin is refused once the
//! replica is past its checkpoint (`lease::check_readable`).

use super::apply_state::ApplyState;
use super::error::JournalError;
use super::lease::{check_readable, ApplyLock};
use crate::durable::{replace_file, FileMode};
use crate::io_failure::IoFailure;
use serde::{Deserialize, Serialize};
use std::path::Path;

type Result<T> = std::result::Result<T, JournalError>;

const PINS_FILE: &str = "pins.json";
pub use crate::names::PIN_REASON_BYTES_MAX;
/// More would be a mistake in a script, not a plan.
pub const PINS_MAX: usize = 64;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Pin {
    pub checkpoint: u64,
    pub reason: String,
    pub since_ms: u64,
}

/// The VPG's pins, oldest checkpoint first (none if the file is absent).
pub fn load(vpg_dir: &Path) -> Result<Vec<Pin>> {
    let path = vpg_dir.join(PINS_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let mut pins: Vec<Pin> = super::error::parse(&path, &bytes)?;
            pins.sort_by_key(|p| p.checkpoint);
            Ok(pins)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(IoFailure::new(format!("reading {}", path.display()), e).into()),
    }
}

fn store(vpg_dir: &Path, pins: &[Pin]) -> Result<()> {
    let json = super::error::encode(PINS_FILE, pins, false)?;
    Ok(replace_file(&vpg_dir.join(PINS_FILE), &json, FileMode::Public)?)
}

/// Pins `checkpoint` (already resolved to a complete checkpoint by the
/// caller). Pinning a pinned checkpoint again changes nothing.
pub fn pin(vpg_dir: &Path, checkpoint: u64, reason: &str, now_ms: u64) -> Result<Pin> {
    if !crate::names::is_pin_reason(reason) {
        let why = format!("--reason: at most {PIN_REASON_BYTES_MAX} bytes of text on one line");
        return Err(JournalError::Unavailable(why));
    }
    let _lock = ApplyLock::exclusive(vpg_dir)?;
    if vpg_dir.join(super::FAILOVER_RECORD_FILE).exists() {
        return Err(JournalError::Unavailable("the VPG was failed over; its history is closed".to_string()));
    }
    check_readable(&ApplyState::load(vpg_dir)?, checkpoint)?;
    let mut pins = load(vpg_dir)?;
    if let Some(p) = pins.iter().find(|p| p.checkpoint == checkpoint) {
        return Ok(p.clone());
    }
    if pins.len() >= PINS_MAX {
        let why = format!("the VPG already has {PINS_MAX} pins; release one with `tidemark unpin` first");
        return Err(JournalError::Unavailable(why));
    }
    let new = Pin { checkpoint, reason: reason.to_string(), since_ms: now_ms };
    pins.push(new.clone());
    pins.sort_by_key(|p| p.checkpoint);
    store(vpg_dir, &pins)?;
    Ok(new)
}

/// Releases the pin of `checkpoint`; the applier may then move on.
pub fn unpin(vpg_dir: &Path, checkpoint: u64) -> Result<Pin> {
    let _lock = ApplyLock::exclusive(vpg_dir)?;
    let mut pins = load(vpg_dir)?;
    let Some(i) = pins.iter().position(|p| p.checkpoint == checkpoint) else {
        return Err(JournalError::Unavailable(format!(
            "checkpoint {checkpoint} is not pinned (see `tidemark checkpoints`)"
        )));
    };
    let gone = pins.remove(i);
    store(vpg_dir, &pins)?;
    Ok(gone)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_persist_until_released_and_refuse_what_the_replica_passed() {
        let dir = tempfile::tempdir().unwrap();
        ApplyState { applied_seq: 10, ..Default::default() }.store(dir.path()).unwrap();
        let err = pin(dir.path(), 9, "too late", 1).err().unwrap().to_string();
        assert!(err.contains("older than the history window"), "{err}");
        pin(dir.path(), 30, "b", 2).unwrap();
        pin(dir.path(), 20, "a", 3).unwrap();
        assert_eq!(pin(dir.path(), 30, "again", 4).unwrap().reason, "b", "a second pin changes nothing");
        let listed: Vec<u64> = load(dir.path()).unwrap().iter().map(|p| p.checkpoint).collect();
        assert_eq!(listed, [20, 30]);
        assert!(pin(dir.path(), 40, "two\nlines", 5).is_err());
        unpin(dir.path(), 20).unwrap();
        assert!(unpin(dir.path(), 20).err().unwrap().to_string().contains("not pinned"));
        assert_eq!(load(dir.path()).unwrap().len(), 1);
    }
}
