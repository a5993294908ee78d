//! Attaches a kernel NBD device (`/dev/nbdN`) to one of the agent's
//! exports, so the kernel's LIO target can serve the export as an iSCSI
//! LUN (an iblock backstore on the device). The kernel gets one end of a
//! socketpair and speaks NBD's transmission phase on it; the agent's NBD
//! server answers on the other end (`nbd::server::serve_kernel`), so every
//! iSCSI write goes through the same capture path as an NBD write.
//!
//! The device is configured over generic netlink (the "nbd" family), not
//! ioctls, for one reason: a dead-connection timeout. If the agent dies,
//! the kernel holds the LUN's I/O for `DEAD_CONNECTION_WAIT` instead of
//! failing it, and the restarted agent hands the same device a new socket
//! (`reconnect`): the initiator sees a pause, never an error or a new LUN.
//! Each device carries a backend identifier naming its volume, which is
//! how a restarted agent finds it again.
//!
//! The device advertises no write cache (no `NBD_FLAG_SEND_FLUSH`): LIO then
//! reports WCE=0 and every write is stable when it completes, as ESXi
//! expects; the server makes each write durable before it replies.

use super::genetlink::{GenlSocket, Message};
use super::IscsiError;
use crate::io_failure::Doing;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

type Result<T, E = IscsiError> = std::result::Result<T, E>;

const NBD_FAMILY: &str = "nbd";
const NBD_GENL_VERSION: u8 = 1;
const NBD_CMD_CONNECT: u8 = 1;
const NBD_CMD_DISCONNECT: u8 = 2;
const NBD_CMD_RECONFIGURE: u8 = 3;
const NBD_ATTR_INDEX: u16 = 1;
const NBD_ATTR_SIZE_BYTES: u16 = 2;
const NBD_ATTR_BLOCK_SIZE_BYTES: u16 = 3;
const NBD_ATTR_TIMEOUT: u16 = 4;
const NBD_ATTR_SERVER_FLAGS: u16 = 5;
const NBD_ATTR_SOCKETS: u16 = 7;
const NBD_ATTR_DEAD_CONN_TIMEOUT: u16 = 8;
const NBD_ATTR_BACKEND_IDENTIFIER: u16 = 10;
const NBD_SOCK_ITEM: u16 = 1;
const NBD_SOCK_FD: u16 = 1;
/// What the device is told the export can do: no FLUSH (write-through),
/// but TRIM and WRITE_ZEROES (UNMAP and WRITE SAME reach the volume).
const SERVER_FLAGS: u64 = (crate::nbd::protocol::TFLAG_HAS_FLAGS
    | crate::nbd::protocol::TFLAG_SEND_TRIM
    | crate::nbd::protocol::TFLAG_SEND_WRITE_ZEROES) as u64;
/// A checker's device: read-only (the kernel refuses writes to it).
const READ_ONLY_FLAGS: u64 = (crate::nbd::protocol::TFLAG_HAS_FLAGS | crate::nbd::protocol::TFLAG_READ_ONLY) as u64;
/// The logical block size of the LUN: 512-byte sectors, what VMFS wants.
pub const LUN_BLOCK_BYTES: u64 = 512;
/// How long the kernel holds the LUN's I/O while no agent answers.
pub const DEAD_CONNECTION_WAIT: Duration = Duration::from_secs(120);
/// Connections per device: one. With more, the kernel resends a request
/// that has waited 30 s on another connection while the first copy is
/// still being served (a sync-mode write waits for the journal as long as
/// the link is down), and a stale copy could land after a newer write. With
/// one and no request timeout, a request is sent again only after the
/// agent died and its successor reconnected. The server serves many
/// requests of one connection at once, so one is not a bottleneck.
pub const CONNECTIONS_PER_DEVICE: usize = 1;

/// How every backend identifier of ours begins (`iscsi::device_identifier`).
pub const IDENTIFIER_PREFIX: &str = "tidemark:";
/// How a file system checker's devices' identifiers begin
/// (`recovery::fs_check`): not a LUN's, so not `IDENTIFIER_PREFIX`.
pub const CHECK_IDENTIFIER_PREFIX: &str = "tidemark-check:";

/// How long a checker's device waits for one read.
const CHECK_REQUEST_WAIT: Duration = Duration::from_secs(120);

/// What a device is for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Purpose {
    /// Under a LUN: writable, and its I/O waits `DEAD_CONNECTION_WAIT` for
    /// a restarted agent.
    Lun,
    /// A checker's view of a checkpoint: read-only, and its I/O fails at
    /// once if the process serving it dies.
    Check,
}

/// A device attached to the agent.
pub struct Attached {
    pub index: u32,
    /// It was a device a previous agent had left waiting (not a new one).
    pub reconnected: bool,
}

impl Attached {
    pub fn device(&self) -> PathBuf {
        device_path(self.index)
    }
}

/// `/dev/nbdN`.
pub fn device_path(index: u32) -> PathBuf {
    PathBuf::from(format!("/dev/nbd{index}"))
}

/// Attaches `identifier`'s device (the one a previous agent attached, if
/// the kernel still holds it; else a free one) to new connections, each
/// handed to `serve` before the kernel is told to use it. Blocking.
pub fn attach(identifier: &str, size: u64, serve: impl Fn(UnixStream)) -> Result<Attached> {
    if !size.is_multiple_of(LUN_BLOCK_BYTES) {
        return Err(IscsiError::Refused(format!(
            "a volume served over iSCSI must be a whole number of {LUN_BLOCK_BYTES}-byte sectors ({size} bytes)"
        )));
    }
    let (mut socket, family) = nbd_family()?;
    let attached = match find(identifier) {
        Some(index) => reconnect(&mut socket, family, index, identifier, &serve)?,
        None => connect(&mut socket, family, identifier, size, &serve, Purpose::Lun)?,
    };
    allow_large_requests(attached.index);
    Ok(attached)
}

/// Attaches a free device, read-only, to one connection handed to
/// `serve`, for a file system checker. Nothing waits for it if its server
/// dies; `detach` it when done. Blocking.
pub fn attach_read_only(identifier: &str, size: u64, serve: impl Fn(UnixStream)) -> Result<Attached> {
    assert!(identifier.starts_with(CHECK_IDENTIFIER_PREFIX), "a checker's identifier");
    if !size.is_multiple_of(LUN_BLOCK_BYTES) {
        return Err(IscsiError::Refused(format!(
            "a device must be a whole number of {LUN_BLOCK_BYTES}-byte sectors ({size} bytes)"
        )));
    }
    let (mut socket, family) = nbd_family()?;
    connect(&mut socket, family, identifier, size, &serve, Purpose::Check)
}

/// The largest request the device sends the agent, in KiB. The kernel's
/// default, 128 KiB, cut every 1 MiB write of an initiator into eight
/// requests, each waiting for the log's fsync: whole 1 MiB requests made
/// 1 MiB sequential writes about 1.4 times faster (docs/iscsi.md). Not
/// more: every LUN's requests draw on one admission budget (the kernel is
/// one source), and writes that wait for a full log hold theirs (what a
/// connection reads ahead comes only from the budget's spare half:
/// `nbd::server`).
pub const REQUEST_KIB_MAX: u64 = 1024;
const _: () = assert!(REQUEST_KIB_MAX * 1024 <= crate::nbd::protocol::PAYLOAD_BYTES_MAX as u64);

/// Raises the device's request size limit to `REQUEST_KIB_MAX` (or the
/// most its queue takes). A failure only costs speed: logged.
fn allow_large_requests(index: u32) {
    let queue = Path::new("/sys/block").join(format!("nbd{index}")).join("queue");
    let hw: u64 = std::fs::read_to_string(queue.join("max_hw_sectors_kb"))
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(REQUEST_KIB_MAX);
    let kib = REQUEST_KIB_MAX.min(hw);
    if let Err(e) = std::fs::write(queue.join("max_sectors_kb"), kib.to_string()) {
        tracing::warn!("/dev/nbd{index}: requests stay at the kernel's default size: {e}");
    }
}

/// Hands a device that still has its configuration (its previous server
/// died) a new connection. The kernel answers yes even when it has no dead
/// connection to replace (it then drops the socket): the caller sees that
/// connection end at once and tries again later (`iscsi::Device`).
fn reconnect(
    socket: &mut GenlSocket,
    family: u16,
    index: u32,
    identifier: &str,
    serve: &impl Fn(UnixStream),
) -> Result<Attached> {
    let theirs = pairs(serve)?;
    let mut message = Message::new(family, NBD_CMD_RECONFIGURE, NBD_GENL_VERSION);
    // The kernel wants the identifier again, to be sure it is ours.
    message.u32(NBD_ATTR_INDEX, index).string(NBD_ATTR_BACKEND_IDENTIFIER, identifier);
    add_sockets(&mut message, &theirs);
    socket.request(message).map_err(|e| e.at(format!("{identifier}: /dev/nbd{index} refused a new connection")))?;
    tracing::info!("{identifier}: /dev/nbd{index} (left waiting by its previous server) reconnected");
    Ok(Attached { index, reconnected: true })
}

/// Connects a free device (the kernel picks it) for `identifier`.
fn connect(
    socket: &mut GenlSocket,
    family: u16,
    identifier: &str,
    size: u64,
    serve: &impl Fn(UnixStream),
    purpose: Purpose,
) -> Result<Attached> {
    let theirs = pairs(serve)?;
    let (flags, dead_wait, request_wait) = match purpose {
        // No request times out: a write waits for durability (in sync
        // mode, for the recovery journal) however long that takes.
        Purpose::Lun => (SERVER_FLAGS, DEAD_CONNECTION_WAIT, Duration::ZERO),
        // A read that hangs (a disk that stops answering) fails, so a
        // checker never sleeps uninterruptibly past its timeout.
        Purpose::Check => (READ_ONLY_FLAGS, Duration::ZERO, CHECK_REQUEST_WAIT),
    };
    let mut message = Message::new(family, NBD_CMD_CONNECT, NBD_GENL_VERSION);
    message
        .u64(NBD_ATTR_SIZE_BYTES, size)
        .u64(NBD_ATTR_BLOCK_SIZE_BYTES, LUN_BLOCK_BYTES)
        .u64(NBD_ATTR_TIMEOUT, request_wait.as_secs())
        .u64(NBD_ATTR_SERVER_FLAGS, flags)
        .u64(NBD_ATTR_DEAD_CONN_TIMEOUT, dead_wait.as_secs())
        .string(NBD_ATTR_BACKEND_IDENTIFIER, identifier);
    add_sockets(&mut message, &theirs);
    let attrs =
        socket.request(message).map_err(|e| e.at(format!("connecting a kernel NBD device for {identifier}")))?;
    let (_, value) = attrs
        .iter()
        .find(|(kind, _)| *kind == NBD_ATTR_INDEX)
        .ok_or_else(|| IscsiError::Malformed("the kernel did not say which device it connected".to_string()))?;
    let index = u32::from_ne_bytes(
        value
            .get(0..4)
            .ok_or_else(|| IscsiError::Malformed("device index cut short".to_string()))?
            .try_into()
            .expect("4"),
    );
    tracing::info!("{identifier}: served as /dev/nbd{index}");
    Ok(Attached { index, reconnected: false })
}

/// Detaches device `index` (the LUN is being removed).
pub fn detach(index: u32) -> Result<()> {
    let (mut socket, family) = nbd_family()?;
    let mut message = Message::new(family, NBD_CMD_DISCONNECT, NBD_GENL_VERSION);
    message.u32(NBD_ATTR_INDEX, index);
    socket.request(message).map_err(|e| e.at(format!("disconnecting /dev/nbd{index}")))?;
    Ok(())
}

/// The device whose backend identifier is `identifier`, if any.
pub fn find(identifier: &str) -> Option<u32> {
    devices().into_iter().find(|(_, backend)| backend == identifier).map(|(index, _)| index)
}

/// The devices an agent attached (backend identifiers `tidemark:...`).
pub fn ours() -> Vec<(u32, String)> {
    devices().into_iter().filter(|(_, backend)| backend.starts_with(IDENTIFIER_PREFIX)).collect()
}

/// The backend identifier of `device` (`/dev/nbdN`), if it has one.
pub fn identifier_of(device: &Path) -> Option<String> {
    let name = device.file_name()?.to_str()?;
    let index: u32 = name.strip_prefix("nbd")?.parse().ok()?;
    devices().into_iter().find(|(i, _)| *i == index).map(|(_, backend)| backend)
}

/// Fails, saying why, when the kernel has no NBD client to attach to.
pub fn check_available() -> Result<()> {
    nbd_family().map(|_| ())
}

/// A generic netlink socket and the kernel NBD client's family on it.
fn nbd_family() -> Result<(GenlSocket, u16)> {
    let mut socket = GenlSocket::open()?;
    let family =
        socket.family(NBD_FAMILY).map_err(|e| e.at("the kernel has no NBD client (modprobe nbd)".to_string()))?;
    Ok((socket, family))
}

/// The devices a checker attached (`attach_read_only`).
pub fn checkers() -> Vec<(u32, String)> {
    devices().into_iter().filter(|(_, backend)| backend.starts_with(CHECK_IDENTIFIER_PREFIX)).collect()
}

/// The devices of checkers that are gone (`tidemark-check:<pid>:n` with
/// no process `pid`): a checker killed by a signal leaves its device.
pub fn orphaned_checkers() -> Vec<(u32, String)> {
    checkers()
        .into_iter()
        .filter(|(_, identifier)| {
            let pid = identifier.strip_prefix(CHECK_IDENTIFIER_PREFIX).and_then(|r| r.split(':').next());
            let alive = pid.is_some_and(|p| !p.is_empty() && Path::new("/proc").join(p).exists());
            !alive
        })
        .collect()
}

/// Every configured NBD device and its backend identifier.
fn devices() -> Vec<(u32, String)> {
    let Ok(entries) = std::fs::read_dir("/sys/block") else { return Vec::new() };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(index) = name.strip_prefix("nbd").and_then(|n| n.parse::<u32>().ok()) else { continue };
        if let Ok(backend) = std::fs::read_to_string(Path::new("/sys/block").join(&name).join("backend")) {
            out.push((index, backend.trim().to_string()));
        }
    }
    out.sort();
    out
}

/// Socket pairs, one per connection: the agent's ends go to `serve` (a
/// request the kernel refuses closes them again), the kernel's are
/// returned to be handed over.
fn pairs(serve: &impl Fn(UnixStream)) -> Result<Vec<UnixStream>> {
    let mut theirs = Vec::new();
    for _ in 0..CONNECTIONS_PER_DEVICE {
        let (ours, kernels) =
            UnixStream::pair().doing(|| "making a socket pair for the kernel NBD device".to_string())?;
        serve(ours);
        theirs.push(kernels);
    }
    Ok(theirs)
}

fn add_sockets(message: &mut Message, theirs: &[UnixStream]) {
    message.begin_nest(NBD_ATTR_SOCKETS);
    for s in theirs {
        message.begin_nest(NBD_SOCK_ITEM).u32(NBD_SOCK_FD, s.as_raw_fd() as u32).end_nest();
    }
    message.end_nest();
}
