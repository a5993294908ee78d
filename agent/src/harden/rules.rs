//! The firewall rule set as data: parsing `firewall/tidemark.rules` and
//! turning it, with the config's networks, into the exact rule lines of the
//! TIDEMARK chain. Pure, so it is tested byte by byte; the rule lines are in
//! the canonical form `iptables -S` prints, so the audit can compare the
//! running chain with what it should be, line for line.

use super::ports::{self, Source};
use super::HardenError;
use ipnet::IpNet;

type Result<T, E = HardenError> = std::result::Result<T, E>;

/// The rule file shipped in `firewall/`, used unless the config names another.
pub const BUILTIN_RULES: &str = include_str!("../../../firewall/tidemark.rules");

/// The chain that holds the rules; INPUT holds only a jump to it.
pub const CHAIN: &str = "TIDEMARK";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allow {
    pub port: u16,
    pub source: Source,
}

/// Parses the rule file. Every line is checked before anything is applied.
pub fn parse(text: &str, origin: &str) -> Result<Vec<Allow>> {
    let mut allows = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let at = format!("{origin} line {}", i + 1);
        let words: Vec<&str> = line.split_whitespace().collect();
        let [verb, proto, port, from, source] = words[..] else {
            return Err(HardenError::Invalid(format!("{at}: expected `allow tcp <port> from <source>`, got {line:?}")));
        };
        if verb != "allow" || from != "from" {
            return Err(HardenError::Invalid(format!("{at}: expected `allow tcp <port> from <source>`, got {line:?}")));
        }
        if proto != "tcp" {
            return Err(HardenError::Invalid(format!(
                "{at}: protocol {proto:?} is not allowed; the port table is TCP only"
            )));
        }
        let port: u16 =
            port.parse().map_err(|_| HardenError::Invalid(format!("{at}: {port:?} is not a port number")))?;
        let Some(entry) = ports::entry(port) else {
            return Err(HardenError::Invalid(format!("{at}: port {port} is not in the design's port table")));
        };
        let Some(source) = Source::parse(source) else {
            return Err(HardenError::Invalid(format!(
                "{at}: unknown source {source:?}; expected management, peers, storage or support"
            )));
        };
        if source != entry.source {
            return Err(HardenError::Invalid(format!(
                "{at}: port {port} ({}) may only be opened to {:?} sources",
                entry.what, entry.source
            )));
        }
        if allows.iter().any(|a: &Allow| a.port == port) {
            return Err(HardenError::Invalid(format!("{at}: port {port} is listed twice")));
        }
        allows.push(Allow { port, source });
    }
    Ok(allows)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// What each source means on this appliance, from the config (and the open
/// support session, if any).
pub struct Sources<'a> {
    pub management: &'a [IpNet],
    pub peers: &'a [IpNet],
    pub storage_interface: Option<&'a str>,
    pub support: Option<IpNet>,
}

/// The TIDEMARK chain's rules for one family, as `iptables -S` prints them
/// without the leading `-A TIDEMARK `.
pub fn chain_rules(allows: &[Allow], sources: &Sources, family: Family) -> Vec<String> {
    let mut rules = vec![
        "-i lo -j ACCEPT".to_string(),
        "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT".to_string(),
        "-m conntrack --ctstate INVALID -j DROP".to_string(),
    ];
    if family == Family::V6 {
        // Without neighbour discovery IPv6 cannot reach the link at all.
        for icmp_type in [135, 136] {
            rules.push(format!("-p ipv6-icmp -m icmp6 --icmpv6-type {icmp_type} -j ACCEPT"));
        }
    }
    let in_family = |net: &&IpNet| matches!((net, family), (IpNet::V4(_), Family::V4) | (IpNet::V6(_), Family::V6));
    for allow in allows {
        let nets: Vec<IpNet> = match allow.source {
            Source::Management => sources.management.iter().filter(in_family).copied().collect(),
            Source::Peers => sources.peers.iter().filter(in_family).copied().collect(),
            Source::Support => sources.support.iter().filter(in_family).copied().collect(),
            Source::Storage => {
                if let Some(iface) = sources.storage_interface {
                    rules.push(format!("-i {iface} -p tcp -m tcp --dport {} -j ACCEPT", allow.port));
                }
                continue;
            }
        };
        for net in nets {
            rules.push(format!("-s {net} -p tcp -m tcp --dport {} -j ACCEPT", allow.port));
        }
    }
    rules
}

/// The one support rule, as `chain_rules` would place it.
pub fn support_rule(net: IpNet, port: u16) -> String {
    format!("-s {net} -p tcp -m tcp --dport {port} -j ACCEPT")
}

pub fn family_of(net: &IpNet) -> Family {
    match net {
        IpNet::V4(_) => Family::V4,
        IpNet::V6(_) => Family::V6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn builtin_rules_parse() {
        let allows = parse(BUILTIN_RULES, "builtin").unwrap();
        assert_eq!(allows.len(), ports::PORT_TABLE.len());
    }

    #[test]
    fn rules_follow_sources_and_family() {
        let allows = parse(BUILTIN_RULES, "builtin").unwrap();
        let management = nets(&["10.0.0.0/24", "fd00::/64"]);
        let peers = nets(&["192.0.2.7/32"]);
        let sources =
            Sources { management: &management, peers: &peers, storage_interface: Some("eth1"), support: None };
        let v4 = chain_rules(&allows, &sources, Family::V4);
        assert!(v4.contains(&"-s 10.0.0.0/24 -p tcp -m tcp --dport 4005 -j ACCEPT".to_string()));
        assert!(v4.contains(&"-s 192.0.2.7/32 -p tcp -m tcp --dport 4008 -j ACCEPT".to_string()));
        assert!(v4.contains(&"-i eth1 -p tcp -m tcp --dport 10809 -j ACCEPT".to_string()));
        assert!(!v4.iter().any(|r| r.contains("--dport 22 ")), "no support session, no port 22");
        assert!(!v4.iter().any(|r| r.contains("fd00")));
        let v6 = chain_rules(&allows, &sources, Family::V6);
        assert!(v6.contains(&"-s fd00::/64 -p tcp -m tcp --dport 4006 -j ACCEPT".to_string()));
        assert!(!v6.iter().any(|r| r.contains("4007")), "no IPv6 peers");
    }

    #[test]
    fn support_session_opens_22_for_its_network_only() {
        let allows = parse(BUILTIN_RULES, "builtin").unwrap();
        let support: IpNet = "10.9.0.0/16".parse().unwrap();
        let sources = Sources { management: &[], peers: &[], storage_interface: None, support: Some(support) };
        let v4 = chain_rules(&allows, &sources, Family::V4);
        assert_eq!(v4.last().unwrap(), &support_rule(support, 22));
    }

    #[test]
    fn bad_rule_files_are_refused_with_the_line() {
        for (text, needle) in [
            ("allow tcp 8080 from management", "not in the design's port table"),
            ("allow udp 4005 from management", "TCP only"),
            ("allow tcp 4005 from everyone", "unknown source"),
            ("allow tcp 4007 from management", "may only be opened"),
            ("allow tcp 4005", "expected"),
            ("deny tcp 4005 from management", "expected"),
            ("allow tcp 4005 from management\nallow tcp 4005 from management", "line 2: port 4005 is listed twice"),
        ] {
            let err = parse(text, "f").unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }
}
