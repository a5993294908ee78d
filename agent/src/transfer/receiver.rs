//! The recovery side of the links: accepts TLS connections from pinned
//! protected appliances, opens each VPG's journal on hello, appends every
//! verified batch, fsyncs, and only then acknowledges. A connection that
//! sends anything malformed is dropped alone; other links keep running.

use super::peer::Peer;
use super::slot::{VpgSlot, VpgSlots};
use super::TransferError;
use super::{answer_when_done, recv_control, recv_control_or_refuse, send_control};
use crate::extent_hash::HashQuestion;
use crate::io_failure::Doing;
use crate::journal::applier::HistoryPolicy;
use crate::journal::{vpg_dir, Journal, JournalMeta};
use crate::record::vpg_id;
use crate::recovery_state::{Event, VpgState};
use crate::wire::batch;
use crate::wire::frame::{read_frame_into, FrameKind};
use crate::wire::message::{ControlMessage, PROTOCOL_VERSION};
use crate::wire::tls::fingerprint;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

type Result<T, E = TransferError> = std::result::Result<T, E>;

/// TLS handshakes under way at once on each port, and from one source:
/// before its certificate is checked a connection is anybody's, and one
/// source must not hold every slot. Authenticated links are not counted.
const HANDSHAKES_MAX: usize = 64;
const HANDSHAKES_PER_SOURCE_MAX: usize = 4;
/// Authenticated links at once on each port (a pinned peer has one per VPG).
const PEER_LINKS_MAX: usize = 1024;
/// Time allowed for the TLS handshake of an incoming link.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// The whole answer to a peer that asks for a VPG it may not use: whether
/// the VPG exists, and what it holds, is none of its business.
const NOT_YOURS: &str = "no such VPG for this appliance";

/// The history settings of a VPG, by name.
pub type PolicyFor = Box<dyn Fn(&str) -> HistoryPolicy + Send + Sync>;

pub struct Receiver {
    journal_root: PathBuf,
    /// Which pinned peer may use which VPG.
    access: crate::config::PeerAccess,
    pub vpgs: Arc<VpgSlots>,
    policy_for: PolicyFor,
    /// Carries out a move's promote (set once at start).
    pub ops: std::sync::OnceLock<Arc<crate::recovery::ops::RecoveryOps>>,
    /// Held, per VPG, while a hello opens a journal no slot holds yet.
    opening: crate::keyed_locks::KeyedLocks,
}

impl Receiver {
    pub fn new(journal_root: PathBuf, policy_for: PolicyFor, access: crate::config::PeerAccess) -> Arc<Self> {
        Arc::new(Receiver {
            journal_root,
            access,
            vpgs: Default::default(),
            policy_for,
            ops: Default::default(),
            opening: Default::default(),
        })
    }

    /// Whether `peer` may use `vpg`; if not, says so in the log (with who
    /// asked) and tells the peer no more than that.
    fn check_access(&self, peer: &Peer, vpg: &str, what: &str) -> Result<(), String> {
        if self.access.allows(&peer.fingerprint, vpg) {
            return Ok(());
        }
        tracing::warn!(
            peer = %peer.address,
            certificate = %crate::config::format_fingerprint(&peer.fingerprint),
            vpg = %vpg,
            "refused {what}: this protected appliance may not use that VPG here"
        );
        Err(NOT_YOURS.to_string())
    }

    pub fn slot(&self, vpg: &str) -> Option<Arc<VpgSlot>> {
        super::slot::find(&self.vpgs, vpg)
    }

    /// The checkpoint `vpg` was failed over at here, if it was.
    fn failed_over_at(&self, vpg: &str) -> Option<u64> {
        self.slot(vpg).and_then(|s| s.failed_over_at())
    }

    pub fn journal_root(&self) -> &std::path::Path {
        &self.journal_root
    }

    /// Opens every journal already on disk, so the applier keeps history
    /// moving (and finishes an interrupted apply) before, or without, the
    /// protected side connecting.
    pub fn open_existing(&self) -> Result<()> {
        let entries = match std::fs::read_dir(&self.journal_root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Ok(Err(e).doing(|| format!("listing {}", self.journal_root.display()))?),
        };
        for entry in entries {
            let dir = entry?.path();
            let Ok(meta) = JournalMeta::load(&dir) else { continue };
            let vpg = meta.vpg.clone();
            let policy = (self.policy_for)(&vpg);
            if crate::recovery::switch_back::finish_on_disk(&dir)? {
                tracing::warn!(%vpg, "finished a switch-back a stop interrupted");
            }
            crate::recovery::failover::finish_commit(&dir)?;
            let failed = crate::recovery::failover::FailoverRecord::load(&dir)?;
            let journal = Journal::open(&dir, meta, &policy)
                .map_err(|e| TransferError::from(e).at(format!("opening journal {vpg:?}")))?;
            let state = VpgState::at_start(failed.map(|r| (r.checkpoint.id, r.how, r.time_ms)));
            let slot = VpgSlot::new(journal, 0, policy, state);
            self.vpgs.lock().expect("vpgs lock").insert(vpg, Arc::new(slot));
        }
        Ok(())
    }
}

pub async fn accept_loop(listener: TcpListener, acceptor: TlsAcceptor, receiver: Arc<Receiver>, role: &'static str) {
    let handshakes = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES_MAX));
    let per_source = crate::limits::PerSource::new(HANDSHAKES_PER_SOURCE_MAX);
    let links = Arc::new(tokio::sync::Semaphore::new(PEER_LINKS_MAX));
    loop {
        let (tcp, address) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("{role} accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(source_slot) = per_source.enter(address.ip()) else {
            tracing::warn!(peer = %address, "{role}: connection refused, this source has {HANDSHAKES_PER_SOURCE_MAX} handshakes under way");
            continue;
        };
        let Ok(handshake_slot) = handshakes.clone().acquire_owned().await else { return };
        let (acceptor, receiver, links) = (acceptor.clone(), receiver.clone(), links.clone());
        tokio::spawn(async move {
            if let Err(e) = super::tune_link_socket(&tcp) {
                tracing::warn!(peer = %address, "{role}: socket options: {e}");
            }
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::warn!(peer = %address, "{role}: TLS handshake refused: {e}");
                    return;
                }
                Err(_) => {
                    tracing::warn!(peer = %address, "{role}: TLS handshake timed out");
                    return;
                }
            };
            drop((handshake_slot, source_slot));
            let Ok(_link_slot) = links.acquire_owned().await else { return };
            // The verifier let only pinned certificates through.
            let Some(fingerprint) = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(fingerprint) else {
                tracing::warn!(peer = %address, "{role}: no client certificate");
                return;
            };
            let peer = Peer { address, fingerprint };
            let result = if role == "control" {
                control_link(tls, &receiver, &peer).await
            } else {
                data_link(tls, &receiver, &peer).await
            };
            if let Err(e) = result {
                tracing::warn!(peer = %address, "{role} link closed: {e_chain}", e_chain = crate::error_chain::Chain(&e));
            }
        });
    }
}

async fn control_link<S: AsyncRead + AsyncWrite + Unpin>(
    mut link: S,
    receiver: &Arc<Receiver>,
    peer: &Peer,
) -> Result<()> {
    let (vpg, durable_seq, session, stream_id, _control) = match recv_control_or_refuse(&mut link).await? {
        ControlMessage::Hello { protocol, vpg, vpg_id: id, volumes, stream_id, .. } => {
            if let Err(reason) = receiver.check_access(peer, &vpg, "a hello") {
                send_control(&mut link, &ControlMessage::refused(reason)).await?;
                return Err(TransferError::Peer("refused a hello for a VPG this peer may not use".to_string()));
            }
            if let Some(checkpoint) = receiver.failed_over_at(&vpg) {
                send_control(&mut link, &ControlMessage::FailedOver { checkpoint }).await?;
                return Err(TransferError::Peer(format!(
                    "VPG {vpg:?} was failed over here at checkpoint {checkpoint}; told the protected side"
                )));
            }
            let opened = open_vpg(receiver, protocol, &vpg, id, volumes, stream_id, peer).await;
            match opened {
                Ok(welcome) => (vpg, welcome.0, welcome.1, welcome.2, welcome.3),
                Err(e) => {
                    let reason = crate::error_chain::Chain(&e).to_string();
                    send_control(&mut link, &ControlMessage::refused(reason)).await?;
                    return Err(e.at(format!("refused hello for VPG {vpg:?}")));
                }
            }
        }
        ControlMessage::ReverseHello { protocol, vpg, volumes, applied_seq, stream_id, in_sync, .. } => {
            let ops = admit_old_site(&mut link, receiver, peer, &vpg, protocol, "a reverse hello").await?;
            let applied = crate::recovery::ops::OldSiteApplied { seq: applied_seq, stream: stream_id, in_sync };
            return super::reverse::serve_control(link, &ops, &vpg, volumes, applied, peer).await;
        }
        request @ (ControlMessage::MoveBackBegin { .. }
        | ControlMessage::MoveBackFinish { .. }
        | ControlMessage::MoveBackCancel { .. }) => {
            let (protocol, vpg) = request.move_back_target().expect("a switch-back request");
            let ops = admit_old_site(&mut link, receiver, peer, &vpg, protocol, "a switch-back request").await?;
            return super::switch_back::serve(link, ops, peer.fingerprint, request).await;
        }
        other => return Err(TransferError::Peer(format!("expected hello, got {other:?}"))),
    };
    send_control(&mut link, &ControlMessage::Welcome { durable_seq, session, stream_id }).await?;
    tracing::info!(%vpg, durable_seq, "protected side connected");
    // Held while a move announced on this link runs; dropped with the link.
    let mut moving: Option<crate::recovery::ops::MoveMark> = None;
    loop {
        match recv_control(&mut link).await? {
            ControlMessage::MoveBegins => match mark_move(receiver, &vpg, &mut moving) {
                Ok(_) => send_control(&mut link, &ControlMessage::Promoted { checkpoint: 0 }).await?,
                Err(e) => {
                    send_control(&mut link, &ControlMessage::refused(crate::error_chain::Chain(&e).to_string())).await?
                }
            },
            ControlMessage::MoveCancel => {
                // Refused while a failover is (being) committed; once
                // taken, no promote of the move commits, whichever link
                // reads it.
                let cancelled = receiver.slot(&vpg).map_or(Ok(()), |s| s.change(Event::MoveCancel));
                let reply = match cancelled {
                    Err(e) => ControlMessage::Refused { reason: crate::error_chain::Chain(&e).to_string() },
                    Ok(()) => {
                        moving = None;
                        tracing::info!(vpg = %vpg, "the protected side cancelled its move");
                        ControlMessage::Promoted { checkpoint: 0 }
                    }
                };
                send_control(&mut link, &reply).await?;
            }
            ControlMessage::Ping => {
                let reply = match receiver.failed_over_at(&vpg) {
                    Some(checkpoint) => ControlMessage::FailedOver { checkpoint },
                    None => ControlMessage::Pong,
                };
                send_control(&mut link, &reply).await?;
            }
            ControlMessage::PinLastClean { since_seq, reason } => {
                pin_last_clean(&mut link, receiver, &vpg, since_seq, reason).await?
            }
            ControlMessage::AskExtentHashes { stream_id, at, volume, first_extent, count } => {
                let ask = HashQuestion { stream_id, at, volume, first_extent, count };
                answer_hashes(&mut link, receiver, &vpg, ask).await?
            }
            // After a reconnect the move is announced again implicitly.
            ControlMessage::Promote { checkpoint } => match mark_move(receiver, &vpg, &mut moving) {
                Ok(mark) => promote(&mut link, receiver, &vpg, checkpoint, mark).await?,
                Err(e) => {
                    send_control(&mut link, &ControlMessage::refused(crate::error_chain::Chain(&e).to_string())).await?
                }
            },
            other => return Err(TransferError::Peer(format!("unexpected control message {other:?}"))),
        }
    }
}

/// The checks of an old site's first message (`what`): the peer may use
/// the VPG and speaks this protocol; refused (and said why) otherwise.
async fn admit_old_site<S: AsyncRead + AsyncWrite + Unpin>(
    link: &mut S,
    receiver: &Receiver,
    peer: &Peer,
    vpg: &str,
    protocol: u32,
    what: &str,
) -> Result<Arc<crate::recovery::ops::RecoveryOps>> {
    if let Err(reason) = receiver.check_access(peer, vpg, what) {
        send_control(link, &ControlMessage::refused(reason)).await?;
        return Err(TransferError::Peer(format!("refused {what} for a VPG this peer may not use")));
    }
    if protocol != PROTOCOL_VERSION {
        let reason = format!(
            "protocol version {protocol} is not supported (this side speaks {PROTOCOL_VERSION}): upgrade both \
             appliances to the same build"
        );
        send_control(link, &ControlMessage::refused(reason)).await?;
        return Err(TransferError::Peer(format!("{what} with protocol {protocol}")));
    }
    Ok(receiver
        .ops
        .get()
        .ok_or_else(|| TransferError::Peer("the recovery agent is still starting".to_string()))?
        .clone())
}

/// Marks a move of `vpg` as running for this link (once); its mark.
fn mark_move(receiver: &Receiver, vpg: &str, moving: &mut Option<crate::recovery::ops::MoveMark>) -> Result<u64> {
    if let Some(held) = moving {
        return Ok(held.mark());
    }
    let ops =
        receiver.ops.get().ok_or_else(|| TransferError::Peer("the recovery agent is still starting".to_string()))?;
    let held = moving.insert(ops.begin_move(vpg)?);
    Ok(held.mark())
}

/// The encryption detector's alert: pin the last clean checkpoint (a
/// journal read and the apply lock: it may take a while).
async fn pin_last_clean<S: AsyncRead + AsyncWrite + Unpin>(
    link: &mut S,
    receiver: &Arc<Receiver>,
    vpg: &str,
    since_seq: u64,
    reason: String,
) -> Result<()> {
    let ops = receiver
        .ops
        .get()
        .ok_or_else(|| TransferError::Peer("the recovery agent is still starting".to_string()))?
        .clone();
    let vpg = vpg.to_string();
    Ok(answer_when_done(
        link,
        tokio::spawn(async move {
            match ops.pin_last_clean(&vpg, since_seq, reason).await {
                Ok(checkpoint) => ControlMessage::Promoted { checkpoint },
                Err(e) => {
                    tracing::error!(%vpg, "the encryption detector's alert: pinning the last clean checkpoint failed: {e_chain}", e_chain = crate::error_chain::Chain(&e));
                    ControlMessage::refused(crate::error_chain::Chain(&e).to_string())
                }
            }
        }),
    )
    .await?)
}

/// A move's last step: fail over to `checkpoint`.
async fn promote<S: AsyncRead + AsyncWrite + Unpin>(
    link: &mut S,
    receiver: &Arc<Receiver>,
    vpg: &str,
    checkpoint: u64,
    mark: u64,
) -> Result<()> {
    let ops = receiver
        .ops
        .get()
        .ok_or_else(|| TransferError::Peer("the recovery agent is still starting".to_string()))?
        .clone();
    let vpg = vpg.to_string();
    let commit = crate::recovery_state::Commit::Move { mark };
    Ok(answer_when_done(
        link,
        tokio::spawn(async move {
            match ops.failover(&vpg, &checkpoint.to_string(), true, commit).await {
                Ok(_) => ControlMessage::Promoted { checkpoint },
                Err(e) => ControlMessage::refused(crate::error_chain::Chain(&e).to_string()),
            }
        }),
    )
    .await?)
}

/// Extent hashes of the journal at `at` (a new stream's copy or a verify
/// compares its volumes with them): once the journal holds the asked-for
/// stream (waiting a while for it), read off the runtime's threads, and
/// given up if this link goes first.
async fn answer_hashes<S: AsyncRead + AsyncWrite + Unpin>(
    link: &mut S,
    receiver: &Arc<Receiver>,
    vpg: &str,
    ask: HashQuestion,
) -> Result<()> {
    let slot = receiver.slot(vpg).ok_or_else(|| TransferError::Peer("no journal open for the VPG".to_string()))?;
    let root = receiver.journal_root.clone();
    let vpg = vpg.to_string();
    let cancel = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let _cancel_on_drop = CancelOnDrop(cancel.clone());
    let work = tokio::spawn(async move {
        let holds = || slot.journal.lock().expect("journal lock").index.stream_id == ask.stream_id;
        // Only the stream the sender's log holds can still come: a question
        // of a copy whose stream was replaced is not waited for.
        let may_come = || slot.session_stream.load(Ordering::SeqCst) == ask.stream_id;
        let waited = std::time::Instant::now();
        while !holds() && may_come() && waited.elapsed() < HASH_STREAM_WAIT && !cancel.load(Ordering::Relaxed) {
            tokio::time::sleep(HASH_STREAM_POLL).await;
        }
        let hashed = tokio::task::spawn_blocking(move || {
            let hashes = crate::recovery::hashes::extent_hashes(&root, &vpg, &ask, &cancel);
            (hashes, vpg, ask)
        });
        match hashed.await {
            Ok((Ok(hashes), _, ask)) => ControlMessage::ExtentHashes {
                volume: ask.volume,
                first_extent: ask.first_extent,
                hashes: hashes.iter().map(crate::extent_hash::to_hex).collect(),
            },
            Ok((Err(e), vpg, ask)) => {
                tracing::warn!(%vpg, at = ask.at, volume = ask.volume, first = ask.first_extent, "extent hashes refused: {e_chain}", e_chain = crate::error_chain::Chain(&e));
                ControlMessage::refused(format!(
                    "extent hashes of volume {} at {}: {e_chain}",
                    ask.volume,
                    ask.at,
                    e_chain = crate::error_chain::Chain(&e)
                ))
            }
            Err(e) => ControlMessage::refused(format!("extent hashes: the task failed: {e}")),
        }
    });
    Ok(answer_when_done(link, work).await?)
}

/// Sets its flag when dropped: blocking work watching it stops.
struct CancelOnDrop(Arc<std::sync::atomic::AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// How long a hash question waits for the journal to hold its stream.
const HASH_STREAM_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
const HASH_STREAM_POLL: std::time::Duration = std::time::Duration::from_millis(200);

async fn open_vpg(
    receiver: &Arc<Receiver>,
    protocol: u32,
    vpg: &str,
    id: u32,
    volumes: Vec<crate::wire::message::VolumeInfo>,
    stream_id: u32,
    peer: &Peer,
) -> Result<(u64, u64, u32, Arc<()>)> {
    if protocol != PROTOCOL_VERSION {
        return Err(TransferError::Peer(format!(
            "protocol version {protocol} is not supported (this side speaks {PROTOCOL_VERSION}): upgrade both \
             appliances to the same build"
        )));
    }
    crate::config::validate_name("vpg", vpg)?;
    if id != vpg_id(vpg) {
        return Err(TransferError::Peer(format!("VPG id {id:#x} does not match name {vpg:?}")));
    }
    if volumes.is_empty() || volumes.iter().any(|v| v.size == 0) {
        return Err(TransferError::Peer(format!("VPG {vpg:?} must have volumes of non-zero size")));
    }
    for v in &volumes {
        crate::config::validate_name("volume", &v.name)?;
    }
    let session = crate::random::random_u64();
    if let Some(slot) = receiver.slot(vpg) {
        return join_slot(&slot, &volumes, stream_id, session, peer);
    }
    // One open of a journal at a time: a hello that comes while another
    // opens this journal (its peer gave up waiting for the welcome and
    // said hello again) waits for it and joins the VPG it made. Two opens
    // would run one's recovery (cutting a torn tail, setting damaged
    // segments aside) over the journal the other's slot appends to. Other
    // VPGs' opens do not wait: an open can take long (a seed still writing
    // holds the apply lock), and it held up every new VPG (review of
    // helper-52).
    let _opening = receiver.opening.lock(vpg).await;
    if let Some(slot) = receiver.slot(vpg) {
        return join_slot(&slot, &volumes, stream_id, session, peer);
    }
    let dir = vpg_dir(&receiver.journal_root, vpg);
    let meta = JournalMeta { vpg: vpg.to_string(), vpg_id: id, volumes: volumes.clone() };
    let policy = (receiver.policy_for)(vpg);
    let journal = tokio::task::spawn_blocking(move || Journal::open(&dir, meta, &policy)).await??;
    if let Some(damage) = &journal.index.damage {
        tracing::error!(%vpg, "journal was damaged and cut back to its last good record: {damage}");
    }
    tracing::info!(%vpg, durable_seq = journal.durable_seq(), "opened the journal for the VPG's first hello");
    let slot = Arc::new(VpgSlot::new(journal, session, policy, VpgState::Replicating));
    receiver.vpgs.lock().expect("vpgs lock").insert(vpg.to_string(), slot.clone());
    join_slot(&slot, &volumes, stream_id, session, peer)
}

/// A hello's session joins the open VPG `slot`: its welcome (the
/// journal's durable seq and stream), and the token its control link holds.
fn join_slot(
    slot: &VpgSlot,
    volumes: &[crate::wire::message::VolumeInfo],
    stream_id: u32,
    session: u64,
    peer: &Peer,
) -> Result<(u64, u64, u32, Arc<()>)> {
    if let Some(why) = slot.stream_refusal() {
        return Err(TransferError::Peer(why.to_string()));
    }
    let journal = slot.journal.lock().expect("journal lock");
    if journal.meta.volumes != volumes {
        return Err(TransferError::Peer(format!(
            "volumes {:?} differ from the journal's {:?}",
            volumes, journal.meta.volumes
        )));
    }
    slot.session_stream.store(stream_id, Ordering::SeqCst);
    *slot.session_peer.lock().expect("session peer") = peer.fingerprint;
    let control = slot.begin_session(session);
    Ok((journal.durable_seq(), session, journal.index.stream_id, control))
}

async fn data_link<S: AsyncRead + AsyncWrite + Unpin>(link: S, receiver: &Arc<Receiver>, peer: &Peer) -> Result<()> {
    let (mut rd, mut wr) = tokio::io::split(link);
    let (vpg, session) = match recv_control(&mut rd).await? {
        ControlMessage::Attach { vpg, session } => (vpg, session),
        other => return Err(TransferError::Peer(format!("expected attach, got {other:?}"))),
    };
    // A session is joined only by the certificate that opened it.
    let ours = |s: &Arc<VpgSlot>| {
        s.session.load(Ordering::SeqCst) == session && *s.session_peer.lock().expect("session peer") == peer.fingerprint
    };
    let Some(slot) = receiver.slot(&vpg).filter(ours) else {
        if let Some(capture) = receiver.ops.get().and_then(|ops| ops.reverse_session(&vpg, session, &peer.fingerprint))
        {
            let current = || {
                receiver.ops.get().is_some_and(|ops| ops.reverse_session(&vpg, session, &peer.fingerprint).is_some())
            };
            let served = super::reverse::serve_data(rd.unsplit(wr), capture, current).await;
            // Its data link gone, the session is: the old site's next ping
            // is refused and it connects again (its reader waits for
            // batches without a limit).
            if let Some(ops) = receiver.ops.get() {
                ops.end_reverse_session(&vpg, session);
            }
            return served;
        }
        send_control(&mut wr, &ControlMessage::refused("no such session")).await?;
        return Err(TransferError::Peer(format!("attach for VPG {vpg:?} with an unknown session")));
    };
    let id = vpg_id(&vpg);
    let stream = slot.session_stream.load(Ordering::SeqCst);
    let mut payload = Vec::new();
    let mut decoder = batch::BatchDecoder::default();
    loop {
        // A larger batch than most (one big write) leaves no large buffer behind.
        batch::trim_buffer(&mut payload, batch::BUSY_BUFFER_BYTES);
        // Idle, the link lives as long as its session and the session's
        // control link (a stream with nothing to send sends nothing).
        let alive = || match slot.session_alive(session) {
            true => Ok(()),
            false => Err(TransferError::Peer("its session was replaced, or its control link ended".to_string())),
        };
        let kind = super::wait_frame(async { Ok(read_frame_into(&mut rd, &mut payload).await?) }, alive).await?;
        if kind != FrameKind::Batch {
            return Err(TransferError::Peer(format!("expected a batch frame, got {kind:?}")));
        }
        if slot.session.load(Ordering::SeqCst) != session {
            return Err(TransferError::Peer("a newer session replaced this link".to_string()));
        }
        let decoded = decoder.decode(&payload, id).map_err(|e| TransferError::from(e).at("bad batch"))?;
        let wire_len = payload.len();
        // On this thread (not the blocking pool): the batch is allocated and
        // freed by one thread, which keeps the allocator from holding it.
        let appended = tokio::task::block_in_place(|| {
            let mut journal = slot.journal.lock().expect("journal lock");
            // Again under the lock a hello's welcome reads the durable seq
            // under: a batch of a replaced session appended after a newer
            // welcome would put the journal ahead of what that session's
            // sender was told.
            if slot.session.load(Ordering::SeqCst) != session {
                return Err(TransferError::Peer("a newer session replaced this link".to_string()));
            }
            match slot.stream_refusal() {
                None => Ok(journal.append(&decoded, stream)?),
                Some(why) => Err(TransferError::Peer(format!("{why}; the stream is closed"))),
            }
        });
        drop(decoded);
        let durable = match appended {
            Ok(d) => d,
            Err(e) => {
                let reason = crate::error_chain::Chain(&e).to_string();
                send_control(&mut wr, &ControlMessage::refused(reason)).await?;
                drain_until_closed(&mut rd).await;
                return Err(e.at(format!("journal append for {vpg}")));
            }
        };
        slot.received_bytes.fetch_add(wire_len as u64, Ordering::Relaxed);
        send_control(&mut wr, &ControlMessage::Ack { seq: durable }).await?;
    }
}

/// How long a refusal waits for the sender to read it and hang up.
const REFUSAL_LINGER: std::time::Duration = std::time::Duration::from_secs(2);

/// Reads and drops what the sender still pipelines until it closes (or
/// `REFUSAL_LINGER` passes). Closing with its batches unread would reset
/// the connection, and the sender would lose the refusal's reason with
/// them: its status would say "connection reset" instead of why.
async fn drain_until_closed<R: AsyncRead + Unpin>(rd: &mut R) {
    let mut buf = vec![0u8; 64 << 10];
    let drain = async { while matches!(rd.read(&mut buf).await, Ok(n) if n > 0) {} };
    let _ = tokio::time::timeout(REFUSAL_LINGER, drain).await;
}
