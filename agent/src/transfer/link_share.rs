//! The link to the peer, shared by every VPG that sends over it. The cap
//! (`peer.throttle_bytes_per_sec`) is the link's, not each VPG's: one token
//! bucket for all of them, and one sender at a time pays for its batch's
//! link time (it holds the turn while it waits for the bucket).
//!
//! While VPGs wait for the turn, it goes to the priority class that has had
//! the least link time for its weight (a byte counts 1/4 for high, 1/2 for
//! medium, 1 for low), and within a class to the VPG that asked first. A
//! sender is back in line only once its batch is written, so a VPG takes
//! at most every other turn while another waits: a VPG writing flat out
//! cannot starve a light one, which waits at most one batch of each VPG
//! ahead of it; and under a cap a batch is a tenth of a second of link time
//! (`batch_target_bytes`). A busy high-priority VPG gets more of the link
//! than a medium one, and that more than a low one; none is silenced.
//!
//! Uncapped, nobody waits: each VPG's connection sends at once and TCP
//! shares the link.

use crate::config::Priority;
use crate::wire::batch::BATCH_RAW_BYTES_TARGET;
use crate::wire::throttle::Throttle;
use std::collections::VecDeque;
use std::sync::Mutex;
use tokio::sync::oneshot;

/// Link time per batch under a cap, as a fraction of a second.
const BATCH_SECONDS: u64 = 10;
const BATCH_BYTES_MIN: usize = 64 << 10;

fn weight(p: Priority) -> f64 {
    match p {
        Priority::High => 4.0,
        Priority::Medium => 2.0,
        Priority::Low => 1.0,
    }
}

fn class(p: Priority) -> usize {
    match p {
        Priority::High => 0,
        Priority::Medium => 1,
        Priority::Low => 2,
    }
}

pub struct LinkShare {
    bytes_per_sec: u64,
    state: Mutex<State>,
}

struct State {
    throttle: Throttle,
    /// A sender holds the turn from its grant until its batch's link time
    /// is paid; then the next waiter gets it.
    busy: bool,
    classes: [Class; 3],
    /// The `served` of the class that took the last turn, before it was
    /// charged for it.
    now: f64,
}

#[derive(Default)]
struct Class {
    waiting: VecDeque<oneshot::Sender<()>>,
    /// Bytes served over the class's weight: the waiting class with the
    /// least goes next.
    served: f64,
}

impl State {
    /// A class that asks again after an idle time gets no credit for it:
    /// it starts from where the link's turns are now.
    fn catch_up(&mut self, c: usize) {
        if self.classes[c].waiting.is_empty() {
            self.classes[c].served = self.classes[c].served.max(self.now);
        }
    }

    /// Hands the turn to the next waiter that is still there, or frees it.
    fn hand_on(&mut self) {
        loop {
            let next = (0..3)
                .filter(|c| !self.classes[*c].waiting.is_empty())
                .min_by(|a, b| self.classes[*a].served.total_cmp(&self.classes[*b].served).then(a.cmp(b)));
            let Some(c) = next else {
                self.busy = false;
                return;
            };
            let waiter = self.classes[c].waiting.pop_front().expect("not empty");
            // A waiter that gave up (its link went down) has dropped its end.
            if waiter.send(()).is_ok() {
                return;
            }
        }
    }
}

/// The turn, held while a batch's link time is paid; dropped, it goes on.
struct Turn<'a>(&'a LinkShare);

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.0.state.lock().expect("link share lock").hand_on();
    }
}

/// A place in the queue; dropped before its turn came, it leaves the
/// queue, and dropped after, it hands the turn on.
struct Ticket<'a> {
    share: &'a LinkShare,
    granted: Option<oneshot::Receiver<()>>,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if let Some(mut rx) = self.granted.take() {
            // Under the lock, so no grant can come between the look and the drop.
            let mut state = self.share.state.lock().expect("link share lock");
            let granted = rx.try_recv().is_ok();
            drop(rx);
            if granted {
                state.hand_on();
            }
        }
    }
}

impl LinkShare {
    /// `bytes_per_sec == 0`: no cap.
    pub fn new(bytes_per_sec: u64) -> Self {
        let state =
            State { throttle: Throttle::new(bytes_per_sec), busy: false, classes: Default::default(), now: 0.0 };
        LinkShare { bytes_per_sec, state: Mutex::new(state) }
    }

    /// How many raw bytes a sender puts in one batch: under a cap, a tenth
    /// of a second of the link, so a turn is short.
    pub fn batch_target_bytes(&self) -> usize {
        match self.bytes_per_sec {
            0 => BATCH_RAW_BYTES_TARGET,
            rate => ((rate / BATCH_SECONDS) as usize).clamp(BATCH_BYTES_MIN, BATCH_RAW_BYTES_TARGET),
        }
    }

    /// Waits for the turn of a VPG of `priority`, then for the link time
    /// `bytes` take under the cap (the turn is held meanwhile: nobody else
    /// could send in that time anyway). Returns when the batch may go.
    pub async fn wait_turn(&self, priority: Priority, bytes: usize) {
        if self.bytes_per_sec == 0 {
            return;
        }
        let c = class(priority);
        let queued = {
            let mut state = self.state.lock().expect("link share lock");
            state.catch_up(c);
            if state.busy {
                let (tx, rx) = oneshot::channel();
                state.classes[c].waiting.push_back(tx);
                Some(rx)
            } else {
                state.busy = true;
                None
            }
        };
        let turn = match queued {
            Some(rx) => {
                let mut ticket = Ticket { share: self, granted: Some(rx) };
                let granted = ticket.granted.as_mut().expect("set above").await;
                ticket.granted = None;
                granted.expect("a waiter's sender is only dropped after a grant");
                Turn(self)
            }
            None => Turn(self),
        };
        let wait = {
            let mut state = self.state.lock().expect("link share lock");
            state.now = state.classes[c].served;
            state.classes[c].served += bytes as f64 / weight(priority);
            state.throttle.take(bytes)
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        drop(turn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    /// Bytes each of `senders` (priority, batch bytes) got through a link
    /// of `rate` bytes/s in `seconds`, all sending flat out.
    async fn share_of(rate: u64, senders: &[(Priority, usize)], seconds: u64) -> Vec<u64> {
        let share = Arc::new(LinkShare::new(rate));
        let sent: Vec<Arc<std::sync::atomic::AtomicU64>> = senders.iter().map(|_| Default::default()).collect();
        let tasks: Vec<_> = senders
            .iter()
            .zip(&sent)
            .map(|(&(p, bytes), sent)| {
                let (share, sent) = (share.clone(), sent.clone());
                tokio::spawn(async move {
                    loop {
                        share.wait_turn(p, bytes).await;
                        sent.fetch_add(bytes as u64, std::sync::atomic::Ordering::Relaxed);
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        tasks.iter().for_each(|t| t.abort());
        sent.iter().map(|s| s.load(std::sync::atomic::Ordering::Relaxed)).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn the_cap_is_the_links_not_each_vpgs() {
        let got = share_of(1_000_000, &[(Priority::Medium, 100_000); 3], 10).await;
        let total: u64 = got.iter().sum();
        // 10 s at 1 MB/s plus the bucket's first burst (and a batch in
        // flight), and no less: the link is never left idle.
        assert!((9_500_000..=10_450_000).contains(&total), "{got:?}");
        // Same priority, same batches: turns alike.
        assert!(got.iter().all(|g| g.abs_diff(total / 3) <= 200_000), "{got:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn priorities_order_the_turns_and_none_starves() {
        let got = share_of(
            1_000_000,
            &[(Priority::High, 100_000), (Priority::Medium, 100_000), (Priority::Low, 100_000)],
            14,
        )
        .await;
        let total: u64 = got.iter().sum();
        let share = |i: usize| got[i] as f64 / total as f64;
        // High before medium before low; the one VPG of a class takes at
        // most every other turn; nobody is silenced.
        assert!(share(0) > share(1) + 0.1 && share(1) > share(2) + 0.1, "{got:?}");
        assert!(share(0) <= 0.51 && share(2) >= 0.1, "{got:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn small_batches_are_not_drowned_by_large_ones() {
        // Turns, not bytes, within a priority: the light VPG's every batch
        // waits at most one of the heavy one's.
        let share = Arc::new(LinkShare::new(1_000_000));
        let heavy = {
            let share = share.clone();
            tokio::spawn(async move {
                loop {
                    share.wait_turn(Priority::Medium, share.batch_target_bytes()).await;
                }
            })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        for _ in 0..20 {
            let asked = tokio::time::Instant::now();
            share.wait_turn(Priority::Medium, 10_000).await;
            assert!(asked.elapsed() <= Duration::from_millis(250), "{:?}", asked.elapsed());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        heavy.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_sender_that_gives_up_in_the_queue_or_holding_the_turn_blocks_nobody() {
        let share = Arc::new(LinkShare::new(100_000));
        share.wait_turn(Priority::Low, 100_000).await; // the bucket is in debt now
        let holder = {
            let share = share.clone();
            tokio::spawn(async move { share.wait_turn(Priority::Low, 1_000_000).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        let queued = {
            let share = share.clone();
            tokio::spawn(async move { share.wait_turn(Priority::High, 1).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        queued.abort();
        holder.abort();
        tokio::time::sleep(Duration::from_millis(10)).await;
        let done = tokio::time::timeout(Duration::from_secs(60), share.wait_turn(Priority::Low, 1)).await;
        assert!(done.is_ok(), "the turn was lost with the senders that gave up");
        assert!(!share.state.lock().unwrap().busy);
    }

    #[test]
    fn batches_are_a_tenth_of_a_second_under_a_cap() {
        assert_eq!(LinkShare::new(0).batch_target_bytes(), BATCH_RAW_BYTES_TARGET);
        assert_eq!(LinkShare::new(4_000_000).batch_target_bytes(), 400_000);
        assert_eq!(LinkShare::new(1000).batch_target_bytes(), BATCH_BYTES_MIN);
    }
}
