//! The protected side's questions for the recovery side's extent hashes
//! (`AskExtentHashes`): a copy or a verify asks here, and whichever link
//! is up carries the question on its control connection and brings the
//! answer back. A question waits for a link.

use super::error::CaptureError;
use crate::extent_hash::{ExtentHash, HashQuestion};
use tokio::sync::{mpsc, oneshot, Mutex};

type Result<T, E = CaptureError> = std::result::Result<T, E>;

/// One question, as the link sends it.
pub struct PeerHashAsk {
    pub question: HashQuestion,
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

/// An answer on its way.
pub type PendingAnswer = oneshot::Receiver<Result<Result<Vec<ExtentHash>, String>>>;

impl PeerHashes {
    /// Asks, and waits for a link to carry the question and its answer.
    pub async fn ask(&self, question: HashQuestion) -> Result<Result<Vec<ExtentHash>, String>> {
        Self::answer(self.queue(question).await?).await
    }

    /// Puts a question in line and returns where its answer will come:
    /// the recovery side works on it while the asker does something else.
    pub async fn queue(&self, question: HashQuestion) -> Result<PendingAnswer> {
        let (reply, answer) = oneshot::channel();
        let gone = |_| CaptureError::Link("no link takes questions any more".to_string());
        self.tx.send(PeerHashAsk { question, reply }).await.map_err(gone)?;
        Ok(answer)
    }

    /// The answer to a question `queue` put in line.
    pub async fn answer(answer: PendingAnswer) -> Result<Result<Vec<ExtentHash>, String>> {
        answer.await.map_err(|_| CaptureError::Link("the link dropped the question".to_string()))?
    }
}
