//! The diagnostics endpoint on 4005: HTTPS (rustls), one route,
//! `GET /bundle` with `Authorization: Bearer <token>`. Any request without
//! the right token gets 401 and nothing else, whatever its path. The token
//! is compared in constant time (as SHA-256 digests, so its length does not
//! leak either). One bundle is made at a time; a second request meanwhile
//! gets 429. A refused request closes its connection; a source holds at
//! most `LIMITS.per_source_max` connections, and a client that takes
//! no bundle data for `SEND_TIMEOUT` loses its bundle (and frees the slot).

use super::bundle;
use super::https::{self, Body};
use crate::config::Config;
use crate::wire::tls;
use anyhow::{anyhow, Result};
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{channel::Channel, BodyExt, Full};
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

/// 16 connections at once, 4 from one source address.
const LIMITS: https::Limits = https::Limits {
    connections_max: 16,
    per_source_max: 4,
    handshake_timeout: Duration::from_secs(10),
    header_read_timeout: Duration::from_secs(10),
};
/// A bundle chunk the client does not take within this time ends the
/// bundle (its slot is freed for the next request).
const SEND_TIMEOUT: Duration = Duration::from_secs(15);
/// Bundle bytes buffered before a chunk goes to the client.
const CHUNK_BYTES: usize = 64 << 10;
/// Chunks queued between the bundle writer and the connection.
const CHUNKS_QUEUED_MAX: usize = 8;

struct State {
    cfg: Arc<Config>,
    config_path: PathBuf,
    token_digest: [u8; 32],
    /// One bundle at a time.
    bundle_slot: Arc<Semaphore>,
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    ring::digest::digest(&ring::digest::SHA256, bytes).as_ref().try_into().expect("sha256 is 32 bytes")
}

/// Binds 4005 (errors here stop the agent's start) and serves in the
/// background. The config must have a `[diag]` section.
pub async fn start(cfg: Arc<Config>, config_path: PathBuf) -> Result<()> {
    let system = cfg.system();
    let diag = system.diag.as_ref().ok_or_else(|| anyhow!("no [diag] section: the diagnostics endpoint is off"))?;
    let identity = tls::load_identity(&cfg.node().cert, &cfg.node().key)?;
    let acceptor = TlsAcceptor::from(tls::https_server_config(identity)?);
    let listener = crate::listen::bind_listener(diag.listen, "diagnostics").await?;
    tracing::info!("diagnostics bundle served on https://{}/bundle (token required)", diag.listen);
    let state = Arc::new(State {
        token_digest: digest(diag.token.as_bytes()),
        cfg: cfg.clone(),
        config_path,
        bundle_slot: Arc::new(Semaphore::new(1)),
    });
    let handler = move |req, peer| {
        let state = state.clone();
        async move { handle(req, &state, peer) }
    };
    tokio::spawn(https::serve(listener, acceptor, "diagnostics", LIMITS, handler));
    Ok(())
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())).map_err(|n| match n {}).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, "text/plain; charset=utf-8".parse().expect("static header"));
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("static header"));
    }
    response
}

fn authorized(req: &Request<Incoming>, state: &State) -> bool {
    let Some(value) = req.headers().get(header::AUTHORIZATION) else { return false };
    let Some(token) = value.as_bytes().strip_prefix(b"Bearer ") else { return false };
    bool::from(digest(token).ct_eq(&state.token_digest))
}

fn handle(req: Request<Incoming>, state: &State, peer: SocketAddr) -> Response<Body> {
    if !authorized(&req, state) {
        tracing::warn!(
            "diagnostics: refused {} {} from {peer}: missing or wrong token",
            req.method(),
            req.uri().path()
        );
        // And the connection closes: a refused client does not keep a slot.
        let mut refused = text(StatusCode::UNAUTHORIZED, "unauthorized\n");
        refused.headers_mut().insert(header::CONNECTION, "close".parse().expect("static header"));
        return refused;
    }
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/bundle") => {}
        (_, "/bundle") => return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n"),
        _ => return text(StatusCode::NOT_FOUND, "the only route is GET /bundle\n"),
    }
    let Ok(slot) = state.bundle_slot.clone().try_acquire_owned() else {
        tracing::info!("diagnostics: {peer} asked for a bundle while another is being made");
        return text(StatusCode::TOO_MANY_REQUESTS, "a bundle is already being made; try again shortly\n");
    };
    tracing::info!("diagnostics: making a bundle for {peer}");
    let (sender, body) = Channel::<Bytes, std::io::Error>::new(CHUNKS_QUEUED_MAX);
    let (cfg, config_path) = (state.cfg.clone(), state.config_path.clone());
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let mut writer = ChunkWriter { sender: Some(sender), runtime, buffer: Vec::new(), sent: 0 };
        match bundle::write(&cfg, &config_path, &mut writer) {
            Ok(()) => tracing::info!("diagnostics: bundle sent to {peer} ({} bytes)", writer.sent),
            Err(e) => {
                tracing::warn!("diagnostics: bundle for {peer} failed: {e:#}");
                if let Some(sender) = writer.sender.take() {
                    sender.abort(std::io::Error::other(format!("{e:#}")));
                }
            }
        }
    });
    let name = format!("attachment; filename=\"tidemark-diag-{}.tar.zst\"", state.cfg.node().name);
    let mut response = Response::new(body.boxed());
    response.headers_mut().insert(header::CONTENT_TYPE, "application/zstd".parse().expect("static header"));
    if let Ok(value) = name.parse() {
        response.headers_mut().insert(header::CONTENT_DISPOSITION, value);
    }
    response
}

/// `Write` for the bundle writer's thread, feeding the response body.
struct ChunkWriter {
    sender: Option<http_body_util::channel::Sender<Bytes, std::io::Error>>,
    runtime: tokio::runtime::Handle,
    buffer: Vec<u8>,
    sent: u64,
}

impl ChunkWriter {
    fn send_buffer(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::take(&mut self.buffer));
        let len = chunk.len() as u64;
        let sender = self.sender.as_mut().ok_or_else(|| std::io::Error::other("body closed"))?;
        self.runtime
            .block_on(tokio::time::timeout(SEND_TIMEOUT, sender.send_data(chunk)))
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("the client took nothing for {SEND_TIMEOUT:?}"),
                )
            })?
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away"))?;
        self.sent += len;
        Ok(())
    }
}

impl std::io::Write for ChunkWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(buf);
        if self.buffer.len() >= CHUNK_BYTES {
            self.send_buffer()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send_buffer()
    }
}
