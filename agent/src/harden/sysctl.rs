//! Kernel settings from `sysctl/90-tidemark.conf`: parse (sysctl.d syntax),
//! write each key under /proc/sys, read it back, and check it for the audit.
//! Keys that belong to the network namespace and kernel-wide keys have
//! separate roots, so a test in a namespace never changes the host kernel.

use super::HardenError;
use crate::io_failure::Doing;
use std::path::{Path, PathBuf};

type Result<T, E = HardenError> = std::result::Result<T, E>;

pub const BUILTIN_SYSCTL: &str = include_str!("../../../sysctl/90-tidemark.conf");

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub key: String,
    pub value: String,
    /// A '-' line: kernels without the feature do not have the key.
    pub optional: bool,
}

pub struct Roots<'a> {
    pub namespace: &'a Path,
    pub global: &'a Path,
}

/// Parses sysctl.d syntax: `key = value`, `#`/`;` comments, `-key` optional.
pub fn parse(text: &str, origin: &str) -> Result<Vec<Setting>> {
    let mut settings = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let (optional, line) = match line.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, line),
        };
        let Some((key, value)) = line.split_once('=') else {
            return Err(HardenError::Invalid(format!("{origin} line {}: expected `key = value`, got {raw:?}", i + 1)));
        };
        let key = key.trim();
        let value = value.trim();
        let key_ok = !key.is_empty()
            && key.split('.').all(|part| !part.is_empty() && part != "..")
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-');
        if !key_ok || value.is_empty() {
            return Err(HardenError::Invalid(format!(
                "{origin} line {}: {key:?} = {value:?} is not a sysctl setting",
                i + 1
            )));
        }
        settings.push(Setting { key: key.to_string(), value: value.to_string(), optional });
    }
    Ok(settings)
}

/// Kernel-wide keys: not isolated by network namespaces.
pub fn is_global(key: &str) -> bool {
    !key.starts_with("net.") || key.starts_with("net.core.bpf_")
}

pub fn path_of(key: &str, roots: &Roots) -> PathBuf {
    let root = if is_global(key) { roots.global } else { roots.namespace };
    root.join(key.replace('.', "/"))
}

/// Values like `4 4 1 7` are printed with tabs; compare words.
fn same_value(a: &str, b: &str) -> bool {
    a.split_whitespace().eq(b.split_whitespace())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Set,
    /// Optional key this kernel does not have.
    Absent,
}

/// Writes every setting and reads each back; stops at the first failure.
pub fn apply(settings: &[Setting], roots: &Roots) -> Result<Vec<(String, Outcome)>> {
    let mut done = Vec::new();
    for s in settings {
        let path = path_of(&s.key, roots);
        if !path.exists() {
            if s.optional {
                done.push((s.key.clone(), Outcome::Absent));
                continue;
            }
            return Err(HardenError::Failed(format!(
                "sysctl {}: {} does not exist on this kernel",
                s.key,
                path.display()
            )));
        }
        std::fs::write(&path, format!("{}\n", s.value))
            .doing(|| format!("sysctl {}: writing {:?} to {}", s.key, s.value, path.display()))?;
        let now = read(&path).map_err(|e| e.at(format!("sysctl {}: reading it back", s.key)))?;
        if !same_value(&now, &s.value) {
            return Err(HardenError::Failed(format!(
                "sysctl {}: wrote {:?} but it reads back {:?}",
                s.key, s.value, now
            )));
        }
        done.push((s.key.clone(), Outcome::Set));
    }
    Ok(done)
}

fn read(path: &Path) -> Result<String> {
    Ok(std::fs::read_to_string(path).doing(|| format!("reading {}", path.display()))?.trim().to_string())
}

#[derive(Debug, Clone)]
pub struct Check {
    pub key: String,
    pub expected: String,
    /// None when the key is absent.
    pub actual: Option<String>,
    pub optional: bool,
}

impl Check {
    pub fn passes(&self) -> bool {
        match &self.actual {
            Some(actual) => same_value(actual, &self.expected),
            None => self.optional,
        }
    }
}

/// Reads every setting's current value, for the audit.
pub fn check(settings: &[Setting], roots: &Roots) -> Vec<Check> {
    settings
        .iter()
        .map(|s| Check {
            key: s.key.clone(),
            expected: s.value.clone(),
            actual: read(&path_of(&s.key, roots)).ok(),
            optional: s.optional,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_file_parses_and_covers_the_design() {
        let settings = parse(BUILTIN_SYSCTL, "builtin").unwrap();
        for key in [
            "net.ipv4.conf.all.accept_source_route",
            "net.ipv4.conf.all.accept_redirects",
            "net.ipv4.conf.all.send_redirects",
            "net.ipv4.conf.all.rp_filter",
            "net.ipv4.tcp_syncookies",
            "net.ipv4.ip_forward",
            "net.ipv4.conf.all.log_martians",
            "kernel.kptr_restrict",
            "kernel.dmesg_restrict",
            "fs.suid_dumpable",
        ] {
            assert!(settings.iter().any(|s| s.key == key && !s.optional), "{key} missing");
        }
    }

    #[test]
    fn apply_writes_reads_back_and_check_sees_it() {
        let ns = tempfile::tempdir().unwrap();
        let global = tempfile::tempdir().unwrap();
        let roots = Roots { namespace: ns.path(), global: global.path() };
        let settings =
            parse("net.ipv4.tcp_syncookies = 1\nfs.suid_dumpable = 0\n-kernel.yama.ptrace_scope = 2", "t").unwrap();
        for (root, key) in [(ns.path(), "net/ipv4/tcp_syncookies"), (global.path(), "fs/suid_dumpable")] {
            std::fs::create_dir_all(root.join(key).parent().unwrap()).unwrap();
            std::fs::write(root.join(key), "7\n").unwrap();
        }
        let done = apply(&settings, &roots).unwrap();
        assert_eq!(done[2], ("kernel.yama.ptrace_scope".to_string(), Outcome::Absent));
        assert_eq!(std::fs::read_to_string(global.path().join("fs/suid_dumpable")).unwrap(), "0\n");
        assert!(check(&settings, &roots).iter().all(Check::passes));
        std::fs::write(ns.path().join("net/ipv4/tcp_syncookies"), "0\n").unwrap();
        let failed: Vec<_> = check(&settings, &roots).into_iter().filter(|c| !c.passes()).collect();
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].key, "net.ipv4.tcp_syncookies");
    }

    #[test]
    fn missing_required_key_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let roots = Roots { namespace: dir.path(), global: dir.path() };
        let err = apply(&parse("net.ipv4.nothing = 1", "t").unwrap(), &roots).unwrap_err().to_string();
        assert!(err.contains("does not exist"), "{err}");
    }

    #[test]
    fn malformed_lines_are_refused() {
        assert!(parse("net.ipv4.x", "t").is_err());
        assert!(parse("net..x = 1", "t").is_err());
        assert!(parse("net.ipv4.x = ", "t").is_err());
        assert!(parse("../../etc/passwd = 1", "t").is_err());
    }
}
