//! The NBD server: accepts hypervisor connections, negotiates an export
//! (fixed newstyle), then serves requests with many in flight. Replies go
//! through one writer task per connection so slow FLUSHes do not hold up
//! reads and writes behind them. Updates (and FLUSHes) are applied by one
//! updater task per connection, in the order they came, while the reader
//! already takes the next requests off the socket: a connection's writes
//! are read on one core while the one before is logged on another. A
//! malformed request gets an error reply or closes that one connection;
//! nothing is written for it.
//!
//! Nothing a client sends makes the server hold more than `admission`
//! allows: buffers are paid for before they are allocated and freed once
//! the client has taken the reply; a client has `NBD_HANDSHAKE_TIMEOUT` to
//! choose an export and `NBD_SEND_TIMEOUT` to take each reply; FLUSH and
//! FUA waits are bounded per connection. Removing an export from the table
//! closes its connections.

use super::admission::{Admission, Admitted, Buffers, Refused, REPLY_HEADER_BYTES_MAX};
use super::export::{BlockExport, ExportError, ExportTable, Serving};
use super::protocol::*;
use crate::error_chain::Chain;
use crate::io_failure::{Doing, IoFailure};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};

/// Time a client has to choose an export after connecting.
pub const NBD_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client has to take each reply; a client that reads nothing for
/// this long is disconnected and its buffers freed.
pub const NBD_SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Time a write's payload has to arrive once its buffers are paid for: a
/// client that sends a header and stalls would otherwise hold them (up to
/// 32 MiB a write, its source's whole budget with three) for as long as
/// it keeps the connection open (review of helper-61).
pub const NBD_PAYLOAD_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a connection that ends in an error still sends what is queued.
const CLOSING_REPLY_GRACE: Duration = Duration::from_secs(2);
/// FLUSH and FUA requests waiting for durability, per connection; the
/// updater takes no more updates while this many wait.
const DURABLE_WAITS_PER_CONNECTION_MAX: usize = 32;
/// Updates read and not yet done with, per connection, past which the
/// reader waits: the one the updater is applying, and four read ahead.
/// The payloads read ahead come from the spare half of the buffers only
/// (`Admitted::spare_buffers`): connections whose updates are stuck (a
/// full log that cannot go to bitmap mode, sync mode with the link down)
/// hold the one payload each they held before, and what they read ahead
/// never takes the half their source's other connections need.
const UPDATES_PENDING_MAX: u64 = 5;
/// Replies queued per connection (each holds its buffers until sent).
const REPLY_QUEUE_DEPTH: usize = 256;
/// Small replies queued together are sent in one write up to this size;
/// larger ones go out as they are, never copied.
const REPLY_COALESCE_BYTES: usize = 256 << 10;
/// Requests (and small write payloads) are read through a buffer this big.
const REQUEST_READ_BUFFER_BYTES: usize = 64 << 10;
/// TCP keepalive: a hypervisor that vanished is noticed within about a
/// minute and its connection slot freed. No unacknowledged-bytes limit: a
/// hypervisor that stops taking replies for a while (a stopped QEMU) must
/// find its connection, and its guest's disk, still there.
const KEEPALIVE: crate::listen::Keepalive = crate::listen::Keepalive {
    idle: Duration::from_secs(30),
    interval: Duration::from_secs(10),
    probes: 3,
    unacked_limit: None,
};

pub async fn serve(listener: TcpListener, exports: ExportTable) {
    let admission = Admission::new();
    let mut refusals = RefusalLog::default();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("NBD accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if let Err(e) = tune_socket(&stream) {
            tracing::warn!(%peer, "NBD socket options: {e}");
        }
        let admitted = match admission.admit(peer.ip()) {
            Ok(admitted) => admitted,
            Err(refused) => {
                refusals.refused(peer, &refused);
                continue;
            }
        };
        let exports = exports.clone();
        tokio::spawn(async move {
            match serve_connection(stream, exports, admitted).await {
                Ok(()) => tracing::debug!(%peer, "NBD client disconnected"),
                Err(e) => {
                    tracing::warn!(%peer, "NBD connection closed: {e_chain}", e_chain = crate::error_chain::Chain(&e))
                }
            }
        });
    }
}

/// Refused connections, logged at most every REFUSALS_LOGGED_EVERY for
/// each kind of refusal: a client that connects as fast as it can must
/// not flood the log, nor hide that others are refused for another cause.
#[derive(Default)]
struct RefusalLog {
    kinds: [RefusalWindow; 3],
}

#[derive(Default)]
struct RefusalWindow {
    last: Option<tokio::time::Instant>,
    unlogged: u64,
}

const REFUSALS_LOGGED_EVERY: Duration = Duration::from_secs(10);

impl RefusalLog {
    fn refused(&mut self, peer: std::net::SocketAddr, why: &Refused) {
        let kind = match why {
            Refused::SourceFull { .. } => 0,
            Refused::AllTaken { .. } => 1,
            Refused::Evicting { .. } => 2,
        };
        let window = &mut self.kinds[kind];
        let now = tokio::time::Instant::now();
        if window.last.is_some_and(|last| now.duration_since(last) < REFUSALS_LOGGED_EVERY) {
            window.unlogged += 1;
            return;
        }
        let unlogged = std::mem::take(&mut window.unlogged);
        window.last = Some(now);
        if unlogged == 0 {
            tracing::warn!(%peer, "NBD connection refused: {why}");
        } else {
            tracing::warn!(%peer, "NBD connection refused: {why} ({unlogged} more so refused since the last such line)");
        }
    }
}

fn tune_socket(stream: &tokio::net::TcpStream) -> std::io::Result<()> {
    crate::listen::tune_connection(stream, &KEEPALIVE)
}

#[derive(Clone)]
struct Negotiated {
    export: Arc<dyn BlockExport>,
    serving: Serving,
    structured: bool,
    /// Every update is made durable before its reply, as if it had FUA
    /// (the kernel's device for an iSCSI LUN: no write cache).
    write_through: bool,
}

/// A reply on its way to the client, with the buffers it holds.
/// Why a connection ended other than by the client's leaving.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Doing(#[from] IoFailure),
    /// The client broke the protocol.
    #[error("{0}")]
    Protocol(String),
    #[error("no export chosen within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("the client took no reply for {0:?}")]
    SendTimeout(Duration),
    #[error("the export is no longer served")]
    Closed,
    #[error("no slot for the kernel's connection: {0}")]
    NoSlot(Refused),
    #[error(
        "closed to let another source in: every connection slot was taken, and this connection had sent no \
         request since its handshake"
    )]
    Evicted,
    #[error("reply writer")]
    Writer(#[source] tokio::task::JoinError),
    #[error("the reply writer stopped")]
    WriterGone,
    #[error("the updater stopped")]
    UpdaterGone,
}

impl From<mpsc::error::SendError<Reply>> for ConnectionError {
    fn from(_: mpsc::error::SendError<Reply>) -> Self {
        ConnectionError::WriterGone
    }
}

impl From<mpsc::error::SendError<Update>> for ConnectionError {
    fn from(_: mpsc::error::SendError<Update>) -> Self {
        ConnectionError::UpdaterGone
    }
}

type Result<T> = std::result::Result<T, ConnectionError>;

fn protocol<T>(why: String) -> Result<T> {
    Err(ConnectionError::Protocol(why))
}

struct Reply {
    bytes: Vec<u8>,
    _buffers: Option<Buffers>,
}

impl Reply {
    fn small(bytes: Vec<u8>) -> Reply {
        Reply { bytes, _buffers: None }
    }
}

/// A request that changes the export, or a FLUSH (which covers the updates
/// before it), for the connection's updater.
enum Update {
    Write { req: Request, data: Vec<u8>, _buffers: Buffers },
    Zero { req: Request },
    Flush { req: Request },
}

/// Serves one client on any stream (a TCP connection, or a test's pipe).
pub async fn serve_connection<S>(stream: S, exports: ExportTable, admitted: Admitted) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let negotiated = tokio::select! {
        n = tokio::time::timeout(NBD_HANDSHAKE_TIMEOUT, handshake(&mut rd, &mut wr, &exports)) => n,
        () = admitted.evicted() => return Err(ConnectionError::Evicted),
    };
    let negotiated = negotiated.map_err(|_| ConnectionError::HandshakeTimeout(NBD_HANDSHAKE_TIMEOUT))??;
    let Some(neg) = negotiated else { return Ok(()) };
    serve_negotiated(rd, wr, neg, admitted).await
}

/// Serves the kernel's NBD client on one connection of an attached device
/// (`iscsi::kernel_nbd`): no handshake (the device was configured over
/// netlink), and write-through: an update's reply means it is durable.
/// `serving`: its device's gate (`ServingGate`), or `Serving::for_good()`.
pub async fn serve_kernel<S>(
    stream: S,
    export: Arc<dyn BlockExport>,
    serving: Serving,
    admitted: Admitted,
) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (rd, wr) = tokio::io::split(stream);
    let neg = Negotiated { export, serving, structured: false, write_through: true };
    serve_negotiated(rd, wr, neg, admitted).await
}

/// `serve_kernel` on the agent's end of a kernel device's socket pair
/// (a blocking std socket), once `admission` has a slot for it. The
/// kernel is one source: every device it serves shares its slots.
pub async fn serve_kernel_connection(
    connection: std::os::unix::net::UnixStream,
    export: Arc<dyn BlockExport>,
    serving: Serving,
    admission: &Arc<Admission>,
) -> Result<()> {
    connection.set_nonblocking(true)?;
    let stream = tokio::net::UnixStream::from_std(connection)?;
    let admitted =
        admission.admit(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)).map_err(ConnectionError::NoSlot)?;
    serve_kernel(stream, export, serving, admitted).await
}

async fn serve_negotiated<R, W>(rd: R, wr: W, neg: Negotiated, admitted: Admitted) -> Result<()>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<Reply>(REPLY_QUEUE_DEPTH);
    let mut writer = tokio::spawn(write_replies(wr, rx));
    let (updates, queued) = mpsc::channel::<Update>(UPDATES_PENDING_MAX as usize);
    let (applied_tx, applied) = watch::channel(0u64);
    let mut updater = tokio::spawn(apply_updates(neg.clone(), queued, applied_tx, tx.clone()));
    let serving = neg.serving.clone();
    let mut rd = tokio::io::BufReader::with_capacity(REQUEST_READ_BUFFER_BYTES, rd);
    let mut writer_ended = None;
    let result = tokio::select! {
        r = transmission(&mut rd, &neg, &tx, Updates { queue: &updates, applied, read: 0 }, &admitted) => r,
        () = serving.closed() => Err(ConnectionError::Closed),
        () = admitted.evicted() => Err(ConnectionError::Evicted),
        w = &mut writer => {
            writer_ended = Some(w);
            Ok(())
        }
    };
    admitted.closing();
    if let Some(ended) = writer_ended {
        stop(updater).await;
        return ended.map_err(ConnectionError::Writer)?;
    }
    drop((tx, updates));
    // The updates read before the end are applied and their durable waits
    // answered, as NBD asks of a server that closes, within a bound (the
    // updater itself applies nothing once the export is removed).
    let grace = if result.is_ok() { NBD_SEND_TIMEOUT } else { CLOSING_REPLY_GRACE };
    let deadline = tokio::time::Instant::now() + grace;
    let mut updater_done = false;
    if !matches!(result, Err(ConnectionError::Closed)) {
        updater_done = tokio::time::timeout_at(deadline, &mut updater).await.is_ok();
    }
    if !updater_done {
        stop(updater).await;
    }
    // Then what is queued goes out (the error reply of a request that ends
    // the connection among them), by the same deadline, or shortly after
    // if the updater took it all.
    let deadline = deadline.max(tokio::time::Instant::now() + CLOSING_REPLY_GRACE);
    match tokio::time::timeout_at(deadline, &mut writer).await {
        Err(_) => writer.abort(),
        // The updater stopped because the writer did: the writer's reason.
        Ok(Ok(Err(e))) if matches!(result, Err(ConnectionError::UpdaterGone)) => return Err(e),
        Ok(_) => {}
    }
    result
}

/// Stops a connection's updater, and returns once it has: an update it is
/// applying is not still applied after the connection ended.
async fn stop(updater: tokio::task::JoinHandle<Result<()>>) {
    updater.abort();
    let _ = updater.await;
}

/// The reader's side of the updater: the queue, and how many of the
/// updates it read the updater has applied.
struct Updates<'a> {
    queue: &'a mpsc::Sender<Update>,
    applied: watch::Receiver<u64>,
    read: u64,
}

impl Updates<'_> {
    /// Buffers for the next write's payload of `bytes`: waited for while
    /// no update is pending (the one payload a connection always had),
    /// taken from the spare half while fewer than `UPDATES_PENDING_MAX`
    /// are, else once the updater is done with one.
    async fn pay_for(&mut self, admitted: &Admitted, bytes: usize) -> Result<Buffers> {
        loop {
            let pending = self.read - *self.applied.borrow_and_update();
            if pending == 0 {
                return Ok(admitted.buffers(bytes).await);
            }
            if pending < UPDATES_PENDING_MAX {
                if let Some(buffers) = admitted.spare_buffers(bytes) {
                    return Ok(buffers);
                }
            }
            self.applied.changed().await.map_err(|_| ConnectionError::UpdaterGone)?;
        }
    }

    /// Waits until an update without a payload may be read.
    async fn room(&mut self) -> Result<()> {
        self.pending_below(UPDATES_PENDING_MAX).await
    }

    /// Hands an update read to the updater (after `pay_for` or `room`).
    async fn send(&mut self, update: Update) -> Result<()> {
        self.queue.send(update).await?;
        self.read += 1;
        Ok(())
    }

    /// Waits until every update read so far is applied: a read sees the
    /// writes before it on its connection, replied to or not, as when one
    /// task did both.
    async fn applied(&mut self) -> Result<()> {
        self.pending_below(1).await
    }

    /// Waits until fewer than `max` updates read are not yet done with.
    async fn pending_below(&mut self, max: u64) -> Result<()> {
        let read = self.read;
        self.applied.wait_for(|n| read - *n < max).await.map_err(|_| ConnectionError::UpdaterGone)?;
        Ok(())
    }
}

/// Applies a connection's updates in the order the reader took them
/// (counting each in `applied` once it is done with), and queues their
/// replies (an update with FUA, or on a write-through connection, once it
/// is durable). Stops when the reader is done and every durable wait is
/// answered, when the reply writer is gone, or once the export is removed:
/// an update is applied through `Serving::apply`, so none is still being
/// applied once the removal returns (a replica's file is reopened by the
/// recovery journal right after).
async fn apply_updates(
    neg: Negotiated,
    mut queued: mpsc::Receiver<Update>,
    applied: watch::Sender<u64>,
    tx: mpsc::Sender<Reply>,
) -> Result<()> {
    let Negotiated { export, serving, structured, write_through } = neg;
    let mut durable_waits = DurableWaits::new();
    while let Some(update) = queued.recv().await {
        let (req, result) = match update {
            Update::Write { req, data, _buffers } => {
                let write = async {
                    if data.is_empty() {
                        Ok(export.last_token())
                    } else {
                        export.write(req.offset, data).await
                    }
                };
                (req, serving.apply(write).await.ok_or(ConnectionError::Closed)?)
            }
            Update::Zero { req } => {
                let zero = async {
                    match req.length {
                        0 => Ok(export.last_token()),
                        length => export.zero(req.offset, length as u64).await,
                    }
                };
                (req, serving.apply(zero).await.ok_or(ConnectionError::Closed)?)
            }
            Update::Flush { req } => {
                if serving.is_closed() {
                    return Err(ConnectionError::Closed);
                }
                durable_waits.reply_when_durable(&export, export.last_token(), req.handle, "flush", &tx).await;
                applied.send_modify(|n| *n += 1);
                continue;
            }
        };
        finish_update(&export, req, write_through, result, structured, &tx, &mut durable_waits).await?;
        applied.send_modify(|n| *n += 1);
    }
    durable_waits.answered().await;
    Ok(())
}

/// A connection's FLUSH and FUA requests waiting for durability: at most
/// `DURABLE_WAITS_PER_CONNECTION_MAX`, and none outlives its connection's
/// updater (a client that sends FUA writes in sync mode with the link down
/// and leaves, again and again, leaves nothing behind).
struct DurableWaits {
    slots: Arc<Semaphore>,
    waiting: tokio::task::JoinSet<()>,
}

impl DurableWaits {
    fn new() -> Self {
        DurableWaits {
            slots: Arc::new(Semaphore::new(DURABLE_WAITS_PER_CONNECTION_MAX)),
            waiting: tokio::task::JoinSet::new(),
        }
    }

    /// Replies to request `handle` once `token` is durable (the error, named
    /// `what` in the log, if that failed); first waits for a free slot.
    async fn reply_when_durable(
        &mut self,
        export: &Arc<dyn BlockExport>,
        token: u64,
        handle: u64,
        what: &'static str,
        tx: &mpsc::Sender<Reply>,
    ) {
        let slot = self.slots.clone().acquire_owned().await.expect("never closed");
        while self.waiting.try_join_next().is_some() {}
        let export = export.clone();
        let tx = tx.clone();
        self.waiting.spawn(async move {
            let error = match export.make_durable(token).await {
                Ok(()) => 0,
                Err(e) => {
                    tracing::error!("{what} failed: {}", Chain(&e));
                    e.errno() as u32
                }
            };
            let _ = tx.send(Reply::small(simple_reply(handle, error).to_vec())).await;
            drop(slot);
        });
    }

    /// Returns once every wait is answered.
    async fn answered(mut self) {
        while self.waiting.join_next().await.is_some() {}
    }
}

/// Sends replies until every sender is gone; stops (and so ends the
/// connection) when a write fails or the client takes nothing for
/// `NBD_SEND_TIMEOUT`. Small replies queued together go out in one write,
/// gathered in a buffer that lives only while they do: a quiet connection
/// holds none (a thousand connections that each once had a burst of
/// replies held 460 MiB).
async fn write_replies<W: AsyncWrite + Unpin>(mut wr: W, mut rx: mpsc::Receiver<Reply>) -> Result<()> {
    while let Some(first) = rx.recv().await {
        let mut queued = vec![first];
        let mut bytes = queued[0].bytes.len();
        while bytes < REPLY_COALESCE_BYTES {
            match rx.try_recv() {
                Ok(more) => {
                    bytes += more.bytes.len();
                    queued.push(more);
                }
                Err(_) => break,
            }
        }
        if let [only] = &queued[..] {
            send(&mut wr, &only.bytes).await?;
            continue;
        }
        let mut gathered = Vec::with_capacity(bytes.min(REPLY_COALESCE_BYTES));
        for reply in queued {
            if gathered.len() + reply.bytes.len() > REPLY_COALESCE_BYTES {
                send(&mut wr, &gathered).await?;
                gathered.clear();
            }
            if reply.bytes.len() > REPLY_COALESCE_BYTES {
                send(&mut wr, &reply.bytes).await?;
            } else {
                gathered.extend_from_slice(&reply.bytes);
            }
        }
        if !gathered.is_empty() {
            send(&mut wr, &gathered).await?;
        }
    }
    Ok(())
}

async fn send<W: AsyncWrite + Unpin>(wr: &mut W, bytes: &[u8]) -> Result<()> {
    tokio::time::timeout(NBD_SEND_TIMEOUT, wr.write_all(bytes))
        .await
        .map_err(|_| ConnectionError::SendTimeout(NBD_SEND_TIMEOUT))?
        .doing(|| "sending a reply".to_string())?;
    Ok(())
}

/// Option haggling. Returns the chosen export, or None if the client left.
async fn handshake<R, W>(rd: &mut R, wr: &mut W, exports: &ExportTable) -> Result<Option<Negotiated>>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    wr.write_all(&server_greeting()).await?;
    let client_flags = rd.read_u32().await.doing(|| "reading client flags".to_string())?;
    if client_flags & !CLIENT_FLAGS_KNOWN != 0 || client_flags & FLAG_FIXED_NEWSTYLE as u32 == 0 {
        return protocol(format!("unsupported client flags {client_flags:#x} (fixed newstyle required)"));
    }
    let no_zeroes = client_flags & FLAG_NO_ZEROES as u32 != 0;
    let mut structured = false;
    loop {
        let magic = rd.read_u64().await.doing(|| "reading option header".to_string())?;
        if magic != IHAVEOPT {
            return protocol(format!("bad option magic {magic:#x}"));
        }
        let option = rd.read_u32().await?;
        let len = rd.read_u32().await?;
        if len > OPTION_BYTES_MAX {
            return protocol(format!("option {option} with {len} bytes of data is over the limit"));
        }
        let mut data = vec![0u8; len as usize];
        rd.read_exact(&mut data).await.doing(|| "reading option data".to_string())?;
        let reply = |t: u32, d: &[u8]| option_reply(option, t, d);
        match option {
            OPT_EXPORT_NAME => {
                let name = String::from_utf8_lossy(&data).to_string();
                let Some((export, serving)) = exports.get(&name) else {
                    return protocol(format!("client asked for unknown export {name:?}"));
                };
                wr.write_all(&export_name_reply(export.size(), export_flags(export.writable()), no_zeroes)).await?;
                return Ok(Some(Negotiated { export, serving, structured, write_through: false }));
            }
            OPT_ABORT => {
                wr.write_all(&reply(REP_ACK, &[])).await?;
                return Ok(None);
            }
            OPT_LIST if !data.is_empty() => wr.write_all(&reply(REP_ERR_INVALID, &[])).await?,
            OPT_LIST if !exports.is_listed() => {
                wr.write_all(&reply(REP_ERR_POLICY, b"exports are not listed here")).await?
            }
            OPT_LIST => {
                for name in exports.names() {
                    wr.write_all(&reply(REP_SERVER, &list_entry(&name))).await?;
                }
                wr.write_all(&reply(REP_ACK, &[])).await?;
            }
            OPT_STRUCTURED_REPLY if !data.is_empty() => wr.write_all(&reply(REP_ERR_INVALID, &[])).await?,
            OPT_STRUCTURED_REPLY => {
                structured = true;
                wr.write_all(&reply(REP_ACK, &[])).await?;
            }
            OPT_INFO | OPT_GO => {
                let Some((name, wanted)) = parse_info_request(&data) else {
                    wr.write_all(&reply(REP_ERR_INVALID, b"malformed info request")).await?;
                    continue;
                };
                let Some((export, serving)) = exports.get(&name) else {
                    wr.write_all(&reply(REP_ERR_UNKNOWN, b"no such export")).await?;
                    continue;
                };
                wr.write_all(&reply(REP_INFO, &info_export(export.size(), export_flags(export.writable())))).await?;
                if wanted.contains(&INFO_NAME) {
                    wr.write_all(&reply(REP_INFO, &info_name(&name))).await?;
                }
                // Always tell our limits; clients that did not ask ignore it.
                wr.write_all(&reply(REP_INFO, &info_block_size())).await?;
                wr.write_all(&reply(REP_ACK, &[])).await?;
                if option == OPT_GO {
                    return Ok(Some(Negotiated { export, serving, structured, write_through: false }));
                }
            }
            _ => wr.write_all(&reply(REP_ERR_UNSUP, &[])).await?,
        }
    }
}

fn error_reply(req: &Request, errno: Errno, structured: bool, message: &str) -> Vec<u8> {
    if structured && req.command == Command::Read {
        structured_error(req.handle, errno, message)
    } else {
        simple_reply(req.handle, errno as u32).to_vec()
    }
}

/// The header of a successful read's reply (the data follows it).
fn read_reply_header(req: &Request, structured: bool) -> Vec<u8> {
    if structured {
        let mut out = structured_header(req.handle, REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, 8 + req.length).to_vec();
        out.extend_from_slice(&req.offset.to_be_bytes());
        out
    } else {
        simple_reply(req.handle, 0).to_vec()
    }
}

/// NBD reads done in place at once, over every connection. A read waits
/// for a permit without holding a runtime thread, so reads alone can
/// never take all of the runtime's blocking threads (`main.rs`,
/// BLOCKING_THREADS_MAX: fsyncs, journal appends and iSCSI work need
/// theirs), and a volume whose disk hangs strands at most this many.
const READS_IN_PLACE_MAX: usize = 32;
static READS_IN_PLACE: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(READS_IN_PLACE_MAX);

/// Runs blocking file I/O without stalling the async workers' other tasks
/// (the test and fuzz harnesses run on one thread, where it runs inline).
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::current().runtime_flavor() {
        tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

async fn transmission<R: AsyncRead + Unpin>(
    rd: &mut tokio::io::BufReader<R>,
    neg: &Negotiated,
    tx: &mpsc::Sender<Reply>,
    mut updates: Updates<'_>,
    admitted: &Admitted,
) -> Result<()> {
    let export = &neg.export;
    let structured = neg.structured;
    let size = export.size();
    let writable = export.writable();
    loop {
        let mut h = [0u8; REQUEST_HEADER_BYTES];
        match rd.read_exact(&mut h).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        admitted.used();
        let req = match parse_request(&h) {
            Ok(r) => r,
            Err(BadMagic(m)) => return protocol(format!("bad request magic {m:#010x}")),
        };
        if let Err(errno) = check_bounds(&req, size) {
            if req.command == Command::Write {
                skip_payload(rd, &req, structured, tx).await?;
            }
            tx.send(Reply::small(error_reply(&req, errno, structured, "request out of bounds"))).await?;
            continue;
        }
        let is_update = matches!(req.command, Command::Write | Command::Trim | Command::WriteZeroes);
        if is_update && !writable {
            if req.command == Command::Write {
                skip_payload(rd, &req, structured, tx).await?;
            }
            tx.send(Reply::small(error_reply(&req, Errno::Perm, structured, "read-only export"))).await?;
            continue;
        }
        match req.command {
            Command::Disc => return Ok(()),
            Command::Unknown(c) => {
                tracing::debug!("unknown NBD command {c}");
                tx.send(Reply::small(error_reply(&req, Errno::Inval, structured, "unknown command"))).await?;
            }
            Command::Read => {
                updates.applied().await?;
                // Paid for before it is allocated; freed once sent.
                let header = read_reply_header(&req, structured);
                let buffers = admitted.buffers(REPLY_HEADER_BYTES_MAX + req.length as usize).await;
                let mut reply = Vec::with_capacity(header.len() + req.length as usize);
                reply.extend_from_slice(&header);
                reply.resize(header.len() + req.length as usize, 0);
                let read = {
                    let _in_place = READS_IN_PLACE.acquire().await.expect("never closed");
                    blocking(|| export.read_at(&mut reply[header.len()..], req.offset))
                };
                let reply = match read {
                    Ok(()) => Reply { bytes: reply, _buffers: Some(buffers) },
                    Err(e) => {
                        tracing::error!("{}", Chain(&e));
                        Reply::small(error_reply(&req, e.errno(), structured, "read failed"))
                    }
                };
                tx.send(reply).await?;
            }
            Command::Write => {
                let buffers = updates.pay_for(admitted, req.length as usize).await?;
                let data = tokio::time::timeout(NBD_PAYLOAD_TIMEOUT, read_payload(rd, req.length as usize))
                    .await
                    .or_else(|_| {
                        protocol(format!(
                            "the {} bytes of a write did not arrive within {NBD_PAYLOAD_TIMEOUT:?}",
                            req.length
                        ))
                    })??;
                updates.send(Update::Write { req, data, _buffers: buffers }).await?;
            }
            Command::Trim | Command::WriteZeroes => {
                updates.room().await?;
                updates.send(Update::Zero { req }).await?;
            }
            Command::Flush => {
                updates.room().await?;
                updates.send(Update::Flush { req }).await?;
            }
        }
    }
}

/// Reads a write's payload into a buffer of its size, without zeroing the
/// buffer first (at 1 MiB writes that was a pass over every byte).
async fn read_payload<R: AsyncRead + Unpin>(rd: &mut tokio::io::BufReader<R>, len: usize) -> Result<Vec<u8>> {
    let mut data = Vec::with_capacity(len);
    (&mut *rd).take(len as u64).read_to_end(&mut data).await.doing(|| "reading the payload of a write".to_string())?;
    if data.len() != len {
        return protocol("client left in the middle of a write".to_string());
    }
    Ok(data)
}

/// Reads and drops the payload of a write that is refused, a piece at a
/// time (it is not paid for). A payload over the limit cannot be skipped
/// safely: the connection closes.
async fn skip_payload<R: AsyncRead + Unpin>(
    rd: &mut tokio::io::BufReader<R>,
    req: &Request,
    structured: bool,
    tx: &mpsc::Sender<Reply>,
) -> Result<()> {
    if req.length > PAYLOAD_BYTES_MAX {
        let _ = tx.send(Reply::small(error_reply(req, Errno::Overflow, structured, "request too large"))).await;
        return protocol(format!("write of {} bytes is over the limit", req.length));
    }
    let skipped = tokio::io::copy(&mut rd.take(req.length as u64), &mut tokio::io::sink())
        .await
        .doing(|| "reading the payload of a refused write".to_string())?;
    if skipped != req.length as u64 {
        return protocol("client left in the middle of a refused write".to_string());
    }
    Ok(())
}

/// Replies to a WRITE/TRIM/WRITE_ZEROES; with FUA (or write-through) only
/// once it is durable.
async fn finish_update(
    export: &Arc<dyn BlockExport>,
    req: Request,
    write_through: bool,
    result: std::result::Result<u64, ExportError>,
    structured: bool,
    tx: &mpsc::Sender<Reply>,
    durable_waits: &mut DurableWaits,
) -> Result<()> {
    let seq = match result {
        Ok(seq) => seq,
        Err(e) => {
            // A refusal (a move froze the export) is EPERM and expected; any
            // other failure is an I/O error worth a log line.
            match &e {
                ExportError::Refused(why) => tracing::info!("write refused: {why}"),
                ExportError::Failed(_) => tracing::error!("write failed: {}", Chain(&e)),
            }
            let errno = e.errno();
            tx.send(Reply::small(error_reply(&req, errno, structured, "write refused"))).await?;
            return Ok(());
        }
    };
    if !req.fua() && !write_through {
        tx.send(Reply::small(simple_reply(req.handle, 0).to_vec())).await?;
        return Ok(());
    }
    durable_waits.reply_when_durable(export, seq, req.handle, "FUA", tx).await;
    Ok(())
}
