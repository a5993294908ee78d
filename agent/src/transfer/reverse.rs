//! Reverse protection: after a failover or move, the recovery site sends
//! the VPG back to the old protected site, which applies it to its own
//! volumes. The old site still dials (firewall and pinning stay as they
//! are); only the direction of the data turns:
//!
//! - control: `ReverseHello` (with how far a previous session got) →
//!   `ReverseWelcome { session, need_hashes }`; when asked, the old site
//!   sends every 64 KiB extent's hash and the recovery site appends only
//!   the extents that differ (`capture::delta`), then keepalives;
//! - data: `Attach { session }`, then batches recovery → old site, each
//!   applied to the volumes, fsynced, recorded, and only then acknowledged.
//!
//! The old site's exports keep refusing writes: its volumes are a replica
//! until the VPG is moved back.

use super::sender::{dial, receive_acks, stream, LinkSeat, SenderStats};
use super::TransferError;
use super::{recv_control, send_control, KEEPALIVE_INTERVAL};
use crate::capture::delta;
use crate::capture::vpg::VpgCapture;
use crate::config::PeerConfig;
use crate::extent_hash::{self, ExtentHash};
use crate::log::state::ReverseState;
use crate::record::{RecordBody, RECORD_HEADER_BYTES};
use crate::recovery::ops::RecoveryOps;
use crate::wire::batch;
use crate::wire::frame::{read_frame_into, FrameKind};
use crate::wire::message::{ControlMessage, VolumeInfo, EXTENT_HASHES_PER_MESSAGE_MAX, PROTOCOL_VERSION};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio_rustls::TlsConnector;

type Result<T, E = TransferError> = std::result::Result<T, E>;

const RETRY_DELAY: Duration = Duration::from_secs(2);

/// What the old site has received so far (for `tidemark reverse`).
#[derive(Debug, Clone, Default)]
pub struct ReverseProgress {
    /// Every volume's delta copy is applied here.
    pub in_sync: bool,
    /// Batch bytes received on the wire since the delta copy began.
    pub wire_bytes: u64,
    /// Data bytes written to the volumes since then.
    pub data_bytes: u64,
    pub applied_seq: u64,
    pub last_error: Option<String>,
}

// ---- the old protected site ----

/// Receives the VPG back from the recovery site until `stop` is set (the
/// switch-back ended reverse protection) or the recovery site says it
/// ended its failover after this site recorded a switch-back's marker;
/// reconnects after any failure.
pub(super) async fn run(
    vpg: &Arc<VpgCapture>,
    peer: &PeerConfig,
    tls: Arc<rustls::ClientConfig>,
    progress: &watch::Sender<ReverseProgress>,
    stop: &AtomicBool,
) -> Ended {
    let connector = TlsConnector::from(tls);
    while !stop.load(Ordering::SeqCst) {
        match session(vpg, peer, &connector, progress).await {
            Ok(Ended::SwitchedBack) => return Ended::SwitchedBack,
            Ok(Ended::Stopped) | Err(_) if stop.load(Ordering::SeqCst) => break,
            Ok(Ended::Stopped) => {}
            Err(e) => {
                tracing::warn!(vpg = %vpg.name, "reverse link to {} down: {e_chain}; retrying in {RETRY_DELAY:?}", peer.address, e_chain = crate::error_chain::Chain(&e));
                progress.send_modify(|p| p.last_error = Some(crate::error_chain::Chain(&e).to_string()));
            }
        }
        tokio::time::sleep(RETRY_DELAY).await;
    }
    tracing::info!(vpg = %vpg.name, "reverse protection stopped");
    Ended::Stopped
}

/// How reverse protection ended without an error.
pub(super) enum Ended {
    /// Stopped from this site.
    Stopped,
    /// The recovery site ended its failover after this site applied a
    /// switch-back's marker.
    SwitchedBack,
}

async fn session(
    vpg: &Arc<VpgCapture>,
    peer: &PeerConfig,
    connector: &TlsConnector,
    progress: &watch::Sender<ReverseProgress>,
) -> Result<Ended> {
    // A batch the last session was applying goes on in its blocking task
    // after that session ends; it holds the write-order lock from before
    // it started (`apply_stream`). Waiting for the lock here, this hello
    // says what that batch applied, and no hashing below reads a volume it
    // still writes: an extent hashed before its write lands would compare
    // as the recovery site's and never be copied (review of helper-53).
    drop(vpg.order.lock().await);
    let known = vpg.reverse_state();
    let applied_seq = known.as_ref().map_or(0, |r| r.applied_seq);
    let mut control = dial(connector, &peer.address, peer.control_port).await?;
    let volumes: Vec<VolumeInfo> =
        vpg.volumes.iter().map(|v| VolumeInfo { name: v.name.clone(), size: v.size }).collect();
    let hello = ControlMessage::ReverseHello {
        protocol: PROTOCOL_VERSION,
        vpg: vpg.name.clone(),
        vpg_id: vpg.log.vpg_id(),
        volumes,
        applied_seq,
        stream_id: known.as_ref().map_or(0, |r| r.stream_id),
        in_sync: known.as_ref().is_some_and(|r| r.in_sync),
    };
    send_control(&mut control, &hello).await?;
    let (session, need_hashes) = match recv_control(&mut control).await? {
        ControlMessage::ReverseWelcome { session, need_hashes } => (session, need_hashes),
        ControlMessage::NotFailedOver { switched_back_at } if vpg.move_back_marker() == Some(switched_back_at) => {
            return Ok(Ended::SwitchedBack)
        }
        ControlMessage::NotFailedOver { .. } => {
            return Err(TransferError::Peer(format!(
                "the recovery site has no failover of VPG {:?}; there is nothing to reverse",
                vpg.name
            )))
        }
        ControlMessage::Refused { reason } => {
            return Err(TransferError::Peer(format!("the recovery site refused reverse protection: {reason}")))
        }
        other => return Err(TransferError::Peer(format!("unexpected reply to the reverse hello: {other:?}"))),
    };
    let was_in_sync = known.as_ref().is_some_and(|r| r.in_sync);
    progress.send_modify(|p| p.in_sync = was_in_sync && !need_hashes);
    if need_hashes {
        progress.send_modify(|p| *p = ReverseProgress { applied_seq, ..Default::default() });
        // Each message's hashes are sent as soon as they are made: the
        // recovery site hears nothing else meanwhile and gives up after
        // 15 s of silence, which hashing a whole volume of a few GiB took
        // (review of helper-52). A message is 64 MiB of a volume: 2 s of
        // a disk that reads 32 MiB/s.
        const PER_MESSAGE: u64 = 1024;
        const _: () = assert!(PER_MESSAGE as usize <= EXTENT_HASHES_PER_MESSAGE_MAX);
        for (index, volume) in vpg.volumes.iter().enumerate() {
            for first_extent in (0..extent_hash::extent_count(volume.size)).step_by(PER_MESSAGE as usize) {
                let v = volume.clone();
                let hashes =
                    tokio::task::spawn_blocking(move || delta::hash_extents(&v, first_extent, PER_MESSAGE)).await??;
                let message = ControlMessage::ExtentHashes {
                    volume: index as u32,
                    first_extent,
                    hashes: hashes.iter().map(crate::extent_hash::to_hex).collect(),
                };
                send_control(&mut control, &message).await?;
            }
        }
        send_control(&mut control, &ControlMessage::HashesDone).await?;
    }
    let mut data = dial(connector, &peer.address, peer.data_port).await?;
    send_control(&mut data, &ControlMessage::Attach { vpg: vpg.name.clone(), session }).await?;
    tracing::info!(vpg = %vpg.name, applied_seq, need_hashes, "reverse link up: receiving from the recovery site");
    progress.send_modify(|p| p.last_error = None);
    let ended = tokio::select! {
        r = ping(&mut control) => r,
        r = apply_stream(vpg, data, progress) => r,
    };
    ended?;
    Err(TransferError::Peer("the reverse session ended".to_string()))
}

async fn ping<S: AsyncRead + AsyncWrite + Unpin>(control: &mut S) -> Result<()> {
    loop {
        tokio::time::sleep(KEEPALIVE_INTERVAL).await;
        send_control(control, &ControlMessage::Ping).await?;
        match recv_control(control).await? {
            ControlMessage::Pong => {}
            other => return Err(TransferError::Peer(format!("unexpected control message {other:?}"))),
        }
    }
}

/// Applies each batch to the volumes in seq order, makes it durable,
/// records the seq, then acknowledges it.
async fn apply_stream<S: AsyncRead + AsyncWrite + Unpin>(
    vpg: &Arc<VpgCapture>,
    link: S,
    progress: &watch::Sender<ReverseProgress>,
) -> Result<()> {
    let (mut rd, mut wr) = tokio::io::split(link);
    let id = vpg.log.vpg_id();
    let mut payload = Vec::new();
    let mut copied = vpg.reverse_state().unwrap_or_default().copied_volumes(vpg.volumes.len());
    let mut stream = vpg.reverse_state().map_or(0, |r| r.stream_id);
    loop {
        // A larger batch than most (one big write) leaves no large buffer behind.
        batch::trim_buffer(&mut payload, batch::BUSY_BUFFER_BYTES);
        // No idle limit: `ping` beside this ends the session when the
        // control link goes silent, and a stream with nothing to send
        // sends nothing (a limit here dropped an idle link every minute).
        let kind = read_frame_into(&mut rd, &mut payload).await?;
        if kind != FrameKind::Batch {
            return Err(TransferError::Peer(format!("expected a batch frame, got {kind:?}")));
        }
        // Owned: the batch goes to a blocking thread.
        let decoded = batch::decode(&payload, id).map_err(|e| TransferError::from(e).at("bad batch"))?.into_owned();
        let applied_before = vpg.reverse_state().map_or(0, |r| r.applied_seq);
        check_continues(&decoded, applied_before)?;
        let wire = payload.len() as u64;
        let vpg2 = vpg.clone();
        let before = copied.clone();
        let stream_before = stream;
        // Between this and a switch-back's end of reverse protection (which
        // holds it too): no batch is applied after that. Taken before the
        // task starts, it is held until the task ends even when this
        // session is dropped meanwhile: the next session waits for it.
        let order = vpg.order.clone().lock_owned().await;
        // Written, synced and recorded in a task of its own, which holds the
        // lock to its end. The fsync is awaited between two blocking steps,
        // not waited for on a blocking thread: with every blocking thread
        // held by a reverse apply waiting so (a site failover of 64 VPGs and
        // more), none would be left to run it (review of helper-73).
        let applied = tokio::spawn(async move {
            let _order = order;
            let writer = vpg2.clone();
            let (last, data_bytes, copied, stream) = tokio::task::spawn_blocking(move || {
                write_batch(&writer, &decoded, applied_before, before, stream_before)
            })
            .await
            .map_err(|source| TransferError::Task { what: "reverse apply task", source })??;
            // Through the VPG's sync group: a failed fsync fails the VPG and
            // every later one (review of helper-70: a direct fsync here
            // succeeded after an epoch's had failed).
            vpg2.sync_volumes().await?;
            tokio::task::spawn_blocking(move || -> Result<_> {
                let in_sync = copied.iter().all(|c| *c);
                let state = ReverseState { applied_seq: last, stream_id: stream, in_sync, copied: copied.clone() };
                vpg2.set_reverse_state(state)?;
                fail::fail_point!("reverse-applied-part-copied", !in_sync && copied.iter().any(|c| *c), |_| {
                    std::process::abort()
                });
                Ok((last, data_bytes, copied, stream))
            })
            .await
            .map_err(|source| TransferError::Task { what: "reverse apply task", source })?
        });
        let (last, data_bytes, copied_now, stream_now) =
            applied.await.map_err(|source| TransferError::Task { what: "reverse apply task", source })??;
        stream = stream_now;
        copied = copied_now;
        let in_sync = copied.iter().all(|c| *c);
        progress.send_modify(|p| {
            p.applied_seq = last;
            p.wire_bytes += wire;
            p.data_bytes += data_bytes;
            p.in_sync = in_sync;
        });
        send_control(&mut wr, &ControlMessage::Ack { seq: last }).await?;
    }
}

/// Writes a batch's records above `applied_seq` to the volumes (not yet
/// durable); returns the seq it reaches, the data bytes written, and the
/// copied volumes and stream id as the batch leaves them.
fn write_batch(
    vpg: &VpgCapture,
    decoded: &batch::DecodedBatch,
    applied_before: u64,
    mut copied: Vec<bool>,
    mut stream: u32,
) -> Result<(u64, u64, Vec<bool>, u32)> {
    if vpg.reverse_state().is_none() {
        return Err(TransferError::Peer(
            "reverse protection ended (switched back); the batch is not applied".to_string(),
        ));
    }
    // A batch that writes at byte OFFSET (return(OFFSET)) takes
    // 20 s more to apply, before it writes anything.
    let slow_at: Option<u64> = (|| {
        fail::fail_point!("reverse-apply-slow", |at: Option<String>| at.and_then(|a| a.parse::<u64>().ok()));
        None
    })();
    if slow_at.is_some_and(|at| {
        decoded.records.iter().any(|r| matches!(r.body, RecordBody::Write { offset, .. } if offset == at))
    }) {
        std::thread::sleep(std::time::Duration::from_secs(20));
    }
    let mut data_bytes = 0;
    for (rec, at) in decoded.records.iter().zip(&decoded.offsets) {
        if rec.seq <= applied_before {
            continue; // applied already (a resend after a reconnect)
        }
        match &rec.body {
            RecordBody::Write { volume, offset, .. } => {
                let start = at + RECORD_HEADER_BYTES;
                let len = crate::record::u32_at(&decoded.raw, at + 40) as usize;
                let v = vpg
                    .volumes
                    .get(*volume as usize)
                    .ok_or_else(|| TransferError::Peer("record for an unknown volume".to_string()))?;
                if offset.checked_add(len as u64).is_none_or(|e| e > v.size) {
                    return Err(TransferError::Peer(format!("seq {}: write past the end of {}", rec.seq, v.name)));
                }
                v.write_at(&decoded.raw[start..start + len], *offset)?;
                data_bytes += len as u64;
            }
            RecordBody::Zero { volume, offset, length } => {
                let v = vpg
                    .volumes
                    .get(*volume as usize)
                    .ok_or_else(|| TransferError::Peer("record for an unknown volume".to_string()))?;
                if offset.checked_add(*length).is_none_or(|e| e > v.size) {
                    return Err(TransferError::Peer(format!("seq {}: zero past the end of {}", rec.seq, v.name)));
                }
                v.zero_range(*offset, *length)?;
            }
            RecordBody::StreamStart { stream_id, .. } => {
                stream = *stream_id;
                copied.iter_mut().for_each(|c| *c = false)
            }
            RecordBody::CopyDone { volume } => {
                if let Some(c) = copied.get_mut(*volume as usize) {
                    *c = true;
                }
            }
            RecordBody::Checkpoint { .. } => {}
        }
    }
    let last = decoded.records.last().map_or(0, |r| r.seq).max(applied_before);
    Ok((last, data_bytes, copied, stream))
}

/// A batch must go on right after what this site applied, in the same
/// stream, or start a new stream (a delta copy): anything else would be
/// applied over a state the sending side does not know.
fn check_continues(batch: &batch::DecodedBatch, applied_seq: u64) -> Result<()> {
    let Some(first) = batch.records.iter().find(|r| r.seq > applied_seq) else { return Ok(()) };
    match first.body {
        RecordBody::StreamStart { .. } => Ok(()),
        _ if applied_seq == 0 => {
            Err(TransferError::Peer(format!("the first batch does not start a stream (seq {})", first.seq)))
        }
        _ if first.seq != applied_seq + 1 => {
            Err(TransferError::Peer(format!("seq {} does not follow seq {applied_seq}, applied here", first.seq)))
        }
        _ => Ok(()),
    }
}

// ---- the recovery site ----

/// The control link of a reverse session (after its hello).
pub async fn serve_control<S: AsyncRead + AsyncWrite + Unpin>(
    mut link: S,
    ops: &Arc<RecoveryOps>,
    vpg: &str,
    volumes: Vec<VolumeInfo>,
    applied: crate::recovery::ops::OldSiteApplied,
    peer: &super::peer::Peer,
) -> Result<()> {
    let start = match ops.reverse_begin(vpg, &volumes, applied, peer.fingerprint).await {
        Ok(Some(s)) => s,
        Ok(None) => {
            let switched_back_at = match ops.switched_back_at(vpg) {
                Ok(m) => m,
                Err(e) => {
                    send_control(&mut link, &ControlMessage::refused(crate::error_chain::Chain(&e).to_string()))
                        .await?;
                    return Err(TransferError::Peer(format!(
                        "VPG {vpg:?} is not failed over here, and: {e_chain}",
                        e_chain = crate::error_chain::Chain(&e)
                    )));
                }
            };
            send_control(&mut link, &ControlMessage::NotFailedOver { switched_back_at }).await?;
            return Err(TransferError::Peer(format!(
                "VPG {vpg:?} is not failed over here; told the old site, which asked to reverse it"
            )));
        }
        Err(e) => {
            let reason = crate::error_chain::Chain(&e).to_string();
            send_control(&mut link, &ControlMessage::refused(reason.clone())).await?;
            return Err(TransferError::Peer(format!("refused reverse protection of {vpg:?}: {reason}")));
        }
    };
    send_control(
        &mut link,
        &ControlMessage::ReverseWelcome { session: start.session, need_hashes: start.delta.is_some() },
    )
    .await?;
    if let Some(generation) = start.delta {
        let mut theirs: Vec<Vec<ExtentHash>> =
            volumes.iter().map(|v| Vec::with_capacity(extent_hash::extent_count(v.size) as usize)).collect();
        loop {
            match recv_control(&mut link).await? {
                ControlMessage::ExtentHashes { volume, first_extent, hashes } => {
                    let list = theirs
                        .get_mut(volume as usize)
                        .ok_or_else(|| TransferError::Peer("hashes for an unknown volume".to_string()))?;
                    let size = volumes[volume as usize].size;
                    add_hashes(list, extent_hash::extent_count(size), first_extent, &hashes)
                        .map_err(|e| e.at(format!("extent hashes of volume {volume}")))?;
                }
                ControlMessage::HashesDone => break,
                other => return Err(TransferError::Peer(format!("expected extent hashes, got {other:?}"))),
            }
        }
        let (capture, ops, session) = (start.capture.clone(), ops.clone(), start.session);
        let name = vpg.to_string();
        capture.delta_copy_runs(generation);
        tokio::spawn(async move {
            let copied = capture.copy_differing_extents(&theirs, generation).await;
            if copied.is_err() {
                // The next session starts another (`reverse_begin`), and
                // this one ends, so the old site's next ping is refused and
                // it says hello again (review of helper-53).
                capture.delta_copy_failed(generation);
                ops.end_reverse_session(&name, session);
            }
            match copied {
                Ok(None) => {
                    tracing::info!(vpg = %name, "reverse delta: a newer session's delta copy replaced this one")
                }
                Ok(Some(r)) => tracing::info!(
                    vpg = %name,
                    "reverse delta: {} of {} extents differ, {} bytes queued for the old site",
                    r.extents_sent,
                    r.extents,
                    r.bytes_sent
                ),
                Err(e) => {
                    tracing::error!(vpg = %name, "reverse delta copy failed: {e_chain}", e_chain = crate::error_chain::Chain(&e))
                }
            }
        });
    }
    tracing::info!(%vpg, "reverse protection: sending the VPG back to the old site");
    loop {
        match recv_control(&mut link).await? {
            // A newer session, or a switch-back, ended this one.
            ControlMessage::Ping if ops.reverse_session(vpg, start.session, &peer.fingerprint).is_none() => {
                return Err(TransferError::Peer(format!(
                    "the reverse session of {vpg:?} ended (replaced, or switched back)"
                )))
            }
            ControlMessage::Ping => send_control(&mut link, &ControlMessage::Pong).await?,
            other => return Err(TransferError::Peer(format!("unexpected control message {other:?}"))),
        }
    }
}

/// The data link of a reverse session: stream the reverse log while
/// `current()` says the session is still the current one (a newer one,
/// or a switch-back, ends it; idle, it is silent for as long as it has
/// nothing to send, review of helper-48).
pub async fn serve_data<S: AsyncRead + AsyncWrite + Unpin>(
    link: S,
    capture: Arc<VpgCapture>,
    current: impl Fn() -> bool,
) -> Result<()> {
    let (rd, wr) = tokio::io::split(link);
    let stats = SenderStats::default();
    let start = capture.log.acked_seq() + 1;
    let seat = LinkSeat::alone();
    let sent = std::sync::atomic::AtomicU64::new(0);
    let alive = || match current() {
        true => Ok(()),
        false => Err(TransferError::Peer("the reverse session was replaced or ended".to_string())),
    };
    tokio::select! {
        r = receive_acks(&capture, rd, &sent, alive) => r,
        r = stream(&capture, wr, start, &seat, &stats, &sent) => r,
    }
}

/// Adds a message's hashes to a volume's list: in order, and never more
/// than the volume has extents (a peer once could pile them up at will).
fn add_hashes(list: &mut Vec<ExtentHash>, extents: u64, first_extent: u64, hashes: &[String]) -> Result<()> {
    if first_extent != list.len() as u64 {
        return Err(TransferError::Peer(format!("out of order: {first_extent} after {} hashes", list.len())));
    }
    if list.len() as u64 + hashes.len() as u64 > extents {
        return Err(TransferError::Peer(format!("more hashes than the volume's {extents} extents")));
    }
    for h in hashes {
        list.push(crate::extent_hash::parse_hex(h)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extent_hashes_never_outnumber_the_extents() {
        let hash = "ab".repeat(32);
        let mut list = Vec::new();
        add_hashes(&mut list, 3, 0, &[hash.clone(), hash.clone()]).unwrap();
        assert!(add_hashes(&mut list, 3, 0, std::slice::from_ref(&hash)).is_err(), "out of order");
        assert!(add_hashes(&mut list, 3, 2, &[hash.clone(), hash.clone()]).is_err(), "one too many");
        add_hashes(&mut list, 3, 2, &[hash]).unwrap();
        assert_eq!(list.len(), 3);
    }
}
