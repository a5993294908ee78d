//! A deterministic fault simulator (TigerBeetle's VOPR is the model): from
//! a seed, it drives the real storage code on `storage::sim::SimStorage`
//! with a `ManualClock`, injecting torn writes, EIO, ENOSPC, process
//! crashes and power cuts at any step, and after every step that can
//! break one checks the invariants the product promises. A failing seed
//! replays exactly (`make simulate SEED=N` prints its trace).
//!
//! Scenarios so far (`docs/simulator.md` lists what each checks and what
//! is not simulated yet):
//! - `protected_log`: the protected log, its sender's cursor and the
//!   batches it builds, against a model of what was appended, fsynced,
//!   sent and acknowledged.
//! - `journal`: the recovery journal's segment files, taking batches a
//!   model sender resends after every failure, against a model of what
//!   the journal acknowledged.
//! - `link`: both sides over a faulty in-memory link, each on its own
//!   faulty storage: the log and a sender's sessions, frames the link
//!   drops, duplicates, reorders or garbles, the journal's intake, and
//!   acks back; replication must never start over, and must catch up once
//!   the link heals.

mod harness;
mod journal;
mod link;
mod protected_log;
mod restore_check;
pub mod rng;

use std::fmt;
use std::path::Path;

/// What one seed did.
#[derive(Debug, Default, Clone, Copy)]
pub struct SeedReport {
    pub steps: u64,
    pub records_appended: u64,
    pub records_sent: u64,
    pub checks: u64,
    pub faults: u64,
    pub crashes: u64,
    pub power_cuts: u64,
    pub torn_tails: u64,
    pub failed_syncs: u64,
    pub failed_removals: u64,
    /// Appends that found the log full.
    pub full_log: u64,
    /// Opens that found in place a new stream whose start had failed.
    pub adopted_streams: u64,
    /// Spares made ahead of need, and preparations the file system's
    /// reserve stopped.
    pub spares_prepared: u64,
    pub spares_refused_for_disk: u64,
    /// Records the journal took (acknowledged appends).
    pub journal_records: u64,
    /// Journal opens that cut or quarantined damage (torn or failed writes).
    pub journal_cuts: u64,
    /// Sessions a sender started over the simulated link.
    pub sessions: u64,
    /// Frames the link dropped, duplicated, reordered or garbled.
    pub link_faults: u64,
    /// Checkpoints restored (by the real restore) and compared.
    pub restores: u64,
    /// Welcomes that said less than the journal held.
    pub stale_welcomes: u64,
}

impl SeedReport {
    pub fn add(&mut self, o: &SeedReport) {
        self.steps += o.steps;
        self.records_appended += o.records_appended;
        self.records_sent += o.records_sent;
        self.checks += o.checks;
        self.faults += o.faults;
        self.crashes += o.crashes;
        self.power_cuts += o.power_cuts;
        self.torn_tails += o.torn_tails;
        self.failed_syncs += o.failed_syncs;
        self.failed_removals += o.failed_removals;
        self.full_log += o.full_log;
        self.adopted_streams += o.adopted_streams;
        self.spares_prepared += o.spares_prepared;
        self.spares_refused_for_disk += o.spares_refused_for_disk;
        self.journal_records += o.journal_records;
        self.journal_cuts += o.journal_cuts;
        self.sessions += o.sessions;
        self.link_faults += o.link_faults;
        self.restores += o.restores;
        self.stale_welcomes += o.stale_welcomes;
    }
}

/// An invariant a seed broke, with the steps that led there.
#[derive(Debug)]
pub struct Violation {
    pub seed: u64,
    pub step: u64,
    pub invariant: &'static str,
    pub detail: String,
    /// The last steps, oldest first.
    pub trace: Vec<String>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "seed {} broke an invariant at step {}: {}", self.seed, self.step, self.invariant)?;
        writeln!(f, "  {}", self.detail)?;
        writeln!(f, "  the last {} steps:", self.trace.len())?;
        for line in &self.trace {
            writeln!(f, "    {line}")?;
        }
        Ok(())
    }
}

/// Runs every scenario on `seed`.
pub fn run_seed(seed: u64) -> Result<SeedReport, Box<Violation>> {
    let mut report = protected_log::run(seed)?;
    report.add(&journal::run(seed)?);
    report.add(&link::run(seed)?);
    Ok(report)
}

/// Every step `seed` takes, for reading a failure through.
pub fn trace_seed(seed: u64) -> Vec<String> {
    let mut trace = protected_log::trace_of(seed);
    trace.extend(journal::trace_of(seed));
    trace.extend(link::trace_of(seed));
    trace
}

/// A damage report with its path shortened to the file name.
fn short(text: &str) -> String {
    let name = |p: &str| Path::new(p).file_name().map(|n| n.to_string_lossy().into_owned());
    match text.split_once(": ") {
        Some((path, rest)) => format!("{}: {rest}", name(path).unwrap_or_default()),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fixed seeds `make test` runs (`make simulate` runs more).
    const TEST_SEEDS: std::ops::Range<u64> = 0..40;
    /// Seeds outside those that found a defect, kept so its fix stays
    /// tested: 48, a stream start that failed is taken in place at the
    /// next open, dropping records fsynced after it unreported.
    const REGRESSION_SEEDS: [u64; 1] = [48];

    #[test]
    fn fixed_seeds_hold_every_invariant() {
        let mut total = SeedReport::default();
        for seed in TEST_SEEDS.chain(REGRESSION_SEEDS) {
            match run_seed(seed) {
                Ok(r) => total.add(&r),
                Err(v) => panic!("{v}"),
            }
        }
        // The seeds must reach what they are there to test, the paths of
        // earlier fixes among them.
        assert!(total.power_cuts > 0 && total.crashes > 0 && total.faults > 0 && total.torn_tails > 0, "{total:?}");
        assert!(total.records_sent > 0, "{total:?}");
        assert!(total.failed_syncs > 0 && total.failed_removals > 0, "{total:?}");
        assert!(total.full_log > 0 && total.adopted_streams > 0, "{total:?}");
        assert!(total.spares_prepared > 0 && total.spares_refused_for_disk > 0, "{total:?}");
        assert!(total.journal_records > 0 && total.journal_cuts > 0, "{total:?}");
        assert!(total.sessions > 0 && total.link_faults > 0 && total.restores > 0, "{total:?}");
        assert!(total.stale_welcomes > 0, "{total:?}");
    }

    #[test]
    fn a_seed_replays_exactly() {
        let a = protected_log::trace_of(11);
        let b = protected_log::trace_of(11);
        assert!(!a.is_empty());
        assert_eq!(a, b);
    }
}
