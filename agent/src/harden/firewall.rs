//! Applies the rule set from `rules.rs` to the kernel with the iptables
//! crate, as one transaction per apply:
//!
//! 1. INPUT and FORWARD policies go to DROP first, so a failure at first
//!    boot leaves everything dropped (fail closed);
//! 2. the new rules are built in a staging chain, TIDEMARK-NEW, for every
//!    family; if any rule fails, the staging chains are deleted and the
//!    running TIDEMARK chain is untouched;
//! 3. only then is INPUT pointed at the new chain, every other INPUT rule
//!    removed, the old chain deleted and the new one renamed TIDEMARK.
//!
//! The iptables crate runs the `iptables`/`ip6tables` programs found on
//! PATH, inside the caller's network namespace.

use super::rules::{Family, CHAIN};
use super::HardenError;
use iptables::IPTables;

type Result<T, E = HardenError> = std::result::Result<T, E>;

const STAGING_CHAIN: &str = "TIDEMARK-NEW";
const TABLE: &str = "filter";
pub const DROPPED_CHAINS: [&str; 2] = ["INPUT", "FORWARD"];

/// The crate's errors are not `Send`; keep their text.
fn ipt<T>(result: Result<T, Box<dyn std::error::Error>>, what: impl FnOnce() -> String) -> Result<T> {
    result.map_err(|e| HardenError::Failed(format!("{}: {}", what(), e.to_string().trim())))
}

/// Whether `chain` exists, by `iptables -S CHAIN`. Not the crate's own
/// check nor its policy reader: they run `iptables -L`, which looks up
/// every rule's addresses in DNS (an unreachable resolver held the boot
/// for 30 s); and its numeric mode passes `-n` to `-S`, which iptables
/// refuses.
fn chain_exists(t: &IPTables, chain: &str) -> Result<bool, Box<dyn std::error::Error>> {
    Ok(t.execute(TABLE, &format!("-S {chain}"))?.status.success())
}

/// A built-in chain's policy, from its `-P CHAIN POLICY` line.
fn policy_of(t: &IPTables, chain: &str) -> Result<String, Box<dyn std::error::Error>> {
    let prefix = format!("-P {chain} ");
    t.list(TABLE, chain)?
        .iter()
        .find_map(|l| l.strip_prefix(&prefix).map(|p| p.trim().to_string()))
        .ok_or_else(|| format!("no policy line for {chain}").into())
}

pub struct Firewall {
    families: Vec<(Family, IPTables)>,
}

/// IPv6 is handled when the kernel has it; otherwise there is nothing to filter.
pub fn ipv6_enabled() -> bool {
    std::path::Path::new("/proc/net/if_inet6").exists()
}

impl Firewall {
    pub fn open() -> Result<Firewall> {
        let mut families = vec![(Family::V4, ipt(iptables::new(false), || "running iptables".into())?)];
        if ipv6_enabled() {
            families.push((Family::V6, ipt(iptables::new(true), || "running ip6tables".into())?));
        }
        Ok(Firewall { families })
    }

    pub fn families(&self) -> impl Iterator<Item = Family> + '_ {
        self.families.iter().map(|(f, _)| *f)
    }

    fn tables(&self, family: Family) -> Option<&IPTables> {
        self.families.iter().find(|(f, _)| *f == family).map(|(_, t)| t)
    }

    /// Sets INPUT and FORWARD to drop what no rule accepts. First thing at
    /// boot: whatever fails after this, the appliance stays closed.
    pub fn drop_by_default(&self) -> Result<()> {
        for (family, t) in &self.families {
            for chain in DROPPED_CHAINS {
                ipt(t.set_policy(TABLE, chain, "DROP"), || format!("{family:?}: setting {chain} policy to DROP"))?;
            }
        }
        Ok(())
    }

    /// Replaces the running rule set with `rules_for(family)` as a whole.
    pub fn apply(&self, rules_for: impl Fn(Family) -> Vec<String>) -> Result<()> {
        self.drop_by_default()?;
        let mut staged = Vec::new();
        for (family, t) in &self.families {
            let result = stage(t, &rules_for(*family));
            staged.push(t);
            if let Err(e) = result {
                for t in &staged {
                    discard_staging(t);
                }
                return Err(e.at(format!("{family:?}: building the new rule set; the running rules are unchanged")));
            }
        }
        for (family, t) in &self.families {
            swap_in(t).map_err(|e| e.at(format!("{family:?}: switching to the new rule set")))?;
        }
        Ok(())
    }

    pub fn policy(&self, family: Family, chain: &str) -> Result<String> {
        let t = self.tables(family).ok_or_else(|| HardenError::Failed(format!("{family:?} is not enabled")))?;
        ipt(policy_of(t, chain), || format!("{family:?}: reading the {chain} policy"))
    }

    /// A chain's rules as `iptables -S CHAIN` prints them, or None if absent.
    pub fn rules(&self, family: Family, chain: &str) -> Result<Option<Vec<String>>> {
        let t = self.tables(family).ok_or_else(|| HardenError::Failed(format!("{family:?} is not enabled")))?;
        if !ipt(chain_exists(t, chain), || format!("{family:?}: looking for chain {chain}"))? {
            return Ok(None);
        }
        let lines = ipt(t.list(TABLE, chain), || format!("{family:?}: listing chain {chain}"))?;
        let prefix = format!("-A {chain} ");
        Ok(Some(lines.iter().filter_map(|l| l.strip_prefix(&prefix)).map(String::from).collect()))
    }

    /// Adds one rule at the end of the running chain (the support session's).
    pub fn append(&self, family: Family, rule: &str) -> Result<()> {
        let t = self
            .tables(family)
            .ok_or_else(|| HardenError::Failed(format!("{family:?} is not enabled on this kernel")))?;
        if !ipt(chain_exists(t, CHAIN), || format!("{family:?}: looking for chain {CHAIN}"))? {
            return Err(HardenError::Failed(format!(
                "the firewall is not set up (no {CHAIN} chain); run `tidemark harden` first"
            )));
        }
        ipt(t.append_unique(TABLE, CHAIN, rule), || format!("{family:?}: adding rule {rule:?}"))
    }

    /// Removes one rule from the running chain; absent is not an error.
    pub fn remove(&self, family: Family, rule: &str) -> Result<()> {
        let Some(t) = self.tables(family) else { return Ok(()) };
        if !ipt(chain_exists(t, CHAIN), || format!("{family:?}: looking for chain {CHAIN}"))? {
            return Ok(());
        }
        if ipt(t.exists(TABLE, CHAIN, rule), || format!("{family:?}: looking for rule {rule:?}"))? {
            ipt(t.delete_all(TABLE, CHAIN, rule), || format!("{family:?}: removing rule {rule:?}"))?;
        }
        Ok(())
    }
}

fn stage(t: &IPTables, rules: &[String]) -> Result<()> {
    discard_staging(t);
    ipt(t.new_chain(TABLE, STAGING_CHAIN), || format!("creating chain {STAGING_CHAIN}"))?;
    for rule in rules {
        ipt(t.append(TABLE, STAGING_CHAIN, rule), || format!("adding rule {rule:?}"))?;
    }
    Ok(())
}

fn discard_staging(t: &IPTables) {
    if matches!(chain_exists(t, STAGING_CHAIN), Ok(true)) {
        let _ = t.flush_chain(TABLE, STAGING_CHAIN);
        let _ = t.delete_chain(TABLE, STAGING_CHAIN);
    }
}

fn swap_in(t: &IPTables) -> Result<()> {
    let jump_new = format!("-j {STAGING_CHAIN}");
    ipt(t.insert(TABLE, "INPUT", &jump_new, 1), || "pointing INPUT at the new chain".into())?;
    // INPUT keeps only the jump: anything else is not ours.
    let input = ipt(t.list(TABLE, "INPUT"), || "listing INPUT".into())?;
    for rule in input.iter().filter_map(|l| l.strip_prefix("-A INPUT ")) {
        if rule != jump_new {
            ipt(t.delete(TABLE, "INPUT", rule), || format!("removing INPUT rule {rule:?}"))?;
        }
    }
    if ipt(chain_exists(t, CHAIN), || format!("looking for chain {CHAIN}"))? {
        ipt(t.flush_chain(TABLE, CHAIN), || format!("flushing the old chain {CHAIN}"))?;
        ipt(t.delete_chain(TABLE, CHAIN), || format!("deleting the old chain {CHAIN}"))?;
    }
    ipt(t.rename_chain(TABLE, STAGING_CHAIN, CHAIN), || format!("renaming {STAGING_CHAIN} to {CHAIN}"))?;
    ipt(t.flush_chain(TABLE, "FORWARD"), || "flushing FORWARD".into())?;
    Ok(())
}
