//! The protected side's questions for the recovery side's extent hashes
//! (`AskExtentHashes`): a copy or a verify asks here, and whichever link
//! is up carries the question on its control connection and brings the
//! answer back. A question waits for a link.

use crate::extent_hash::ExtentHash;
use anyhow::{anyhow, Result};
use tokio::sync::{mpsc, oneshot, Mutex};

/// One question, as the link sends it.
pub struct PeerHashAsk {
    /// `head` or a checkpoint id.
    pub at: String,
    pub stream_id: u32,
    pub volume: u32,
    pub first_extent: u64,
    pub count: u32,
    /// The outer error: the link broke before the answer. The inner: the
    /// recovery side refused, and why.
    pub reply: oneshot::Sender<Result<Result<Vec<ExtentHash>, String>>>,
}

pub struct PeerHashes {
    tx: mpsc::Sender<PeerHashAsk>,
    /// Taken by the link that is up.
    pub rx: Mutex<mpsc::Receiver<PeerHashAsk>>,
}

impl Default for PeerHashes {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(4);
        PeerHashes { tx, rx: Mutex::new(rx) }
    }
}

impl PeerHashes {
    /// Asks, and waits for a link to carry the question and its answer.
    pub async fn ask(
        &self,
        stream_id: u32,
        at: &str,
        volume: u32,
        first_extent: u64,
        count: u32,
    ) -> Result<Result<Vec<ExtentHash>, String>> {
        let (reply, answer) = oneshot::channel();
        let ask = PeerHashAsk { at: at.to_string(), stream_id, volume, first_extent, count, reply };
        self.tx.send(ask).await.map_err(|_| anyhow!("no link takes questions any more"))?;
        answer.await.map_err(|_| anyhow!("the link dropped the question"))?
    }
}
