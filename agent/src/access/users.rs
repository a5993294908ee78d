//! The management API's users and tokens: `<data_dir>/access/users.json`
//! (mode 0600, in a 0700 directory), replaced whole and fsynced on every
//! change, under an exclusive lock so the console (`tidemark user ...`) and
//! the running agent never lose each other's changes.
//!
//! Passwords are argon2id PHC strings; API tokens are stored as SHA-256
//! digests (they are 256 random bits, so a slow hash adds nothing) and
//! shown once when made. TOTP secrets are stored as they are: the
//! appliance must compute the codes (the threat model says so).

use super::AccessError;
use super::{totp, Role};
use crate::durable::{replace_file, FileMode};
use crate::io_failure::Doing;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

type Result<T, E = AccessError> = std::result::Result<T, E>;

pub const ACCESS_DIR: &str = "access";
const STORE_FILE: &str = "users.json";
const LOCK_FILE: &str = "users.lock";
const STORE_VERSION: u32 = 1;
pub const PASSWORD_CHARS_MIN: usize = 12;
/// argon2 reads all of it; a bound keeps a request from costing more.
pub const PASSWORD_BYTES_MAX: usize = 1024;
/// Made tokens start with it, so a log scanner (and a person) knows one.
pub const TOKEN_PREFIX: &str = "tmt_";
/// The most a stored hash may ask of one login (the default is 19 MiB,
/// 2 passes, 1 lane).
const ARGON2_MEMORY_KIB_MAX: u32 = 64 << 10;
const ARGON2_PASSES_MAX: u32 = 8;
const ARGON2_LANES_MAX: u32 = 4;
/// Users and tokens a store may hold: every login reads the whole file.
pub const USERS_MAX: usize = 256;
pub const TOKENS_MAX: usize = 256;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Store {
    pub version: u32,
    #[serde(default)]
    pub users: BTreeMap<String, User>,
    #[serde(default)]
    pub tokens: BTreeMap<String, Token>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub role: Role,
    /// argon2id, as a PHC string (salt and parameters inside).
    pub password: String,
    /// Base32; present for every role that needs a second factor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totp_secret: Option<String>,
    /// The last TOTP step a login used: no code is taken twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totp_last_step: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locked: Option<Lock>,
    pub created_ms: u64,
    pub created_by: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    pub at_ms: u64,
    pub why: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Token {
    pub role: Role,
    /// SHA-256 of the token, hex.
    pub digest: String,
    pub created_ms: u64,
    pub expires_ms: u64,
    pub created_by: String,
}

/// What listing shows of a user: never a hash or a secret.
#[derive(Debug, Clone, Serialize)]
pub struct UserSummary {
    pub name: String,
    pub role: Role,
    pub totp: bool,
    pub locked: Option<String>,
    pub created_ms: u64,
    pub created_by: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct TokenSummary {
    pub name: String,
    pub role: Role,
    pub created_ms: u64,
    pub expires_ms: u64,
    pub created_by: String,
}

pub fn access_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(ACCESS_DIR)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The store as it is now (an empty one before the first user).
pub fn load(data_dir: &Path) -> Result<Store> {
    let path = access_dir(data_dir).join(STORE_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Store { version: STORE_VERSION, ..Default::default() })
        }
        Err(e) => return Ok(Err(e).doing(|| format!("reading {}", path.display()))?),
    };
    let store: Store = serde_json::from_slice(&bytes)
        .map_err(|e| AccessError::from(e).at(format!("{} is damaged", path.display())))?;
    if store.version != STORE_VERSION {
        return Err(AccessError::Refused(format!(
            "{} has version {}; this agent reads {STORE_VERSION}",
            path.display(),
            store.version
        )));
    }
    Ok(store)
}

/// Reads, changes and durably replaces the store under its lock. A change
/// that fails writes nothing.
pub fn update<T>(data_dir: &Path, change: impl FnOnce(&mut Store) -> Result<T>) -> Result<T> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let dir = access_dir(data_dir);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .doing(|| format!("creating {}", dir.display()))?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(dir.join(LOCK_FILE))
        .doing(|| format!("opening {}", dir.join(LOCK_FILE).display()))?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
        .doing(|| "locking the user store".to_string())?;
    let mut store = load(data_dir)?;
    let out = change(&mut store)?;
    let text = serde_json::to_vec_pretty(&store)?;
    replace_file(&dir.join(STORE_FILE), &text, FileMode::OwnerOnly)?;
    Ok(out)
}

pub fn validate_password(password: &str) -> Result<()> {
    if password.chars().count() < PASSWORD_CHARS_MIN {
        return Err(AccessError::Refused(format!("a password must have at least {PASSWORD_CHARS_MIN} characters")));
    }
    if password.len() > PASSWORD_BYTES_MAX {
        return Err(AccessError::Refused(format!("a password must have at most {PASSWORD_BYTES_MAX} bytes")));
    }
    Ok(())
}

pub fn hash_password(password: &str) -> Result<String> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let mut salt = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt).expect("system randomness");
    let salt = SaltString::encode_b64(&salt).map_err(|e| AccessError::Refused(format!("salt: {e}")))?;
    let hash = argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| AccessError::Refused(format!("argon2: {e}")))?;
    Ok(hash.to_string())
}

/// A PHC string given instead of a password (from the OVF properties):
/// it must be argon2id, and well-formed.
pub fn validate_hash(phc: &str) -> Result<()> {
    let parsed =
        argon2::PasswordHash::new(phc).map_err(|e| AccessError::Refused(format!("not a PHC password hash: {e}")))?;
    if parsed.algorithm.as_str() != "argon2id" {
        return Err(AccessError::Refused(format!("the password hash is {}; argon2id is required", parsed.algorithm)));
    }
    // Every login for the name costs what the hash asks: bounded, so a
    // hash cannot make the agent allocate gigabytes or spin for minutes.
    let params =
        argon2::Params::try_from(&parsed).map_err(|e| AccessError::Refused(format!("the hash's parameters: {e}")))?;
    if params.m_cost() > ARGON2_MEMORY_KIB_MAX
        || params.t_cost() > ARGON2_PASSES_MAX
        || params.p_cost() > ARGON2_LANES_MAX
    {
        return Err(AccessError::Refused(format!(
            "the hash asks m={} KiB, t={}, p={}; at most m={ARGON2_MEMORY_KIB_MAX}, t={ARGON2_PASSES_MAX}, p={ARGON2_LANES_MAX}",
            params.m_cost(),
            params.t_cost(),
            params.p_cost()
        )));
    }
    if parsed.salt.is_none() || parsed.hash.is_none() {
        return Err(AccessError::Refused("the password hash has no salt or no output".to_string()));
    }
    Ok(())
}

/// Checks `password` against a PHC string, or against a fixed dummy hash
/// when there is none (an unknown user costs the same time as a known one).
pub fn verify_password(phc: Option<&str>, password: &str) -> bool {
    use argon2::password_hash::PasswordVerifier;
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let dummy = DUMMY.get_or_init(|| hash_password("a password nobody has, for timing").unwrap_or_default());
    let Ok(parsed) = argon2::PasswordHash::new(phc.unwrap_or(dummy)) else { return false };
    let matched = argon2::Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok();
    matched && phc.is_some()
}

/// What `add_user` hands back once: the enrolment URI for a TOTP role.
pub struct Added {
    pub totp_uri: Option<String>,
}

pub fn add_user(data_dir: &Path, name: &str, role: Role, password_hash: String, by: &str) -> Result<Added> {
    crate::config::validate_name("user", name)?;
    validate_hash(&password_hash)?;
    let secret = role.needs_totp().then(totp::new_secret);
    update(data_dir, |store| {
        if store.users.contains_key(name) {
            return Err(AccessError::Refused(format!("user {name:?} exists already (delete it first to change it)")));
        }
        if store.users.len() >= USERS_MAX {
            return Err(AccessError::Refused(format!("the appliance holds at most {USERS_MAX} users")));
        }
        store.users.insert(
            name.to_string(),
            User {
                role,
                password: password_hash,
                totp_secret: secret.map(|s| totp::encode_secret(&s)),
                totp_last_step: None,
                locked: None,
                created_ms: now_ms(),
                created_by: by.to_string(),
            },
        );
        Ok(())
    })?;
    Ok(Added { totp_uri: secret.map(|s| totp::otpauth_uri("Tidemark", name, &s)) })
}

pub fn delete_user(data_dir: &Path, name: &str) -> Result<()> {
    update(data_dir, |store| {
        store.users.remove(name).map(|_| ()).ok_or_else(|| AccessError::Refused(format!("no user {name:?}")))
    })
}

/// Clears a lock and returns whether there was one.
pub fn unlock_user(data_dir: &Path, name: &str) -> Result<bool> {
    update(data_dir, |store| {
        let user = store.users.get_mut(name).ok_or_else(|| AccessError::Refused(format!("no user {name:?}")))?;
        Ok(user.locked.take().is_some())
    })
}

/// Locks `name` (a repeated lock keeps the first reason); false if there
/// is no such user.
pub fn lock_user(data_dir: &Path, name: &str, why: &str) -> Result<bool> {
    update(data_dir, |store| {
        let Some(user) = store.users.get_mut(name) else { return Ok(false) };
        if user.locked.is_none() {
            user.locked = Some(Lock { at_ms: now_ms(), why: why.to_string() });
        }
        Ok(true)
    })
}

pub fn list_users(store: &Store) -> Vec<UserSummary> {
    store
        .users
        .iter()
        .map(|(name, u)| UserSummary {
            name: name.clone(),
            role: u.role,
            totp: u.totp_secret.is_some(),
            locked: u.locked.as_ref().map(|l| format!("since {}: {}", crate::status::format_time_ms(l.at_ms), l.why)),
            created_ms: u.created_ms,
            created_by: u.created_by.clone(),
        })
        .collect()
}

pub fn token_digest(token: &str) -> String {
    data_encoding::HEXLOWER.encode(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref())
}

/// The longest an API token may live.
pub const TOKEN_LIFETIME_MAX: std::time::Duration = std::time::Duration::from_secs(366 * 24 * 3600);

/// What a token may be: viewer or operator (a failover or a user change
/// needs a person with a second factor), for 1 s to `TOKEN_LIFETIME_MAX`.
/// The console and the API both ask for it before a token is made.
pub fn validate_token(role: Role, lifetime: std::time::Duration) -> Result<()> {
    if role.needs_totp() {
        return Err(AccessError::Refused(format!(
            "a token may be viewer or operator: role {role} needs a person with a second factor"
        )));
    }
    if lifetime.is_zero() || lifetime > TOKEN_LIFETIME_MAX {
        return Err(AccessError::Refused("a token lives between 1s and 366d".to_string()));
    }
    Ok(())
}

/// Makes a token; returns it (the only time it is ever shown).
pub fn add_token(data_dir: &Path, name: &str, role: Role, lifetime: std::time::Duration, by: &str) -> Result<String> {
    crate::config::validate_name("token", name)?;
    let mut secret = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret).expect("system randomness");
    let token = format!("{TOKEN_PREFIX}{}", data_encoding::HEXLOWER.encode(&secret));
    let created_ms = now_ms();
    let expires_ms = created_ms.saturating_add(lifetime.as_millis() as u64);
    update(data_dir, |store| {
        if store.tokens.contains_key(name) {
            return Err(AccessError::Refused(format!("token {name:?} exists already")));
        }
        if store.tokens.len() >= TOKENS_MAX {
            return Err(AccessError::Refused(format!(
                "the appliance holds at most {TOKENS_MAX} tokens; delete expired ones"
            )));
        }
        let digest = token_digest(&token);
        store.tokens.insert(name.to_string(), Token { role, digest, created_ms, expires_ms, created_by: by.into() });
        Ok(())
    })?;
    Ok(token)
}

pub fn delete_token(data_dir: &Path, name: &str) -> Result<()> {
    update(data_dir, |store| {
        store.tokens.remove(name).map(|_| ()).ok_or_else(|| AccessError::Refused(format!("no token {name:?}")))
    })
}

pub fn list_tokens(store: &Store) -> Vec<TokenSummary> {
    store
        .tokens
        .iter()
        .map(|(name, t)| TokenSummary {
            name: name.clone(),
            role: t.role,
            created_ms: t.created_ms,
            expires_ms: t.expires_ms,
            created_by: t.created_by.clone(),
        })
        .collect()
}

/// The token's name and role, if `token` is a live one.
pub fn find_token(store: &Store, token: &str) -> Option<(String, Role)> {
    use subtle::ConstantTimeEq;
    let digest = token_digest(token);
    let now = now_ms();
    store
        .tokens
        .iter()
        .find(|(_, t)| bool::from(t.digest.as_bytes().ct_eq(digest.as_bytes())))
        .filter(|(_, t)| t.expires_ms > now)
        .map(|(name, t)| (name.clone(), t.role))
}

/// Records that a login used TOTP step `step`; false (and nothing
/// written) for a step not after the last one used: two logins racing
/// with one code, one wins.
pub fn use_totp_step(data_dir: &Path, name: &str, step: u64) -> Result<bool> {
    update(data_dir, |store| {
        let user = store.users.get_mut(name).ok_or_else(|| AccessError::Refused(format!("no user {name:?}")))?;
        if user.totp_last_step.is_some_and(|used| step <= used) {
            return Ok(false);
        }
        user.totp_last_step = Some(step);
        Ok(true)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_and_tokens_round_trip_and_secrets_stay_out_of_listings() {
        let dir = tempfile::tempdir().unwrap();
        let hash = hash_password("correct horse battery").unwrap();
        assert!(verify_password(Some(&hash), "correct horse battery"));
        assert!(!verify_password(Some(&hash), "wrong horse battery"));
        assert!(!verify_password(None, "correct horse battery"));
        let added = add_user(dir.path(), "alice", Role::DrAdmin, hash.clone(), "test").unwrap();
        assert!(added.totp_uri.unwrap().starts_with("otpauth://totp/Tidemark:alice?"));
        assert!(add_user(dir.path(), "bob", Role::Viewer, hash.clone(), "test").unwrap().totp_uri.is_none());
        assert!(add_user(dir.path(), "alice", Role::Viewer, hash.clone(), "test").is_err());
        assert!(add_user(dir.path(), "../x", Role::Viewer, hash.clone(), "test").is_err());
        assert!(add_user(dir.path(), "carol", Role::Viewer, "$2y$10$notargon".into(), "test").is_err());
        let greedy = "$argon2id$v=19$m=4194304,t=2,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaA";
        assert!(validate_hash(greedy).unwrap_err().to_string().contains("at most"));
        let token = add_token(dir.path(), "ci", Role::Operator, std::time::Duration::from_secs(60), "test").unwrap();
        let store = load(dir.path()).unwrap();
        assert_eq!(find_token(&store, &token), Some(("ci".into(), Role::Operator)));
        assert_eq!(find_token(&store, "tmt_00"), None);
        let listed = serde_json::to_string(&(list_users(&store), list_tokens(&store))).unwrap();
        assert!(!listed.contains(&hash) && !listed.contains(&token_digest(&token)) && !listed.contains("totp_secret"));
        assert!(use_totp_step(dir.path(), "alice", 10).unwrap());
        assert!(!use_totp_step(dir.path(), "alice", 10).unwrap());
        assert!(lock_user(dir.path(), "bob", "ten wrong passwords").unwrap());
        assert!(unlock_user(dir.path(), "bob").unwrap());
        assert!(!unlock_user(dir.path(), "bob").unwrap());
        delete_user(dir.path(), "bob").unwrap();
        assert!(delete_user(dir.path(), "bob").is_err());
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(access_dir(dir.path()).join(STORE_FILE)).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn expired_tokens_do_not_authenticate() {
        let dir = tempfile::tempdir().unwrap();
        let token = add_token(dir.path(), "old", Role::Admin, std::time::Duration::ZERO, "test").unwrap();
        assert_eq!(find_token(&load(dir.path()).unwrap(), &token), None);
    }
}
