//! One VPG's journal as the recovery side holds it open, and the session
//! that feeds it: what the receiver appends to, and what the recovery
//! operations (failover, exports) look up by name.

use crate::journal::applier::HistoryPolicy;
use crate::journal::Journal;
use crate::recovery_state::{Event, VpgState};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::sync::{Arc, Mutex};

/// A VPG state change the VPG's state does not allow, and why.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StateRefused(pub String);

/// One VPG as the receiver sees it.
pub struct VpgSlot {
    pub name: String,
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
    /// What the VPG is doing here (`recovery_state`). Changed only through
    /// `change`; a change that closes the stream is made under the journal
    /// lock, so no batch is appended after it.
    state: Mutex<VpgState>,
    /// Keeps the journal's segment summaries (run by the applier loop).
    pub summarizer: Mutex<crate::journal::summary::Summarizer>,
    /// The session whose control link runs, and a token that link holds
    /// while it does: the session's data link, idle, lives as long as the
    /// control link (`data_link`; review of helper-48).
    control: Mutex<(u64, std::sync::Weak<()>)>,
}

/// The VPGs whose journals are open here, by name.
pub type VpgSlots = Mutex<HashMap<String, Arc<VpgSlot>>>;

/// The slot of `vpg`, if its journal is open.
pub fn find(slots: &VpgSlots, vpg: &str) -> Option<Arc<VpgSlot>> {
    slots.lock().expect("vpgs lock").get(vpg).cloned()
}

impl VpgSlot {
    /// The VPG's state now.
    pub fn state(&self) -> VpgState {
        self.state.lock().expect("vpg state lock").clone()
    }

    /// Applies `event` to the VPG's state (`VpgState::next`), or says why
    /// it is refused, naming the VPG. The change is logged once the state
    /// lock is let go.
    pub fn change(&self, event: Event) -> Result<(), StateRefused> {
        let (before, next) = {
            let mut state = self.state.lock().expect("vpg state lock");
            let next = state.next(event).map_err(|refusal| self.refused(refusal))?;
            (std::mem::replace(&mut *state, next.clone()), next)
        };
        if next != before {
            tracing::info!(vpg = %self.name, "{before:?} -> {next:?} ({event:?})");
        }
        Ok(())
    }

    /// Whether `event` would be taken now (nothing changes): for a check
    /// before slow work, whose `change` is then made, and may be refused.
    pub fn check(&self, event: Event) -> Result<(), StateRefused> {
        let state = self.state.lock().expect("vpg state lock");
        state.next(event).map(drop).map_err(|refusal| self.refused(refusal))
    }

    fn refused(&self, refusal: crate::recovery_state::Refusal) -> StateRefused {
        StateRefused(refusal.message(&self.name))
    }

    /// Makes `session` the current one, and returns the token its control
    /// link holds while it runs.
    pub(super) fn begin_session(&self, session: u64) -> Arc<()> {
        let token = Arc::new(());
        let mut control = self.control.lock().expect("control lock");
        *control = (session, Arc::downgrade(&token));
        self.session.store(session, std::sync::atomic::Ordering::SeqCst);
        token
    }

    /// Whether `session` is the current one and its control link still runs.
    pub(super) fn session_alive(&self, session: u64) -> bool {
        let control = self.control.lock().expect("control lock");
        self.session.load(std::sync::atomic::Ordering::SeqCst) == session
            && control.0 == session
            && control.1.strong_count() > 0
    }

    /// The checkpoint the VPG was failed over at, once that is committed.
    pub fn failed_over_at(&self) -> Option<u64> {
        self.state.lock().expect("vpg state lock").failed_over_at()
    }

    /// Why the journal takes no stream now, if it does not.
    pub fn stream_refusal(&self) -> Option<String> {
        self.state.lock().expect("vpg state lock").stream_refusal().map(|r| r.message(&self.name))
    }

    pub(crate) fn new(journal: Journal, session: u64, policy: HistoryPolicy, state: VpgState) -> Self {
        VpgSlot {
            name: journal.meta.vpg.clone(),
            journal: Mutex::new(journal),
            session: AtomicU64::new(session),
            session_peer: Mutex::new([0; 32]),
            session_stream: Default::default(),
            received_bytes: AtomicU64::new(0),
            policy,
            history: Mutex::new(Default::default()),
            state: Mutex::new(state),
            summarizer: Default::default(),
            control: Mutex::new((0, std::sync::Weak::new())),
        }
    }
}
