//! What NBD clients may hold of the appliance: connection slots (in all,
//! and per source address) and bytes of request and reply buffers (per
//! source, and in all), taken before anything is allocated. A client on
//! the storage network, which nothing authenticates, can neither run the
//! appliance out of memory nor lock the other hypervisors out.

use super::protocol::PAYLOAD_BYTES_MAX;
use crate::limits::source_of;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// Connections served at once. When all are taken, a newcomer may take
/// the slot of a connection that never sent a request in `NBD_EVICT_IDLE`
/// from a source holding at least two more connections than the
/// newcomer's (`admit`); otherwise it is refused at once.
pub const NBD_CONNECTIONS_MAX: usize = 1024;
/// Connections one source address may hold (a hypervisor has one per
/// virtual disk, and one agent serves 16 VPGs of 8 volumes from one host
/// and more); more are closed at once.
pub const NBD_CONNECTIONS_PER_SOURCE_MAX: usize = 256;
const _: () = assert!(NBD_CONNECTIONS_MAX >= 4 * NBD_CONNECTIONS_PER_SOURCE_MAX);
/// How long a connection must have gone without a single request since
/// its handshake before its slot may go to another source. A hypervisor's
/// client reads its disk as soon as it connects: a connection that has
/// served one request is never closed for a newcomer, however quiet it is
/// now, and a request that waits long (a FLUSH in sync mode, a write
/// held by a full log) is never cut short.
pub const NBD_EVICT_IDLE: Duration = Duration::from_secs(30);
/// Connections closed for a newcomer that have not ended yet (each ends
/// within a few seconds): beyond this, no more are closed, so evictions
/// cannot pile up connections past the slots.
const NBD_EVICTING_MAX: usize = 64;
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
    connections_max: usize,
    per_source_max: usize,
    evict_idle: Duration,
    buffers: Arc<Semaphore>,
    slots: Mutex<Slots>,
    /// Admission times are milliseconds since this.
    epoch: Instant,
}

#[derive(Default)]
struct Slots {
    sources: HashMap<IpAddr, Source>,
    connections: usize,
    /// Connections closed for a newcomer that have not ended yet.
    evicting: usize,
    next_id: u64,
}

struct Source {
    held: Vec<Arc<Held>>,
    buffers: Arc<Semaphore>,
}

/// One connection's slot, as the admission sees it.
struct Held {
    id: u64,
    /// When it was let in (ms since the admission's epoch).
    admitted_ms: u64,
    /// It has read a request: never closed for a newcomer.
    used: AtomicBool,
    /// Ending of its own accord: not worth closing for a newcomer.
    closing: AtomicBool,
    /// Set, under the slots' lock, when its slot went to another source.
    evicted: AtomicBool,
    evict: Notify,
}

/// Why a connection was not let in.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    #[error("source {from} holds its maximum of {held} connections")]
    SourceFull { from: IpAddr, held: usize },
    #[error(
        "all {max} connection slots are taken, and no source holding two more than {from} (which holds {held}) \
         has a connection that sent no request in {idle:?}"
    )]
    AllTaken { max: usize, from: IpAddr, held: usize, idle: Duration },
    #[error("all {max} connection slots are taken, and {closing} connections closed to make room have not ended yet")]
    Evicting { max: usize, closing: usize },
}

/// A connection let in: its slot, and its source's share of the buffers.
pub struct Admitted {
    admission: Arc<Admission>,
    source: IpAddr,
    source_buffers: Arc<Semaphore>,
    held: Arc<Held>,
}

/// Buffer space held until dropped (with the reply it paid for).
pub struct Buffers {
    _source: OwnedSemaphorePermit,
    _all: OwnedSemaphorePermit,
}

impl Admission {
    pub fn new() -> Arc<Admission> {
        Self::with_limits(NBD_CONNECTIONS_MAX, NBD_CONNECTIONS_PER_SOURCE_MAX, NBD_EVICT_IDLE)
    }

    fn with_limits(connections_max: usize, per_source_max: usize, evict_idle: Duration) -> Arc<Admission> {
        Arc::new(Admission {
            connections_max,
            per_source_max,
            evict_idle,
            buffers: Arc::new(Semaphore::new(NBD_BUFFER_BYTES_MAX)),
            slots: Mutex::new(Slots::default()),
            epoch: Instant::now(),
        })
    }

    /// Lets a connection from `ip` in, or says at once why not: never
    /// waits, so the accept loop never stops for one source.
    ///
    /// With every slot taken, the newcomer gets the slot of the oldest
    /// connection that has sent no request in the `NBD_EVICT_IDLE` since
    /// it was let in and is not already ending, of the source holding the
    /// most among those holding at least two more than the newcomer's;
    /// that connection is closed (`Admitted::evicted`). So sources that
    /// fill the slots with connections that serve nothing cannot lock out
    /// a hypervisor that reconnects, a connection that has served a
    /// request is never closed for anyone, and two sources never take a
    /// slot back and forth.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admitted, Refused> {
        let source = source_of(ip);
        let mut slots = self.slots.lock().expect("slots lock");
        let held = slots.sources.get(&source).map_or(0, |s| s.held.len());
        if held >= self.per_source_max {
            return Err(Refused::SourceFull { from: source, held });
        }
        if slots.connections >= self.connections_max {
            self.evict_for(&mut slots, source, held)?;
        }
        let id = slots.next_id;
        slots.next_id += 1;
        slots.connections += 1;
        let entry = slots.sources.entry(source).or_insert_with(|| Source {
            held: Vec::new(),
            buffers: Arc::new(Semaphore::new(NBD_BUFFER_BYTES_PER_SOURCE_MAX)),
        });
        let slot = Arc::new(Held {
            id,
            admitted_ms: self.epoch.elapsed().as_millis() as u64,
            used: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            evicted: AtomicBool::new(false),
            evict: Notify::new(),
        });
        entry.held.push(slot.clone());
        Ok(Admitted { admission: self.clone(), source, source_buffers: entry.buffers.clone(), held: slot })
    }

    /// Closes a connection for a newcomer from `source`, which holds `held`
    /// (`admit`), or says why none may be.
    fn evict_for(&self, slots: &mut Slots, source: IpAddr, held: usize) -> Result<(), Refused> {
        if slots.evicting >= NBD_EVICTING_MAX {
            return Err(Refused::Evicting { max: self.connections_max, closing: slots.evicting });
        }
        let all_taken = || Refused::AllTaken { max: self.connections_max, from: source, held, idle: self.evict_idle };
        // (Nothing can have been idle that long yet: none is evictable.)
        let idle_since = self.epoch.elapsed().checked_sub(self.evict_idle).ok_or_else(all_taken)?.as_millis() as u64;
        let evictable = |h: &&Arc<Held>| {
            h.admitted_ms <= idle_since && !h.used.load(Ordering::Relaxed) && !h.closing.load(Ordering::Relaxed)
        };
        let victim = slots
            .sources
            .iter()
            .filter(|(s, src)| **s != source && src.held.len() >= held + 2)
            .filter_map(|(s, src)| {
                let oldest = src.held.iter().filter(evictable).min_by_key(|h| h.id);
                oldest.map(|h| (src.held.len(), *s, h.id))
            })
            .max_by_key(|(len, _, _)| *len);
        let (most, from, id) = victim.ok_or_else(all_taken)?;
        let victim_source = slots.sources.get_mut(&from).expect("found above");
        let at = victim_source.held.iter().position(|h| h.id == id).expect("found above");
        let evicted = victim_source.held.swap_remove(at);
        evicted.evicted.store(true, Ordering::Release);
        evicted.evict.notify_one();
        slots.connections -= 1;
        slots.evicting += 1;
        tracing::warn!(
            "NBD: all {} connection slots are taken; closing a connection of {from} (it holds {most}) that sent \
             no request in {:?}, to let {source} (holding {held}) in",
            self.connections_max,
            self.evict_idle
        );
        Ok(())
    }

    fn depart(&self, source: IpAddr, held: &Held) {
        let mut slots = self.slots.lock().expect("slots lock");
        // An evicted connection's slot was handed over when it was evicted.
        if held.evicted.load(Ordering::Acquire) {
            slots.evicting -= 1;
            return;
        }
        let Some(entry) = slots.sources.get_mut(&source) else { return };
        let Some(at) = entry.held.iter().position(|h| h.id == held.id) else { return };
        entry.held.swap_remove(at);
        if entry.held.is_empty() {
            slots.sources.remove(&source);
        }
        slots.connections -= 1;
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.admission.depart(self.source, &self.held);
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

    /// A request was read: this connection serves a client, and is never
    /// closed for a newcomer.
    pub fn used(&self) {
        if !self.held.used.load(Ordering::Relaxed) {
            self.held.used.store(true, Ordering::Relaxed);
        }
    }

    /// This connection is ending of its own accord: never closed for a
    /// newcomer, which would gain nothing from it.
    pub fn closing(&self) {
        self.held.closing.store(true, Ordering::Relaxed);
    }

    /// Completes once this connection's slot went to another source; the
    /// connection must then end.
    pub async fn evicted(&self) {
        // The flag, for a wake-up an earlier, dropped wait took.
        if !self.held.evicted.load(Ordering::Acquire) {
            self.held.evict.notified().await
        }
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
            held.push(admission.admit(a).expect("within the share"));
        }
        let refused = admission.admit(a).err().expect("one connection too many from one source");
        assert_eq!(refused, Refused::SourceFull { from: a, held: NBD_CONNECTIONS_PER_SOURCE_MAX });
        let other = admission.admit(b).expect("another source is let in");
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
        assert!(admission.admit(a).is_ok(), "the count goes down as connections end");
    }

    /// Reading ahead takes only from the spare half of a source's buffers.
    #[tokio::test]
    async fn reading_ahead_leaves_half_of_the_buffers() {
        let admission = Admission::new();
        let a = admission.admit("10.0.0.1".parse().unwrap()).unwrap();
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

    /// Whether `evicted()` completes at once.
    fn is_evicted(admitted: &Admitted) -> bool {
        use std::future::Future;
        let mut wait = std::pin::pin!(admitted.evicted());
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        wait.as_mut().poll(&mut cx).is_ready()
    }

    /// Sources that fill every slot with connections that serve nothing
    /// cannot lock out one that comes back: it takes such a slot of the
    /// source holding the most, until the two are within one of each
    /// other; a connection that has served a request, or is ending, is
    /// never taken.
    #[test]
    fn a_full_appliance_lets_a_source_below_the_largest_in() {
        let admission = Admission::with_limits(8, 5, Duration::ZERO);
        let ip = |n: u8| IpAddr::from([10, 0, 0, n]);
        let a: Vec<_> = (0..5).map(|_| admission.admit(ip(1)).unwrap()).collect();
        let b: Vec<_> = (0..3).map(|_| admission.admit(ip(2)).unwrap()).collect();
        for i in [0, 3, 4] {
            a[i].used();
        }
        a[1].closing();
        let c1 = admission.admit(ip(3)).expect("a source with none gets in");
        let evicted = |v: &[Admitted]| v.iter().map(is_evicted).collect::<Vec<_>>();
        assert_eq!(evicted(&a), [false, false, true, false, false], "a's one unused connection not ending");
        assert_eq!(evicted(&b), [false; 3], "b holds fewer than a");
        // a holds 4 (none to take), b 3, c 1: b's oldest.
        let c2 = admission.admit(ip(3)).expect("b holds two more than c");
        assert_eq!(evicted(&a), [false, false, true, false, false]);
        assert_eq!(evicted(&b), [true, false, false]);
        // a 4 (none to take), b 2, c 2.
        let refused = admission.admit(ip(3)).err().expect("nothing c may take");
        assert_eq!(refused, Refused::AllTaken { max: 8, from: ip(3), held: 2, idle: Duration::ZERO });
        assert!(matches!(admission.admit(ip(2)), Err(Refused::AllTaken { held: 2, .. })));
        // An evicted connection that ends gives back nothing it no longer
        // holds; one that was not evicted gives its slot back.
        let counts = |a: &Admission| {
            let slots = a.slots.lock().unwrap();
            (slots.connections, slots.evicting, slots.sources.len())
        };
        assert_eq!(counts(&admission), (8, 2, 3));
        drop(a);
        assert_eq!(counts(&admission), (4, 1, 2), "b's 2 and c's 2; b's evicted one still ending");
        drop((b, c1, c2));
        assert_eq!(counts(&admission), (0, 0, 0), "everything given back");
    }

    /// No connection is taken before it has gone the idle time without a
    /// request; nor are more than NBD_EVICTING_MAX closed that have not
    /// ended yet.
    #[test]
    fn none_is_taken_before_the_idle_time_nor_too_many_at_once() {
        let busy = Admission::with_limits(4, 4, Duration::from_secs(3600));
        let _held: Vec<_> = (0..4).map(|_| busy.admit("10.0.0.1".parse().unwrap()).unwrap()).collect();
        let refused = busy.admit("10.0.0.2".parse().unwrap()).err().expect("nothing has been idle an hour");
        assert!(matches!(refused, Refused::AllTaken { held: 0, .. }), "{refused}");

        let max = NBD_EVICTING_MAX + 2;
        let admission = Admission::with_limits(max, max, Duration::ZERO);
        let held: Vec<_> = (0..max).map(|_| admission.admit("10.0.0.1".parse().unwrap()).unwrap()).collect();
        let newcomers: Vec<_> =
            (0..NBD_EVICTING_MAX).map(|n| admission.admit(IpAddr::from([10, 1, 0, n as u8])).unwrap()).collect();
        let refused = admission.admit("10.2.0.1".parse().unwrap()).err().expect("as many closing as may be");
        assert_eq!(refused, Refused::Evicting { max, closing: NBD_EVICTING_MAX });
        drop(held);
        assert!(admission.admit("10.2.0.1".parse().unwrap()).is_ok(), "the evicted ended: room again");
        drop(newcomers);
    }

    /// An IPv4-mapped address is its IPv4 address; IPv6 addresses are
    /// sources of their own.
    #[test]
    fn a_mapped_address_is_its_ipv4_source() {
        let admission = Admission::with_limits(16, 2, NBD_EVICT_IDLE);
        let _v4 = admission.admit("192.0.2.7".parse().unwrap()).unwrap();
        let _mapped = admission.admit("::ffff:192.0.2.7".parse().unwrap()).unwrap();
        let refused = admission.admit("192.0.2.7".parse().unwrap()).err().expect("the same source");
        assert_eq!(refused, Refused::SourceFull { from: "192.0.2.7".parse().unwrap(), held: 2 });
        let _one = admission.admit("2001:db8::1".parse().unwrap()).unwrap();
        let _two = admission.admit("2001:db8::1".parse().unwrap()).unwrap();
        assert!(admission.admit("2001:db8::2".parse().unwrap()).is_ok(), "another address");
    }
}
