//! A new stream's initial copy, by extent hashes: the recovery side hashes
//! its journal's head (replica plus journal, or a seeded replica), and
//! only the extents whose hashes differ from the volume's go into the
//! stream. A volume the recovery side already holds sends only hashes; a
//! fresh replica (all zeros) gets every extent that is not zeros.
//!
//! Why skipping is safe: each read is taken under the write-order lock, so
//! the stream holds every write before it and after it in order. The head
//! the hashes describe lies in this same stream (the recovery side answers
//! only once its journal holds the stream), so the journal ends as that
//! head with every later record of the stream laid over it; where the
//! head already equals the volume as read, those same records make the
//! two agree at the end too. Without a peer that hashes (the reverse
//! stream's capture) every extent is copied whole.

use super::error::CaptureError;
use super::peer_hashes::{PeerHashes, PendingAnswer};
use super::vpg::{VpgCapture, COPY_CHUNK_BYTES};
use crate::extent_hash::{extent_count, hash, ExtentHash, HashQuestion, EXTENT_BYTES};
use crate::record::{RecordBody, RECORD_HEADER_BYTES};
use crate::wire::message::EXTENT_HASHES_PER_MESSAGE_MAX;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

type Result<T, E = CaptureError> = std::result::Result<T, E>;

/// Extents asked for at a time: 512 MiB of volume, one control message.
pub(super) const HASHES_PER_ASK: u64 = EXTENT_HASHES_PER_MESSAGE_MAX as u64;
/// Extents read, compared and appended under one hold of the order lock.
pub(super) const EXTENTS_PER_READ: u64 = COPY_CHUNK_BYTES / EXTENT_BYTES;
const _: () = assert!(COPY_CHUNK_BYTES.is_multiple_of(EXTENT_BYTES) && EXTENTS_PER_READ > 0);
/// Pause before a question the link dropped is asked again.
const ASK_RETRY: Duration = Duration::from_secs(1);
/// A question no link carried for this long is looked at again.
const ASK_WAIT: Duration = Duration::from_secs(60);
/// Links broken in a row on one question before its extents are copied
/// whole (a recovery agent too old to answer drops the link).
const BROKEN_ASKS_MAX: u32 = 5;

impl VpgCapture {
    /// Runs the initial copy of generation `generation` in the background.
    pub fn spawn_initial_copy(self: &Arc<Self>, generation: u64) {
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.initial_copy(generation).await {
                tracing::error!(vpg = %me.name, "initial copy failed: {e_chain}", e_chain = crate::error_chain::Chain(&e));
            }
        });
    }

    /// The copy's progress in a few words: compared and sent so far.
    pub fn copy_progress(&self) -> String {
        let p = &self.copy_progress;
        let bytes = |a: &std::sync::atomic::AtomicU64| crate::status::format_bytes(a.load(Ordering::Relaxed));
        format!("{} of {} compared, {} sent", bytes(&p.compared_bytes), bytes(&p.total_bytes), bytes(&p.sent_bytes))
    }

    /// The copy generation now (for a copy started at the agent's start).
    pub fn copy_generation(&self) -> u64 {
        self.copy_generation.load(Ordering::SeqCst)
    }

    /// Copies every not-yet-copied volume into the stream while writes
    /// keep flowing. Stops quietly if a new stream (another generation)
    /// starts meanwhile: that stream runs its own copy.
    async fn initial_copy(&self, generation: u64) -> Result<()> {
        let pending: Vec<u32> = {
            let state = self.state.lock().expect("state lock");
            (0..self.volumes.len() as u32).filter(|i| !state.copied.contains(&self.volumes[*i as usize].name)).collect()
        };
        let progress = &self.copy_progress;
        progress.compared_bytes.store(0, Ordering::Relaxed);
        progress.sent_bytes.store(0, Ordering::Relaxed);
        let total = pending.iter().map(|i| self.volumes[*i as usize].size).sum();
        progress.total_bytes.store(total, Ordering::Relaxed);
        for index in pending {
            let volume = &self.volumes[index as usize];
            let how = if self.copies_by_hash { "sending only extents whose hashes differ" } else { "whole" };
            tracing::info!(vpg = %self.name, volume = %volume.name, bytes = volume.size, "initial copy starts ({how})");
            let sent_before = progress.sent_bytes.load(Ordering::Relaxed);
            if !self.copy_volume(generation, index).await? {
                return Ok(());
            }
            let done = RecordBody::CopyDone { volume: index };
            let space = self.log.reserve(&done).await?;
            let seq = {
                let _order = self.order.lock().await;
                if self.copy_generation.load(Ordering::SeqCst) != generation {
                    return Ok(());
                }
                self.log.append_reserved(space, &done)?
            };
            // Record the copy as done only once its marker is durable.
            self.log.sync_to(seq).await?;
            let _order = self.order.lock().await;
            if self.copy_generation.load(Ordering::SeqCst) != generation {
                return Ok(());
            }
            let mut state = self.state.lock().expect("state lock");
            state.update(self.log.dir(), |s| s.copied.push(volume.name.clone()))?;
            if state.copied.len() == self.volumes.len() {
                self.copy_complete.send_replace(Some(seq));
            }
            let sent = progress.sent_bytes.load(Ordering::Relaxed) - sent_before;
            tracing::info!(
                vpg = %self.name,
                volume = %volume.name,
                bytes = volume.size,
                sent,
                "initial copy appended to the log ({} of {} sent)",
                crate::status::format_bytes(sent),
                crate::status::format_bytes(volume.size)
            );
        }
        Ok(())
    }

    /// Appends every part of volume `index` that differs from the recovery
    /// side's head (all of it when the recovery side cannot say). False
    /// when another generation started meanwhile.
    async fn copy_volume(&self, generation: u64, index: u32) -> Result<bool> {
        let volume = &self.volumes[index as usize];
        let extents = extent_count(volume.size);
        let mut first = 0;
        // The next question, put in line before this one's extents are
        // read: the recovery side hashes while this side reads.
        let mut queued: Option<PendingAnswer> = None;
        while first < extents {
            let count = (extents - first).min(HASHES_PER_ASK);
            let theirs = match self.copies_by_hash {
                true => self.their_hashes(generation, index, first, count, queued.take()).await?,
                false => None,
            };
            let next = first + count;
            if self.copies_by_hash && theirs.is_some() && next < extents {
                let n = (extents - next).min(HASHES_PER_ASK) as u32;
                // Never waits long: with no link up, the line may be full.
                let queue = self.peer_hashes.queue(self.head_question(index, next, n));
                queued = tokio::time::timeout(ASK_RETRY, queue).await.ok().and_then(Result::ok);
            }
            let mut e = first;
            while e < first + count {
                let n = (first + count - e).min(EXTENTS_PER_READ);
                let offset = e * EXTENT_BYTES;
                let len = (volume.size - offset).min(n * EXTENT_BYTES);
                // Room first, then the lock: writes wait at most one read.
                // Room for every extent as a record of its own, at most.
                let headers = n * RECORD_HEADER_BYTES as u64;
                let mut space = self.log.reserve_bytes(headers + len).await?;
                let _order = self.order.lock().await;
                if self.copy_generation.load(Ordering::SeqCst) != generation {
                    return Ok(false);
                }
                let mut chunk = vec![0u8; len as usize];
                // Read from the device, not from cached pages: after a failed
                // writeback (`sync_volumes`) the cache still shows data the
                // device never got (review of helper-70).
                volume.drop_cache(offset, len);
                volume.read_at(&mut chunk, offset)?;
                // Everything before the chunk's end: read-ahead folios can
                // be larger than a chunk and straddle it.
                volume.drop_cache(0, offset + len);
                let known = |i: u64| theirs.as_ref().and_then(|t| t.get((e + i - first) as usize));
                let differs: Vec<bool> = chunk
                    .chunks(EXTENT_BYTES as usize)
                    .enumerate()
                    .map(|(i, piece)| known(i as u64) != Some(&hash(piece)))
                    .collect();
                // Each run of differing extents, one record.
                let mut i = 0;
                while i < differs.len() {
                    if !differs[i] {
                        i += 1;
                        continue;
                    }
                    let run = differs[i..].iter().take_while(|d| **d).count();
                    let from = i * EXTENT_BYTES as usize;
                    let to = ((i + run) * EXTENT_BYTES as usize).min(chunk.len());
                    let data = chunk[from..to].to_vec();
                    let part = space.split(RECORD_HEADER_BYTES as u64 + data.len() as u64);
                    self.copy_progress.sent_bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                    self.append_data(part, index, offset + from as u64, data)?;
                    i += run;
                }
                self.copy_progress.compared_bytes.fetch_add(len, Ordering::Relaxed);
                e += n;
            }
            first += count;
        }
        Ok(true)
    }

    /// The recovery side's hashes of `count` extents from `first`, at the
    /// head of this stream; None when it cannot give them (they are then
    /// copied whole). A question the link dropped is asked again, a few
    /// times; one asked before the journal holds this stream, until it does.
    /// `queued`: the same question, put in line earlier.
    async fn their_hashes(
        &self,
        generation: u64,
        volume: u32,
        first: u64,
        count: u64,
        mut queued: Option<PendingAnswer>,
    ) -> Result<Option<Vec<ExtentHash>>> {
        let mut broken = 0;
        loop {
            if self.copy_generation.load(Ordering::SeqCst) != generation {
                return Ok(None);
            }
            let question = self.head_question(volume, first, count as u32);
            let stream = question.stream_id;
            let answer = match queued.take() {
                Some(pending) => tokio::time::timeout(ASK_WAIT, PeerHashes::answer(pending)).await,
                None => tokio::time::timeout(ASK_WAIT, self.peer_hashes.ask(question)).await,
            };
            let answer = match answer {
                Ok(answer) => answer,
                // No link carried it: look at the generation again.
                Err(_) => continue,
            };
            match answer {
                Ok(Ok(hashes)) if hashes.len() as u64 == count => {
                    // Said durably before anything is skipped on its strength.
                    self.note_compared_stream(stream)?;
                    return Ok(Some(hashes));
                }
                Ok(Ok(hashes)) => {
                    tracing::warn!(vpg = %self.name, volume, first, "the recovery side sent {} hashes for {count}: copying these extents whole", hashes.len());
                    return Ok(None);
                }
                Ok(Err(why)) if why.contains(crate::recovery::hashes::STREAM_NOT_YET) => {
                    tracing::debug!(vpg = %self.name, "asking for extent hashes again: {why}");
                    tokio::time::sleep(ASK_RETRY).await;
                }
                Ok(Err(why)) => {
                    tracing::warn!(vpg = %self.name, volume, first, "the recovery side cannot hash its copy ({why}): copying these extents whole");
                    return Ok(None);
                }
                Err(e) if broken + 1 >= BROKEN_ASKS_MAX => {
                    tracing::warn!(vpg = %self.name, volume, first, "the link broke {BROKEN_ASKS_MAX} times on this question (an older recovery agent?): copying these extents whole: {e_chain}", e_chain = crate::error_chain::Chain(&e));
                    return Ok(None);
                }
                Err(e) => {
                    broken += 1;
                    tracing::debug!(vpg = %self.name, "asking for extent hashes again: {e_chain}", e_chain = crate::error_chain::Chain(&e));
                    tokio::time::sleep(ASK_RETRY).await;
                }
            }
        }
    }

    /// A question about this stream's head.
    fn head_question(&self, volume: u32, first_extent: u64, count: u32) -> HashQuestion {
        HashQuestion { stream_id: self.log.stream_id(), at: "head".into(), volume, first_extent, count }
    }

    /// Records, durably, that `stream`'s copy relies on a journal that
    /// holds it (`CaptureState::compared_stream`).
    fn note_compared_stream(&self, stream: u32) -> Result<()> {
        let mut state = self.state.lock().expect("state lock");
        if state.compared_stream != stream {
            state.update(self.log.dir(), |s| s.compared_stream = stream)?;
        }
        Ok(())
    }

    /// Whether the log's stream may be sent from its start to a journal
    /// that does not hold it: not once its copy skipped extents that were
    /// equal only to another journal's.
    pub fn stream_replayable_elsewhere(&self) -> bool {
        self.state.lock().expect("state lock").compared_stream != self.log.stream_id()
    }
}
