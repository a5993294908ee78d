//! One async lock per key (a VPG's name): work on one key goes one at a
//! time, work on different keys side by side. A key's lock is forgotten
//! when its last guard goes and nobody else waits for it, so the map holds
//! only the keys in use.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

#[derive(Default)]
pub struct KeyedLocks {
    locks: Mutex<HashMap<String, Arc<AsyncMutex<()>>>>,
}

/// Holds `key`'s lock until dropped.
pub struct KeyedGuard<'a> {
    owner: &'a KeyedLocks,
    key: String,
    guard: Option<OwnedMutexGuard<()>>,
}

impl KeyedLocks {
    /// Waits for `key`'s lock (only holders of the same key wait).
    pub async fn lock(&self, key: &str) -> KeyedGuard<'_> {
        let lock = self.locks.lock().expect("keyed locks").entry(key.to_string()).or_default().clone();
        let guard = lock.lock_owned().await;
        KeyedGuard { owner: self, key: key.to_string(), guard: Some(guard) }
    }

    /// Keys with a lock held or waited for.
    pub fn keys_in_use(&self) -> usize {
        self.locks.lock().expect("keyed locks").len()
    }
}

impl Drop for KeyedGuard<'_> {
    fn drop(&mut self) {
        self.guard.take();
        let mut locks = self.owner.locks.lock().expect("keyed locks");
        // Only the map holds it: nobody holds it or waits for it (a waiter
        // holds a clone from before it waited, taken under this mutex).
        if locks.get(&self.key).is_some_and(|l| Arc::strong_count(l) == 1) {
            locks.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn one_key_waits_other_keys_do_not_and_the_map_empties() {
        let locks = Arc::new(KeyedLocks::default());
        let a = locks.lock("a").await;
        // Another key is not held up.
        tokio::time::timeout(Duration::from_secs(5), locks.lock("b")).await.expect("b waited for a");
        // The same key waits until the holder lets go.
        let waiter = {
            let locks = locks.clone();
            tokio::spawn(async move {
                let _a = locks.lock("a").await;
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "a second holder of a got in");
        assert_eq!(locks.keys_in_use(), 1, "b was forgotten; a is held and waited for");
        // Let go, a is the waiter's: a third holder still waits for it.
        let (held_tx, held_rx) = tokio::sync::oneshot::channel();
        let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
        let second = {
            let locks = locks.clone();
            tokio::spawn(async move {
                let _a = locks.lock("a").await;
                held_tx.send(()).unwrap();
                release_rx.await.unwrap();
            })
        };
        drop(a);
        waiter.await.unwrap();
        held_rx.await.unwrap();
        let third = tokio::time::timeout(Duration::from_millis(100), locks.lock("a")).await;
        assert!(third.is_err(), "a third holder of a got in while the second held it");
        release_tx.send(()).unwrap();
        second.await.unwrap();
        assert_eq!(locks.keys_in_use(), 0);
    }
}
