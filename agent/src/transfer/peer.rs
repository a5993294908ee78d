//! Who is at the other end of a replication link.

/// Who is at the other end of a link: its address and the fingerprint of
/// the certificate it presented (pinned, checked during the handshake).
#[derive(Debug, Clone)]
pub struct Peer {
    pub address: std::net::SocketAddr,
    pub fingerprint: [u8; 32],
}
