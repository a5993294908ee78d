//! What NBD clients may hold of the appliance: connection slots (in all,
//! and per source address) and bytes of request and reply buffers (per
//! source, and in all), taken before anything is allocated. A client on
//! the storage network, which nothing authenticates, can neither run the
//! appliance out of memory nor lock the other hypervisors out.

use super::protocol::PAYLOAD_BYTES_MAX;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Connections served at once; more wait in the listen backlog.
pub const NBD_CONNECTIONS_MAX: usize = 1024;
/// Connections one source address may hold (a hypervisor has one per
/// virtual disk, and one agent serves 16 VPGs of 8 volumes from one host
/// and more); more are closed at once.
pub const NBD_CONNECTIONS_PER_SOURCE_MAX: usize = 256;
const _: () = assert!(NBD_CONNECTIONS_MAX >= 4 * NBD_CONNECTIONS_PER_SOURCE_MAX);
/// The longest reply header (a structured read chunk: 20 + offset 8).
pub const REPLY_HEADER_BYTES_MAX: usize = 28;
/// Request payloads and replies one source may hold at once: two of the
/// largest, so a client that stops reading its replies stops itself.
pub const NBD_BUFFER_BYTES_PER_SOURCE_MAX: usize = 80 << 20;
/// ... and all sources together.
pub const NBD_BUFFER_BYTES_MAX: usize = 320 << 20;
const _: () = assert!(NBD_BUFFER_BYTES_PER_SOURCE_MAX >= 2 * (PAYLOAD_BYTES_MAX as usize + REPLY_HEADER_BYTES_MAX));
const _: () = assert!(NBD_BUFFER_BYTES_MAX >= 4 * NBD_BUFFER_BYTES_PER_SOURCE_MAX);

pub struct Admission {
    slots: Arc<Semaphore>,
    buffers: Arc<Semaphore>,
    sources: Mutex<HashMap<IpAddr, Source>>,
}

struct Source {
    connections: usize,
    buffers: Arc<Semaphore>,
}

/// A connection let in: its slot, and its source's share of the buffers.
pub struct Admitted {
    admission: Arc<Admission>,
    ip: IpAddr,
    source_buffers: Arc<Semaphore>,
    _slot: OwnedSemaphorePermit,
}

/// Buffer space held until dropped (with the reply it paid for).
pub struct Buffers {
    _source: OwnedSemaphorePermit,
    _all: OwnedSemaphorePermit,
}

impl Admission {
    pub fn new() -> Arc<Admission> {
        Arc::new(Admission {
            slots: Arc::new(Semaphore::new(NBD_CONNECTIONS_MAX)),
            buffers: Arc::new(Semaphore::new(NBD_BUFFER_BYTES_MAX)),
            sources: Mutex::new(HashMap::new()),
        })
    }

    /// Lets a connection from `ip` in, waiting for a slot while all are
    /// taken; None if that source holds its maximum already.
    pub async fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Admitted> {
        let source_buffers = {
            let mut sources = self.sources.lock().expect("sources lock");
            let source = sources.entry(ip).or_insert_with(|| Source {
                connections: 0,
                buffers: Arc::new(Semaphore::new(NBD_BUFFER_BYTES_PER_SOURCE_MAX)),
            });
            if source.connections >= NBD_CONNECTIONS_PER_SOURCE_MAX {
                return None;
            }
            source.connections += 1;
            source.buffers.clone()
        };
        // Counted first, so a source cannot queue more than its share.
        let leave = Departure { admission: self.clone(), ip };
        let slot = self.slots.clone().acquire_owned().await.ok()?;
        std::mem::forget(leave);
        Some(Admitted { admission: self.clone(), ip, source_buffers, _slot: slot })
    }

    fn depart(&self, ip: IpAddr) {
        let mut sources = self.sources.lock().expect("sources lock");
        if let Some(source) = sources.get_mut(&ip) {
            source.connections -= 1;
            if source.connections == 0 {
                sources.remove(&ip);
            }
        }
    }
}

/// Takes a connection off its source's count if admission is abandoned.
struct Departure {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Drop for Departure {
    fn drop(&mut self) {
        self.admission.depart(self.ip);
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.admission.depart(self.ip);
    }
}

impl Admitted {
    /// Room for `bytes` of buffers, taken before they are allocated: waits
    /// while this source, or the appliance, has none left.
    pub async fn buffers(&self, bytes: usize) -> Buffers {
        let n = u32::try_from(bytes).expect("requests are bounded by PAYLOAD_BYTES_MAX");
        let source = self.source_buffers.clone().acquire_many_owned(n).await.expect("never closed");
        let all = self.admission.buffers.clone().acquire_many_owned(n).await.expect("never closed");
        Buffers { _source: source, _all: all }
    }

    /// Room for `bytes` of buffers read ahead of need (`nbd::server`):
    /// taken at once or not at all, and only while at least half of this
    /// source's buffers and half of the appliance's would stay free. So
    /// connections that read ahead, stuck ones among them, never hold more
    /// than half of what the others share.
    pub fn spare_buffers(&self, bytes: usize) -> Option<Buffers> {
        let n = u32::try_from(bytes).ok()?;
        let source = self.source_buffers.clone().try_acquire_many_owned(n).ok()?;
        let all = self.admission.buffers.clone().try_acquire_many_owned(n).ok()?;
        // Checked once taken (two connections that checked first could each
        // have seen the other's share free): what is let go was never used.
        let half_left = self.source_buffers.available_permits() >= NBD_BUFFER_BYTES_PER_SOURCE_MAX / 2
            && self.admission.buffers.available_permits() >= NBD_BUFFER_BYTES_MAX / 2;
        half_left.then_some(Buffers { _source: source, _all: all })
    }

    pub fn source(&self) -> IpAddr {
        self.ip
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_source_is_held_to_its_share() {
        let admission = Admission::new();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let mut held = Vec::new();
        for _ in 0..NBD_CONNECTIONS_PER_SOURCE_MAX {
            held.push(admission.admit(a).await.expect("within the share"));
        }
        assert!(admission.admit(a).await.is_none(), "one connection too many from one source");
        let other = admission.admit(b).await.expect("another source is let in");
        // A's buffers run out; B's do not.
        let big = NBD_BUFFER_BYTES_PER_SOURCE_MAX / 2;
        let _one = held[0].buffers(big).await;
        let _two = held[1].buffers(big).await;
        let blocked = tokio::time::timeout(std::time::Duration::from_millis(100), held[2].buffers(1)).await;
        assert!(blocked.is_err(), "the source's buffers are spent");
        let _b = tokio::time::timeout(std::time::Duration::from_millis(100), other.buffers(big))
            .await
            .expect("B is not held up");
        drop(held);
        assert!(admission.admit(a).await.is_some(), "the count goes down as connections end");
    }

    /// Reading ahead takes only from the spare half of a source's buffers.
    #[tokio::test]
    async fn reading_ahead_leaves_half_of_the_buffers() {
        let admission = Admission::new();
        let a = admission.admit("10.0.0.1".parse().unwrap()).await.unwrap();
        let quarter = NBD_BUFFER_BYTES_PER_SOURCE_MAX / 4;
        let first = a.spare_buffers(quarter).expect("three quarters stay free");
        let second = a.spare_buffers(quarter).expect("half stays free");
        assert!(a.spare_buffers(1).is_none(), "no more than half is read ahead");
        // What a connection needs now still comes from the other half.
        let _needed = tokio::time::timeout(std::time::Duration::from_millis(100), a.buffers(2 * quarter))
            .await
            .expect("the other half is there for what is needed");
        drop((first, second));
        assert!(a.spare_buffers(1).is_none(), "needed buffers count against the spare half too");
    }
}
