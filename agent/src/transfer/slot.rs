//! One VPG's journal as the recovery side holds it open, and the session
//! that feeds it: what the receiver appends to, and what the recovery
//! operations (failover, exports) look up by name.

use crate::journal::applier::HistoryPolicy;
use crate::journal::Journal;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// One VPG as the receiver sees it.
pub struct VpgSlot {
    pub journal: Mutex<Journal>,
    /// The session of the newest hello; older data links are dropped.
    pub(super) session: AtomicU64,
    /// The certificate of the peer that opened that session: a data link
    /// joins it only with the same certificate.
    pub(super) session_peer: Mutex<[u8; 32]>,
    /// The stream that session's protected log holds (from its hello).
    pub(super) session_stream: AtomicU32,
    pub received_bytes: AtomicU64,
    pub policy: HistoryPolicy,
    /// What the applier last reported (for status).
    pub history: Mutex<crate::status::HistoryStatus>,
    /// 0 while the VPG replicates here; `FAILOVER_PENDING` while a
    /// failover commits; else the checkpoint it was failed over at. Set
    /// under the journal lock, so no batch is appended after it.
    pub failed_over: AtomicU64,
    /// Keeps the journal's segment summaries (run by the applier loop).
    pub summarizer: Mutex<crate::journal::summary::Summarizer>,
}

pub const FAILOVER_PENDING: u64 = u64::MAX;

/// The VPGs whose journals are open here, by name.
pub type VpgSlots = Mutex<HashMap<String, Arc<VpgSlot>>>;

/// The slot of `vpg`, if its journal is open.
pub fn find(slots: &VpgSlots, vpg: &str) -> Option<Arc<VpgSlot>> {
    slots.lock().expect("vpgs lock").get(vpg).cloned()
}

impl VpgSlot {
    /// The checkpoint the VPG was failed over at, once that is committed.
    pub fn failed_over_at(&self) -> Option<u64> {
        Some(self.failed_over.load(Ordering::SeqCst)).filter(|c| *c != 0 && *c != FAILOVER_PENDING)
    }

    pub(super) fn new(journal: Journal, session: u64, policy: HistoryPolicy) -> Self {
        VpgSlot {
            journal: Mutex::new(journal),
            session: AtomicU64::new(session),
            session_peer: Mutex::new([0; 32]),
            session_stream: Default::default(),
            received_bytes: AtomicU64::new(0),
            policy,
            history: Mutex::new(Default::default()),
            failed_over: AtomicU64::new(0),
            summarizer: Default::default(),
        }
    }
}
