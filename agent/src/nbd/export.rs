//! One NBD export as the server sees it. Reads are plain `pread`s;
//! updates return a token (a log seq on the protected side) that
//! `make_durable` later waits for, so FUA and FLUSH cost only what they
//! must.

use super::protocol::Errno;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use tokio::sync::watch;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why an export's read or update failed. `errno` is the one place such
/// a failure becomes the NBD error its client gets.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The export does not take writes now (read-only, or a move began):
    /// EPERM, and expected.
    #[error("{0}")]
    Refused(String),
    /// The data could not be read, written or made durable: EIO.
    #[error(transparent)]
    Failed(Box<dyn std::error::Error + Send + Sync>),
}

impl ExportError {
    pub fn failed(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        ExportError::Failed(e.into())
    }

    pub fn errno(&self) -> Errno {
        match self {
            ExportError::Refused(_) => Errno::Perm,
            ExportError::Failed(_) => Errno::Io,
        }
    }
}

pub type Result<T> = std::result::Result<T, ExportError>;

/// A name that another export of the table has.
#[derive(Debug, thiserror::Error)]
#[error("an NBD export named {0:?} is already served")]
pub struct NameTaken(pub String);

pub trait BlockExport: Send + Sync {
    fn size(&self) -> u64;
    /// False: advertised read-only, and every update is refused (EPERM).
    fn writable(&self) -> bool;
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;
    fn write(&self, offset: u64, data: Vec<u8>) -> BoxFuture<'_, Result<u64>>;
    fn zero(&self, offset: u64, length: u64) -> BoxFuture<'_, Result<u64>>;
    /// Everything up to `token` is as durable as the export promises.
    fn make_durable(self: Arc<Self>, token: u64) -> BoxFuture<'static, Result<()>>;
    /// The token of the newest update (what a FLUSH makes durable).
    fn last_token(&self) -> u64;
    /// The export is no longer served: let go of what it holds (a point in
    /// time's lease); later I/O fails.
    fn close(&self) {}
}

/// An export being served, and the gate that ends its connections.
struct Served {
    export: Arc<dyn BlockExport>,
    gate: ServingGate,
}

/// The owner's side of `Serving`: closing it ends the connections that
/// were given its `serving()`, and returns once none of them is applying
/// an update, and none will.
pub struct ServingGate {
    closed: watch::Sender<bool>,
    updating: Arc<tokio::sync::RwLock<()>>,
}

impl Default for ServingGate {
    fn default() -> Self {
        ServingGate { closed: watch::Sender::new(false), updating: Default::default() }
    }
}

impl ServingGate {
    pub fn serving(&self) -> Serving {
        Serving { closed: self.closed.subscribe(), updating: self.updating.clone(), _never_closed: None }
    }

    /// Tells the connections to end (at once, for all of them).
    fn signal_close(&self) {
        self.closed.send_replace(true);
    }

    /// Ends the connections; returns once no update is being applied
    /// through them, and none will be: updates waiting to be applied are
    /// dropped (they see "closed"), one in its write finishes it first.
    pub async fn close(&self) {
        self.signal_close();
        drop(self.updating.write().await);
    }
}

/// Whether a connection's export is still served, and the way its updates
/// go in: an update applied through `apply` is either done before
/// `ServingGate::close` (`ExportTable::remove`) returns, or dropped (never
/// applied) because the export was closed. A write is never still landing in a replica's file
/// that the recovery journal reopens right after.
#[derive(Clone)]
pub struct Serving {
    closed: watch::Receiver<bool>,
    updating: Arc<tokio::sync::RwLock<()>>,
    /// For an export served for as long as its connection lasts: the
    /// sender that is never told "closed".
    _never_closed: Option<Arc<watch::Sender<bool>>>,
}

impl Serving {
    /// An export that is served for as long as its connection lasts.
    pub fn for_good() -> Serving {
        let (tx, closed) = watch::channel(false);
        Serving { closed, updating: Default::default(), _never_closed: Some(Arc::new(tx)) }
    }

    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// Returns once the export is removed.
    pub async fn closed(&self) {
        // An error: the table's entry is gone, which it is only once removed.
        let _ = self.closed.clone().wait_for(|c| *c).await;
    }

    /// Runs `update` unless the export is removed, before it or while it
    /// waits: then it is dropped at that wait, and None.
    pub async fn apply<T>(&self, update: impl Future<Output = T>) -> Option<T> {
        let _updating = self.updating.read().await;
        if self.is_closed() {
            return None;
        }
        tokio::select! {
            biased;
            done = update => Some(done),
            () = self.closed() => None,
        }
    }
}

/// The exports a server offers, by name. Removing one closes it and every
/// connection to it.
#[derive(Clone)]
pub struct ExportTable {
    exports: Arc<RwLock<BTreeMap<String, Served>>>,
    /// Whether NBD_OPT_LIST names the exports (not on the recovery side,
    /// whose names say which VPGs and checkpoints it holds).
    listed: bool,
}

impl ExportTable {
    /// A table whose names NBD_OPT_LIST gives to any client.
    pub fn listed() -> Self {
        ExportTable { exports: Default::default(), listed: true }
    }

    /// A table whose names are not listed: a client must know them.
    pub fn unlisted() -> Self {
        ExportTable { exports: Default::default(), listed: false }
    }

    pub fn is_listed(&self) -> bool {
        self.listed
    }

    /// The export and whether it is still served.
    pub fn get(&self, name: &str) -> Option<(Arc<dyn BlockExport>, Serving)> {
        self.exports.read().expect("export table").get(name).map(|s| (s.export.clone(), s.gate.serving()))
    }

    pub fn names(&self) -> Vec<String> {
        self.exports.read().expect("export table").keys().cloned().collect()
    }

    /// Adds exports; refused (and nothing added) if any name is taken.
    pub fn add(&self, exports: Vec<(String, Arc<dyn BlockExport>)>) -> std::result::Result<(), NameTaken> {
        let mut table = self.exports.write().expect("export table");
        if let Some((taken, _)) = exports.iter().find(|(n, _)| table.contains_key(n)) {
            return Err(NameTaken(taken.clone()));
        }
        for (name, export) in exports {
            table.insert(name, Served { export, gate: ServingGate::default() });
        }
        Ok(())
    }

    /// Stops serving: no new connection gets these exports, the open ones
    /// are closed, and each export lets go of what it holds. Returns once
    /// no update to them is being applied, and none will be.
    pub async fn remove(&self, names: &[String]) {
        let removed: Vec<Served> = {
            let mut table = self.exports.write().expect("export table");
            names.iter().filter_map(|n| table.remove(n)).collect()
        };
        for served in &removed {
            served.gate.signal_close();
        }
        for served in removed {
            served.gate.close().await;
            served.export.close();
        }
    }
}
