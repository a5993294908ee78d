//! The protected side of a link, one per VPG: dial, say hello with the
//! log's stream id, learn the recovery side's durable seq and stream, then
//! stream the log from just after it (only what the log has fsynced),
//! batched, compressed and throttled. Acks retire log segments. Any error
//! drops both connections and the loop dials again; nothing is lost
//! because the log keeps everything not yet acknowledged. A journal that
//! holds another stream, or more than this log, gets a new stream.

use super::link_share::LinkShare;
use super::TransferError;
use super::LINK_IDLE_TIMEOUT;
use super::{read_control, recv_control, send_control, wait_frame, ControlError, CONNECT_TIMEOUT, KEEPALIVE_INTERVAL};
use crate::capture::peer_hashes::PeerHashAsk;
use crate::capture::vpg::{MoveStep, VpgCapture};
use crate::capture::CaptureError;
use crate::config::{PeerConfig, Priority};
use crate::error_chain::Chain;
use crate::extent_hash::ExtentHash;
use crate::io_failure::Doing;
use crate::wire::batch::{BatchBuilder, BatchEncoder, BATCH_RECORDS_MAX};
use crate::wire::frame::{frame_header, FrameKind};
use crate::wire::message::{ControlMessage, VolumeInfo, PROTOCOL_VERSION};
use crate::wire::tls::PEER_SERVER_NAME;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsConnector;

type Result<T, E = TransferError> = std::result::Result<T, E>;

/// Bytes sent but not yet acknowledged before the sender waits.
const INFLIGHT_BYTES_MAX: u64 = 32 << 20;
/// When less than this is waiting, the sender lingers `BATCH_LINGER` so
/// small writes travel in fewer, larger batches (fewer journal fsyncs).
const BATCH_LINGER_BYTES: usize = 256 << 10;
const BATCH_LINGER: Duration = Duration::from_millis(1);
/// A stream that had a backlog keeps its buffers (batch, compressed batch,
/// record: each up to a batch target and more) when it catches up with
/// the log, until it has had nothing to send for this long. Under load it
/// catches up between two fsyncs, every few milliseconds: letting them go
/// each time made every batch's buffers new pages, faulted in and zeroed
/// by the kernel once the allocator had given them back (32,000 page
/// faults for 128 MiB of replicated 1 MiB writes in the appliance, as
/// many as the pages sent). A stream that keeps up (small batches) lets
/// them go as it catches up, as before: a VPG written a little at a time
/// after a burst does not hold the burst's buffers.
const BUFFERS_KEPT_IDLE: Duration = Duration::from_millis(100);
const RECONNECT_DELAY_MIN: Duration = Duration::from_millis(200);
const RECONNECT_DELAY_MAX: Duration = Duration::from_secs(5);

#[derive(Default)]
pub struct SenderStats {
    pub connected: AtomicBool,
    /// Record bytes sent (before compression), ever.
    pub raw_bytes: AtomicU64,
    pub reconnects: AtomicU64,
    /// Why the link last went down (for status while it is down).
    pub last_error: std::sync::Mutex<String>,
}

/// What a VPG's sender shares with the others on the link, and its place
/// among them.
pub struct LinkSeat {
    pub share: Arc<LinkShare>,
    pub priority: Priority,
}

impl LinkSeat {
    /// A link of its own, uncapped (the reverse stream).
    pub fn alone() -> Self {
        LinkSeat { share: Arc::new(LinkShare::new(0, 1)), priority: Priority::Medium }
    }
}

pub async fn run(
    vpg: Arc<VpgCapture>,
    peer: PeerConfig,
    tls: Arc<rustls::ClientConfig>,
    stats: Arc<SenderStats>,
    seat: LinkSeat,
) {
    let connector = TlsConnector::from(tls);
    let mut delay = RECONNECT_DELAY_MIN;
    loop {
        let result = session(&vpg, &peer, &connector, &stats, &seat).await;
        stats.connected.store(false, Ordering::Relaxed);
        match result {
            Ok(Ended::FailedOver(checkpoint)) => {
                tracing::warn!(vpg = %vpg.name, "the recovery site failed the VPG over at checkpoint {checkpoint}; this side stops sending");
                vpg.failed_over_heard(checkpoint).await;
                return;
            }
            Ok(Ended::Normally) => {
                stats.reconnects.fetch_add(1, Ordering::Relaxed);
                delay = RECONNECT_DELAY_MIN
            }
            Err(e) => {
                stats.reconnects.fetch_add(1, Ordering::Relaxed);
                *stats.last_error.lock().expect("last error") = crate::error_chain::Chain(&e).to_string();
                tracing::warn!(vpg = %vpg.name, "link to {} down: {e_chain}; retrying in {delay:?}", peer.address, e_chain = crate::error_chain::Chain(&e));
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(RECONNECT_DELAY_MAX);
            }
        }
    }
}

pub(crate) async fn dial(
    connector: &TlsConnector,
    address: &str,
    port: u16,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let attempt = async {
        let tcp = TcpStream::connect((address, port)).await.doing(|| format!("connecting to {address}:{port}"))?;
        super::tune_link_socket(&tcp).doing(|| "setting the link's socket options".to_string())?;
        let name = rustls::pki_types::ServerName::try_from(PEER_SERVER_NAME).expect("static name");
        connector.connect(name, tcp).await.doing(|| format!("TLS handshake with {address}:{port}"))
    };
    Ok(tokio::time::timeout(CONNECT_TIMEOUT, attempt)
        .await
        .map_err(|_| TransferError::Peer("connect timed out".to_string()))??)
}

/// How a session ended without an error.
enum Ended {
    Normally,
    /// The recovery site failed the VPG over (at this checkpoint).
    FailedOver(u64),
}

async fn session(
    vpg: &Arc<VpgCapture>,
    peer: &PeerConfig,
    connector: &TlsConnector,
    stats: &SenderStats,
    seat: &LinkSeat,
) -> Result<Ended> {
    let mut control = dial(connector, &peer.address, peer.control_port).await?;
    let hello = ControlMessage::Hello {
        protocol: PROTOCOL_VERSION,
        vpg: vpg.name.clone(),
        vpg_id: vpg.log.vpg_id(),
        volumes: vpg.volumes.iter().map(|v| VolumeInfo { name: v.name.clone(), size: v.size }).collect(),
        sender: String::new(),
        stream_id: vpg.log.stream_id(),
    };
    send_control(&mut control, &hello).await?;
    let (durable_seq, session_id, journal_stream) = match recv_control(&mut control).await? {
        ControlMessage::Welcome { durable_seq, session, stream_id } => (durable_seq, session, stream_id),
        ControlMessage::FailedOver { checkpoint } => return Ok(Ended::FailedOver(checkpoint)),
        ControlMessage::Refused { reason } => {
            return Err(TransferError::Peer(format!("recovery side refused VPG {}: {reason}", vpg.name)))
        }
        other => return Err(TransferError::Peer(format!("unexpected reply to hello: {other:?}"))),
    };
    let start_seq = resume_point(vpg, durable_seq, journal_stream, hello_stream(&hello)).await?;
    let mut data = dial(connector, &peer.address, peer.data_port).await?;
    send_control(&mut data, &ControlMessage::Attach { vpg: vpg.name.clone(), session: session_id }).await?;
    stats.connected.store(true, Ordering::Relaxed);
    tracing::info!(vpg = %vpg.name, durable_seq, start_seq, "link up");
    let (data_rd, data_wr) = tokio::io::split(data);
    let sent = AtomicU64::new(0);
    tokio::select! {
        r = keepalive(vpg, &mut control) => r,
        r = receive_acks(vpg, data_rd, &sent, || Ok(())) => r.map(|()| Ended::Normally),
        r = stream(vpg, data_wr, start_seq, seat, stats, &sent) => r.map(|()| Ended::Normally),
    }
}

fn hello_stream(hello: &ControlMessage) -> u32 {
    match hello {
        ControlMessage::Hello { stream_id, .. } => *stream_id,
        _ => unreachable!("built as a hello"),
    }
}

/// Where to resume: just after the journal's durable seq when the journal
/// holds this log's stream and the log continues it there; at this log's
/// StreamStart when the journal ends before it. Otherwise (journal reset,
/// log lost or replaced, another stream) a new stream starts, and its copy
/// sends what differs from the journal. `log_stream` is the stream named in
/// the hello.
async fn resume_point(vpg: &Arc<VpgCapture>, durable_seq: u64, journal_stream: u32, log_stream: u32) -> Result<u64> {
    // The stream the hello named, still the log's (not restarted since).
    let announced = vpg.log.stream_id() == log_stream;
    // A stream whose copy compared hashes with a journal that held it goes
    // from its start only to a journal that holds it: another (reset,
    // replaced, cut back before it) was never compared with.
    let replayable = journal_stream == log_stream || vpg.stream_replayable_elsewhere();
    let continues = match vpg.log.continues(durable_seq, journal_stream).await {
        Ok(c) => c && announced && replayable,
        Err(e) if e.is_damage() => {
            tracing::error!(vpg = %vpg.name, "{}", Chain(&e));
            false
        }
        Err(e) => return Err(e.into()),
    };
    if continues {
        if journal_stream == log_stream {
            vpg.log.ack(durable_seq);
        }
        return Ok(durable_seq + 1);
    }
    tracing::warn!(
        vpg = %vpg.name,
        durable_seq,
        journal_stream,
        log_stream,
        "the log cannot continue the journal's stream; starting a new stream (its copy sends what differs from the journal)"
    );
    vpg.restart_stream(durable_seq + 1).await?;
    // This session announced the old stream: the next hello names the new.
    Err(TransferError::Peer("a new stream started; connecting again to announce it".to_string()))
}

/// After an alert of the encryption detector: asks the recovery site to
/// pin the last clean checkpoint, once it holds everything before the
/// attack, and stores the answer.
async fn pin_last_clean<S: AsyncRead + AsyncWrite + Unpin>(vpg: &VpgCapture, control: &mut S) -> Result<()> {
    let Some(detection) = vpg.detection() else { return Ok(()) };
    let Some(alert) = detection.pin_due(vpg.log.acked_seq()) else { return Ok(()) };
    let reason = format!("{}: the encryption detector's alert on volume {}", alert.label, alert.volume);
    let request = ControlMessage::PinLastClean { since_seq: alert.since_seq, reason };
    let answer =
        ask(control, &request).await.map_err(|e| e.at("asking for the last clean checkpoint's pin".to_string()))?;
    // Stored (fsynced) off the runtime's threads.
    let (d, name) = (detection.clone(), vpg.name.clone());
    Ok(tokio::task::spawn_blocking(move || d.pin_answered(&name, &alert.label, answer.map_err(|e| format!("{e:#}"))))
        .await
        .map_err(|source| TransferError::Task { what: "storing the pin's answer", source })??)
}

/// Pings the recovery side, and carries a move's promote request. Ends
/// when the recovery side says the VPG was failed over there.
async fn keepalive<S: AsyncRead + AsyncWrite + Unpin>(vpg: &VpgCapture, control: &mut S) -> Result<Ended> {
    let mut requests = vpg.promote_rx.lock().await;
    let mut hash_asks = vpg.peer_hashes.rx.lock().await;
    loop {
        tokio::select! {
            Some(ask) = hash_asks.recv() => {
                // Whoever asked stopped waiting: the question is dropped.
                if ask.reply.is_closed() {
                    continue;
                }
                match ask_extent_hashes(control, &ask).await {
                    Ok(answer) => {
                        let _ = ask.reply.send(Ok(answer));
                    }
                    Err(e) => {
                        let _ = ask.reply.send(Err(CaptureError::Link(format!("the link broke: {e_chain}", e_chain = crate::error_chain::Chain(&e)))));
                        return Err(e.at("asking for extent hashes"));
                    }
                }
            }
            _ = tokio::time::sleep(KEEPALIVE_INTERVAL) => {
                pin_last_clean(vpg, control).await?;
                send_control(control, &ControlMessage::Ping).await?;
                match recv_control(control).await? {
                    ControlMessage::Pong => {}
                    ControlMessage::FailedOver { checkpoint } => return Ok(Ended::FailedOver(checkpoint)),
                    other => return Err(TransferError::Peer(format!("unexpected control message {other:?}"))),
                }
            }
            Some(request) = requests.recv() => {
                let asked = match request.step {
                    MoveStep::Begin => ask(control, &ControlMessage::MoveBegins).await,
                    MoveStep::Promote(checkpoint) => ask(control, &ControlMessage::Promote { checkpoint }).await,
                    MoveStep::Cancel => ask(control, &ControlMessage::MoveCancel).await,
                };
                // A refusal is the answer; a broken link is also the link's end.
                match asked {
                    Ok(answer) => {
                        let _ = request.reply.send(answer.map(|_| ()).map_err(CaptureError::PeerRefused));
                    }
                    Err(e) => {
                        let _ = request.reply.send(Err(CaptureError::Link(format!("the link broke: {e_chain}", e_chain = crate::error_chain::Chain(&e)))));
                        return Err(e.at("move step"));
                    }
                }
            }
        }
    }
}

/// Sends a move step and waits for its answer (the inner result: done, or
/// refused and why), however long applying takes (the recovery side
/// reports progress every few seconds). The outer error is the link's.
async fn ask<S: AsyncRead + AsyncWrite + Unpin>(
    control: &mut S,
    request: &ControlMessage,
) -> Result<Result<u64, String>> {
    send_control(control, request).await?;
    loop {
        match recv_control(control).await? {
            ControlMessage::Promoting => {}
            ControlMessage::Promoted { checkpoint } => return Ok(Ok(checkpoint)),
            ControlMessage::Refused { reason } => return Ok(Err(reason)),
            other => return Err(TransferError::Peer(format!("unexpected reply to {request:?}: {other:?}"))),
        }
    }
}

/// Asks the recovery side for extent hashes and waits for them, however
/// long it reads. The inner error is its refusal; the outer, the link's.
async fn ask_extent_hashes<S: AsyncRead + AsyncWrite + Unpin>(
    control: &mut S,
    ask: &PeerHashAsk,
) -> Result<Result<Vec<ExtentHash>, String>> {
    let q = &ask.question;
    let request = ControlMessage::AskExtentHashes {
        stream_id: q.stream_id,
        at: q.at.clone(),
        volume: q.volume,
        first_extent: q.first_extent,
        count: q.count,
    };
    send_control(control, &request).await?;
    loop {
        match recv_control(control).await? {
            ControlMessage::Promoting => {}
            ControlMessage::ExtentHashes { volume, first_extent, hashes } => {
                if volume != q.volume || first_extent != q.first_extent || hashes.len() > q.count as usize {
                    return Err(TransferError::Peer(format!(
                        "extent hashes for volume {volume} from {first_extent} ({}) answer another question",
                        hashes.len()
                    )));
                }
                return Ok(Ok(hashes.iter().map(|h| crate::extent_hash::parse_hex(h)).collect::<Result<_, _>>()?));
            }
            ControlMessage::Refused { reason } => return Ok(Err(reason)),
            other => return Err(TransferError::Peer(format!("unexpected reply to {request:?}: {other:?}"))),
        }
    }
}

/// Takes the recovery side's acknowledgements. Its silence means a dead
/// link only while this link has sent records (through `sent`, which
/// `stream` keeps) not acknowledged for `LINK_IDLE_TIMEOUT`: with nothing
/// to send, no ack comes (before, an idle VPG's link was dropped and made
/// again every 15 s). `alive` may end the wait too (a reverse session
/// that was replaced).
pub(crate) async fn receive_acks<R: AsyncRead + Unpin>(
    vpg: &VpgCapture,
    mut rd: R,
    sent: &AtomicU64,
    mut alive: impl FnMut() -> Result<()>,
) -> Result<()> {
    loop {
        let mut owed_since = Instant::now();
        let still = || {
            alive()?;
            if vpg.log.acked_seq() >= sent.load(Ordering::SeqCst) {
                owed_since = Instant::now();
            } else if owed_since.elapsed() >= LINK_IDLE_TIMEOUT {
                return Err(ControlError::Silent(LINK_IDLE_TIMEOUT).into());
            }
            Ok(())
        };
        let message = wait_frame(async { Ok(read_control(&mut rd).await?) }, still).await?;
        match message {
            ControlMessage::Ack { seq } => vpg.log.ack(seq),
            ControlMessage::Refused { reason } => {
                return Err(TransferError::Peer(format!("recovery side refused the stream: {reason}")))
            }
            other => return Err(TransferError::Peer(format!("unexpected message on the data link: {other:?}"))),
        }
    }
}

pub(crate) async fn stream<W: AsyncWrite + Unpin>(
    vpg: &Arc<VpgCapture>,
    mut wr: W,
    start_seq: u64,
    seat: &LinkSeat,
    stats: &SenderStats,
    sent: &AtomicU64,
) -> Result<()> {
    let mut cursor = vpg.log.cursor(start_seq);
    let mut appended = vpg.log.watch_appended();
    let mut synced = vpg.log.watch_synced();
    let mut acked = vpg.log.watch_acked();
    let batch_target = seat.share.batch_target_bytes();
    let mut encoder = BatchEncoder::paced(batch_target);
    let mut batch = BatchBuilder::default();
    let mut inflight = InFlight::default();
    // Whether the last batch sent was a backlog's (`BUFFERS_KEPT_IDLE`).
    let mut had_backlog = false;
    loop {
        // Mark the current end and sync point seen before reading, so an
        // append or an fsync that lands after the read still wakes us.
        appended.borrow_and_update();
        synced.borrow_and_update();
        batch.clear();
        fill_or_restart(vpg, &mut cursor, &mut batch, batch_target).await?;
        if batch.is_empty() {
            // The stream's own group commit: what is appended becomes
            // durable, then sendable.
            // A client's FLUSH may sync what the read above left unsent.
            fail::fail_point!("stream-idle-before-check");
            let appended_seq = vpg.log.appended_seq();
            if appended_seq > vpg.log.synced_seq() {
                vpg.log.sync_to(appended_seq).await?;
            } else {
                // Records read before their fsync become sendable when a
                // client's FLUSH syncs them: that wakes us too, not only
                // the next append (which may never come).
                let keep = if had_backlog { BUFFERS_KEPT_IDLE } else { Duration::ZERO };
                let woke = match tokio::time::timeout(keep, more(&mut appended, &mut synced)).await {
                    Ok(woke) => woke,
                    Err(_) => {
                        // Idle: the buffers a busy link reuses are let go.
                        batch.trim_idle();
                        encoder.trim_idle();
                        cursor.trim_idle();
                        had_backlog = false;
                        more(&mut appended, &mut synced).await
                    }
                };
                woke.map_err(|_| TransferError::Peer("log closed".to_string()))?;
            }
            continue;
        }
        if batch.raw_len() < BATCH_LINGER_BYTES && batch.count() < BATCH_RECORDS_MAX {
            tokio::time::sleep(BATCH_LINGER).await;
            fill_or_restart(vpg, &mut cursor, &mut batch, batch_target).await?;
        }
        had_backlog = encoder.is_backlog(batch.raw_len());
        send_batch(&mut batch, &mut wr, &mut encoder, seat, &mut inflight, stats, sent).await?;
        loop {
            let done = *acked.borrow_and_update();
            while inflight.batches.front().is_some_and(|(seq, _)| *seq <= done) {
                inflight.bytes -= inflight.batches.pop_front().expect("front").1;
            }
            if inflight.bytes <= INFLIGHT_BYTES_MAX {
                break;
            }
            acked.changed().await.map_err(|_| TransferError::Peer("log closed".to_string()))?;
        }
    }
}

/// Until the log has more for the stream: an append, or an fsync.
async fn more(
    appended: &mut watch::Receiver<u64>,
    synced: &mut watch::Receiver<u64>,
) -> std::result::Result<(), watch::error::RecvError> {
    tokio::select! {
        r = appended.changed() => r,
        r = synced.changed() => r,
    }
}

/// Fills a batch; damage in the log (a record that fails its checks) ends
/// the stream: a new one starts, and the link with it.
async fn fill_or_restart(
    vpg: &Arc<VpgCapture>,
    cursor: &mut crate::log::LogCursor,
    batch: &mut BatchBuilder,
    batch_target: usize,
) -> Result<()> {
    match cursor.fill(batch, batch_target, BATCH_RECORDS_MAX) {
        // A record in the log that fails its checks (not a read error):
        // what follows it cannot be sent, so the stream must start over.
        Err(e) if e.is_damage() => {
            tracing::error!(vpg = %vpg.name, "{}; the records after it are lost: starting a new stream", Chain(&e));
            vpg.restart_stream(0).await?;
            Err(e.into())
        }
        other => Ok(other?),
    }
}

/// Batches sent and not acknowledged yet: (last seq, wire bytes) each,
/// and their bytes.
#[derive(Default)]
struct InFlight {
    batches: VecDeque<(u64, u64)>,
    bytes: u64,
}

async fn send_batch<W: AsyncWrite + Unpin>(
    batch: &mut BatchBuilder,
    wr: &mut W,
    encoder: &mut BatchEncoder,
    seat: &LinkSeat,
    inflight: &mut InFlight,
    stats: &SenderStats,
    sent: &AtomicU64,
) -> Result<()> {
    let encoded = encoder.encode(batch);
    let (raw_len, wire_len, last_seq) = (encoded.raw_len, encoded.bytes.len(), encoded.last_seq);
    // From here: the link's time, not compression's.
    let started = Instant::now();
    // A turn per slice of a batch's target size: a batch of one large write
    // does not hold a capped link for its whole length (uncapped, no wait).
    let header = frame_header(FrameKind::Batch, encoded.bytes, encoded.crc);
    let slice = seat.share.batch_target_bytes();
    for (i, part) in encoded.bytes.chunks(slice).enumerate() {
        seat.share.wait_turn(seat.priority, part.len() + if i == 0 { header.len() } else { 0 }).await;
        if i == 0 {
            // Owed from its first byte on (after its first turn: a VPG
            // waiting for one is owed nothing): a write that blocks on a
            // dead path must not leave the ack reader thinking nothing is
            // owed (review of helper-49).
            sent.store(last_seq, Ordering::SeqCst);
            wr.write_all(&header).await?;
        }
        wr.write_all(part).await?;
    }
    wr.flush().await?;
    // The link's pace decides whether the next batches are compressed.
    // Not the wait for room in the window of unacknowledged bytes: that
    // is the recovery site's journal as much as the link, and a slow
    // journal disk is not helped by compression.
    encoder.sent(raw_len, header.len() + wire_len, started.elapsed());
    stats.raw_bytes.fetch_add(raw_len as u64, Ordering::Relaxed);
    inflight.batches.push_back((last_seq, wire_len as u64));
    inflight.bytes += wire_len as u64;
    Ok(())
}
