//! The recovery journal of one VPG: ordered segment files of records as the
//! protected side sent them, fsynced before they are acknowledged. The
//! index (`index.rs`) is rebuilt from the segments at every start; damage
//! is found by `scan.rs`, reported with file and offset, and never used.

pub mod applier;
pub mod apply_state;
pub mod catalog;
pub mod checkpoint;
mod error;
pub mod extent_map;
pub mod index;
pub mod intake;
pub mod lease;
pub mod pins;
pub mod replica;
pub mod scan;
pub mod segments;
pub mod summary;
pub mod summary_file;
#[cfg(feature = "test-build")]
pub mod synth;

pub use error::{JournalError, Refusal};

use crate::durable::{replace_file, FileMode};
use crate::io_failure::Doing;
use crate::storage::Storage;
use crate::wire::batch::DecodedBatch;
use crate::wire::message::VolumeInfo;
use applier::HistoryPolicy;
use apply_state::ApplyState;
use index::JournalIndex;
use segments::{Rolling, SegmentFiles};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

type Result<T> = std::result::Result<T, JournalError>;

/// A segment is closed and a new one started past this size.
pub const JOURNAL_SEGMENT_BYTES: u64 = 64 << 20;
const META_FILE: &str = "journal.json";

/// What the journal is a journal of; written once, checked on every open.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct JournalMeta {
    pub vpg: String,
    pub vpg_id: u32,
    pub volumes: Vec<VolumeInfo>,
}

impl JournalMeta {
    pub fn load(dir: &Path) -> Result<JournalMeta> {
        let path = dir.join(META_FILE);
        let bytes = std::fs::read(&path).doing(|| format!("reading {}", path.display()))?;
        error::parse(&path, &bytes)
    }

    pub(crate) fn store(&self, dir: &Path) -> Result<()> {
        let json = error::encode(META_FILE, self, false)?;
        Ok(replace_file(&dir.join(META_FILE), &json, FileMode::Public)?)
    }
}

/// Present once a VPG was failed over or moved here (`recovery::failover`
/// writes it): the replica is then a live volume, not history.
pub const FAILOVER_RECORD_FILE: &str = "failover.json";

pub fn vpg_dir(journal_root: &Path, vpg: &str) -> PathBuf {
    journal_root.join(vpg)
}

pub struct Journal {
    dir: PathBuf,
    pub meta: JournalMeta,
    segments: SegmentFiles,
    pub index: JournalIndex,
    cap: CapGauge,
}

/// `journal_cap`, and the bytes on disk as last measured plus what was
/// appended since. Retiring only shrinks the truth; the summaries the
/// applier writes between measurements add a little (a few KiB per sealed
/// segment), which a cap in MiB absorbs.
struct CapGauge {
    cap: Option<u64>,
    bytes_at_most: u64,
    /// Why the last batch was refused at the cap, until one fits again.
    capped: Option<String>,
}

impl Journal {
    /// Opens (or creates) the journal for `meta.vpg`. A torn tail is cut;
    /// a corrupt record moves the damaged segment's original and all later
    /// segments to `quarantine/` and the journal continues from the last
    /// good record, so the sender resends or restarts the stream. An apply
    /// a crash interrupted is finished here, before anything reads.
    pub fn open(dir: &Path, meta: JournalMeta, policy: &HistoryPolicy) -> Result<Journal> {
        // An open that takes long (a slow disk, a seeded replica's check).
        fail::fail_point!("journal-open");
        std::fs::create_dir_all(dir).doing(|| format!("creating journal {}", dir.display()))?;
        match JournalMeta::load(dir) {
            Ok(existing) if existing == meta => {}
            Ok(existing) => {
                return Err(JournalError::CreatedForOther {
                    dir: dir.to_path_buf(),
                    vpg: existing.vpg,
                    volumes: existing.volumes,
                    now: meta.volumes,
                })
            }
            Err(_) if !dir.join(META_FILE).exists() => meta.store(dir)?,
            Err(e) => return Err(e),
        }
        // A seeded replica (`tidemark seed`) is checked against the volumes
        // now, and gets zero images for the volumes it was not given, so a
        // reader finds every image before the first apply.
        // (Under the apply lock: a seed that is still writing finishes first.)
        {
            let _seeding = lease::ApplyLock::shared(dir)?;
            if apply_state::ApplyState::load(dir)?.applied_seq == 0 && replica::replica_dir(dir).exists() {
                replica::VolumeFiles::open_replica(dir, &meta.volumes, true)
                    .map_err(|e| JournalError::SeedMismatch(Box::new(e)))?;
            }
        }
        let state = ApplyState::load(dir)?;
        let mut index = JournalIndex::from_applied(meta.volumes.len(), &state);
        let fs: Arc<dyn Storage> = Arc::new(crate::storage::RealStorage);
        let forget = &mut |segment: &Path| summary::forget(segment);
        let outcome =
            segments::recover(&*fs, dir, meta.vpg_id, state.applied_seq, forget, |rec, _| index.observe(rec))?;
        if let Some(damage) = &outcome.damage {
            index.damage = Some(damage.to_string());
        }
        if let Some(target) = state.applying_to {
            tracing::warn!(vpg = %meta.vpg, "finishing an apply to seq {target} that was interrupted");
            let _lock = lease::ApplyLock::exclusive(dir)?;
            // One that cannot be finished now (a full disk, damage in the
            // records it needs) stays pending: the applier tries it again
            // and says why in status, and the journal still takes batches
            // and serves the checkpoints from the target on. Failing the
            // open stopped the whole recovery agent at every start, every
            // VPG with it (review of helper-50).
            match applier::apply_to(dir, &meta, &state, target, false) {
                Ok((applied, _)) => index.applied(&applied),
                Err(e) => tracing::error!(
                    vpg = %meta.vpg,
                    "the interrupted apply to seq {target} cannot be finished now (the applier tries again): {e_chain}",
                    e_chain = crate::error_chain::Chain(&e)
                ),
            }
        }
        let rolling = Rolling { segment_bytes: policy.segment_bytes(), segment_age: policy.segment_age() };
        let segments = SegmentFiles::open(fs, dir, meta.vpg_id, rolling, index.durable_seq + 1)?;
        Ok(Journal {
            dir: dir.to_path_buf(),
            meta,
            segments,
            index,
            cap: CapGauge { cap: policy.journal_cap, bytes_at_most: applier::journal_bytes(dir)?, capped: None },
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn durable_seq(&self) -> u64 {
        self.index.durable_seq
    }

    /// Set while batches are refused at `journal_cap`: why, for status.
    pub fn capped(&self) -> Option<&str> {
        self.cap.capped.as_deref()
    }

    /// Appends a verified batch after `durable_seq`, fsyncs, and returns
    /// the new durable seq (`intake::append` says what a batch must meet;
    /// replays are skipped). At `journal_cap` the batch is refused. On an
    /// error nothing of the batch stays in the journal.
    pub fn append(&mut self, batch: &DecodedBatch, session_stream: u32) -> Result<u64> {
        let Journal { dir, meta, segments, index, cap, .. } = self;
        let room = &mut |len| cap.check(dir, &meta.vpg, len);
        let appended = intake::append(segments, index, meta, batch, session_stream, room)?;
        self.cap.bytes_at_most += appended.bytes;
        Ok(appended.durable_seq)
    }
}

impl CapGauge {
    /// Refuses `len` more bytes when they would take the journal past its
    /// cap. The count is measured again only near the cap, where the
    /// applier's retiring may have made room.
    fn check(&mut self, dir: &Path, vpg: &str, len: u64) -> Result<()> {
        let Some(cap) = self.cap else { return Ok(()) };
        if self.bytes_at_most + len > cap {
            self.bytes_at_most = applier::journal_bytes(dir)?;
        }
        if self.bytes_at_most + len <= cap {
            self.capped = None;
            return Ok(());
        }
        let why = format!(
            "the journal of VPG {} holds {} and is at its journal_cap of {}: the batch is refused and the \
             protected site keeps it in its log until the applier retires history (a pinned checkpoint or \
             an open export can hold that back)",
            vpg,
            crate::status::format_bytes(self.bytes_at_most),
            crate::status::format_bytes(cap)
        );
        self.capped = Some(why.clone());
        Err(JournalError::Full(why))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Record, RecordBody};
    use crate::segment::SegmentKind;
    use std::time::Duration;

    pub(super) const VPG_ID: u32 = 5;

    pub(super) fn meta() -> JournalMeta {
        JournalMeta { vpg: "db".into(), vpg_id: VPG_ID, volumes: vec![VolumeInfo { name: "v".into(), size: 1 << 20 }] }
    }

    pub(super) fn policy() -> HistoryPolicy {
        HistoryPolicy { history: Duration::from_secs(60), journal_limit: None, journal_cap: None }
    }

    /// A decoded batch of `bodies` at seqs `first..`.
    pub(super) fn batch(first: u64, bodies: Vec<RecordBody>) -> DecodedBatch<'static> {
        let records: Vec<Record> = bodies
            .into_iter()
            .enumerate()
            .map(|(i, body)| Record { seq: first + i as u64, vpg_id: VPG_ID, body })
            .collect();
        crate::wire::batch::decode(&crate::wire::batch::encode(&records).bytes, VPG_ID).unwrap().into_owned()
    }

    pub(super) fn write(seq: u64) -> RecordBody {
        RecordBody::Write { volume: 0, offset: seq * 4096 % (1 << 20), data: vec![seq as u8; 4096] }
    }

    /// The stream's rules hold for every record of a batch, not only its
    /// first fresh one: no gap inside a batch, and a StreamStart only
    /// first (a batch that reads on from one stream into the next, which
    /// a sender's cursor can build when a new stream starts under a
    /// session). Review finding of helper-29.
    #[test]
    fn the_rules_hold_past_the_first_fresh_record() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("db");
        let mut j = Journal::open(&dir, meta(), &policy()).unwrap();
        let start = RecordBody::StreamStart { time_ms: 1, stream_id: 7 };
        assert_eq!(j.append(&batch(1, vec![start, write(2)]), 7).unwrap(), 2);
        let at = |seq: u64, body: RecordBody| Record { seq, vpg_id: VPG_ID, body };
        let decoded = |records: Vec<Record>| {
            crate::wire::batch::decode(&crate::wire::batch::encode(&records).bytes, VPG_ID).unwrap().into_owned()
        };
        let gap = decoded(vec![at(3, write(3)), at(9, write(9))]);
        let err = j.append(&gap, 7).expect_err("a gap inside a batch");
        assert!(
            crate::error_chain::Chain(&err).to_string().contains("gap"),
            "{err_chain}",
            err_chain = crate::error_chain::Chain(&err)
        );
        let other = RecordBody::StreamStart { time_ms: 2, stream_id: 99 };
        let into_another = decoded(vec![at(3, write(3)), at(4, other), at(5, write(5))]);
        let err = j.append(&into_another, 7).expect_err("a StreamStart inside a batch");
        assert!(
            crate::error_chain::Chain(&err).to_string().contains("StreamStart"),
            "{err_chain}",
            err_chain = crate::error_chain::Chain(&err)
        );
        assert_eq!((j.durable_seq(), j.index.stream_id), (2, 7), "a refused batch changed the journal");
        drop(j);
        let j = Journal::open(&dir, meta(), &policy()).unwrap();
        assert_eq!((j.durable_seq(), j.index.stream_id), (2, 7), "a refused batch reached the disk");
    }

    #[test]
    fn a_stream_is_continued_only_by_a_log_of_that_stream() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("db");
        let mut j = Journal::open(&dir, meta(), &policy()).unwrap();
        let start = RecordBody::StreamStart { time_ms: 1, stream_id: 7 };
        // A sender must start its stream: no records without a StreamStart.
        assert!(j.append(&batch(10, vec![write(10)]), 7).is_err());
        // The StreamStart must be of the stream the sender announced.
        assert!(j.append(&batch(10, vec![start.clone()]), 8).is_err());
        assert_eq!(j.append(&batch(10, vec![start, write(11)]), 7).unwrap(), 11);
        // Another log (a rebuilt one reusing seqs) cannot continue it.
        let err = j.append(&batch(12, vec![write(12)]), 9).unwrap_err();
        assert!(
            crate::error_chain::Chain(&err).to_string().contains("cannot continue"),
            "{err_chain}",
            err_chain = crate::error_chain::Chain(&err)
        );
        assert_eq!(j.append(&batch(12, vec![write(12)]), 7).unwrap(), 12);
        // Records outside the VPG's volumes are refused with their batch.
        let past_end = RecordBody::Zero { volume: 0, offset: (1 << 20) - 4096, length: 8192 };
        assert!(j.append(&batch(13, vec![past_end]), 7).is_err());
        assert!(j.append(&batch(13, vec![RecordBody::CopyDone { volume: 3 }]), 7).is_err());
        assert_eq!(j.durable_seq(), 12);
        // It may start its own stream after the journal's end.
        let other = RecordBody::StreamStart { time_ms: 2, stream_id: 9 };
        assert_eq!(j.append(&batch(20, vec![other, write(21)]), 9).unwrap(), 21);
        drop(j);
        let j = Journal::open(&dir, meta(), &policy()).unwrap();
        assert_eq!((j.durable_seq(), j.index.stream_id), (21, 9));
    }

    /// At `journal_cap` a batch is refused and leaves the journal as it
    /// was; once the applier retires a segment, the same batch fits.
    #[test]
    fn at_its_cap_the_journal_refuses_a_batch_until_history_is_retired() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("db");
        let mut j = Journal::open(&dir, meta(), &policy()).unwrap();
        let start = RecordBody::StreamStart { time_ms: 1, stream_id: 7 };
        assert_eq!(j.append(&batch(1, vec![start, write(2)]), 7).unwrap(), 2);
        // Every batch from here opens a segment of its own.
        j.segments.set_segment_bytes(0);
        assert_eq!(j.append(&batch(3, vec![write(3)]), 7).unwrap(), 3);
        let segments = crate::segment::list_segments(&dir, SegmentKind::Journal).unwrap();
        assert_eq!(segments.len(), 2);
        let held = applier::journal_bytes(&dir).unwrap();
        j.cap.cap = Some(held + 1024);
        let err = j.append(&batch(4, vec![write(4)]), 7).unwrap_err();
        assert!(
            crate::error_chain::Chain(&err).to_string().contains("at its journal_cap"),
            "{err_chain}",
            err_chain = crate::error_chain::Chain(&err)
        );
        assert!(j.capped().is_some_and(|why| why.contains("pinned checkpoint")));
        assert_eq!(j.durable_seq(), 3);
        assert_eq!(applier::journal_bytes(&dir).unwrap(), held, "a refused batch changed the journal");
        assert_eq!(crate::segment::list_segments(&dir, SegmentKind::Journal).unwrap(), segments);
        // The applier retires the first segment: room again.
        std::fs::remove_file(&segments[0].1).unwrap();
        assert_eq!(j.append(&batch(4, vec![write(4)]), 7).unwrap(), 4);
        assert!(j.capped().is_none());
    }
}

/// Tests that make the storage fail at exact points (`--features
/// failpoints`; `make unit` runs them one at a time: a failpoint is
/// process-wide).
#[cfg(all(test, feature = "test-build"))]
mod failpoints {
    use super::*;
    use crate::record::{Record, RecordBody};
    use crate::segment::{create_segment, SegmentKind};
    use std::io::Write;

    const VPG_ID: u32 = 5;

    fn meta() -> JournalMeta {
        JournalMeta { vpg: "db".into(), vpg_id: VPG_ID, volumes: vec![VolumeInfo { name: "v".into(), size: 1 << 20 }] }
    }

    /// A journal of seqs 1..=3 in one segment; returns its bytes.
    fn journal(dir: &Path) -> Vec<u8> {
        meta().store(dir).unwrap();
        let (path, mut f) = create_segment(dir, SegmentKind::Journal, VPG_ID, 1).unwrap();
        for seq in 1..=3 {
            let body = RecordBody::Write { volume: 0, offset: seq * 4096, data: vec![seq as u8; 4096] };
            f.write_all(&Record { seq, vpg_id: VPG_ID, body }.encode()).unwrap();
        }
        std::fs::read(path).unwrap()
    }

    #[test]
    fn a_read_error_at_open_is_reported_and_cuts_nothing() {
        let scenario = fail::FailScenario::setup();
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("db");
        std::fs::create_dir(&dir).unwrap();
        let bytes = journal(&dir);
        let policy = super::tests::policy();
        // The second record's read fails with EIO.
        fail::cfg("segment-read", "2*off->return").unwrap();
        let err = Journal::open(&dir, meta(), &policy).err().expect("an I/O error must fail the open");
        assert!(
            crate::error_chain::Chain(&err).to_string().contains("read error"),
            "{err_chain}",
            err_chain = crate::error_chain::Chain(&err)
        );
        fail::remove("segment-read");
        let segments = crate::segment::list_segments(&dir, SegmentKind::Journal).unwrap();
        assert_eq!(segments.len(), 1);
        assert_eq!(std::fs::read(&segments[0].1).unwrap(), bytes, "the segment was changed on a read error");
        assert!(!dir.join(super::segments::QUARANTINE_DIR).exists(), "a read error is not corruption");
        // Once the storage reads again, every record is there.
        assert_eq!(Journal::open(&dir, meta(), &policy).unwrap().durable_seq(), 3);
        scenario.teardown();
    }

    /// ENOSPC half way through a batch: the part written is undone, and
    /// the resent batch is acknowledged and read back whole (once it was
    /// acknowledged after garbage that restores and the applier stop at).
    #[test]
    fn a_failed_append_is_undone_before_the_batch_comes_again() {
        use super::tests::{batch, policy, write};
        let scenario = fail::FailScenario::setup();
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("db");
        let mut j = Journal::open(&dir, meta(), &policy()).unwrap();
        let start = RecordBody::StreamStart { time_ms: 1, stream_id: 7 };
        assert_eq!(j.append(&batch(1, vec![start, write(2)]), 7).unwrap(), 2);
        let next = batch(3, vec![write(3), write(4), write(5)]);
        fail::cfg("journal-append-torn", "1*return").unwrap();
        assert!(j.append(&next, 7).is_err());
        fail::remove("journal-append-torn");
        assert_eq!(j.durable_seq(), 2);
        assert_eq!(j.append(&next, 7).unwrap(), 5);
        drop(j);
        let j = Journal::open(&dir, meta(), &policy()).unwrap();
        assert_eq!(j.durable_seq(), 5);
        assert!(j.index.damage.is_none(), "{:?}", j.index.damage);
        scenario.teardown();
    }
}
