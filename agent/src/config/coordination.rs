//! `[coordination]` (protected side): checkpoints taken at one instant
//! across VPGs on several appliances (`crate::coordination`). An appliance
//! is a member when it listens (4009) for the coordinators it names; it is
//! a coordinator when it lists `[[coordination.group]]`s.

use super::ConfigError;
use super::{parse_fingerprint, validate_name};
use serde::Deserialize;
use std::net::SocketAddr;
use std::time::Duration;

type Result<T, E = ConfigError> = std::result::Result<T, E>;

pub const COORDINATION_PORT_DEFAULT: u16 = 4009;
/// A member lets writes go on, with no checkpoint, after this long held.
pub const HOLD_MAX_DEFAULT: Duration = Duration::from_millis(100);
/// Writes never wait longer than this for a coordinator, whatever is set.
pub const HOLD_MAX_LIMIT: Duration = Duration::from_secs(2);
pub const GROUP_INTERVAL_MIN: Duration = Duration::from_millis(200);
/// Groups and their members: each member costs one TLS connection.
pub const GROUPS_MAX: usize = 64;
pub const GROUP_MEMBERS_MAX: usize = 64;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinationConfig {
    /// Where coordinators reach this appliance's VPGs (the management
    /// interface, port 4009). None: it is no member of another's group.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// The certificate fingerprints (`sha256:<hex>`) of the appliances
    /// allowed to hold this appliance's writes.
    #[serde(default)]
    pub coordinators: Vec<String>,
    /// The longest writes are held for one checkpoint; past it they go on
    /// and that checkpoint is not taken.
    #[serde(default = "default_hold_max", with = "super::humantime_serde_compat")]
    pub hold_max: Duration,
    /// The groups this appliance coordinates.
    #[serde(default, rename = "group")]
    pub groups: Vec<GroupConfig>,
}

/// One group: its checkpoints are taken at one instant on every member.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    pub name: String,
    /// How often a checkpoint is taken across the group ("30s"); none:
    /// only on demand (`tidemark group-checkpoint`).
    #[serde(default, deserialize_with = "super::deserialize_optional_duration")]
    pub interval: Option<Duration>,
    #[serde(rename = "member")]
    pub members: Vec<MemberConfig>,
}

/// A VPG of the group: on this appliance (no address), or on the member
/// appliance at `address` whose certificate is `fingerprint`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberConfig {
    pub vpg: String,
    /// `host:port` of the member's `[coordination] listen`.
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub fingerprint: Option<String>,
}

/// `host:port` or `[v6 address]:port` into the host and the port.
pub fn split_address(address: &str) -> Result<(&str, u16)> {
    let (host, port) =
        address.rsplit_once(':').ok_or_else(|| ConfigError::Invalid(format!("{address:?} must be host:port")))?;
    let port: u16 = port.parse().map_err(|_| ConfigError::Invalid(format!("{port:?} in {address:?} is not a port")))?;
    let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6,
        None if host.contains(':') => {
            return Err(ConfigError::Invalid(format!(
                "{address:?}: write an IPv6 address in brackets, as [fe80::1]:4009"
            )))
        }
        None => host,
    };
    if host.is_empty() || port == 0 {
        return Err(ConfigError::Invalid(format!("{address:?} must be host:port")));
    }
    Ok((host, port))
}

fn default_hold_max() -> Duration {
    HOLD_MAX_DEFAULT
}

impl CoordinationConfig {
    /// `local_vpgs`: the VPGs this appliance protects.
    pub fn validate(&self, local_vpgs: &[&str]) -> Result<()> {
        if self.hold_max.is_zero() || self.hold_max > HOLD_MAX_LIMIT {
            return Err(ConfigError::Invalid(format!(
                "coordination.hold_max: {:?} must be above 0 and at most {HOLD_MAX_LIMIT:?}",
                self.hold_max
            )));
        }
        for (i, f) in self.coordinators.iter().enumerate() {
            parse_fingerprint(f).map_err(|e| e.at(format!("coordination.coordinators[{i}]")))?;
        }
        if self.listen.is_some() && self.coordinators.is_empty() {
            return Err(ConfigError::Invalid(
                "coordination.listen: no coordinators listed; name the fingerprints allowed to hold writes here"
                    .to_string(),
            ));
        }
        if self.listen.is_none() && !self.coordinators.is_empty() {
            return Err(ConfigError::Invalid(
                "coordination.coordinators: listed, but coordination.listen is not set".to_string(),
            ));
        }
        if self.groups.len() > GROUPS_MAX {
            return Err(ConfigError::Invalid(format!(
                "coordination.group: {} groups, over the {GROUPS_MAX} one appliance coordinates",
                self.groups.len()
            )));
        }
        let mut names = std::collections::HashSet::new();
        for (i, g) in self.groups.iter().enumerate() {
            validate_name(&format!("coordination.group[{i}].name"), &g.name)?;
            if !names.insert(&g.name) {
                return Err(ConfigError::Invalid(format!("coordination.group[{i}].name: {:?} is used twice", g.name)));
            }
            g.validate(i, local_vpgs, self.hold_max)?;
        }
        Ok(())
    }
}

impl GroupConfig {
    fn validate(&self, i: usize, local_vpgs: &[&str], hold_max: Duration) -> Result<()> {
        let at = format!("coordination.group[{i}]");
        if let Some(every) = self.interval {
            if every < GROUP_INTERVAL_MIN {
                return Err(ConfigError::Invalid(format!(
                    "{at}.interval: {every:?} is below the minimum of {GROUP_INTERVAL_MIN:?}"
                )));
            }
            if every < 2 * hold_max {
                return Err(ConfigError::Invalid(format!(
                    "{at}.interval: {every:?} is below twice coordination.hold_max ({hold_max:?})"
                )));
            }
        }
        if self.members.len() < 2 {
            return Err(ConfigError::Invalid(format!("{at}.member: a group needs at least 2 members")));
        }
        if self.members.len() > GROUP_MEMBERS_MAX {
            return Err(ConfigError::Invalid(format!(
                "{at}.member: {} members, over the limit of {GROUP_MEMBERS_MAX}",
                self.members.len()
            )));
        }
        let mut seen = std::collections::HashSet::new();
        for (j, m) in self.members.iter().enumerate() {
            let at = format!("{at}.member[{j}]");
            validate_name(&format!("{at}.vpg"), &m.vpg)?;
            match (&m.address, &m.fingerprint) {
                (None, None) => {
                    if !local_vpgs.contains(&m.vpg.as_str()) {
                        return Err(ConfigError::Invalid(format!(
                            "{at}: no address, so VPG {:?} must be one of this appliance's",
                            m.vpg
                        )));
                    }
                }
                (Some(address), Some(fingerprint)) => {
                    split_address(address).map_err(|e| e.at(format!("{at}.address")))?;
                    parse_fingerprint(fingerprint).map_err(|e| e.at(format!("{at}.fingerprint")))?;
                }
                (Some(_), None) => {
                    return Err(ConfigError::Invalid(format!(
                        "{at}.fingerprint: required with an address (the member's certificate)"
                    )))
                }
                (None, Some(_)) => {
                    return Err(ConfigError::Invalid(format!("{at}.address: required with a fingerprint")))
                }
            }
            if !seen.insert((m.address.clone(), m.vpg.clone())) {
                return Err(ConfigError::Invalid(format!(
                    "{at}: VPG {:?} at {:?} is listed twice",
                    m.vpg,
                    m.address.as_deref().unwrap_or("this appliance")
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

    fn parse(text: &str) -> Result<CoordinationConfig> {
        let cfg: CoordinationConfig = toml::from_str(text).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        cfg.validate(&["db", "web"])?;
        Ok(cfg)
    }

    #[test]
    fn a_group_of_a_local_and_a_remote_vpg() {
        let cfg = parse(&format!(
            "[[group]]\nname = \"erp\"\ninterval = \"30s\"\n[[group.member]]\nvpg = \"db\"\n\
             [[group.member]]\nvpg = \"app\"\naddress = \"10.0.0.2:4009\"\nfingerprint = \"{FP}\"\n"
        ))
        .unwrap();
        assert_eq!(cfg.hold_max, HOLD_MAX_DEFAULT);
        assert_eq!(cfg.groups[0].interval, Some(Duration::from_secs(30)));
        assert_eq!(cfg.groups[0].members.len(), 2);
        let member =
            parse(&format!("listen = \"10.0.0.2:4009\"\ncoordinators = [\"{FP}\"]\nhold_max = \"50ms\"\n")).unwrap();
        assert_eq!(member.hold_max, Duration::from_millis(50));
    }

    #[test]
    fn mistakes_are_named() {
        let local = "[[group.member]]\nvpg = \"db\"\n";
        let remote = format!("[[group.member]]\nvpg = \"app\"\naddress = \"h:4009\"\nfingerprint = \"{FP}\"\n");
        let cases = [
            (format!("[[group]]\nname = \"g\"\n{local}"), "at least 2 members"),
            (format!("[[group]]\nname = \"g\"\n{local}[[group.member]]\nvpg = \"nosuch\"\n"), "must be one of this"),
            (
                format!("[[group]]\nname = \"g\"\n{local}[[group.member]]\nvpg = \"app\"\naddress = \"h:1\"\n"),
                "fingerprint",
            ),
            (format!("[[group]]\nname = \"g\"\n{local}{local}"), "listed twice"),
            (format!("[[group]]\nname = \"g\"\ninterval = \"10ms\"\n{local}{remote}"), "below the minimum"),
            (format!("hold_max = \"200ms\"\n[[group]]\nname = \"g\"\ninterval = \"300ms\"\n{local}{remote}"), "twice"),
            (format!("[[group]]\nname = \"g\"\n{local}{}", remote.replace("h:4009", "fe80::1")), "[fe80::1]:4009"),
            (format!("[[group]]\nname = \"g\"\n{local}{}", remote.replace("h:4009", "h:abc")), "not a port"),
            (format!("[[group]]\nname = \"../g\"\n{local}{remote}"), "must be 1-64"),
            (format!("hold_max = \"5s\"\n[[group]]\nname = \"g\"\n{local}{remote}"), "at most"),
            ("listen = \"10.0.0.2:4009\"\n".to_string(), "no coordinators"),
            (format!("coordinators = [\"{FP}\"]\n"), "listen is not set"),
            ("listen = \"10.0.0.2:4009\"\ncoordinators = [\"sha256:12\"]\n".to_string(), "coordinators[0]"),
        ];
        for (text, expected) in cases {
            let e = crate::error_chain::Chain(&parse(&text).unwrap_err()).to_string();
            assert!(e.contains(expected), "{text:?}: {e:?} does not say {expected:?}");
        }
    }
}
