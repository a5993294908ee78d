//! Online verify (`tidemark verify`): proves that the recovery journal
//! holds what the volumes hold, while writes go on.
//!
//! Per 512 MiB of a volume, a checkpoint is taken, and under the same hold
//! of the write-order lock a map of the extents written after it starts.
//! Once the recovery side has the checkpoint, it hashes its image there
//! (replica plus journal) extent by extent. An extent that nobody wrote
//! since the checkpoint still holds what it held then, so its hash must be
//! equal; one written since is tried again at a newer checkpoint, and after
//! `VERIFY_PASSES` counted as changed, not compared (its newer data is in
//! the stream). Each read and its check of the map happen under the order
//! lock, where every write marks the map before it changes the volume. A
//! checkpoint per 512 MiB keeps the recovery side's lease to one question
//! (the applier is not held back for the whole verify).
//!
//! With repair, each differing extent is read again under the order lock
//! and appended to the stream, so the recovery side holds it from then on;
//! checkpoints before that keep the damage, and the report says so.

use super::dirty_map::DirtyMap;
use super::error::CaptureError;
use super::initial_copy::{EXTENTS_PER_READ, HASHES_PER_ASK};

type Result<T, E = CaptureError> = std::result::Result<T, E>;
pub use super::verify_report::{Differing, VerifyReport, DIFFERING_LISTED_MAX};
use super::vpg::{VpgCapture, COPY_CHUNK_BYTES};
use crate::extent_hash::{extent_count, hash, HashQuestion, EXTENT_BYTES};
use crate::record::{now_ms, RECORD_HEADER_BYTES};
use std::time::{Duration, Instant};

/// How long the checkpoint may take to be allowed and to reach the journal.
const CHECKPOINT_WAIT: Duration = Duration::from_secs(60);
const JOURNAL_WAIT: Duration = Duration::from_secs(600);
/// Checkpoints a group of extents is compared at, at most: an extent
/// written after each of them is counted as changed, not compared.
const VERIFY_PASSES: usize = 3;
/// How long a question may wait for the link and the recovery side.
const ASK_WAIT: Duration = Duration::from_secs(600);

impl VpgCapture {
    /// Compares every volume with the recovery journal at a new
    /// checkpoint; with `repair`, resends the extents that differ. One at
    /// a time per VPG (a second waits for the first); the last report
    /// stays for status.
    pub async fn verify(&self, repair: bool) -> Result<VerifyReport> {
        let _one = self.verifying.lock().await;
        let mut report = VerifyReport { vpg: self.name.clone(), started_ms: now_ms(), ..Default::default() };
        let started = Instant::now();
        tracing::info!(vpg = %self.name, repair, "verify starts");
        let outcome = self.verify_into(&mut report, repair).await;
        *self.verify_written.lock().expect("verify lock") = None;
        report.elapsed_ms = started.elapsed().as_millis() as u64;
        if let Err(e) = &outcome {
            report.error = Some(crate::error_chain::Chain(e).to_string());
        }
        tracing::info!(vpg = %self.name, "verify: {}", report.summary());
        for d in &report.differing {
            tracing::warn!(vpg = %self.name, volume = %d.volume, offset = d.offset, length = d.length, "verify: differs");
        }
        *self.last_verify.lock().expect("verify lock") = Some(report.clone());
        outcome.map(|()| report)
    }

    /// The last verify's report (for status).
    pub fn last_verify(&self) -> Option<VerifyReport> {
        self.last_verify.lock().expect("verify lock").clone()
    }

    async fn verify_into(&self, report: &mut VerifyReport, repair: bool) -> Result<()> {
        if !self.copies_by_hash {
            return Err(CaptureError::Unavailable(format!(
                "VPG {} sends its stream to the old site (reverse protection); verify runs on forward protection",
                self.name
            )));
        }
        for (index, volume) in self.volumes.iter().enumerate() {
            let extents = extent_count(volume.size);
            let mut first = 0;
            while first < extents {
                let count = (extents - first).min(HASHES_PER_ASK);
                let found = self.verify_group(report, index as u32, first, count).await?;
                report.differing_extents += found.len() as u64;
                let room = DIFFERING_LISTED_MAX.saturating_sub(report.differing.len());
                report.differing.extend(found.iter().take(room).map(|(offset, length)| Differing {
                    volume: volume.name.clone(),
                    offset: *offset,
                    length: *length,
                }));
                if repair && !found.is_empty() {
                    let ranges: Vec<(u32, u64, u64)> = found.iter().map(|(o, l)| (index as u32, *o, *l)).collect();
                    self.resend(report, &ranges).await?;
                }
                first += count;
            }
        }
        Ok(())
    }

    /// Refuses a verify where the stream has ended or cannot be trusted.
    fn check_verifiable(&self) -> Result<()> {
        if let Some(why) = self.writes_refused() {
            return Err(CaptureError::Unavailable(format!(
                "VPG {} takes no writes here ({why}): nothing to verify",
                self.name
            )));
        }
        if self.reverse_state().is_some() {
            return Err(CaptureError::Unavailable(format!(
                "VPG {} is under reverse protection: it receives from the recovery site",
                self.name
            )));
        }
        if self.copied().len() < self.volumes.len() {
            return Err(CaptureError::Unavailable(format!(
                "VPG {}'s initial copy is still running: verify once it is complete",
                self.name
            )));
        }
        Ok(())
    }

    /// Compares `count` extents of `volume` from `first` at a checkpoint of
    /// their own, so the recovery side's lease covers one question and an
    /// extent is skipped only if written in that short window; skipped
    /// ones are tried again at newer checkpoints (`VERIFY_PASSES` in all).
    /// Returns the differing extents (offset, length).
    async fn verify_group(
        &self,
        report: &mut VerifyReport,
        volume: u32,
        first: u64,
        count: u64,
    ) -> Result<Vec<(u64, u64)>> {
        let vol = &self.volumes[volume as usize];
        let shapes = super::bitmap_state::shapes(&self.volumes);
        let mut pending = vec![true; count as usize];
        let mut found = Vec::new();
        for _ in 0..VERIFY_PASSES {
            if !pending.iter().any(|p| *p) {
                break;
            }
            self.check_verifiable()?;
            let written = DirtyMap::new(EXTENT_BYTES, &shapes);
            let start = || *self.verify_written.lock().expect("verify lock") = Some(written);
            let id = self.checkpoint_then("", CHECKPOINT_WAIT, start).await?;
            if report.checkpoint == 0 {
                report.checkpoint = id;
            }
            let stream = self.log.stream_id();
            self.wait_in_journal(id, &format!("checkpoint {id}")).await?;
            let question = HashQuestion {
                stream_id: stream,
                at: id.to_string(),
                volume,
                first_extent: first,
                count: count as u32,
            };
            let theirs = match tokio::time::timeout(ASK_WAIT, self.peer_hashes.ask(question)).await {
                Ok(Ok(Ok(h))) if h.len() as u64 == count => h,
                Ok(Ok(Ok(h))) => {
                    return Err(CaptureError::Link(format!("the recovery side sent {} hashes for {count}", h.len())))
                }
                Ok(Ok(Err(why))) => {
                    return Err(CaptureError::PeerRefused(format!(
                        "the recovery side could not hash checkpoint {id}: {why}"
                    )))
                }
                Ok(Err(e)) => {
                    return Err(CaptureError::Link(format!(
                        "asking the recovery side for hashes: {e_chain}",
                        e_chain = crate::error_chain::Chain(&e)
                    )))
                }
                Err(_) => {
                    return Err(CaptureError::Link(format!(
                        "no answer from the recovery side within {ASK_WAIT:?} (is the link up?)"
                    )))
                }
            };
            let mut e = first;
            while e < first + count {
                let n = (first + count - e).min(EXTENTS_PER_READ);
                let at = (e - first) as usize;
                if !pending[at..at + n as usize].iter().any(|p| *p) {
                    e += n;
                    continue;
                }
                let offset = e * EXTENT_BYTES;
                let len = (vol.size - offset).min(n * EXTENT_BYTES);
                let mut chunk = vec![0u8; len as usize];
                {
                    let _order = self.order.lock().await;
                    vol.read_at(&mut chunk, offset)?;
                    let map = self.verify_written.lock().expect("verify lock");
                    let map = map.as_ref().expect("set for the verify's whole run");
                    for (i, piece) in chunk.chunks(EXTENT_BYTES as usize).enumerate() {
                        let (slot, piece_at) = (at + i, offset + i as u64 * EXTENT_BYTES);
                        if !pending[slot] || map.any_marked(volume, piece_at, piece.len() as u64) {
                            continue;
                        }
                        pending[slot] = false;
                        report.compared_bytes += piece.len() as u64;
                        if theirs[slot] != hash(piece) {
                            found.push((piece_at, piece.len() as u64));
                        }
                    }
                }
                // What was read, and the read-ahead before it.
                let from = offset.saturating_sub(COPY_CHUNK_BYTES);
                vol.drop_cache(from, offset + len - from);
                e += n;
            }
        }
        report.changed_extents += pending.iter().filter(|p| **p).count() as u64;
        Ok(found)
    }

    /// Appends what the volumes hold now in each range, in stream order.
    async fn resend(&self, report: &mut VerifyReport, ranges: &[(u32, u64, u64)]) -> Result<()> {
        let mut first_seq = None;
        let mut last_seq = 0;
        for &(volume, offset, len) in ranges {
            let space = self.log.reserve_bytes(RECORD_HEADER_BYTES as u64 + len).await?;
            let _order = self.order.lock().await;
            last_seq = self.append_volume_range(space, volume, offset, len)?;
            first_seq.get_or_insert(last_seq);
            report.repaired_bytes += len;
        }
        report.repaired_seq = first_seq;
        self.wait_in_journal(last_seq, "the resent extents").await
    }

    /// Waits (`JOURNAL_WAIT` at most) until the recovery journal holds
    /// `seq`; `what` names it in the error.
    async fn wait_in_journal(&self, seq: u64, what: &str) -> Result<()> {
        match tokio::time::timeout(JOURNAL_WAIT, self.log.wait_acked(seq)).await {
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) => Err(CaptureError::Unavailable(format!(
                "the stream started over before {what} reached the recovery journal"
            ))),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => {
                Err(CaptureError::Link(format!("{what} did not reach the recovery journal within {JOURNAL_WAIT:?}")))
            }
        }
    }
}
