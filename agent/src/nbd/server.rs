//! The NBD server: accepts hypervisor connections, negotiates an export
//! (fixed newstyle), then serves requests with many in flight. Replies go
//! through one writer task per connection so slow FLUSHes do not hold up
//! reads and writes behind them. A malformed request gets an error reply
//! or closes that one connection; nothing is written for it.

use super::export::{BlockExport, ExportTable, Refusal};
use super::protocol::*;
use anyhow::{bail, Context, Result};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};

/// Connections served at once; more wait in the listen backlog.
const NBD_CONNECTIONS_MAX: usize = 64;
/// Replies queued per connection before the reader stops taking requests.
const REPLY_QUEUE_DEPTH: usize = 256;
/// Queued replies are gathered into one socket write up to this size.
const REPLY_COALESCE_BYTES: usize = 256 << 10;
/// Requests (and write payloads) are read through a buffer this big.
const REQUEST_READ_BUFFER_BYTES: usize = 256 << 10;

pub async fn serve(listener: TcpListener, exports: ExportTable) {
    let slots = Arc::new(Semaphore::new(NBD_CONNECTIONS_MAX));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("NBD accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let exports = exports.clone();
        tokio::spawn(async move {
            match serve_connection(stream, exports).await {
                Ok(()) => tracing::debug!(%peer, "NBD client disconnected"),
                Err(e) => tracing::warn!(%peer, "NBD connection closed: {e:#}"),
            }
            drop(slot);
        });
    }
}

struct Negotiated {
    export: Arc<dyn BlockExport>,
    structured: bool,
}

async fn serve_connection(stream: TcpStream, exports: ExportTable) -> Result<()> {
    stream.set_nodelay(true)?;
    let (mut rd, mut wr) = stream.into_split();
    let Some(neg) = handshake(&mut rd, &mut wr, &exports).await? else {
        return Ok(());
    };
    let export = neg.export;
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(REPLY_QUEUE_DEPTH);
    let writer = tokio::spawn(async move {
        // Replies that are already queued go out in one write.
        let mut out = Vec::with_capacity(REPLY_COALESCE_BYTES);
        while let Some(first) = rx.recv().await {
            out.clear();
            out.extend_from_slice(&first);
            while out.len() < REPLY_COALESCE_BYTES {
                match rx.try_recv() {
                    Ok(more) => out.extend_from_slice(&more),
                    Err(_) => break,
                }
            }
            if wr.write_all(&out).await.is_err() {
                break;
            }
        }
    });
    let mut rd = tokio::io::BufReader::with_capacity(REQUEST_READ_BUFFER_BYTES, rd);
    let result = transmission(&mut rd, &export, neg.structured, &tx).await;
    drop(tx);
    let _ = writer.await;
    result
}

async fn read_u32(rd: &mut OwnedReadHalf) -> Result<u32> {
    Ok(rd.read_u32().await?)
}

/// Option haggling. Returns the chosen export, or None if the client left.
async fn handshake(
    rd: &mut OwnedReadHalf,
    wr: &mut tokio::net::tcp::OwnedWriteHalf,
    exports: &ExportTable,
) -> Result<Option<Negotiated>> {
    wr.write_all(&server_greeting()).await?;
    let client_flags = read_u32(rd).await.context("reading client flags")?;
    if client_flags & !CLIENT_FLAGS_KNOWN != 0 || client_flags & FLAG_FIXED_NEWSTYLE as u32 == 0 {
        bail!("unsupported client flags {client_flags:#x} (fixed newstyle required)");
    }
    let no_zeroes = client_flags & FLAG_NO_ZEROES as u32 != 0;
    let mut structured = false;
    loop {
        let magic = rd.read_u64().await.context("reading option header")?;
        if magic != IHAVEOPT {
            bail!("bad option magic {magic:#x}");
        }
        let option = read_u32(rd).await?;
        let len = read_u32(rd).await?;
        if len > OPTION_BYTES_MAX {
            bail!("option {option} with {len} bytes of data is over the limit");
        }
        let mut data = vec![0u8; len as usize];
        rd.read_exact(&mut data).await.context("reading option data")?;
        let reply = |t: u32, d: &[u8]| option_reply(option, t, d);
        match option {
            OPT_EXPORT_NAME => {
                let name = String::from_utf8_lossy(&data).to_string();
                let Some(export) = exports.get(&name) else { bail!("client asked for unknown export {name:?}") };
                wr.write_all(&export_name_reply(export.size(), export_flags(export.writable()), no_zeroes)).await?;
                return Ok(Some(Negotiated { export, structured }));
            }
            OPT_ABORT => {
                wr.write_all(&reply(REP_ACK, &[])).await?;
                return Ok(None);
            }
            OPT_LIST if !data.is_empty() => wr.write_all(&reply(REP_ERR_INVALID, &[])).await?,
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
                let Some(export) = exports.get(&name) else {
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
                    return Ok(Some(Negotiated { export, structured }));
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

fn read_reply(req: &Request, data: &[u8], structured: bool) -> Vec<u8> {
    let mut out;
    if structured {
        let len = 8 + data.len() as u32;
        out = structured_header(req.handle, REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, len).to_vec();
        out.reserve(len as usize);
        out.extend_from_slice(&req.offset.to_be_bytes());
    } else {
        out = simple_reply(req.handle, 0).to_vec();
        out.reserve(data.len());
    }
    out.extend_from_slice(data);
    out
}

async fn transmission(
    rd: &mut tokio::io::BufReader<OwnedReadHalf>,
    export: &Arc<dyn BlockExport>,
    structured: bool,
    tx: &mpsc::Sender<Vec<u8>>,
) -> Result<()> {
    let size = export.size();
    let writable = export.writable();
    loop {
        let mut h = [0u8; REQUEST_HEADER_BYTES];
        match rd.read_exact(&mut h).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        let req = match parse_request(&h) {
            Ok(r) => r,
            Err(BadMagic(m)) => bail!("bad request magic {m:#010x}"),
        };
        if let Err(errno) = check_bounds(&req, size) {
            if req.command == Command::Write {
                skip_payload(rd, &req, structured, tx).await?;
            }
            tx.send(error_reply(&req, errno, structured, "request out of bounds")).await?;
            continue;
        }
        let is_update = matches!(req.command, Command::Write | Command::Trim | Command::WriteZeroes);
        if is_update && !writable {
            if req.command == Command::Write {
                skip_payload(rd, &req, structured, tx).await?;
            }
            tx.send(error_reply(&req, Errno::Perm, structured, "read-only export")).await?;
            continue;
        }
        match req.command {
            Command::Disc => return Ok(()),
            Command::Unknown(c) => {
                tracing::debug!("unknown NBD command {c}");
                tx.send(error_reply(&req, Errno::Inval, structured, "unknown command")).await?;
            }
            Command::Read => {
                let mut buf = vec![0u8; req.length as usize];
                let reply = match export.read_at(&mut buf, req.offset) {
                    Ok(()) => read_reply(&req, &buf, structured),
                    Err(e) => {
                        tracing::error!("{e:#}");
                        error_reply(&req, Errno::Io, structured, "read failed")
                    }
                };
                tx.send(reply).await?;
            }
            Command::Write => {
                let mut data = vec![0u8; req.length as usize];
                rd.read_exact(&mut data).await.context("client left in the middle of a write")?;
                let result =
                    if data.is_empty() { Ok(export.last_token()) } else { export.write(req.offset, data).await };
                finish_update(export, req, result, structured, tx).await?;
            }
            Command::Trim | Command::WriteZeroes => {
                let result = if req.length == 0 {
                    Ok(export.last_token())
                } else {
                    export.zero(req.offset, req.length as u64).await
                };
                finish_update(export, req, result, structured, tx).await?;
            }
            Command::Flush => {
                let export = export.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let token = export.last_token();
                    let reply = match export.make_durable(token).await {
                        Ok(()) => simple_reply(req.handle, 0).to_vec(),
                        Err(e) => {
                            tracing::error!("flush failed: {e:#}");
                            simple_reply(req.handle, Errno::Io as u32).to_vec()
                        }
                    };
                    let _ = tx.send(reply).await;
                });
            }
        }
    }
}

/// Reads and drops the payload of a write that is refused. A payload over
/// the limit cannot be skipped safely: the connection closes.
async fn skip_payload(
    rd: &mut tokio::io::BufReader<OwnedReadHalf>,
    req: &Request,
    structured: bool,
    tx: &mpsc::Sender<Vec<u8>>,
) -> Result<()> {
    if req.length > PAYLOAD_BYTES_MAX {
        let _ = tx.send(error_reply(req, Errno::Overflow, structured, "request too large")).await;
        bail!("write of {} bytes is over the limit", req.length);
    }
    let mut discard = vec![0u8; req.length as usize];
    rd.read_exact(&mut discard).await.context("reading the payload of a refused write")?;
    Ok(())
}

/// Replies to a WRITE/TRIM/WRITE_ZEROES; with FUA only once it is durable.
async fn finish_update(
    export: &Arc<dyn BlockExport>,
    req: Request,
    result: Result<u64>,
    structured: bool,
    tx: &mpsc::Sender<Vec<u8>>,
) -> Result<()> {
    let seq = match result {
        Ok(seq) => seq,
        Err(e) => {
            // A refusal (a move froze the export) is EPERM and expected; any
            // other failure is an I/O error worth a log line.
            let errno = match e.downcast_ref::<Refusal>() {
                Some(r) => {
                    tracing::info!("write refused: {r}");
                    Errno::Perm
                }
                None => {
                    tracing::error!("write failed: {e:#}");
                    Errno::Io
                }
            };
            tx.send(error_reply(&req, errno, structured, "write refused")).await?;
            return Ok(());
        }
    };
    if !req.fua() {
        tx.send(simple_reply(req.handle, 0).to_vec()).await?;
        return Ok(());
    }
    let export = export.clone();
    let tx = tx.clone();
    tokio::spawn(async move {
        let error = match export.make_durable(seq).await {
            Ok(()) => 0,
            Err(e) => {
                tracing::error!("FUA failed: {e:#}");
                Errno::Io as u32
            }
        };
        let _ = tx.send(simple_reply(req.handle, error).to_vec()).await;
    });
    Ok(())
}
