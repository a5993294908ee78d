//! Locking the appliance down: firewall, kernel settings, console-only root
//! logins, the support SSH window, and the audit that checks all of it on
//! the running system. `tidemark harden` runs before any network is up;
//! if it fails the appliance stays unreachable (fail closed).

pub mod audit;
mod error;
pub mod firewall;
pub mod ports;
pub mod procfs;
pub mod rules;
pub mod securetty;
pub mod sockets;
pub mod ssh_key;
pub mod support_ssh;
pub mod sysctl;

pub use error::HardenError;

use crate::config::Config;
use crate::io_failure::Doing;
use ipnet::IpNet;
use rules::{Allow, Family};
use std::path::Path;

type Result<T, E = HardenError> = std::result::Result<T, E>;

/// What the config and the shipped files say the system should look like.
pub struct Plan {
    pub allows: Vec<Allow>,
    pub settings: Vec<sysctl::Setting>,
    management: Vec<IpNet>,
    peers: Vec<IpNet>,
    storage_interface: Option<String>,
}

impl Plan {
    /// Reads and checks the rule and sysctl files named in the config (or
    /// the built-in copies). Nothing is applied here.
    pub fn load(cfg: &Config) -> Result<Plan> {
        let appliance = &cfg.system().appliance;
        let allows = match &appliance.firewall_rules {
            Some(path) => rules::parse(&read(path, "firewall rules")?, &path.display().to_string())?,
            None => rules::parse(rules::BUILTIN_RULES, "built-in firewall/tidemark.rules")?,
        };
        // The iSCSI port is opened only where iSCSI is configured.
        let iscsi = cfg.iscsi().is_some();
        let allows = allows.into_iter().filter(|a| iscsi || a.port != crate::config::ISCSI_PORT).collect();
        let settings = match &appliance.sysctl_file {
            Some(path) => sysctl::parse(&read(path, "sysctl settings")?, &path.display().to_string())?,
            None => sysctl::parse(sysctl::BUILTIN_SYSCTL, "built-in sysctl/90-tidemark.conf")?,
        };
        Ok(Plan {
            allows,
            settings,
            management: appliance.management_networks.clone(),
            peers: cfg.peer_networks(),
            storage_interface: appliance.storage_interface.clone(),
        })
    }

    /// The TIDEMARK chain this plan wants, with the support session's
    /// network if one is open.
    pub fn chain_rules(&self, family: Family, support: Option<IpNet>) -> Vec<String> {
        let sources = rules::Sources {
            management: &self.management,
            peers: &self.peers,
            storage_interface: self.storage_interface.as_deref(),
            support,
        };
        rules::chain_rules(&self.allows, &sources, family)
    }
}

pub fn sysctl_roots(cfg: &Config) -> sysctl::Roots<'_> {
    let appliance = &cfg.system().appliance;
    sysctl::Roots { namespace: &appliance.sysctl_root, global: &appliance.global_sysctl_root }
}

fn read(path: &Path, what: &str) -> Result<String> {
    Ok(std::fs::read_to_string(path).doing(|| format!("reading {what} from {}", path.display()))?)
}

/// Applies the firewall, then the kernel settings, then securetty. The
/// firewall's policies go to DROP before anything is read, so a broken rule
/// file at first boot leaves the appliance unreachable, not open.
pub fn harden(cfg: &Config) -> Result<()> {
    let appliance = &cfg.system().appliance;
    let firewall = firewall::Firewall::open()?;
    firewall.drop_by_default()?;
    let plan = Plan::load(cfg)?;
    let support = support_ssh::open_session(&appliance.state_dir)?.map(|s| s.network);
    firewall.apply(|family| plan.chain_rules(family, support))?;
    let families: Vec<String> = firewall.families().map(|f| format!("{f:?}")).collect();
    tracing::info!(
        "harden: firewall applied ({}; {} ports from the table{})",
        families.join("+"),
        plan.allows.len(),
        if support.is_some() { ", support SSH session kept open" } else { "" }
    );
    if support.is_none() {
        support_ssh::clear_stale(cfg)?;
    }
    let done = sysctl::apply(&plan.settings, &sysctl_roots(cfg))?;
    let absent: Vec<&str> =
        done.iter().filter(|(_, o)| *o == sysctl::Outcome::Absent).map(|(k, _)| k.as_str()).collect();
    tracing::info!(
        "harden: {} kernel settings applied and read back{}",
        done.len() - absent.len(),
        if absent.is_empty() {
            String::new()
        } else {
            format!(" ({} absent on this kernel: {})", absent.len(), absent.join(", "))
        }
    );
    securetty::write(&appliance.securetty)?;
    tracing::info!(
        "harden: {} allows root on {} only",
        appliance.securetty.display(),
        securetty::CONSOLE_LINES.join(", ")
    );
    Ok(())
}
