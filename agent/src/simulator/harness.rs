//! What every scenario's run keeps besides its model: its seed and random
//! stream, its faulty storage, the step it is at, the trace of what it
//! did, and its counts; and the checks and notes every scenario makes.

use super::rng::SimRng;
use super::{SeedReport, Violation};
use crate::error_chain::Chain;
use crate::log::ProtectedLog;
use crate::storage::sim::SimStorage;
use std::future::Future;
use std::time::Duration;

/// While faults are on, the chance each fallible storage operation fails.
pub(super) const FAULT_PER_MILLE: u32 = 40;
/// The chance, at each step, that the process dies within its next few
/// storage operations (inside whatever the step does).
pub(super) const DEATH_PER_MILLE: u64 = 40;
/// The chance that a process opening what a stop left dies while it does.
pub(super) const OPEN_DEATH_PER_MILLE: u64 = 150;
/// A death while opening, a fault, then a clean open.
pub(super) const OPEN_ATTEMPTS: usize = 3;
/// The steps a violation shows.
const TRACE_SHOWN_STEPS: usize = 40;
/// One group commit in this many ends an epoch, storing the durable seq
/// as the next open's hint (`ProtectedLog::open`'s `durable_through`).
const HINT_STORED_ONE_IN: u64 = 4;
/// Longer than any wait of a healthy log on this in-memory storage.
pub(super) const WAIT_LIMIT: Duration = Duration::from_secs(20);

pub(super) type Checked = Result<(), Box<Violation>>;

/// How a process stops.
pub(super) enum Stop {
    Crash,
    PowerCut,
}

pub(super) struct Harness {
    pub seed: u64,
    pub rng: SimRng,
    pub fs: SimStorage,
    pub faults_on: bool,
    pub step: u64,
    pub trace: Vec<String>,
    pub report: SeedReport,
    /// Put before each note (which scenario's trace it is).
    prefix: &'static str,
}

impl Harness {
    pub fn new(seed: u64, rng: SimRng, fs: SimStorage, prefix: &'static str) -> Self {
        Harness { seed, rng, fs, faults_on: false, step: 0, trace: Vec::new(), report: SeedReport::default(), prefix }
    }

    /// The counts of the run, the storage's among them.
    pub fn report(&self) -> SeedReport {
        let fs = self.fs.stats();
        SeedReport {
            faults: fs.faults,
            crashes: fs.crashes,
            power_cuts: fs.power_cuts,
            torn_tails: fs.torn_tails,
            failed_syncs: fs.failed_syncs,
            failed_removals: fs.failed_removals,
            ..self.report
        }
    }

    pub fn note(&mut self, what: String) {
        self.trace.push(format!("{:>3} {}{what}", self.step, self.prefix));
    }

    pub fn violation(&self, invariant: &'static str, detail: String) -> Box<Violation> {
        let shown = self.trace.len().saturating_sub(TRACE_SHOWN_STEPS);
        Box::new(Violation { seed: self.seed, step: self.step, invariant, detail, trace: self.trace[shown..].to_vec() })
    }

    pub fn check(&mut self, holds: bool, invariant: &'static str, detail: impl FnOnce() -> String) -> Checked {
        self.report.checks += 1;
        if holds {
            Ok(())
        } else {
            Err(self.violation(invariant, detail()))
        }
    }

    /// Whether an operation may fail now: faults are on, or the process
    /// died in the middle of the step.
    pub fn may_fail(&self) -> bool {
        self.faults_on || self.fs.is_dead()
    }

    /// The storage fails as the run chose (`faults_on`).
    pub fn apply_faults(&self) {
        self.fs.set_fault_per_mille(if self.faults_on { FAULT_PER_MILLE } else { 0 });
    }

    pub fn toggle_faults(&mut self) {
        self.faults_on = !self.faults_on;
        self.apply_faults();
        self.note(format!("faults {}", if self.faults_on { "on" } else { "off" }));
    }

    /// Now and then, the process will die within its next few storage
    /// operations.
    pub fn maybe_die(&mut self) {
        if self.rng.chance(DEATH_PER_MILLE) {
            let ops = self.rng.below(8);
            self.fs.die_after(ops);
            self.note(format!("the process will die after {ops} more storage operations"));
        }
    }

    /// Now and then, the process about to open what a stop left will die
    /// while it does.
    pub fn maybe_die_opening(&mut self) {
        if self.rng.chance(OPEN_DEATH_PER_MILLE) {
            let ops = self.rng.below(12);
            self.fs.die_after(ops);
            self.note(format!("the opening process will die after {ops} more storage operations"));
        }
    }

    /// When the process opening `what` died: killed or its power cut
    /// (true: it is to be opened again).
    pub fn died_opening(&mut self, what: &str) -> bool {
        if !self.fs.is_dead() {
            return false;
        }
        if self.rng.below(2) == 0 {
            self.fs.crash();
            self.note(format!("the process died while opening the {what}: kill"));
        } else {
            self.fs.power_cut();
            self.note(format!("the process died while opening the {what}: cut the power"));
        }
        true
    }

    /// An open that failed: with faults on, tried again without them; with
    /// them off, `invariant` is broken.
    pub fn open_failed(
        &mut self,
        e: &(dyn std::error::Error + Send + Sync + 'static),
        faults: &mut bool,
        invariant: &'static str,
    ) -> Checked {
        if !*faults {
            return Err(self.violation(invariant, Chain(e).to_string()));
        }
        self.note(format!("open failed on a fault: {}; again without faults", Chain(e)));
        *faults = false;
        self.fs.set_fault_per_mille(0);
        Ok(())
    }

    /// Stops the process as `stop` says.
    pub fn stop(&mut self, stop: Stop) {
        match stop {
            Stop::Crash => {
                self.fs.crash();
                self.note("kill the process".into());
            }
            Stop::PowerCut => {
                self.fs.power_cut();
                self.note("cut the power".into());
            }
        }
    }

    /// The log's group commit makes everything appended durable, and
    /// `durable_seq` moves to it, unless the process dies first. Now and
    /// then (an epoch's end) the agent stores it in its activity log as
    /// the hint the next open gets (`durable_hint`): the hint lags.
    pub async fn sync_log(&mut self, log: &ProtectedLog, durable_seq: &mut u64, durable_hint: &mut u64) -> Checked {
        let target = log.appended_seq();
        match wait_unless_died(&self.fs, log.sync_to(target)).await {
            Waited::Done(Ok(())) => {
                *durable_seq = (*durable_seq).max(target);
                if self.rng.below(HINT_STORED_ONE_IN) == 0 {
                    *durable_hint = *durable_seq;
                }
                self.note(format!("sync through {target}"));
                Ok(())
            }
            Waited::Died => {
                self.note(format!("sync through {target}: the process died"));
                Ok(())
            }
            Waited::Done(Err(e)) => Err(self.violation("the group commit syncs", Chain(&e).to_string())),
            Waited::Hung => Err(self.violation("the group commit syncs", format!("sync_to({target}) hangs"))),
        }
    }

    /// A process that died inside a step: killed or its power cut, by lot.
    pub fn stop_after_death(&mut self) -> Stop {
        self.note("the process died in the middle of that step".into());
        if self.rng.below(2) == 0 {
            Stop::Crash
        } else {
            Stop::PowerCut
        }
    }
}

/// How a wait on work of the log's threads ended.
pub(super) enum Waited<T> {
    Done(T),
    /// The process died first: its storage fails from then on, and the
    /// work may never end.
    Died,
    /// Not within `WAIT_LIMIT`.
    Hung,
}

/// Waits for `work` unless the process on `fs` dies first.
pub(super) async fn wait_unless_died<T>(fs: &SimStorage, work: impl Future<Output = T>) -> Waited<T> {
    let died = async {
        while !fs.is_dead() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    tokio::select! {
        biased;
        done = tokio::time::timeout(WAIT_LIMIT, work) => done.map_or(Waited::Hung, Waited::Done),
        () = died => Waited::Died,
    }
}
