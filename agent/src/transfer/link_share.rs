//! The link to the peer, shared by every VPG that sends over it. The cap
//! (`peer.throttle_bytes_per_sec`) is the link's, not each VPG's: one token
//! bucket for all of them, and one sender at a time pays for its batch's
//! link time (it holds the turn while it waits for the bucket).
//!
//! While VPGs want the link, each priority class gets link time in
//! proportion to its weight (high 4, medium 2, low 1): the turn goes to the
//! class that has had the least for its weight, and within a class to the
//! VPG that asked first. A sender asks again only once its batch is
//! written, so a turn its class should have next is kept for it a moment
//! (`KEEP_GRACE`). A VPG writing flat out cannot starve a light one, which
//! waits at most about one batch of each VPG ahead of it; under a cap a
//! batch is a tenth of a second of link time (`batch_target_bytes`), and a
//! larger one (one big write) is paid for slice by slice (the sender's
//! `send_batch`), so it does not hold the link for its whole length.
//!
//! Uncapped, nobody waits: each VPG's connection sends at once and TCP
//! shares the link.

use crate::config::Priority;
use crate::wire::batch::BATCH_RAW_BYTES_TARGET;
use crate::wire::throttle::Throttle;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// How long the turn is kept for a class that should go next by its weight
/// but whose sender is still writing its batch (it is not back in line
/// yet); longer, the waiters take it.
const KEEP_GRACE: Duration = Duration::from_millis(25);
/// Link time per batch under a cap, as a fraction of a second.
const BATCH_SECONDS: u64 = 10;
const BATCH_BYTES_MIN: usize = 64 << 10;
/// What the batches of all senders on the link may hold at once (each
/// sender reuses a batch buffer and a compression buffer of its target):
/// with many VPGs, each batch is smaller, so memory stays bounded.
const BATCH_BYTES_ALL_SENDERS: usize = 32 << 20;

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
    senders: usize,
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
    /// The turn, kept since then for a class to come back for it.
    kept_for: Option<(usize, Instant)>,
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

    /// The turn of class `c` is over. If `c` is still the class to go next
    /// by its weight, the turn is kept for it a moment: its sender comes
    /// back once its batch is written (without this, two busy VPGs would
    /// just alternate, whatever their priorities).
    fn finish(&mut self, c: usize) {
        let lightest_waiting = (0..3)
            .filter(|k| !self.classes[*k].waiting.is_empty())
            .map(|k| self.classes[k].served)
            .fold(f64::INFINITY, f64::min);
        if lightest_waiting.is_finite()
            && self.classes[c].waiting.is_empty()
            && self.classes[c].served < lightest_waiting
        {
            self.kept_for = Some((c, Instant::now()));
            return;
        }
        self.hand_on();
    }

    /// Hands the turn to the next waiter that is still there, or frees it.
    fn hand_on(&mut self) {
        self.kept_for = None;
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

/// The turn of class `.1`, held while a batch's link time is paid;
/// dropped, it goes on.
struct Turn<'a>(&'a LinkShare, usize);

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.0.state.lock().expect("link share lock").finish(self.1);
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
    /// A link for `senders` VPGs; `bytes_per_sec == 0`: no cap.
    pub fn new(bytes_per_sec: u64, senders: usize) -> Self {
        let state = State {
            throttle: Throttle::new(bytes_per_sec),
            busy: false,
            classes: Default::default(),
            now: 0.0,
            kept_for: None,
        };
        LinkShare { bytes_per_sec, senders: senders.max(1), state: Mutex::new(state) }
    }

    /// Waits until `rx` says the turn is this waiter's; takes back a turn
    /// kept too long for a class whose sender did not come back.
    async fn wait_grant(&self, rx: &mut oneshot::Receiver<()>) {
        loop {
            if let Ok(granted) = tokio::time::timeout(KEEP_GRACE, &mut *rx).await {
                granted.expect("a waiter's sender is only dropped after a grant");
                return;
            }
            let mut state = self.state.lock().expect("link share lock");
            if state.kept_for.is_some_and(|(_, at)| at.elapsed() >= KEEP_GRACE) {
                state.hand_on();
            }
        }
    }

    /// How many raw bytes a sender puts in one batch: its share of what all
    /// batches may hold, and under a cap at most a tenth of a second of the
    /// link, so a turn is short.
    pub fn batch_target_bytes(&self) -> usize {
        let share = BATCH_BYTES_ALL_SENDERS / self.senders;
        let link = match self.bytes_per_sec {
            0 => usize::MAX,
            rate => (rate / BATCH_SECONDS) as usize,
        };
        share.min(link).clamp(BATCH_BYTES_MIN, BATCH_RAW_BYTES_TARGET)
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
            if state.kept_for.is_some_and(|(k, _)| k == c) {
                state.kept_for = None;
                None
            } else if state.busy {
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
                self.wait_grant(ticket.granted.as_mut().expect("set above")).await;
                ticket.granted = None;
                Turn(self, c)
            }
            None => Turn(self, c),
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
        let share = Arc::new(LinkShare::new(rate, senders.len()));
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
    async fn three_priorities_share_by_their_weights() {
        let got = share_of(
            1_000_000,
            &[(Priority::High, 100_000), (Priority::Medium, 100_000), (Priority::Low, 100_000)],
            14,
        )
        .await;
        let total: u64 = got.iter().sum();
        let share = |i: usize| got[i] as f64 / total as f64;
        assert!((share(0) - 4.0 / 7.0).abs() < 0.05, "{got:?}");
        assert!((share(1) - 2.0 / 7.0).abs() < 0.05, "{got:?}");
        assert!((share(2) - 1.0 / 7.0).abs() < 0.05, "{got:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn two_busy_vpgs_share_by_their_weights() {
        for (other, share_of_high) in [(Priority::Low, 0.8), (Priority::Medium, 2.0 / 3.0)] {
            let got = share_of(1_000_000, &[(Priority::High, 100_000), (other, 100_000)], 12).await;
            let high = got[0] as f64 / (got[0] + got[1]) as f64;
            assert!((high - share_of_high).abs() < 0.05, "high vs {other:?}: {got:?}");
        }
        let got = share_of(1_000_000, &[(Priority::Low, 100_000), (Priority::Low, 100_000)], 12).await;
        assert!(got[0].abs_diff(got[1]) <= 200_000, "same priority: {got:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn small_batches_are_not_drowned_by_large_ones() {
        // Turns, not bytes, within a priority: the light VPG's every batch
        // waits at most one of the heavy one's.
        let share = Arc::new(LinkShare::new(1_000_000, 2));
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
        let share = Arc::new(LinkShare::new(100_000, 3));
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
    fn batches_are_a_tenth_of_a_second_under_a_cap_and_a_share_of_the_memory() {
        assert_eq!(LinkShare::new(0, 1).batch_target_bytes(), BATCH_RAW_BYTES_TARGET);
        assert_eq!(LinkShare::new(4_000_000, 1).batch_target_bytes(), 400_000);
        assert_eq!(LinkShare::new(1000, 1).batch_target_bytes(), BATCH_BYTES_MIN);
        // Many senders: smaller batches, so all of them together stay bounded.
        assert_eq!(LinkShare::new(0, 16).batch_target_bytes(), 2 << 20);
        assert_eq!(LinkShare::new(0, 100_000).batch_target_bytes(), BATCH_BYTES_MIN);
    }
}
