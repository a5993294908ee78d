//! Who is calling: the login (password, TOTP for the roles that need it,
//! the throttle, the account lock) and the bearer value of every other
//! request (a session or an API token), checked against the user store
//! each time, so a user deleted or locked at the console is out at once.

use super::{error, json, State};
use crate::access::sessions::{self, Principal, SESSION_PREFIX};
use crate::access::throttle::{Attempt, NotNow};
use crate::access::{totp, users, Role};
use crate::audit_trail::Actor;
use http::{header, HeaderValue, Response, StatusCode};
use serde::Deserialize;
use std::net::SocketAddr;
use std::time::Duration;

use super::https::Body;

#[derive(Debug, Clone)]
pub struct Caller {
    pub user: String,
    pub role: Role,
    pub via: Via,
}

#[derive(Debug, Clone)]
pub enum Via {
    /// The session's bearer value (logout ends it).
    Session(String),
    /// The API token's name.
    Token(String),
}

impl Caller {
    /// The name the trail and the logs give the caller.
    pub fn name(&self) -> String {
        match &self.via {
            Via::Session(_) => self.user.clone(),
            Via::Token(name) => format!("token:{name}"),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginRequest {
    user: String,
    password: String,
    #[serde(default)]
    totp: Option<String>,
}

/// Said to every wrong login, whatever was wrong: the caller learns nothing
/// about which user names exist or which part was right.
const WRONG: &str = "wrong user name, password or TOTP code";

fn unauthorized(message: &str) -> Response<Body> {
    error(StatusCode::UNAUTHORIZED, message)
}

async fn load_store(state: &State) -> Result<users::Store, Response<Body>> {
    let dir = state.data_dir.clone();
    match crate::api::blocking(move || users::load(&dir)).await {
        Ok(Ok(store)) => Ok(store),
        Ok(Err(e)) => {
            tracing::error!(
                "management API: the user store cannot be read: {e_chain}",
                e_chain = crate::error_chain::Chain(&e)
            );
            Err(error(StatusCode::SERVICE_UNAVAILABLE, "the user store cannot be read; see the agent's log"))
        }
        Err(_) => Err(error(StatusCode::SERVICE_UNAVAILABLE, "the user store cannot be read")),
    }
}

pub async fn authenticate(headers: &http::HeaderMap, state: &State) -> Result<Caller, Response<Body>> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| unauthorized("log in first (POST /api/v1/login) and send Authorization: Bearer <session>"))?;
    let store = load_store(state).await?;
    if bearer.starts_with(users::TOKEN_PREFIX) {
        let (name, role) = users::find_token(&store, bearer).ok_or_else(|| unauthorized("unknown or expired token"))?;
        // A token is never more than an operator, whatever the store says.
        return Ok(Caller { user: name.clone(), role: role.min(Role::Operator), via: Via::Token(name) });
    }
    if !bearer.starts_with(SESSION_PREFIX) {
        return Err(unauthorized("not a session or an API token"));
    }
    let principal = state.sessions.check(bearer).map_err(|refusal| match refusal {
        sessions::Refusal::Unknown => unauthorized("unknown session; log in again"),
        sessions::Refusal::IdleExpired => unauthorized(&format!(
            "session expired after {} without a request; log in again",
            humantime::format_duration(state.sessions.idle())
        )),
        sessions::Refusal::TooOld => {
            unauthorized("session expired (sessions last at most api.session_max); log in again")
        }
    })?;
    // The user as the store has it now: deleted (or deleted and made
    // again) ends the session; a role lowered since login applies at once.
    // A lock does not: it stops logins (someone else's wrong passwords
    // may have caused it), not the sessions of the one who logged in.
    let Some(user) = store.users.get(&principal.user).filter(|u| u.created_ms == principal.generation) else {
        state.sessions.close(bearer);
        return Err(unauthorized("this user was deleted; the session is over"));
    };
    Ok(Caller { role: principal.role.min(user.role), user: principal.user, via: Via::Session(bearer.to_string()) })
}

/// What the trail and the log call a login's name: only a user's name is
/// repeated (a password typed into the name field must not be kept).
fn shown_name(name: &str, user: Option<&users::User>) -> String {
    match user {
        Some(_) => name.to_string(),
        None => "(not a user)".to_string(),
    }
}

/// The throttle's key for a name: names that could not be a user's share one.
fn throttle_key(name: &str) -> &str {
    if crate::names::is_plain(name) {
        name
    } else {
        "\0not a name"
    }
}

pub async fn login(state: &State, peer: SocketAddr, body: &[u8]) -> Response<Body> {
    let request: LoginRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            return error(StatusCode::BAD_REQUEST, &format!("a login is {{\"user\", \"password\", \"totp\"}}: {e}"))
        }
    };
    let attempt = match state.throttle.admit(throttle_key(&request.user), peer.ip()) {
        Ok(attempt) => attempt,
        Err(not_now) => {
            // Not recorded: a flood of these must not grow the trail.
            let (wait, why) = match not_now {
                NotNow::Delay(wait) => (wait, "too many wrong logins; wait before trying again"),
                NotNow::Busy => (Duration::from_secs(1), "another login for this user is being checked; try again"),
            };
            tracing::info!("management API: a login from {peer} throttled for {wait:?}");
            let mut refused = error(StatusCode::TOO_MANY_REQUESTS, why);
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            if let Ok(v) = HeaderValue::from_str(&seconds.to_string()) {
                refused.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return refused;
        }
    };
    let store = match load_store(state).await {
        Ok(s) => s,
        Err(refused) => return refused,
    };
    let user = store.users.get(&request.user).filter(|_| crate::names::is_plain(&request.user)).cloned();
    let actor = Actor {
        user: shown_name(&request.user, user.as_ref()),
        role: user.as_ref().map_or("-".into(), |u| format!("{} (api)", u.role)),
        source: format!("api {peer}"),
    };
    let params = serde_json::json!({ "user": actor.user });
    if let Some(lock) = user.as_ref().and_then(|u| u.locked.as_ref()) {
        // Counted against the source, so trying a locked account is
        // throttled too (not against the name: an unlock at the console
        // cannot reach the agent's strikes, which would lock it again);
        // its password is not looked at.
        let failure = attempt.failed_source_only();
        let why = format!("refused: account locked since {} ({})", crate::status::format_time_ms(lock.at_ms), lock.why);
        tracing::warn!("management API: login of locked account {} from {peer} refused", actor.user);
        super::super::record(&state.data_dir, &actor, "login", params, why, None).await;
        tokio::time::sleep(failure.delay).await;
        return error(StatusCode::FORBIDDEN, "this account is locked; an admin unlocks it (`tidemark user unlock`)");
    }
    if let Some(u) = &user {
        // A hash outside the bounds (hand-edited, or stored before them)
        // would cost any memory per login.
        if let Err(e) = users::validate_hash(&u.password) {
            tracing::error!(
                "management API: user {}'s password hash is refused: {e_chain}",
                actor.user,
                e_chain = crate::error_chain::Chain(&e)
            );
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "this account's password hash is not usable; an admin must make the user again",
            );
        }
    }
    let (phc, password) = (user.as_ref().map(|u| u.password.clone()), request.password);
    let password_ok = password.len() <= users::PASSWORD_BYTES_MAX && {
        // argon2 takes 19 MiB and a core's worth of time: a few at once.
        let _permit = state.password_checks.acquire().await;
        tokio::task::spawn_blocking(move || users::verify_password(phc.as_deref(), &password)).await.unwrap_or(false)
    };
    let Some(user) = user else {
        return refuse(state, peer, attempt, None, &actor, params, "refused: no such user".into()).await;
    };
    let name = request.user.as_str();
    if !password_ok {
        return refuse(state, peer, attempt, Some(name), &actor, params, "refused: wrong password".into()).await;
    }
    if user.role.needs_totp() || user.totp_secret.is_some() {
        let secret = user.totp_secret.as_deref().and_then(|s| totp::decode_secret(s).ok());
        let Some(secret) = secret.filter(|s| s.len() == totp::SECRET_BYTES) else {
            tracing::error!("management API: user {name} has a role that needs TOTP and no usable TOTP secret");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "this account's second factor is missing or damaged; an admin must make the user again",
            );
        };
        let Some(code) = request.totp else {
            // The password was right: say what is missing, strike nothing.
            super::super::record(&state.data_dir, &actor, "login", params, "refused: no TOTP code".into(), None).await;
            return json(
                StatusCode::UNAUTHORIZED,
                &serde_json::json!({ "error": format!("role {} needs a TOTP code", user.role), "totp_required": true }),
            );
        };
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let step = match totp::check(&secret, &code, now, user.totp_last_step) {
            Ok(step) => step,
            Err(refusal) => {
                let why = match refusal {
                    totp::Refusal::Malformed => "refused: TOTP code malformed",
                    totp::Refusal::Wrong => "refused: wrong TOTP code",
                    totp::Refusal::Replayed => "refused: TOTP code used already (replay)",
                };
                return refuse(state, peer, attempt, Some(name), &actor, params, why.into()).await;
            }
        };
        let (dir, owned) = (state.data_dir.clone(), name.to_string());
        match crate::api::blocking(move || users::use_totp_step(&dir, &owned, step)).await {
            Ok(Ok(true)) => {}
            // Another login took this code first.
            Ok(Ok(false)) => {
                let why = "refused: TOTP code used already (race)".to_string();
                return refuse(state, peer, attempt, Some(name), &actor, params, why).await;
            }
            Ok(Err(e)) => {
                tracing::error!(
                    "management API: recording {name}'s TOTP step failed: {e_chain}",
                    e_chain = crate::error_chain::Chain(&e)
                );
                return error(StatusCode::SERVICE_UNAVAILABLE, "the user store cannot be written; see the agent's log");
            }
            Err(_) => return error(StatusCode::SERVICE_UNAVAILABLE, "the user store cannot be written"),
        }
    }
    attempt.succeeded();
    let token = state.sessions.open(Principal { user: name.to_string(), role: user.role, generation: user.created_ms });
    tracing::info!("management API: {name} ({}) logged in from {peer}", user.role);
    super::super::record(&state.data_dir, &actor, "login", params, "ok".into(), None).await;
    json(
        StatusCode::OK,
        &serde_json::json!({
            "token": token,
            "user": name,
            "role": user.role,
            "idle_timeout_s": state.sessions.idle().as_secs(),
        }),
    )
}

/// A wrong login: counted, recorded, the account locked at the limit, and
/// answered only after the throttle's delay (the name stays in flight
/// meanwhile, so no parallel attempt gets in).
async fn refuse(
    state: &State,
    peer: SocketAddr,
    attempt: Attempt<'_>,
    user: Option<&str>,
    actor: &Actor,
    params: serde_json::Value,
    why: String,
) -> Response<Body> {
    let failure = attempt.failed();
    tracing::warn!("management API: login for {} from {peer} {why} ({} in a row)", actor.user, failure.failures);
    super::super::record(&state.data_dir, actor, "login", params.clone(), why, None).await;
    if let (true, Some(name)) = (failure.lock, user) {
        let reason = format!("{} wrong logins in a row, the last from {}", failure.failures, peer.ip());
        let (dir, owned) = (state.data_dir.clone(), name.to_string());
        let locked = crate::api::blocking(move || users::lock_user(&dir, &owned, &reason)).await;
        match locked {
            Ok(Ok(_)) => {
                // Its strikes go: after an unlock the user starts from none.
                state.throttle.forget_name(name);
                tracing::warn!("management API: account {name} locked after {} wrong logins", failure.failures);
                let outcome = format!("account locked after {} wrong logins", failure.failures);
                super::super::record(&state.data_dir, actor, "user lock", params, outcome, None).await;
            }
            _ => tracing::error!("management API: account {name} could not be locked"),
        }
    }
    tokio::time::sleep(failure.delay).await;
    drop(attempt);
    unauthorized(WRONG)
}
