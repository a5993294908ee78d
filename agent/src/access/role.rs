//! The four roles, each allowed everything the ones below it are:
//! `viewer` reads; `operator` adds checkpoints, exports and test failovers;
//! `dr-admin` adds failover, move, reverse and switch-back; `admin` adds
//! users, tokens and the appliance's settings.

use super::AccessError;
use serde::{Deserialize, Serialize};

type Result<T, E = AccessError> = std::result::Result<T, E>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Viewer,
    Operator,
    DrAdmin,
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Operator, Role::DrAdmin, Role::Admin];

    pub fn name(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::DrAdmin => "dr-admin",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Result<Role> {
        match Role::ALL.into_iter().find(|r| r.name() == text) {
            Some(role) => Ok(role),
            None => Err(AccessError::Refused(format!("{text:?} is not a role (viewer, operator, dr-admin, admin)"))),
        }
    }

    /// Whether this role may do what needs `needed`.
    pub fn allows(self, needed: Role) -> bool {
        self >= needed
    }

    /// Roles that can fail over or change who may: a password alone is
    /// not enough for them.
    pub fn needs_totp(self) -> bool {
        self >= Role::DrAdmin
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_and_named_as_parsed() {
        for r in Role::ALL {
            assert_eq!(Role::parse(r.name()).unwrap(), r);
            assert_eq!(serde_json::to_string(&r).unwrap(), format!("\"{}\"", r.name()));
        }
        assert!(Role::Admin.allows(Role::DrAdmin) && Role::DrAdmin.allows(Role::Operator));
        assert!(!Role::Viewer.allows(Role::Operator) && !Role::Operator.allows(Role::DrAdmin));
        assert!(!Role::DrAdmin.allows(Role::Admin));
        assert!(Role::parse("root").is_err() && Role::parse("Admin").is_err());
        assert!(Role::DrAdmin.needs_totp() && !Role::Operator.needs_totp());
    }
}
