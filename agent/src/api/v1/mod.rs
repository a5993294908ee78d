//! The management API on 4006: JSON over HTTPS (TLS 1.3), versioned under
//! `/api/v1/`, documented in docs/api.md. A caller logs in (`POST
//! /api/v1/login`: password, and a TOTP code for `dr-admin` and `admin`)
//! and sends the session it gets as `Authorization: Bearer tms_...`, or
//! sends an API token (`tmt_...`) made by an admin. Each route needs a
//! role (`routes`); every change and every login is in the audit trail
//! with the user, role, source address, parameters and outcome.
//!
//! Answers: 200 with a JSON body; 400 malformed input (nothing changed);
//! 401 no or bad credentials; 403 the role does not allow it, or the
//! account is locked; 404/405 no such route or method; 408 a body too
//! slow; 409 the operation itself failed (its error says why); 413 a body
//! over `BODY_BYTES_MAX`; 429 a login throttled.

mod auth;
mod dashboard;
mod history;
mod metrics;
mod ops;
mod reads;
pub mod routes;

use super::https::{self, Body};
use super::local::Agent;
use crate::access::{sessions::Sessions, throttle::Throttle};
use crate::audit_trail::Actor;
use anyhow::Result;
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use routes::RouteError;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Request bodies are small JSON objects; more is refused with 413.
pub const BODY_BYTES_MAX: usize = 64 << 10;
/// A body must arrive within this time of its headers.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);
const PASSWORD_CHECKS_MAX: usize = 2;
/// 64 connections at once, 8 from one source address.
const LIMITS: https::Limits = https::Limits {
    connections_max: 64,
    per_source_max: 8,
    handshake_timeout: Duration::from_secs(10),
    header_read_timeout: Duration::from_secs(10),
};

pub struct State {
    pub data_dir: PathBuf,
    /// Support SSH's runtime state (its status is readable here).
    pub state_dir: PathBuf,
    pub agent: Agent,
    pub sessions: Sessions,
    pub throttle: Throttle,
    pub exports: ops::OpenExports,
    /// Password checks running at once (argon2: 19 MiB and a core each).
    pub password_checks: tokio::sync::Semaphore,
    pub history: Arc<history::History>,
}

/// Binds 4006 (errors here stop the agent's start) and serves in the
/// background.
pub async fn start(
    node: &crate::config::Identity,
    system: &crate::config::SystemConfig,
    api: &crate::config::ApiConfig,
    agent: Agent,
) -> Result<()> {
    use crate::wire::tls;
    let identity = tls::load_identity(&node.cert, &node.key)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls::https_server_config(identity)?);
    let listener = crate::listen::bind_listener(api.listen, "the management API").await?;
    let fingerprint = tls::fingerprint_of_file(&node.cert)?;
    tracing::info!("management API on https://{}/api/v1/ (certificate sha256 {fingerprint})", api.listen);
    let state = Arc::new(State {
        data_dir: node.data_dir.clone(),
        state_dir: system.appliance.state_dir.clone(),
        agent,
        sessions: Sessions::new(api.session_idle, api.session_max),
        throttle: Throttle::new(api.throttle_policy()),
        exports: Default::default(),
        password_checks: tokio::sync::Semaphore::new(PASSWORD_CHECKS_MAX),
        history: history::start(node.data_dir.clone()),
    });
    let handler = move |req, peer| {
        let state = state.clone();
        async move { handle(req, state, peer).await }
    };
    tokio::spawn(https::serve(listener, acceptor, "management API", LIMITS, handler));
    Ok(())
}

async fn handle(req: Request<Incoming>, state: Arc<State>, peer: SocketAddr) -> Response<Body> {
    let mut response = answer(req, &state, peer).await;
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

async fn answer(req: Request<Incoming>, state: &Arc<State>, peer: SocketAddr) -> Response<Body> {
    if req.method() == http::Method::GET {
        if let Some(file) = dashboard::serve(req.uri().path()) {
            return file;
        }
    }
    let route = match routes::parse(req.method(), req.uri().path()) {
        Ok(route) => route,
        Err(RouteError::NotFound) => return error(StatusCode::NOT_FOUND, "no such route; see docs/api.md"),
        Err(RouteError::BadName(name)) => {
            return error(StatusCode::BAD_REQUEST, &format!("{name:?} is not a name (letters, digits, '-', '_', '.')"))
        }
        Err(RouteError::MethodNotAllowed(allowed)) => {
            let mut refused = error(StatusCode::METHOD_NOT_ALLOWED, &format!("this route takes {allowed}"));
            refused.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allowed));
            return refused;
        }
    };
    let (parts, body) = req.into_parts();
    let Some(needed) = route.needs() else {
        // JSON only: a form another site's page posts from a manager's
        // browser is not a login (it would need a CORS preflight first).
        let json_body =
            parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| {
                v.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
            });
        if !json_body {
            return error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "a login is sent as Content-Type: application/json");
        }
        let body = match read_body(&parts.headers, body).await {
            Ok(body) => body,
            Err(refused) => return refused,
        };
        // In a task of its own, like the changes: a client that goes away
        // must not free the password check's slot while argon2 still runs,
        // nor skip the strike, the lock or the record of a wrong login.
        let state = state.clone();
        return tokio::spawn(async move { auth::login(&state, peer, &body).await })
            .await
            .unwrap_or_else(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "the login's task ended"));
    };
    let caller = match auth::authenticate(&parts.headers, state).await {
        Ok(caller) => caller,
        Err(refused) => return refused,
    };
    let actor = caller.actor(peer);
    if !caller.role.allows(needed) {
        let why = format!("role {} may not do this: it needs {needed}", caller.role);
        tracing::warn!(
            "management API: {} from {peer} refused {} {}: {why}",
            actor.user,
            parts.method,
            parts.uri.path()
        );
        if let Some(op) = route.op() {
            let params = serde_json::json!({ "path": parts.uri.path() });
            super::record(&state.data_dir, &actor, op, params, format!("refused: {why}"), None).await;
        }
        return error(StatusCode::FORBIDDEN, &why);
    }
    let body = match read_body(&parts.headers, body).await {
        Ok(body) => body,
        Err(refused) => return refused,
    };
    if route == routes::Route::Metrics {
        return metrics_text(state).await;
    }
    let Some(op) = route.op() else {
        return match reads::answer(state, &caller, &route, parts.uri.query()).await {
            Ok(text) => json_text(StatusCode::OK, text),
            Err(e) => e.response(),
        };
    };
    if parts.uri.query().is_some() {
        return error(StatusCode::BAD_REQUEST, "a change takes no query parameters");
    }
    let prepared = match ops::prepare(&route, &body) {
        Ok(p) => p,
        Err(e) => {
            // Logged first: the trail's record waits for its turn, and a
            // caller gone by then takes it with it.
            tracing::warn!(
                "management API: {} from {peer} refused {} {}: {}",
                actor.user,
                parts.method,
                parts.uri.path(),
                e.message
            );
            let params = serde_json::json!({ "path": parts.uri.path(), "bytes": body.len() });
            super::record(&state.data_dir, &actor, op, params, format!("refused: {}", e.message), None).await;
            return e.response();
        }
    };
    // Run to the end in a task of its own: a client that goes away (hyper
    // then drops this future) must not cut a failover or an export in two,
    // nor leave its `started` entry without an outcome.
    let state = state.clone();
    let run = tokio::spawn(async move {
        let params = prepared.params();
        let started = super::record(&state.data_dir, &actor, op, params.clone(), "started".into(), None).await;
        let outcome = ops::execute(&state, &caller, &actor, prepared).await;
        let said = match &outcome {
            Ok(_) => "ok".to_string(),
            Err(e) => format!("failed: {}", e.message),
        };
        super::record(&state.data_dir, &actor, op, params, said, started).await;
        outcome
    });
    match run.await {
        Ok(Ok(value)) => json(StatusCode::OK, &value),
        Ok(Err(e)) => e.response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &format!("the operation's task ended: {e}")),
    }
}

/// `GET /metrics`: the status as OpenMetrics text.
async fn metrics_text(state: &State) -> Response<Body> {
    let dir = state.data_dir.clone();
    let rendered = crate::api::blocking(move || {
        let status = crate::status::read(&dir)?;
        let age_ms = crate::record::now_ms().saturating_sub(status.updated_ms);
        metrics::render(&status, age_ms < METRICS_FRESH_MS)
    })
    .await;
    match rendered {
        Ok(Ok(text)) => {
            let mut response = Response::new(Full::new(Bytes::from(text)).map_err(|n| match n {}).boxed());
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
            );
            response
        }
        Ok(Err(e)) => error(StatusCode::SERVICE_UNAVAILABLE, &format!("no status to report: {e:#}")),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "the metrics task ended"),
    }
}

/// The agent publishes its status every second: older than this, it is
/// reported down.
const METRICS_FRESH_MS: u64 = 5_000;

/// An answer other than 200, with its reason.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into() }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// The operation ran and failed (the VPG is not in that state, the
    /// checkpoint does not exist, ...).
    pub fn failed(e: impl Into<anyhow::Error>) -> ApiError {
        let e: anyhow::Error = e.into();
        ApiError::new(StatusCode::CONFLICT, format!("{e:#}"))
    }

    fn response(&self) -> Response<Body> {
        error(self.status, &self.message)
    }
}

pub fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    let text = serde_json::to_vec(value).unwrap_or_else(|_| b"{\"error\":\"unserialisable answer\"}".to_vec());
    json_text(status, text)
}

/// An answer already serialized.
pub fn json_text(status: StatusCode, mut text: Vec<u8>) -> Response<Body> {
    text.push(b'\n');
    let mut response = Response::new(Full::new(Bytes::from(text)).map_err(|n| match n {}).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

pub fn error(status: StatusCode, message: &str) -> Response<Body> {
    let mut response = json(status, &serde_json::json!({ "error": message }));
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

/// The whole body, bounded in size and in time.
async fn read_body(headers: &http::HeaderMap, body: Incoming) -> Result<Bytes, Response<Body>> {
    let too_big =
        || error(StatusCode::PAYLOAD_TOO_LARGE, &format!("a request body holds at most {BODY_BYTES_MAX} bytes"));
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > BODY_BYTES_MAX as u64) {
        return Err(too_big());
    }
    match tokio::time::timeout(BODY_READ_TIMEOUT, Limited::new(body, BODY_BYTES_MAX).collect()).await {
        Err(_) => Err(error(StatusCode::REQUEST_TIMEOUT, "the request body did not arrive in time")),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_big()),
        Ok(Err(e)) => Err(error(StatusCode::BAD_REQUEST, &format!("reading the request body: {e}"))),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

impl auth::Caller {
    /// Who the audit trail says asked.
    pub fn actor(&self, peer: SocketAddr) -> Actor {
        Actor { user: self.name(), role: format!("{} (api)", self.role), source: format!("api {peer}") }
    }
}
