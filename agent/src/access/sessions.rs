//! Login sessions of the management API, in memory (an agent restart logs
//! everybody out). A session ends after `idle` without a request or `max`
//! after login, whichever comes first. The bearer value is 256 random
//! bits; only its SHA-256 digest is kept.

use super::Role;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const SESSION_PREFIX: &str = "tms_";
/// Sessions one user may hold; a further login ends the oldest.
const SESSIONS_PER_USER_MAX: usize = 8;
/// Sessions in all; a login beyond it ends the least recently used.
const SESSIONS_MAX: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user: String,
    pub role: Role,
    /// When the user was made (`User::created_ms`): a user deleted and
    /// made again under the same name is another user, whose sessions
    /// these are not.
    pub generation: u64,
}

struct Session {
    principal: Principal,
    created: Instant,
    last_used: Instant,
}

pub struct Sessions {
    by_digest: Mutex<HashMap<[u8; 32], Session>>,
    idle: Duration,
    max: Duration,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    Unknown,
    IdleExpired,
    TooOld,
}

fn digest(token: &str) -> [u8; 32] {
    ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref().try_into().expect("sha256 is 32 bytes")
}

impl Sessions {
    pub fn new(idle: Duration, max: Duration) -> Sessions {
        Sessions { by_digest: Mutex::new(HashMap::new()), idle, max }
    }

    pub fn idle(&self) -> Duration {
        self.idle
    }

    /// Opens a session; returns its bearer value (shown once).
    pub fn open(&self, principal: Principal) -> String {
        let mut secret = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret).expect("system randomness");
        let token = format!("{SESSION_PREFIX}{}", data_encoding::HEXLOWER.encode(&secret));
        let now = Instant::now();
        let mut map = self.by_digest.lock().expect("sessions lock");
        map.retain(|_, s| self.live(s, now));
        let evict = |map: &mut HashMap<[u8; 32], Session>, of_user: bool| {
            let oldest = map
                .iter()
                .filter(|(_, s)| !of_user || s.principal.user == principal.user)
                .min_by_key(|(_, s)| s.last_used)
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                map.remove(&k);
            }
        };
        if map.values().filter(|s| s.principal.user == principal.user).count() >= SESSIONS_PER_USER_MAX {
            evict(&mut map, true);
        }
        if map.len() >= SESSIONS_MAX {
            evict(&mut map, false);
        }
        map.insert(digest(&token), Session { principal, created: now, last_used: now });
        token
    }

    fn live(&self, s: &Session, now: Instant) -> bool {
        now.duration_since(s.last_used) < self.idle && now.duration_since(s.created) < self.max
    }

    /// The session's principal, and the session is used now; an expired
    /// session is ended and says why.
    pub fn check(&self, token: &str) -> Result<Principal, Refusal> {
        let now = Instant::now();
        let key = digest(token);
        let mut map = self.by_digest.lock().expect("sessions lock");
        let session = map.get_mut(&key).ok_or(Refusal::Unknown)?;
        let refusal = if now.duration_since(session.created) >= self.max {
            Some(Refusal::TooOld)
        } else if now.duration_since(session.last_used) >= self.idle {
            Some(Refusal::IdleExpired)
        } else {
            None
        };
        if let Some(refusal) = refusal {
            map.remove(&key);
            return Err(refusal);
        }
        session.last_used = now;
        Ok(session.principal.clone())
    }

    pub fn close(&self, token: &str) -> bool {
        self.by_digest.lock().expect("sessions lock").remove(&digest(token)).is_some()
    }

    /// Ends every session of `user` (deleted, or its role changed).
    pub fn close_user(&self, user: &str) {
        self.by_digest.lock().expect("sessions lock").retain(|_, s| s.principal.user != user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Principal {
        Principal { user: "alice".into(), role: Role::Operator, generation: 1 }
    }

    #[test]
    fn sessions_check_close_and_expire() {
        let sessions = Sessions::new(Duration::from_millis(50), Duration::from_secs(60));
        let token = sessions.open(alice());
        assert!(token.starts_with(SESSION_PREFIX));
        assert_eq!(sessions.check(&token), Ok(alice()));
        assert_eq!(sessions.check("tms_nothing"), Err(Refusal::Unknown));
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(sessions.check(&token), Err(Refusal::IdleExpired));
        assert_eq!(sessions.check(&token), Err(Refusal::Unknown));
        let token = sessions.open(alice());
        assert!(sessions.close(&token) && !sessions.close(&token));
        let aged = Sessions::new(Duration::from_secs(60), Duration::ZERO);
        let token = aged.open(alice());
        assert_eq!(aged.check(&token), Err(Refusal::TooOld));
    }

    #[test]
    fn a_user_holds_a_bounded_number_of_sessions() {
        let sessions = Sessions::new(Duration::from_secs(60), Duration::from_secs(60));
        let tokens: Vec<String> = (0..SESSIONS_PER_USER_MAX + 1).map(|_| sessions.open(alice())).collect();
        assert_eq!(sessions.check(&tokens[0]), Err(Refusal::Unknown), "the oldest went");
        assert!(tokens[1..].iter().all(|t| sessions.check(t).is_ok()));
        sessions.close_user("alice");
        assert!(tokens.iter().all(|t| sessions.check(t).is_err()));
    }
}
