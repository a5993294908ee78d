//! The management API's routes: which method and path mean what, and the
//! role each needs. Names in paths are checked like names in the config
//! (letters, digits, '-', '_', '.'): nothing else reaches a file path.

use crate::access::Role;
use http::Method;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Login,
    Logout,
    Whoami,
    /// `GET /metrics` (Prometheus), outside the versioned prefix as scrapers expect.
    Metrics,
    /// The last hour of lag and throughput per VPG (the dashboard's chart).
    History,
    Status,
    Vpgs,
    Checkpoints {
        vpg: String,
    },
    AddCheckpoint {
        vpg: String,
    },
    /// A checkpoint across a group's members (`crate::coordination`).
    AddGroupCheckpoint {
        group: String,
    },
    Exports,
    OpenExport {
        vpg: String,
    },
    CloseExport {
        id: u64,
    },
    TestFailoverStart {
        vpg: String,
    },
    TestFailoverStop {
        vpg: String,
    },
    Failover {
        vpg: String,
    },
    Move {
        vpg: String,
    },
    Reverse {
        vpg: String,
    },
    MoveBack {
        vpg: String,
    },
    Verify {
        vpg: String,
    },
    ClearAlert {
        vpg: String,
    },
    Audit,
    AuditVerify,
    SupportSsh,
    Users,
    AddUser,
    DeleteUser {
        name: String,
    },
    UnlockUser {
        name: String,
    },
    Tokens,
    AddToken,
    DeleteToken {
        name: String,
    },
}

#[derive(Debug, PartialEq, Eq)]
pub enum RouteError {
    NotFound,
    /// The path exists; these methods are what it takes.
    MethodNotAllowed(&'static str),
    /// A name in the path that could not be a name.
    BadName(String),
}

pub const PREFIX: &str = "/api/v1/";

pub fn parse(method: &Method, path: &str) -> Result<Route, RouteError> {
    if path == "/metrics" {
        return match *method {
            Method::GET => Ok(Route::Metrics),
            _ => Err(RouteError::MethodNotAllowed("GET")),
        };
    }
    let rest = path.strip_prefix(PREFIX).ok_or(RouteError::NotFound)?;
    let segments: Vec<&str> = rest.split('/').collect();
    let name = |text: &str| -> Result<String, RouteError> {
        match crate::names::is_plain(text) {
            true => Ok(text.to_string()),
            false => Err(RouteError::BadName(text.chars().take(80).collect())),
        }
    };
    let only = |wanted: &Method, allowed: &'static str, route: Route| match method == wanted {
        true => Ok(route),
        false => Err(RouteError::MethodNotAllowed(allowed)),
    };
    let get_or_post = |allowed: &'static str, get: Route, post: Route| match *method {
        Method::GET => Ok(get),
        Method::POST => Ok(post),
        _ => Err(RouteError::MethodNotAllowed(allowed)),
    };
    match segments.as_slice() {
        ["login"] => only(&Method::POST, "POST", Route::Login),
        ["logout"] => only(&Method::POST, "POST", Route::Logout),
        ["whoami"] => only(&Method::GET, "GET", Route::Whoami),
        ["status"] => only(&Method::GET, "GET", Route::Status),
        ["history"] => only(&Method::GET, "GET", Route::History),
        ["vpgs"] => only(&Method::GET, "GET", Route::Vpgs),
        ["audit"] => only(&Method::GET, "GET", Route::Audit),
        ["audit", "verify"] => only(&Method::GET, "GET", Route::AuditVerify),
        ["support-ssh"] => only(&Method::GET, "GET", Route::SupportSsh),
        ["exports"] => only(&Method::GET, "GET", Route::Exports),
        ["exports", id] => {
            let id = id.parse().map_err(|_| RouteError::BadName(id.chars().take(80).collect()))?;
            only(&Method::DELETE, "DELETE", Route::CloseExport { id })
        }
        ["users"] => get_or_post("GET, POST", Route::Users, Route::AddUser),
        ["users", user] => only(&Method::DELETE, "DELETE", Route::DeleteUser { name: name(user)? }),
        ["users", user, "unlock"] => only(&Method::POST, "POST", Route::UnlockUser { name: name(user)? }),
        ["tokens"] => get_or_post("GET, POST", Route::Tokens, Route::AddToken),
        ["tokens", token] => only(&Method::DELETE, "DELETE", Route::DeleteToken { name: name(token)? }),
        ["groups", group, "checkpoints"] => {
            only(&Method::POST, "POST", Route::AddGroupCheckpoint { group: name(group)? })
        }
        ["vpgs", vpg, operation] => {
            let vpg = name(vpg)?;
            match *operation {
                "checkpoints" => {
                    get_or_post("GET, POST", Route::Checkpoints { vpg: vpg.clone() }, Route::AddCheckpoint { vpg })
                }
                "exports" => only(&Method::POST, "POST", Route::OpenExport { vpg }),
                "test-failover" => match *method {
                    Method::POST => Ok(Route::TestFailoverStart { vpg }),
                    Method::DELETE => Ok(Route::TestFailoverStop { vpg }),
                    _ => Err(RouteError::MethodNotAllowed("POST, DELETE")),
                },
                "failover" => only(&Method::POST, "POST", Route::Failover { vpg }),
                "move" => only(&Method::POST, "POST", Route::Move { vpg }),
                "reverse" => only(&Method::POST, "POST", Route::Reverse { vpg }),
                "move-back" => only(&Method::POST, "POST", Route::MoveBack { vpg }),
                "verify" => only(&Method::POST, "POST", Route::Verify { vpg }),
                "clear-alert" => only(&Method::POST, "POST", Route::ClearAlert { vpg }),
                _ => Err(RouteError::NotFound),
            }
        }
        _ => Err(RouteError::NotFound),
    }
}

impl Route {
    /// The role a caller needs; `None` for login, which has no caller yet.
    pub fn needs(&self) -> Option<Role> {
        use Route::*;
        Some(match self {
            Login => return None,
            Logout
            | Whoami
            | Metrics
            | History
            | Status
            | Vpgs
            | Checkpoints { .. }
            | Exports
            | Audit
            | AuditVerify
            | SupportSsh => Role::Viewer,
            AddCheckpoint { .. }
            | AddGroupCheckpoint { .. }
            | OpenExport { .. }
            | CloseExport { .. }
            | TestFailoverStart { .. }
            | TestFailoverStop { .. }
            | Verify { .. } => Role::Operator,
            Failover { .. } | Move { .. } | Reverse { .. } | MoveBack { .. } | ClearAlert { .. } => Role::DrAdmin,
            Users | AddUser | DeleteUser { .. } | UnlockUser { .. } | Tokens | AddToken | DeleteToken { .. } => {
                Role::Admin
            }
        })
    }

    /// How the audit trail names it; `None` for reads, which it does not
    /// record.
    pub fn op(&self) -> Option<&'static str> {
        use Route::*;
        Some(match self {
            Login => "login",
            Logout => "logout",
            AddCheckpoint { .. } => "checkpoint",
            AddGroupCheckpoint { .. } => "group-checkpoint",
            OpenExport { .. } => "export",
            CloseExport { .. } => "export close",
            TestFailoverStart { .. } => "test-failover start",
            TestFailoverStop { .. } => "test-failover stop",
            Failover { .. } => "failover",
            Move { .. } => "move",
            Reverse { .. } => "reverse",
            MoveBack { .. } => "move-back",
            Verify { .. } => "verify",
            ClearAlert { .. } => "clear-alert",
            AddUser => "user add",
            DeleteUser { .. } => "user delete",
            UnlockUser { .. } => "user unlock",
            AddToken => "token add",
            DeleteToken { .. } => "token delete",
            Whoami
            | Metrics
            | History
            | Status
            | Vpgs
            | Checkpoints { .. }
            | Exports
            | Audit
            | AuditVerify
            | SupportSsh
            | Users
            | Tokens => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_methods_and_names() {
        let vpg = || "db".to_string();
        assert_eq!(parse(&Method::POST, "/api/v1/vpgs/db/failover"), Ok(Route::Failover { vpg: vpg() }));
        assert_eq!(
            parse(&Method::POST, "/api/v1/groups/erp/checkpoints"),
            Ok(Route::AddGroupCheckpoint { group: "erp".into() })
        );
        assert!(parse(&Method::GET, "/api/v1/groups/erp/checkpoints").is_err());
        assert!(parse(&Method::POST, "/api/v1/groups/..%2f/checkpoints").is_err());
        assert_eq!(parse(&Method::GET, "/api/v1/vpgs/db/checkpoints"), Ok(Route::Checkpoints { vpg: vpg() }));
        assert_eq!(parse(&Method::DELETE, "/api/v1/vpgs/db/test-failover"), Ok(Route::TestFailoverStop { vpg: vpg() }));
        assert_eq!(parse(&Method::DELETE, "/api/v1/exports/7"), Ok(Route::CloseExport { id: 7 }));
        assert_eq!(parse(&Method::GET, "/api/v1/vpgs/db/failover"), Err(RouteError::MethodNotAllowed("POST")));
        assert_eq!(parse(&Method::GET, "/api/v2/status"), Err(RouteError::NotFound));
        assert_eq!(parse(&Method::GET, "/api/v1/status/"), Err(RouteError::NotFound));
        for bad in ["/api/v1/vpgs/../failover", "/api/v1/vpgs/%2e%2e/failover", "/api/v1/vpgs/.x/failover"] {
            assert!(matches!(parse(&Method::POST, bad), Err(RouteError::BadName(_))), "{bad}");
        }
        assert!(matches!(parse(&Method::DELETE, "/api/v1/exports/x"), Err(RouteError::BadName(_))));
    }

    #[test]
    fn every_change_is_audited_and_reads_need_at_most_admin() {
        let v = || "v".to_string();
        let all = [
            Route::Login,
            Route::Logout,
            Route::Whoami,
            Route::Metrics,
            Route::History,
            Route::Status,
            Route::Vpgs,
            Route::Checkpoints { vpg: v() },
            Route::AddCheckpoint { vpg: v() },
            Route::Exports,
            Route::OpenExport { vpg: v() },
            Route::CloseExport { id: 1 },
            Route::TestFailoverStart { vpg: v() },
            Route::TestFailoverStop { vpg: v() },
            Route::Failover { vpg: v() },
            Route::Move { vpg: v() },
            Route::Reverse { vpg: v() },
            Route::MoveBack { vpg: v() },
            Route::Verify { vpg: v() },
            Route::ClearAlert { vpg: v() },
            Route::Audit,
            Route::AuditVerify,
            Route::SupportSsh,
            Route::Users,
            Route::AddUser,
            Route::DeleteUser { name: v() },
            Route::UnlockUser { name: v() },
            Route::Tokens,
            Route::AddToken,
            Route::DeleteToken { name: v() },
        ];
        for r in &all {
            let listing = matches!(r, Route::Users | Route::Tokens);
            if r.needs() > Some(Role::Viewer) && !listing {
                assert!(r.op().is_some(), "{r:?} changes something and is not audited");
            }
        }
        assert_eq!(Route::Login.needs(), None);
    }
}
