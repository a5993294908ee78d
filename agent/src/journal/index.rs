//! What the recovery side knows about a journal without reading its data:
//! the durable end, the checkpoints, and whether each checkpoint is a
//! complete image (every volume's initial copy is before it in its stream).
//! It starts from what the applier left (`apply_state.rs`): records at or
//! below the replica's seq are in the replica, not in the index.

use super::apply_state::ApplyState;
pub use super::checkpoint::CheckpointInfo;
use super::summary::{Entry, EntryKind};
use crate::record::Record;
use std::collections::BTreeSet;

#[derive(Debug, Clone)]
pub struct JournalIndex {
    volume_count: usize,
    /// The replica holds every record up to here.
    pub applied_seq: u64,
    pub durable_seq: u64,
    pub checkpoints: Vec<CheckpointInfo>,
    copied: BTreeSet<u32>,
    /// The newest checkpoint was taken during a resync: the stream's end
    /// is no consistent image until a consistent checkpoint follows.
    resyncing: bool,
    /// The stream the newest record belongs to (its StreamStart's id).
    pub stream_id: u32,
    pub records: u64,
    /// Set when the journal was found damaged (file, offset, reason).
    pub damage: Option<String>,
}

impl JournalIndex {
    pub fn new(volume_count: usize) -> Self {
        Self::from_applied(volume_count, &ApplyState::default())
    }

    /// An index whose history starts at the replica.
    pub fn from_applied(volume_count: usize, state: &ApplyState) -> Self {
        JournalIndex {
            volume_count,
            applied_seq: state.applied_seq,
            durable_seq: state.applied_seq,
            checkpoints: state.base.iter().cloned().collect(),
            copied: state.copied.iter().copied().collect(),
            resyncing: state.resyncing || state.base.as_ref().is_some_and(|b| b.resync),
            stream_id: state.stream_id,
            records: 0,
            damage: None,
        }
    }

    /// The applier moved the replica forward: older checkpoints are gone.
    pub fn applied(&mut self, state: &ApplyState) {
        self.applied_seq = state.applied_seq;
        self.checkpoints.retain(|c| c.id >= state.applied_seq);
    }

    /// The oldest checkpoint still recoverable (the replica's own).
    pub fn oldest(&self) -> Option<&CheckpointInfo> {
        self.checkpoints.first()
    }

    /// Records already in the replica (left in a partly applied segment)
    /// are skipped.
    pub fn observe(&mut self, rec: &Record) {
        self.observe_entry(&Entry::of(rec, 0, 0));
    }

    /// `observe` for a record read from a segment's summary.
    pub fn observe_entry(&mut self, entry: &Entry) {
        if entry.seq <= self.applied_seq {
            return;
        }
        assert!(entry.seq > self.durable_seq, "journal seqs must ascend ({} after {})", entry.seq, self.durable_seq);
        self.durable_seq = entry.seq;
        self.records += 1;
        match &entry.kind {
            EntryKind::StreamStart { stream_id, .. } => {
                self.stream_id = *stream_id;
                self.copied.clear();
                self.resyncing = false;
            }
            // A volume the VPG does not have cannot complete its copy.
            EntryKind::CopyDone { volume } if (*volume as usize) < self.volume_count => {
                self.copied.insert(*volume);
            }
            EntryKind::Checkpoint { time_ms, tag, resync } => {
                self.resyncing = *resync;
                self.checkpoints.push(CheckpointInfo {
                    id: entry.seq,
                    time_ms: *time_ms,
                    tag: tag.clone(),
                    consistent: self.copied.len() == self.volume_count && !resync,
                    resync: *resync,
                })
            }
            EntryKind::CopyDone { .. } | EntryKind::Write { .. } | EntryKind::Zero { .. } => {}
        }
    }

    pub fn resyncing(&self) -> bool {
        self.resyncing
    }

    pub fn copied_volumes(&self) -> Vec<u32> {
        self.copied.iter().copied().collect()
    }

    pub fn initial_copy_complete(&self) -> bool {
        self.copied.len() == self.volume_count
    }

    pub fn latest_consistent(&self) -> Option<&CheckpointInfo> {
        self.checkpoints.iter().rev().find(|c| c.consistent)
    }

    /// Finds a checkpoint by `latest`, `head`, numeric id, or tag.
    /// `head` is the journal's durable end: every prefix of the stream is
    /// crash-consistent, so it is a valid recovery point (RPO 0 in sync
    /// mode) even though no checkpoint record marks it.
    pub fn find(&self, wanted: &str) -> Option<CheckpointInfo> {
        if wanted == "head" {
            return (self.durable_seq > 0).then(|| CheckpointInfo {
                id: self.durable_seq,
                time_ms: crate::record::now_ms(),
                tag: "head".into(),
                consistent: self.initial_copy_complete() && !self.resyncing,
                resync: self.resyncing,
            });
        }
        if wanted == "latest" {
            return self.latest_consistent().cloned();
        }
        if let Ok(id) = wanted.parse::<u64>() {
            if id < self.applied_seq {
                return None;
            }
            if let Some(c) = self.checkpoints.iter().find(|c| c.id == id) {
                return Some(c.clone());
            }
        }
        self.checkpoints.iter().rev().find(|c| !c.tag.is_empty() && c.tag == wanted).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::RecordBody;

    fn rec(seq: u64, body: RecordBody) -> Record {
        Record { seq, vpg_id: 1, body }
    }

    fn checkpoint(seq: u64, tag: &str) -> Record {
        rec(seq, RecordBody::Checkpoint { time_ms: seq, tag: tag.into(), resync: false })
    }

    #[test]
    fn checkpoints_taken_during_a_resync_are_listed_but_not_consistent() {
        let mut index = JournalIndex::new(1);
        index.observe(&rec(1, RecordBody::StreamStart { time_ms: 0, stream_id: 7 }));
        index.observe(&rec(2, RecordBody::CopyDone { volume: 0 }));
        index.observe(&checkpoint(3, "before"));
        index.observe(&rec(4, RecordBody::Checkpoint { time_ms: 4, tag: "during".into(), resync: true }));
        let during = index.find("during").unwrap();
        assert!(during.resync && !during.consistent);
        assert_eq!(during.listed_state(), "inconsistent");
        assert!(during.not_restorable_why().unwrap().contains("resync"));
        assert_eq!(index.find("latest").unwrap().id, 3, "the last consistent checkpoint stays the latest");
        assert!(!index.find("head").unwrap().consistent, "the end of a resyncing stream is no image");
        index.observe(&checkpoint(5, "after"));
        assert_eq!(index.find("latest").unwrap().id, 5, "the first checkpoint after the resync is consistent");
        assert!(index.find("head").unwrap().consistent);
        assert_eq!(index.checkpoints.len(), 3);
    }

    #[test]
    fn replica_is_not_offered_before_every_initial_copy_completes() {
        let mut index = JournalIndex::new(2);
        index.observe(&rec(1, RecordBody::StreamStart { time_ms: 0, stream_id: 7 }));
        index.observe(&checkpoint(2, ""));
        index.observe(&rec(3, RecordBody::CopyDone { volume: 0 }));
        index.observe(&checkpoint(4, "half"));
        assert!(index.find("latest").is_none(), "no complete checkpoint while volume 1 is copying");
        assert!(!index.find("half").unwrap().consistent);
        assert!(!index.find("head").unwrap().consistent);
        index.observe(&rec(5, RecordBody::CopyDone { volume: 1 }));
        index.observe(&checkpoint(6, "full"));
        assert_eq!(index.find("latest").unwrap().id, 6);
        assert!(index.find("head").unwrap().consistent);
        // A new stream (lost protected log) starts over: nothing after it
        // is complete until both volumes are copied again.
        assert_eq!(index.stream_id, 7);
        index.observe(&rec(100, RecordBody::StreamStart { time_ms: 0, stream_id: 8 }));
        assert_eq!(index.stream_id, 8);
        index.observe(&checkpoint(101, ""));
        assert_eq!(index.find("latest").unwrap().id, 6);
        assert!(!index.find("101").unwrap().consistent);
    }

    #[test]
    #[should_panic(expected = "journal seqs must ascend")]
    fn seqs_going_backwards_is_a_bug() {
        let mut index = JournalIndex::new(1);
        index.observe(&checkpoint(5, ""));
        index.observe(&checkpoint(5, ""));
    }
}
