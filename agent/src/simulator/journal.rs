//! The recovery journal scenario: a model protected side sends batches of
//! records of every kind (resending from the journal's durable seq after
//! any failure, as the sender does), the journal's segment files take them
//! (`journal::segments`: append and fsync, or undo), and at any step
//! faults come and go, the process is killed, or the power is cut. After
//! each step the model says what must hold:
//! - an append fails only when a fault was injected, and a failed one
//!   leaves nothing: the batch comes again and is taken;
//! - after any stop the journal opens again (at worst once faults stop)
//!   and holds every record it acknowledged, an append's or an open's
//!   (the receiver advertises what an open found as durable, and the
//!   protected side retires its log up to it), each exactly as it was
//!   sent, in seq order without a gap.
//!
//! Not simulated here: the index, the stream rules, the applier and the
//! retiring of history (`Journal` around these files), and the link.

use super::harness::{Checked, Harness, Stop, OPEN_ATTEMPTS};
use super::rng::SimRng;
use super::{short, SeedReport, Violation};
use crate::journal::segments::{self, Rolling, SegmentFiles};
use crate::journal::JournalError;
use crate::record::{Record, RecordBody};
use crate::storage::sim::SimStorage;
use crate::storage::Storage;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const VPG_ID: u32 = 0x10_5EED;
const STEPS: u64 = 200;
/// Small segments, so that a batch often starts a new one.
const ROLLING: Rolling = Rolling { segment_bytes: 48 << 10, segment_age: Duration::from_secs(1 << 30) };

pub(super) fn run(seed: u64) -> Result<SeedReport, Box<Violation>> {
    let mut run = Run::new(seed);
    run.go().map(|()| run.h.report())
}

/// Opens the journal's segment files as a start does (`segments::recover`,
/// then the newest segment to append to), showing `visit` each record it
/// reads; with the damage it cut, if any.
pub(super) fn open_segments(
    fs: &SimStorage,
    dir: &Path,
    vpg_id: u32,
    rolling: Rolling,
    mut visit: impl FnMut(&Record),
) -> Result<(SegmentFiles, Option<String>), JournalError> {
    let forget = &mut |_: &Path| Ok(());
    let outcome = segments::recover(fs, dir, vpg_id, 0, forget, |rec, _| visit(rec))?;
    let files = SegmentFiles::open(Arc::new(fs.clone()), dir, vpg_id, rolling, outcome.last_seq + 1)?;
    Ok((files, outcome.damage.map(|d| d.to_string())))
}

pub(super) fn trace_of(seed: u64) -> Vec<String> {
    let mut run = Run::new(seed);
    let _ = run.go();
    run.h.trace
}

/// What the simulator knows must be true of the journal.
#[derive(Default)]
struct Model {
    /// Every record the protected side has, by seq: its encoding. Those
    /// past `acked` are sent (again) from there.
    records: BTreeMap<u64, Vec<u8>>,
    /// The journal said it holds every record through this seq.
    acked: u64,
}

struct Run {
    h: Harness,
    dir: PathBuf,
    files: Option<SegmentFiles>,
    model: Model,
}

impl Run {
    fn new(seed: u64) -> Self {
        let rng = SimRng::new(seed ^ 0x10A2_4A11_5EED_0002);
        Run {
            h: Harness::new(seed, rng, SimStorage::new(seed ^ 0x10A2), "journal: "),
            dir: PathBuf::from("/sim/journal"),
            files: None,
            model: Model::default(),
        }
    }

    fn go(&mut self) -> Checked {
        self.h.fs.create_dir_all(&self.dir).expect("a new simulated directory");
        self.reopen()?;
        while self.h.step < STEPS {
            self.h.step += 1;
            self.h.report.steps += 1;
            self.h.maybe_die();
            match self.h.rng.below(100) {
                0..=74 => self.append()?,
                75..=84 => self.h.toggle_faults(),
                85..=92 => self.restart(Stop::Crash)?,
                _ => self.restart(Stop::PowerCut)?,
            }
            if self.h.fs.is_dead() {
                let stop = self.h.stop_after_death();
                self.restart(stop)?;
            }
        }
        self.h.faults_on = false;
        self.h.apply_faults();
        self.restart(Stop::PowerCut)
    }

    /// The next record the protected side makes, at `seq`.
    fn make_record(&mut self, seq: u64) -> Vec<u8> {
        let body = if seq == 1 {
            RecordBody::StreamStart { time_ms: 1, stream_id: 7 }
        } else {
            match self.h.rng.below(10) {
                0 => RecordBody::Checkpoint { time_ms: seq, tag: format!("t{seq}"), resync: false },
                1 => RecordBody::Zero { volume: 0, offset: self.h.rng.below(1 << 20) * 512, length: 4096 },
                _ => {
                    let len = match self.h.rng.below(8) {
                        0 => 1 + self.h.rng.below(40 << 10) as usize,
                        _ => 1 + self.h.rng.below(4 << 10) as usize,
                    };
                    let mut data = vec![0u8; len];
                    self.h.rng.fill(&mut data);
                    RecordBody::Write {
                        volume: self.h.rng.below(3) as u32,
                        offset: self.h.rng.below(1 << 20) * 512,
                        data,
                    }
                }
            }
        };
        Record { seq, vpg_id: VPG_ID, body }.encode()
    }

    /// Sends the records after the journal's durable seq, some new ones
    /// among them, as one batch.
    fn append(&mut self) -> Checked {
        let first = self.model.acked + 1;
        let count = 1 + self.h.rng.below(6);
        let mut bytes = Vec::new();
        for seq in first..first + count {
            if !self.model.records.contains_key(&seq) {
                let record = self.make_record(seq);
                self.model.records.insert(seq, record);
            }
            bytes.extend_from_slice(&self.model.records[&seq]);
        }
        let last = first + count - 1;
        let files = self.files.as_mut().expect("the journal is open");
        match files.append(&bytes, first) {
            Ok(()) => {
                self.model.acked = last;
                self.h.report.journal_records += count;
                self.h.note(format!("append seqs {first}..={last} ({} bytes)", bytes.len()));
            }
            Err(e) => {
                let may_fail = self.h.faults_on || self.h.fs.is_dead();
                self.h.check(may_fail, "a journal append fails only on an injected fault", || {
                    crate::error_chain::Chain(&e).to_string()
                })?;
                self.h.note(format!(
                    "append seqs {first}..={last}: failed: {e_chain}",
                    e_chain = crate::error_chain::Chain(&e)
                ));
            }
        }
        Ok(())
    }

    fn restart(&mut self, stop: Stop) -> Checked {
        self.files = None;
        self.h.stop(stop);
        self.reopen()
    }

    /// Opens the journal after a stop (now and then dying while it does,
    /// its successor opening what it left), and checks what it holds.
    fn reopen(&mut self) -> Checked {
        self.h.maybe_die_opening();
        let mut faults = self.h.faults_on;
        for _attempt in 0..OPEN_ATTEMPTS {
            let mut read = Vec::new();
            let opened = self.open_once(&mut read);
            if self.h.died_opening("journal") {
                drop(opened);
                continue;
            }
            match opened {
                Ok((files, damage)) => {
                    self.h.apply_faults();
                    self.files = Some(files);
                    return self.check_opened(&read, damage);
                }
                Err(e) => self.h.open_failed(&e, &mut faults, "the journal opens again after any stop")?,
            }
        }
        Err(self.h.violation("the journal opens again after any stop", format!("not in {OPEN_ATTEMPTS} attempts")))
    }

    /// One open: what it read (seq, encoding) into `read`.
    fn open_once(&self, read: &mut Vec<(u64, Vec<u8>)>) -> Result<(SegmentFiles, Option<String>), JournalError> {
        open_segments(&self.h.fs, &self.dir, VPG_ID, ROLLING, |rec| read.push((rec.seq, rec.encode())))
    }

    fn check_opened(&mut self, read: &[(u64, Vec<u8>)], damage: Option<String>) -> Checked {
        let last = read.last().map_or(0, |(seq, _)| *seq);
        let acked = self.model.acked;
        self.h.check(last >= acked, "no record the journal acknowledged is lost", || {
            format!("acknowledged through {acked}, the journal opens ending at {last}; damage: {damage:?}")
        })?;
        // One check each for the whole journal read (it grows all run).
        let gap = read.iter().enumerate().find(|(i, (seq, _))| *seq != *i as u64 + 1);
        self.h.check(gap.is_none(), "the journal holds the stream in order, without gaps", || {
            let (i, (seq, _)) = gap.expect("found");
            format!("seq {seq} where {} was due", i + 1)
        })?;
        let differs = read.iter().find(|(seq, bytes)| self.model.records.get(seq) != Some(bytes));
        self.h.check(differs.is_none(), "the journal holds each record as it was sent", || {
            format!("seq {} differs", differs.expect("found").0)
        })?;
        // What an open finds is what the receiver advertises as durable.
        self.model.acked = last;
        if damage.is_some() {
            self.h.report.journal_cuts += 1;
        }
        self.h.note(format!(
            "opened: through seq {last}{}",
            damage.map(|d| format!(", cut: {}", short(&d))).unwrap_or_default()
        ));
        Ok(())
    }
}
