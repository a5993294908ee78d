//! Online verify (`tidemark verify`): proves that the recovery journal
//! holds what the volumes hold, while writes go on.
//!
//! A checkpoint is taken, and under the same hold of the write-order lock a
//! map of the extents written after it starts. Once the recovery side has
//! the checkpoint, it hashes its image there (replica plus journal) extent
//! by extent. An extent of a volume that nobody wrote since the checkpoint
//! still holds what it held then, so its hash must be equal; one written
//! since is counted, not compared (its newer data is in the stream). Each
//! read and its check of the map happen under the order lock, where every
//! write marks the map before it changes the volume.
//!
//! With repair, each differing extent is read again under the order lock
//! and appended to the stream, so the recovery side holds it from then on;
//! checkpoints before that keep the damage, and the report says so.

use super::dirty_map::DirtyMap;
pub use super::verify_report::{Differing, VerifyReport};
use super::vpg::{VpgCapture, COPY_CHUNK_BYTES};
use crate::extent_hash::{extent_count, hash, HashQuestion, EXTENT_BYTES};
use crate::record::{now_ms, RECORD_HEADER_BYTES};
use crate::wire::message::EXTENT_HASHES_PER_MESSAGE_MAX;
use anyhow::{anyhow, bail, Result};
use std::time::{Duration, Instant};

/// How long the checkpoint may take to be allowed and to reach the journal.
const CHECKPOINT_WAIT: Duration = Duration::from_secs(60);
const JOURNAL_WAIT: Duration = Duration::from_secs(600);
const HASHES_PER_ASK: u64 = EXTENT_HASHES_PER_MESSAGE_MAX as u64;
const EXTENTS_PER_READ: u64 = COPY_CHUNK_BYTES / EXTENT_BYTES;

impl VpgCapture {
    /// Compares every volume with the recovery journal at a new
    /// checkpoint; with `repair`, resends the extents that differ. One at
    /// a time per VPG; the last report stays for status.
    pub async fn verify(&self, repair: bool) -> Result<VerifyReport> {
        let mut last =
            self.verify.try_lock().map_err(|_| anyhow!("a verify of VPG {} is already running", self.name))?;
        let mut report = VerifyReport { vpg: self.name.clone(), started_ms: now_ms(), ..Default::default() };
        let started = Instant::now();
        tracing::info!(vpg = %self.name, repair, "verify starts");
        let outcome = self.verify_into(&mut report, repair).await;
        *self.verify_written.lock().expect("verify lock") = None;
        report.elapsed_ms = started.elapsed().as_millis() as u64;
        if let Err(e) = &outcome {
            report.error = Some(format!("{e:#}"));
        }
        tracing::info!(vpg = %self.name, "verify: {}", report.summary());
        for d in &report.differing {
            tracing::warn!(vpg = %self.name, volume = %d.volume, offset = d.offset, length = d.length, "verify: differs");
        }
        *last = Some(report.clone());
        outcome.map(|()| report)
    }

    /// The last verify's report (for status).
    pub fn last_verify(&self) -> Option<VerifyReport> {
        self.verify.try_lock().ok().and_then(|r| r.clone())
    }

    async fn verify_into(&self, report: &mut VerifyReport, repair: bool) -> Result<()> {
        if !self.copies_by_hash {
            bail!(
                "VPG {} sends its stream to the old site (reverse protection); verify runs on forward protection",
                self.name
            );
        }
        let shapes = super::bitmap_state::shapes(&self.volumes);
        let written = DirtyMap::new(EXTENT_BYTES, &shapes);
        let start = || *self.verify_written.lock().expect("verify lock") = Some(written);
        let id = self.checkpoint_then("", CHECKPOINT_WAIT, start).await?;
        report.checkpoint = id;
        let stream = self.log.stream_id();
        match tokio::time::timeout(JOURNAL_WAIT, self.log.wait_acked(id)).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => bail!("the stream started over before checkpoint {id} reached the recovery journal"),
            Ok(Err(e)) => return Err(e),
            Err(_) => bail!("checkpoint {id} did not reach the recovery journal within {JOURNAL_WAIT:?}"),
        }
        let mut found = Vec::new();
        for (index, volume) in self.volumes.iter().enumerate() {
            let extents = extent_count(volume.size);
            let mut first = 0;
            while first < extents {
                let count = (extents - first).min(HASHES_PER_ASK);
                let at = id.to_string();
                let question = HashQuestion {
                    stream_id: stream,
                    at,
                    volume: index as u32,
                    first_extent: first,
                    count: count as u32,
                };
                let theirs = match self.peer_hashes.ask(question).await {
                    Ok(Ok(h)) if h.len() as u64 == count => h,
                    Ok(Ok(h)) => bail!("the recovery side sent {} hashes for {count}", h.len()),
                    Ok(Err(why)) => bail!("the recovery side could not hash checkpoint {id}: {why}"),
                    Err(e) => bail!("asking the recovery side for hashes: {e:#}"),
                };
                let mut e = first;
                while e < first + count {
                    let n = (first + count - e).min(EXTENTS_PER_READ);
                    let offset = e * EXTENT_BYTES;
                    let len = (volume.size - offset).min(n * EXTENT_BYTES);
                    let mut chunk = vec![0u8; len as usize];
                    {
                        let _order = self.order.lock().await;
                        volume.read_at(&mut chunk, offset)?;
                        let map = self.verify_written.lock().expect("verify lock");
                        let map = map.as_ref().expect("set for the verify's whole run");
                        for (i, piece) in chunk.chunks(EXTENT_BYTES as usize).enumerate() {
                            let at = offset + i as u64 * EXTENT_BYTES;
                            if map.any_marked(index as u32, at, piece.len() as u64) {
                                report.changed_extents += 1;
                            } else if theirs[(e - first) as usize + i] != hash(piece) {
                                found.push((index as u32, at, piece.len() as u64));
                            } else {
                                report.compared_bytes += piece.len() as u64;
                            }
                        }
                    }
                    volume.drop_cache(0, offset + len);
                    e += n;
                }
                first += count;
            }
        }
        report.differing_extents = found.len() as u64;
        report.compared_bytes += found.iter().map(|(_, _, len)| len).sum::<u64>();
        report.differing = found
            .iter()
            .take(super::verify_report::DIFFERING_LISTED_MAX)
            .map(|(v, offset, length)| Differing {
                volume: self.volumes[*v as usize].name.clone(),
                offset: *offset,
                length: *length,
            })
            .collect();
        if repair && !found.is_empty() {
            self.resend(report, &found).await?;
        }
        Ok(())
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
        match tokio::time::timeout(JOURNAL_WAIT, self.log.wait_acked(last_seq)).await {
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) => bail!("the stream started over before the resent extents reached the recovery journal"),
            Ok(Err(e)) => Err(e),
            Err(_) => bail!("the resent extents did not reach the recovery journal within {JOURNAL_WAIT:?}"),
        }
    }
}
