//! Connections per source address, for every listener that serves anyone
//! who can reach it before they are authenticated (the replication ports'
//! TLS handshakes, the diagnostics port): one source cannot take every
//! slot and lock the real peers out. A source is an address (not an IPv6
//! /64: a storage network is usually one /64 shared by every hypervisor).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// The source a client counts as: its address (an IPv4 address mapped
/// into IPv6 is that IPv4 address, as a dual-stack listener sees it).
pub fn source_of(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

pub struct PerSource {
    max: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection counted for its source until dropped.
pub struct SourceSlot {
    limit: Arc<PerSource>,
    ip: IpAddr,
}

impl PerSource {
    pub fn new(max: usize) -> Arc<PerSource> {
        Arc::new(PerSource { max, counts: Mutex::new(HashMap::new()) })
    }

    /// Counts a connection from `ip`; None if it has `max` already.
    pub fn enter(self: &Arc<Self>, ip: IpAddr) -> Option<SourceSlot> {
        let ip = source_of(ip);
        let mut counts = self.counts.lock().expect("per-source counts");
        let count = counts.entry(ip).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(SourceSlot { limit: self.clone(), ip })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut counts = self.limit.counts.lock().expect("per-source counts");
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_source_has_its_share() {
        let limit = PerSource::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let (x, _y) = (limit.enter(a).unwrap(), limit.enter(a).unwrap());
        assert!(limit.enter(a).is_none());
        assert!(limit.enter(b).is_some());
        drop(x);
        assert!(limit.enter(a).is_some());
        let _both = (limit.enter("::ffff:10.0.0.2".parse().unwrap()).unwrap(), limit.enter(b).unwrap());
        assert!(limit.enter(b).is_none(), "a mapped address is its IPv4 address");
        assert!(limit.enter("2001:db8::2".parse().unwrap()).is_some(), "an IPv6 address is a source of its own");
    }
}
