//! The API's reads: status, VPGs, checkpoints, open exports, the audit
//! trail and its verdict, support SSH's state, users and tokens. None
//! changes anything or is recorded in the audit trail.

use super::auth::Caller;
use super::ops::blocking;
use super::routes::Route;
use super::{ApiError, State};
use crate::access::users;
use crate::api::local::Agent;
use serde_json::{json, Value};

/// Audit entries one read returns at most (the newest).
const AUDIT_ENTRIES_MAX: usize = 10_000;
const AUDIT_ENTRIES_DEFAULT: usize = 100;

fn text(value: &impl serde::Serialize) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(value).map_err(ApiError::failed)
}

/// Serialized straight to text (no `Value` tree: 100,000s of checkpoints).
#[derive(serde::Serialize)]
struct CheckpointList<'a> {
    checkpoints: &'a [crate::recovery::listing::Listed],
    warnings: &'a [String],
}

#[derive(serde::Serialize)]
struct AuditPage<'a> {
    entries: &'a [crate::audit_trail::Entry],
    unreadable_lines: usize,
}

fn query_limit(query: Option<&str>) -> Result<usize, ApiError> {
    let Some(query) = query else { return Ok(AUDIT_ENTRIES_DEFAULT) };
    let mut limit = AUDIT_ENTRIES_DEFAULT;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("limit", n)) => {
                limit =
                    n.parse().ok().filter(|n| (1..=AUDIT_ENTRIES_MAX).contains(n)).ok_or_else(|| {
                        ApiError::bad_request(format!("limit: a number from 1 to {AUDIT_ENTRIES_MAX}"))
                    })?
            }
            _ => return Err(ApiError::bad_request("the only query parameter is limit")),
        }
    }
    Ok(limit)
}

/// A read's answer, as JSON text.
pub async fn answer(state: &State, caller: &Caller, route: &Route, query: Option<&str>) -> Result<Vec<u8>, ApiError> {
    let dir = state.data_dir.clone();
    if query.is_some() && *route != Route::Audit {
        return Err(ApiError::bad_request("this route takes no query parameters"));
    }
    match route {
        Route::Whoami => text(&json!({ "user": caller.name(), "role": caller.role })),
        Route::Status => blocking(move || Ok(serde_json::to_vec(&crate::status::read(&dir)?)?)).await,
        Route::Vpgs => blocking(move || Ok(serde_json::to_vec(&crate::status::read(&dir)?.vpgs)?)).await,
        Route::Checkpoints { vpg } => {
            if !matches!(state.agent, Agent::Recovery(_)) {
                return Err(ApiError::failed(anyhow::anyhow!("checkpoints are listed at the recovery site")));
            }
            let vpg = vpg.clone();
            blocking(move || {
                let listing = crate::recovery::listing::list(&dir, &vpg)?;
                let list = CheckpointList { checkpoints: &listing.checkpoints, warnings: &listing.warnings };
                Ok(serde_json::to_vec(&list)?)
            })
            .await
        }
        Route::Exports => text(&Value::Array(state.exports.list())),
        Route::History => text(&json!({
            "interval_s": super::history::SAMPLE_INTERVAL.as_secs(),
            "samples": state.history.snapshot(),
        })),
        Route::Audit => {
            let limit = query_limit(query)?;
            blocking(move || {
                let (entries, unreadable) = crate::audit_trail::read_all(&crate::audit_trail::trail_path(&dir))?;
                let skip = entries.len().saturating_sub(limit);
                Ok(serde_json::to_vec(&AuditPage { entries: &entries[skip..], unreadable_lines: unreadable })?)
            })
            .await
        }
        Route::AuditVerify => {
            blocking(move || {
                Ok(serde_json::to_vec(&crate::audit_trail::verify(&crate::audit_trail::trail_path(&dir))?)?)
            })
            .await
        }
        Route::SupportSsh => {
            let state_dir = state.state_dir.clone();
            blocking(move || {
                Ok(serde_json::to_vec(&json!({ "status": crate::harden::support_ssh::describe(&state_dir)? }))?)
            })
            .await
        }
        Route::Users => blocking(move || Ok(serde_json::to_vec(&users::list_users(&users::load(&dir)?))?)).await,
        Route::Tokens => blocking(move || Ok(serde_json::to_vec(&users::list_tokens(&users::load(&dir)?))?)).await,
        other => Err(ApiError::bad_request(format!("{other:?} is not a read"))),
    }
}
