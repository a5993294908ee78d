//! The API's changes: each request body is parsed into a typed operation
//! first (`prepare`: malformed input is refused before anything runs or is
//! recorded as started), then run (`execute`). Pipeline operations go
//! through the same handler as the local control socket.

use super::auth::{Caller, Via};
use super::routes::Route;
use super::{ApiError, State};
use crate::access::{users, Role};
use crate::api::local::{self, Agent, Request};
use crate::audit_trail::Actor;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Mutex;

/// How long an operation waits for the other site unless told.
const WAIT_MS_DEFAULT: u64 = 30_000;
/// Exports the API may hold open at once.
const EXPORTS_MAX: usize = 32;

/// Exports opened through the API, kept until closed (or the agent stops).
#[derive(Default)]
pub struct OpenExports {
    next_id: std::sync::atomic::AtomicU64,
    open: Mutex<BTreeMap<u64, (String, crate::recovery::ops::Served)>>,
    /// Exports being opened (counted against `EXPORTS_MAX` with the open
    /// ones, under `open`'s lock).
    opening: std::sync::atomic::AtomicUsize,
}

/// One export being opened, counted in `OpenExports::opening` until dropped.
struct Opening<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl OpenExports {
    /// (id, opened by, VPG, checkpoint, URIs) of each open export.
    pub fn list(&self) -> Vec<Value> {
        let open = self.open.lock().expect("exports lock");
        open.iter()
            .map(|(id, (by, s))| json!({ "id": id, "by": by, "vpg": s.vpg, "checkpoint": s.checkpoint.id, "exports": s.uris }))
            .collect()
    }
}

fn default_wait_ms() -> u64 {
    WAIT_MS_DEFAULT
}
fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckpointBody {
    tag: String,
    #[serde(default = "default_wait_ms")]
    wait_ms: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupCheckpointBody {
    #[serde(default)]
    tag: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AtCheckpoint {
    checkpoint: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FailoverBody {
    checkpoint: String,
    #[serde(default = "yes")]
    serve: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WaitBody {
    #[serde(default = "default_wait_ms")]
    wait_ms: u64,
    #[serde(default)]
    cancel: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReverseBody {
    #[serde(default = "default_wait_ms")]
    wait_ms: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyBody {
    #[serde(default)]
    repair: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoBody {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddUserBody {
    name: String,
    role: Role,
    /// One of the two: a password (hashed here) or an argon2id PHC hash.
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    password_hash: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddTokenBody {
    name: String,
    role: Role,
    /// "30d", "12h", ...
    expires_in: String,
}

pub enum Prepared {
    Pipeline(Request),
    OpenExport { vpg: String, checkpoint: String },
    CloseExport { id: u64 },
    Logout,
    AddUser { name: String, role: Role, password: Option<String>, hash: Option<String> },
    DeleteUser { name: String },
    UnlockUser { name: String },
    AddToken { name: String, role: Role, lifetime: std::time::Duration },
    DeleteToken { name: String },
}

fn body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // No body is an empty object.
    let bytes = if bytes.iter().all(u8::is_ascii_whitespace) { b"{}".as_slice() } else { bytes };
    serde_json::from_slice(bytes).map_err(|e| ApiError::bad_request(format!("malformed request body: {e}")))
}

pub fn prepare(route: &Route, bytes: &[u8]) -> Result<Prepared, ApiError> {
    let pipeline = Prepared::Pipeline;
    Ok(match route.clone() {
        Route::AddCheckpoint { vpg } => {
            let b: CheckpointBody = body(bytes)?;
            local::validate_tag(&b.tag)
                .map_err(|e| ApiError::bad_request(crate::error_chain::Chain(&e).to_string()))?;
            pipeline(Request::Checkpoint { vpg, tag: b.tag, wait_ms: b.wait_ms })
        }
        Route::AddGroupCheckpoint { group } => {
            let b: GroupCheckpointBody = body(bytes)?;
            if let Some(tag) = &b.tag {
                local::validate_tag(tag)
                    .map_err(|e| ApiError::bad_request(crate::error_chain::Chain(&e).to_string()))?;
            }
            pipeline(Request::GroupCheckpoint { group, tag: b.tag })
        }
        Route::OpenExport { vpg } => {
            let b: AtCheckpoint = body(bytes)?;
            Prepared::OpenExport { vpg, checkpoint: b.checkpoint }
        }
        Route::CloseExport { id } => {
            body::<NoBody>(bytes)?;
            Prepared::CloseExport { id }
        }
        Route::TestFailoverStart { vpg } => {
            let b: AtCheckpoint = body(bytes)?;
            pipeline(Request::TestFailoverStart { vpg, checkpoint: b.checkpoint })
        }
        Route::TestFailoverStop { vpg } => {
            body::<NoBody>(bytes)?;
            pipeline(Request::TestFailoverStop { vpg })
        }
        Route::Failover { vpg } => {
            let b: FailoverBody = body(bytes)?;
            pipeline(Request::Failover { vpg, checkpoint: b.checkpoint, serve: b.serve })
        }
        Route::Move { vpg } => {
            let b: WaitBody = body(bytes)?;
            pipeline(Request::Move { vpg, wait_ms: b.wait_ms, cancel: b.cancel })
        }
        Route::MoveBack { vpg } => {
            let b: WaitBody = body(bytes)?;
            pipeline(Request::MoveBack { vpg, wait_ms: b.wait_ms, cancel: b.cancel })
        }
        Route::Reverse { vpg } => {
            let b: ReverseBody = body(bytes)?;
            pipeline(Request::Reverse { vpg, wait_ms: b.wait_ms })
        }
        Route::Verify { vpg } => {
            let b: VerifyBody = body(bytes)?;
            pipeline(Request::Verify { vpg, repair: b.repair })
        }
        Route::ClearAlert { vpg } => {
            body::<NoBody>(bytes)?;
            // `by` is filled in by `execute`, from the caller.
            pipeline(Request::ClearAlert { vpg, by: String::new() })
        }
        Route::Logout => {
            body::<NoBody>(bytes)?;
            Prepared::Logout
        }
        Route::AddUser => {
            let b: AddUserBody = body(bytes)?;
            crate::config::validate_name("name", &b.name)
                .map_err(|e| ApiError::bad_request(crate::error_chain::Chain(&e).to_string()))?;
            match (&b.password, &b.password_hash) {
                (Some(p), None) => users::validate_password(p),
                (None, Some(h)) => users::validate_hash(h),
                _ => Err(crate::access::AccessError::Refused("give exactly one of password and password_hash".into())),
            }
            .map_err(|e| ApiError::bad_request(crate::error_chain::Chain(&e).to_string()))?;
            Prepared::AddUser { name: b.name, role: b.role, password: b.password, hash: b.password_hash }
        }
        Route::DeleteUser { name } => {
            body::<NoBody>(bytes)?;
            Prepared::DeleteUser { name }
        }
        Route::UnlockUser { name } => {
            body::<NoBody>(bytes)?;
            Prepared::UnlockUser { name }
        }
        Route::AddToken => {
            let b: AddTokenBody = body(bytes)?;
            crate::config::validate_name("name", &b.name)
                .map_err(|e| ApiError::bad_request(crate::error_chain::Chain(&e).to_string()))?;
            let lifetime = humantime::parse_duration(&b.expires_in).map_err(|e| {
                ApiError::bad_request(format!("expires_in: {:?} is not a duration like \"30d\": {e}", b.expires_in))
            })?;
            users::validate_token(b.role, lifetime)
                .map_err(|e| ApiError::bad_request(crate::error_chain::Chain(&e).to_string()))?;
            Prepared::AddToken { name: b.name, role: b.role, lifetime }
        }
        Route::DeleteToken { name } => {
            body::<NoBody>(bytes)?;
            Prepared::DeleteToken { name }
        }
        other => return Err(ApiError::bad_request(format!("{other:?} is not an operation"))),
    })
}

impl Prepared {
    /// What the audit trail records of the request: never a password, a
    /// hash or a token.
    pub fn params(&self) -> Value {
        match self {
            Prepared::Pipeline(request) => {
                let mut v = serde_json::to_value(request).unwrap_or(Value::Null);
                if let Some(map) = v.as_object_mut() {
                    map.remove("op");
                    map.remove("by");
                }
                v
            }
            Prepared::OpenExport { vpg, checkpoint } => json!({ "vpg": vpg, "checkpoint": checkpoint }),
            Prepared::CloseExport { id } => json!({ "export": id }),
            Prepared::Logout => json!({}),
            Prepared::AddUser { name, role, hash, .. } => {
                json!({ "name": name, "role": role, "from": if hash.is_some() { "hash" } else { "password" } })
            }
            Prepared::DeleteUser { name } | Prepared::UnlockUser { name } => json!({ "name": name }),
            Prepared::AddToken { name, role, lifetime } => {
                json!({ "name": name, "role": role, "expires_in": humantime::format_duration(*lifetime).to_string() })
            }
            Prepared::DeleteToken { name } => json!({ "name": name }),
        }
    }
}

/// Runs in one of the API's blocking threads and maps its error to a
/// failed operation (or read: `reads` answers through it too).
pub(super) async fn blocking<T: Send + 'static>(
    run: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    crate::api::blocking(run).await.map_err(|e| ApiError::failed(anyhow::anyhow!("{e}")))?.map_err(ApiError::failed)
}

pub async fn execute(state: &State, caller: &Caller, actor: &Actor, prepared: Prepared) -> Result<Value, ApiError> {
    let dir = state.data_dir.clone();
    match prepared {
        Prepared::Pipeline(mut request) => {
            if let Request::ClearAlert { by, .. } = &mut request {
                *by = format!("{} from {}", actor.user, actor.source);
            }
            let reply = local::handle(request, &state.agent).await.unwrap_or_else(local::failure);
            match reply.error {
                Some(e) => Err(ApiError::new(http::StatusCode::CONFLICT, e)),
                None => Ok(serde_json::to_value(&reply).unwrap_or(Value::Null)),
            }
        }
        Prepared::OpenExport { vpg, checkpoint } => {
            let Agent::Recovery(ops) = &state.agent else {
                return Err(ApiError::failed(anyhow::anyhow!("exports are served at the recovery site")));
            };
            // Counted before the open's long wait, not after it: requests
            // at once all passed a check of the open ones alone (review of
            // helper-71).
            let _opening = {
                let open = state.exports.open.lock().expect("exports lock");
                let opening = &state.exports.opening;
                if open.len() + opening.load(std::sync::atomic::Ordering::SeqCst) >= EXPORTS_MAX {
                    return Err(ApiError::failed(anyhow::anyhow!(
                        "{EXPORTS_MAX} exports are open or being opened through the API; close one"
                    )));
                }
                opening.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Opening(opening)
            };
            let served = ops.export(&vpg, &checkpoint).await.map_err(ApiError::failed)?;
            let id = state.exports.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            let problem = served.iscsi_problem.as_ref().map(|p| format!("not served over iSCSI: {p}"));
            let answer =
                json!({ "export": id, "id": served.checkpoint.id, "exports": served.uris, "message": problem });
            state.exports.open.lock().expect("exports lock").insert(id, (caller.name(), served));
            Ok(answer)
        }
        Prepared::CloseExport { id } => {
            let Agent::Recovery(ops) = &state.agent else {
                return Err(ApiError::failed(anyhow::anyhow!("exports are served at the recovery site")));
            };
            let open = state.exports.open.lock().expect("exports lock").remove(&id);
            let (_, served) =
                open.ok_or_else(|| ApiError::new(http::StatusCode::NOT_FOUND, format!("no export {id}")))?;
            ops.unexport(&served).await;
            Ok(json!({ "closed": id }))
        }
        Prepared::Logout => {
            if let Via::Session(token) = &caller.via {
                state.sessions.close(token);
            }
            Ok(json!({ "logged_out": true }))
        }
        Prepared::AddUser { name, role, password, hash } => {
            let by = format!("{} (api)", caller.name());
            let added = blocking(move || {
                let hash = match (password, hash) {
                    (Some(p), _) => users::hash_password(&p)?,
                    (None, Some(h)) => h,
                    (None, None) => anyhow::bail!("no password"),
                };
                Ok(users::add_user(&dir, &name, role, hash, &by)?)
            })
            .await?;
            // The enrolment URI is shown here, once, and stored nowhere else.
            Ok(json!({ "added": true, "totp_uri": added.totp_uri }))
        }
        Prepared::DeleteUser { name } => {
            let owned = name.clone();
            blocking(move || Ok(users::delete_user(&dir, &owned)?)).await?;
            state.sessions.close_user(&name);
            Ok(json!({ "deleted": name }))
        }
        Prepared::UnlockUser { name } => {
            let owned = name.clone();
            let was = blocking(move || Ok(users::unlock_user(&dir, &owned)?)).await?;
            state.throttle.forget_name(&name);
            Ok(json!({ "unlocked": name, "was_locked": was }))
        }
        Prepared::AddToken { name, role, lifetime } => {
            let by = format!("{} (api)", caller.name());
            let token = blocking(move || Ok(users::add_token(&dir, &name, role, lifetime, &by)?)).await?;
            // Shown once; the store keeps only its digest.
            Ok(json!({ "token": token, "role": role }))
        }
        Prepared::DeleteToken { name } => {
            let owned = name.clone();
            blocking(move || Ok(users::delete_token(&dir, &owned)?)).await?;
            Ok(json!({ "deleted": name }))
        }
    }
}
