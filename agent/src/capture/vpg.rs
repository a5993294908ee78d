//! One protection group on the protected side: its volumes, its protected
//! log, and the lock that puts every write of every volume into one order.
//! A write is applied to the volume and appended to the log under that
//! lock, so the log's seq order is the order the volumes saw; a checkpoint
//! appended under the same lock is therefore a prefix of that order.

use super::volume::Volume;
use crate::config::ReplicationMode;
use crate::log::{CaptureState, ProtectedLog};
use crate::nbd::export::Refusal;
use crate::record::{now_ms, RecordBody};
use crate::status::CheckpointSummary;
use anyhow::{Context, Result};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, Mutex};

/// What a move asks of the recovery side, through the link.
pub enum MoveStep {
    /// A move begins: the recovery side refuses other failovers of the VPG
    /// (or refuses the move, saying why).
    Begin,
    /// Fail over to this checkpoint, which the journal holds.
    Promote(u64),
    /// An unfinished move is called off: the recovery side confirms it has
    /// not failed over the VPG (or refuses, saying so).
    Cancel,
}

pub struct PromoteRequest {
    pub step: MoveStep,
    pub reply: oneshot::Sender<Result<()>>,
}

/// Reads of the initial copy, one record each.
const INITIAL_COPY_CHUNK_BYTES: usize = 1 << 20;

pub struct VpgCapture {
    pub name: String,
    pub mode: ReplicationMode,
    pub volumes: Vec<Volume>,
    pub log: Arc<ProtectedLog>,
    pub(crate) order: Mutex<()>,
    pub(crate) state: std::sync::Mutex<CaptureState>,
    /// Bumped when a new stream starts; a copy from an older stream stops.
    pub(crate) copy_generation: AtomicU64,
    /// The newest checkpoint inserted, automatic or tagged (for status).
    last_checkpoint: std::sync::Mutex<Option<CheckpointSummary>>,
    promote_tx: mpsc::Sender<PromoteRequest>,
    /// Taken by the link that is up; a move's request waits for one.
    pub promote_rx: Mutex<mpsc::Receiver<PromoteRequest>>,
    /// Held by the one move that may run at a time.
    pub moving: Mutex<()>,
}

impl VpgCapture {
    pub fn new(
        name: String,
        mode: ReplicationMode,
        volumes: Vec<Volume>,
        log: Arc<ProtectedLog>,
        state: CaptureState,
    ) -> Self {
        let (promote_tx, promote_rx) = mpsc::channel(1);
        VpgCapture {
            name,
            mode,
            volumes,
            log,
            order: Mutex::new(()),
            state: std::sync::Mutex::new(state),
            copy_generation: AtomicU64::new(0),
            last_checkpoint: std::sync::Mutex::new(None),
            promote_tx,
            promote_rx: Mutex::new(promote_rx),
            moving: Mutex::new(()),
        }
    }

    /// Reverse protection state, if this site receives the VPG back.
    pub fn reverse_state(&self) -> Option<crate::log::state::ReverseState> {
        self.state.lock().expect("state lock").reverse.clone()
    }

    /// Records reverse progress durably (before it is acknowledged).
    pub fn set_reverse_state(&self, reverse: crate::log::state::ReverseState) -> Result<()> {
        let mut state = self.state.lock().expect("state lock");
        state.reverse = Some(reverse);
        state.store(self.log.dir())
    }

    /// Why writes are refused, if they are.
    pub fn writes_refused(&self) -> Option<String> {
        self.state.lock().expect("state lock").writes_refused.clone()
    }

    /// From now on every write and zero is refused (EPERM) with `reason`,
    /// also after a restart. Writes already ordered are not affected.
    pub async fn refuse_writes(&self, reason: &str) -> Result<()> {
        self.store_refusal(Some(reason)).await?;
        tracing::warn!(vpg = %self.name, "writes refused from now on: {reason}");
        Ok(())
    }

    /// Writes are taken again (an unfinished move was cancelled), also
    /// after a restart.
    pub async fn accept_writes_again(&self) -> Result<()> {
        self.store_refusal(None).await?;
        tracing::warn!(vpg = %self.name, "writes accepted again");
        Ok(())
    }

    /// Sets and persists the refusal, between writes (under the order lock).
    async fn store_refusal(&self, reason: Option<&str>) -> Result<()> {
        let _order = self.order.lock().await;
        let mut state = self.state.lock().expect("state lock");
        state.writes_refused = reason.map(str::to_string);
        state.store(self.log.dir())
    }

    fn check_writable(&self) -> Result<()> {
        match self.writes_refused() {
            Some(reason) => Err(Refusal::ReadOnly(reason).into()),
            None => Ok(()),
        }
    }

    /// Asks the recovery side (through the link, when it is up) to fail
    /// over to `checkpoint`; returns when it has, or why not.
    pub async fn move_step(&self, step: MoveStep) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        self.promote_tx.send(PromoteRequest { step, reply }).await.context("the link task is gone")?;
        answer.await.context("the link dropped the request")?
    }

    /// Logs a write, then applies it to the volume. Log first: if the agent
    /// dies in between, the log names the range and `resync_last_update`
    /// re-reads it from the volume at start, so source and replica agree.
    pub async fn write(&self, volume: u32, offset: u64, data: Vec<u8>) -> Result<u64> {
        let _order = self.order.lock().await;
        self.check_writable()?;
        let body = RecordBody::Write { volume, offset, data };
        let seq = self.log.append(&body).await?;
        let RecordBody::Write { data, .. } = &body else { unreachable!("built above") };
        self.volumes[volume as usize].write_at(data, offset)?;
        Ok(seq)
    }

    pub async fn zero(&self, volume: u32, offset: u64, length: u64) -> Result<u64> {
        let _order = self.order.lock().await;
        self.check_writable()?;
        let seq = self.log.append(&RecordBody::Zero { volume, offset, length }).await?;
        self.volumes[volume as usize].zero_range(offset, length)?;
        Ok(seq)
    }

    /// After a restart: the newest logged update may not have reached the
    /// volume (or only partly). Send what the volume really holds there.
    pub async fn resync_last_update(&self, volume: u32, offset: u64, length: u64) -> Result<()> {
        let Some(vol) = self.volumes.get(volume as usize) else { return Ok(()) };
        if offset.checked_add(length).is_none_or(|end| end > vol.size) {
            return Ok(());
        }
        let _order = self.order.lock().await;
        self.append_volume_range(volume, offset, length as usize).await?;
        Ok(())
    }

    /// Appends what the volume holds in a range: zeros as a Zero record.
    pub(crate) async fn append_volume_range(&self, volume: u32, offset: u64, len: usize) -> Result<u64> {
        let mut chunk = vec![0u8; len];
        self.volumes[volume as usize].read_at(&mut chunk, offset)?;
        // Everything before the chunk's end: read-ahead folios can be larger
        // than a chunk and straddle it; the part already dropped is cheap.
        self.volumes[volume as usize].drop_cache(0, offset + len as u64);
        let body = if chunk.iter().all(|b| *b == 0) {
            RecordBody::Zero { volume, offset, length: len as u64 }
        } else {
            RecordBody::Write { volume, offset, data: chunk }
        };
        self.log.append(&body).await
    }

    pub async fn checkpoint(&self, tag: &str) -> Result<u64> {
        let _order = self.order.lock().await;
        let time_ms = now_ms();
        let id = self.log.append(&RecordBody::Checkpoint { time_ms, tag: tag.to_string() }).await?;
        *self.last_checkpoint.lock().expect("checkpoint lock") =
            Some(CheckpointSummary { id, time_ms, tag: tag.to_string() });
        Ok(id)
    }

    pub fn last_checkpoint(&self) -> Option<CheckpointSummary> {
        self.last_checkpoint.lock().expect("checkpoint lock").clone()
    }

    /// Makes every write up to `seq` as durable as the mode promises:
    /// on the volume and in the protected log, and in sync mode also in
    /// the recovery journal.
    pub async fn make_durable(&self, seq: u64) -> Result<()> {
        let volumes = self.volumes.clone();
        tokio::task::spawn_blocking(move || volumes.iter().try_for_each(|v| v.sync()))
            .await
            .context("volume sync task")??;
        self.log.sync_to(seq).await?;
        if self.mode == ReplicationMode::Sync {
            let mut acked = self.log.watch_acked();
            acked.wait_for(|a| *a >= seq).await.context("waiting for the recovery journal")?;
        }
        Ok(())
    }

    /// FLUSH: everything appended so far becomes durable.
    pub async fn flush(&self) -> Result<()> {
        self.make_durable(self.log.appended_seq()).await
    }

    pub fn copied(&self) -> Vec<String> {
        self.state.lock().expect("state lock").copied.clone()
    }

    /// Starts a new stream at a seq of at least `min_seq` (the recovery
    /// journal cannot continue the old one) and copies every volume again.
    pub async fn restart_stream(self: &Arc<Self>, min_seq: u64) -> Result<u64> {
        let seq = {
            let _order = self.order.lock().await;
            self.copy_generation.fetch_add(1, Ordering::SeqCst);
            self.log.advance_seq_to(min_seq);
            let seq = self.log.append(&RecordBody::StreamStart { time_ms: now_ms() }).await?;
            let mut state = self.state.lock().expect("state lock");
            state.copied.clear();
            state.store(self.log.dir())?;
            seq
        };
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.initial_copy().await {
                tracing::error!(vpg = %me.name, "initial copy failed: {e:#}");
            }
        });
        Ok(seq)
    }

    /// Copies every not-yet-copied volume whole into the stream while
    /// writes keep flowing; each chunk is read under the order lock so it
    /// reflects every write before it in the stream. Stops quietly if a
    /// new stream starts meanwhile (that stream runs its own copy).
    pub async fn initial_copy(&self) -> Result<()> {
        let generation = self.copy_generation.load(Ordering::SeqCst);
        let pending: Vec<u32> = {
            let state = self.state.lock().expect("state lock");
            (0..self.volumes.len() as u32).filter(|i| !state.copied.contains(&self.volumes[*i as usize].name)).collect()
        };
        for index in pending {
            let volume = &self.volumes[index as usize];
            tracing::info!(vpg = %self.name, volume = %volume.name, bytes = volume.size, "initial copy starts");
            let mut offset = 0;
            while offset < volume.size {
                let len = (volume.size - offset).min(INITIAL_COPY_CHUNK_BYTES as u64) as usize;
                let _order = self.order.lock().await;
                if self.copy_generation.load(Ordering::SeqCst) != generation {
                    return Ok(());
                }
                self.append_volume_range(index, offset, len).await?;
                offset += len as u64;
            }
            let seq = {
                let _order = self.order.lock().await;
                if self.copy_generation.load(Ordering::SeqCst) != generation {
                    return Ok(());
                }
                self.log.append(&RecordBody::CopyDone { volume: index }).await?
            };
            // Record the copy as done only once its marker is durable.
            self.log.sync_to(seq).await?;
            let _order = self.order.lock().await;
            if self.copy_generation.load(Ordering::SeqCst) != generation {
                return Ok(());
            }
            let mut state = self.state.lock().expect("state lock");
            state.copied.push(volume.name.clone());
            state.store(self.log.dir())?;
            tracing::info!(vpg = %self.name, volume = %volume.name, "initial copy appended to the log");
        }
        Ok(())
    }
}
