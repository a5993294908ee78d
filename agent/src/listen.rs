//! Binding the agent's TCP listeners (the port table's ports).

/// How long a listener keeps trying a port still held by a process that
/// is exiting (a restart right after a crash).
const BIND_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// Binds a listener, retrying for `BIND_RETRY` while the address is in use.
pub async fn bind_listener(
    addr: std::net::SocketAddr,
    what: &str,
) -> Result<tokio::net::TcpListener, crate::io_failure::IoFailure> {
    use crate::io_failure::Doing;
    let deadline = std::time::Instant::now() + BIND_RETRY;
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => return Ok(listener),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e).doing(|| format!("listening for {what} on {addr}")),
        }
    }
}

/// How a connection finds out its peer is gone. TCP keepalive: idle time
/// before the first probe, time between probes, and probes before the
/// peer counts as gone (it only probes a connection with nothing unsent).
pub struct Keepalive {
    pub idle: std::time::Duration,
    pub interval: std::time::Duration,
    pub probes: u32,
    /// Sent bytes left unacknowledged this long end the connection
    /// (TCP_USER_TIMEOUT; the kernel counts a receive window held shut
    /// too): a peer that vanished while this end was sending, or one that
    /// stopped reading. None: the kernel's retransmissions end the first
    /// after about 15 minutes, and nothing ends the second. When set, it
    /// also ends a connection whose keepalive probes go unanswered once
    /// nothing has been heard for this long, whatever `probes` says.
    pub unacked_limit: Option<std::time::Duration>,
}

/// No delay, and `keepalive`'s limits, on a connection.
pub fn tune_connection(tcp: &tokio::net::TcpStream, keepalive: &Keepalive) -> std::io::Result<()> {
    use rustix::net::sockopt;
    tcp.set_nodelay(true)?;
    sockopt::set_socket_keepalive(tcp, true)?;
    sockopt::set_tcp_keepidle(tcp, keepalive.idle)?;
    sockopt::set_tcp_keepintvl(tcp, keepalive.interval)?;
    sockopt::set_tcp_keepcnt(tcp, keepalive.probes)?;
    if let Some(limit) = keepalive.unacked_limit {
        sockopt::set_tcp_user_timeout(tcp, limit.as_millis().try_into().unwrap_or(u32::MAX))?;
    }
    Ok(())
}
