//! Serving HTTPS on one of the port table's TCP ports (diagnostics on
//! 4005, the management API on 4006): TLS 1.3 with this appliance's
//! certificate, HTTP/1.1, a bound on connections in all and per source
//! address, timeouts on the handshake and on request headers, and a
//! limit on a client that takes no answer bytes.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

pub type Body = BoxBody<Bytes, std::io::Error>;

/// A client that acknowledges none of an answer's bytes for 60 s (it
/// vanished, or stopped reading a bundle) loses its connection, and the
/// connection's slots with it; without this a client that kept its
/// receive window shut held them for good (and one that vanished, for the
/// kernel's 15 minutes of retransmissions). Keepalive finds a client that
/// vanished while its request was being worked on (a move or a verify
/// waits minutes). With the unacknowledged limit set, the kernel ends a
/// connection whose probes go unanswered once it has heard nothing for
/// that limit, whatever the probe count: so the limit is idle + probes x
/// interval, and an outage shorter than about 30 s does not cost a long
/// request its answer.
const CLIENT_KEEPALIVE: crate::listen::Keepalive = crate::listen::Keepalive {
    idle: Duration::from_secs(30),
    interval: Duration::from_secs(10),
    probes: 3,
    unacked_limit: Some(Duration::from_secs(60)),
};

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; more wait in the kernel's backlog.
    pub connections_max: usize,
    /// Connections one source address may hold; more are closed at once.
    pub per_source_max: usize,
    pub handshake_timeout: Duration,
    /// A client must send its request's headers within this time.
    pub header_read_timeout: Duration,
}

/// Accepts connections on `listener` for as long as the agent runs and
/// answers each request with `handler(request, peer)`.
pub async fn serve<H, F>(
    listener: tokio::net::TcpListener,
    acceptor: TlsAcceptor,
    what: &'static str,
    limits: Limits,
    handler: H,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let connections = Arc::new(Semaphore::new(limits.connections_max));
    let per_source = crate::limits::PerSource::new(limits.per_source_max);
    loop {
        let Ok(permit) = connections.clone().acquire_owned().await else { return };
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!("{what}: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(source_slot) = per_source.enter(peer.ip()) else {
            tracing::warn!("{what}: {peer} refused: {} connections from there already", limits.per_source_max);
            continue;
        };
        let (acceptor, handler) = (acceptor.clone(), handler.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let _source_slot = source_slot;
            if let Err(e) = crate::listen::tune_connection(&stream, &CLIENT_KEEPALIVE) {
                return tracing::warn!("{what}: setting the socket options of {peer}'s connection: {e}");
            }
            let tls = match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return tracing::info!("{what}: TLS handshake with {peer} failed: {e}"),
                Err(_) => return tracing::info!("{what}: TLS handshake with {peer} timed out"),
            };
            let service = hyper::service::service_fn(move |req| {
                let answer = handler(req, peer);
                async move { Ok::<_, std::convert::Infallible>(answer.await) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .serve_connection(TokioIo::new(tls), service)
                .await;
            if let Err(e) = served {
                tracing::info!("{what}: connection from {peer} ended: {e}");
            }
        });
    }
}
