//! One NBD export as the server sees it. Reads are plain `pread`s and run
//! inline; updates return a token (a log seq on the protected side) that
//! `make_durable` later waits for, so FUA and FLUSH cost only what they
//! must.

use anyhow::Result;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why an update was refused; the client gets the matching NBD error.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The export does not take writes now (read-only, or a move began).
    #[error("{0}")]
    ReadOnly(String),
}

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
}

/// The exports a server offers, by name. Connections take their export
/// when they negotiate; removing it stops new connections only.
#[derive(Default, Clone)]
pub struct ExportTable(Arc<RwLock<BTreeMap<String, Arc<dyn BlockExport>>>>);

impl ExportTable {
    pub fn get(&self, name: &str) -> Option<Arc<dyn BlockExport>> {
        self.0.read().expect("export table").get(name).cloned()
    }

    pub fn names(&self) -> Vec<String> {
        self.0.read().expect("export table").keys().cloned().collect()
    }

    /// Adds exports; refused (and nothing added) if any name is taken.
    pub fn add(&self, exports: Vec<(String, Arc<dyn BlockExport>)>) -> Result<()> {
        let mut table = self.0.write().expect("export table");
        if let Some((taken, _)) = exports.iter().find(|(n, _)| table.contains_key(n)) {
            anyhow::bail!("an NBD export named {taken:?} is already served");
        }
        table.extend(exports);
        Ok(())
    }

    pub fn remove(&self, names: &[String]) {
        let mut table = self.0.write().expect("export table");
        for n in names {
            table.remove(n);
        }
    }
}
