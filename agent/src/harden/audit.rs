//! `tidemark audit`: checks every hardening item on the running system and
//! reports PASS/FAIL per item. It only reads; it changes nothing. The
//! report goes to the console, to `--json` consumers and into the
//! diagnostics bundle.

use super::firewall::{Firewall, DROPPED_CHAINS};
use super::rules::{Family, CHAIN};
use super::{ports, procfs, securetty, sockets, support_ssh, sysctl, Plan};
use crate::config::Config;
use crate::iscsi::{self, kernel_nbd, lio};
use serde::Serialize;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::HardenError;

type Result<T, E = HardenError> = std::result::Result<T, E>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Verdict {
    Pass,
    Fail,
    /// Not applicable here (a key this kernel lacks, a writable dev root).
    Skip,
}

#[derive(Debug, Clone, Serialize)]
pub struct Item {
    pub item: String,
    pub verdict: Verdict,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub items: Vec<Item>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.items.iter().all(|i| i.verdict != Verdict::Fail)
    }

    pub fn failures(&self) -> usize {
        self.items.iter().filter(|i| i.verdict == Verdict::Fail).count()
    }

    pub fn render(&self) -> String {
        let width = self.items.iter().map(|i| i.item.len()).max().unwrap_or(4).max(4);
        let mut out = format!("{:<6} {:<width$} DETAIL\n", "RESULT", "ITEM");
        for i in &self.items {
            let verdict = match i.verdict {
                Verdict::Pass => "PASS",
                Verdict::Fail => "FAIL",
                Verdict::Skip => "SKIP",
            };
            out.push_str(&format!("{verdict:<6} {:<width$} {}\n", i.item, i.detail));
        }
        let failed = self.failures();
        out.push_str(&if failed == 0 {
            format!("audit: all {} items pass\n", self.items.len())
        } else {
            format!("audit: {failed} of {} items FAIL\n", self.items.len())
        });
        out
    }
}

struct Builder(Vec<Item>);

impl Builder {
    fn add(&mut self, item: impl Into<String>, verdict: Verdict, detail: impl Into<String>) {
        self.0.push(Item { item: item.into(), verdict, detail: detail.into() });
    }
    fn check(&mut self, item: impl Into<String>, ok: bool, pass: impl Into<String>, fail: impl Into<String>) {
        if ok {
            self.add(item, Verdict::Pass, pass);
        } else {
            self.add(item, Verdict::Fail, fail);
        }
    }
}

/// Programs an appliance must not carry: compilers, package managers, cron.
const FORBIDDEN_PROGRAMS: &[&str] = &[
    "gcc", "cc", "c++", "g++", "clang", "rustc", "tcc", "as", "apt", "apt-get", "dpkg", "rpm", "yum", "dnf", "apk",
    "opkg", "pip", "cron", "crond", "crontab", "anacron", "atd",
];
const PROGRAM_DIRS: &[&str] = &["bin", "sbin", "usr/bin", "usr/sbin", "usr/local/bin", "usr/local/sbin"];
/// Names listed per failing item, at most.
const LISTED_MAX: usize = 10;

/// The first `LISTED_MAX` names, for a failure's detail.
fn listed<'a>(names: impl IntoIterator<Item = &'a String>) -> String {
    names.into_iter().take(LISTED_MAX).map(String::as_str).collect::<Vec<_>>().join(", ")
}

pub fn run(cfg: &Config) -> Report {
    let mut b = Builder(Vec::new());
    let plan = Plan::load(cfg);
    let session = support_ssh::open_session(&cfg.system().appliance.state_dir).ok().flatten();
    match &plan {
        Ok(plan) => {
            sysctls(&mut b, plan, cfg);
            firewall(&mut b, plan, session.as_ref().map(|s| s.network));
        }
        Err(e) => b.add("configuration", Verdict::Fail, crate::error_chain::Chain(e).to_string()),
    }
    let listening = sockets::listeners();
    listeners(&mut b, &listening, session.is_some());
    let appliance = &cfg.system().appliance;
    match securetty::unexpected_lines(&appliance.securetty) {
        Ok(wrong) => b.check(
            "securetty",
            wrong.is_empty(),
            format!("{} holds only {}", appliance.securetty.display(), securetty::CONSOLE_LINES.join(", ")),
            format!("{}: unexpected {}", appliance.securetty.display(), wrong.join(", ")),
        ),
        Err(e) => b.add("securetty", Verdict::Fail, crate::error_chain::Chain(&e).to_string()),
    }
    support(&mut b, cfg, session.as_ref(), listening.as_deref().unwrap_or_default());
    processes(&mut b, cfg);
    setuid(&mut b, cfg);
    forbidden_programs(&mut b, cfg);
    readonly_root(&mut b, cfg);
    private_key(&mut b, &cfg.node().key);
    iscsi_targets(&mut b, cfg, Path::new(iscsi::lio::CONFIGFS_TARGET));
    checker_devices(&mut b);
    Report { items: b.0 }
}

fn sysctls(b: &mut Builder, plan: &Plan, cfg: &Config) {
    for c in sysctl::check(&plan.settings, &super::sysctl_roots(cfg)) {
        let item = format!("sysctl {}", c.key);
        match (&c.actual, c.passes()) {
            (None, true) => b.add(item, Verdict::Skip, "not present on this kernel"),
            (None, false) => b.add(item, Verdict::Fail, format!("missing (want {})", c.expected)),
            (Some(actual), true) => b.add(item, Verdict::Pass, format!("= {actual}")),
            (Some(actual), false) => b.add(item, Verdict::Fail, format!("= {actual}, want {}", c.expected)),
        }
    }
}

fn firewall(b: &mut Builder, plan: &Plan, support: Option<ipnet::IpNet>) {
    let fw = match Firewall::open() {
        Ok(fw) => fw,
        Err(e) => return b.add("firewall", Verdict::Fail, crate::error_chain::Chain(&e).to_string()),
    };
    if !super::firewall::ipv6_enabled() {
        b.add("firewall IPv6", Verdict::Pass, "IPv6 is disabled in this kernel");
    }
    for family in [Family::V4, Family::V6] {
        if !fw.families().any(|f| f == family) {
            continue;
        }
        for chain in DROPPED_CHAINS {
            let item = format!("firewall {family:?} {chain} policy");
            match fw.policy(family, chain) {
                Ok(p) => b.check(item, p == "DROP", "DROP", format!("{p}, want DROP")),
                Err(e) => b.add(item, Verdict::Fail, crate::error_chain::Chain(&e).to_string()),
            }
        }
        let jump = format!("-j {CHAIN}");
        match fw.rules(family, "INPUT") {
            Ok(Some(input)) => b.check(
                format!("firewall {family:?} INPUT rules"),
                input == [jump.clone()],
                format!("only {jump}"),
                format!("{input:?}, want only [{jump:?}]"),
            ),
            Ok(None) => b.add(format!("firewall {family:?} INPUT rules"), Verdict::Fail, "INPUT chain missing"),
            Err(e) => b.add(
                format!("firewall {family:?} INPUT rules"),
                Verdict::Fail,
                crate::error_chain::Chain(&e).to_string(),
            ),
        }
        let item = format!("firewall {family:?} {CHAIN} rules");
        let want = plan.chain_rules(family, support);
        match fw.rules(family, CHAIN) {
            Ok(Some(have)) if have == want => b.add(item, Verdict::Pass, format!("{} rules as planned", have.len())),
            Ok(Some(have)) => {
                let extra: Vec<&String> = have.iter().filter(|r| !want.contains(r)).collect();
                let missing: Vec<&String> = want.iter().filter(|r| !have.contains(r)).collect();
                b.add(item, Verdict::Fail, format!("differs from the plan: extra {extra:?}, missing {missing:?}"))
            }
            Ok(None) => b.add(item, Verdict::Fail, format!("chain {CHAIN} missing: run `tidemark harden`")),
            Err(e) => b.add(item, Verdict::Fail, crate::error_chain::Chain(&e).to_string()),
        }
    }
}

fn listeners(b: &mut Builder, listening: &Result<Vec<sockets::Listener>>, support_open: bool) {
    let all = match listening {
        Ok(l) => l,
        Err(e) => return b.add("listening sockets", Verdict::Fail, crate::error_chain::Chain(e).to_string()),
    };
    let mut allowed: Vec<String> = Vec::new();
    let mut wrong: Vec<String> = Vec::new();
    for l in all {
        let in_table = l.proto == "tcp" && ports::entry(l.port).is_some_and(|e| e.port != 22 || support_open);
        let text = format!("{}/{} on {}", l.port, l.proto, l.address);
        if in_table {
            allowed.push(text);
        } else {
            wrong.push(text);
        }
    }
    wrong.dedup();
    b.check(
        "listening sockets",
        wrong.is_empty(),
        format!("{} listeners, all in the port table", allowed.len()),
        format!("not in the port table: {}", listed(&wrong)),
    );
}

fn support(b: &mut Builder, cfg: &Config, session: Option<&support_ssh::Session>, listening: &[sockets::Listener]) {
    let ssh = &cfg.system().appliance.support_ssh;
    match session {
        Some(s) => b.add(
            "support SSH",
            Verdict::Pass,
            format!(
                "open from {} until {} (opened by {} on {})",
                s.network,
                crate::status::format_time_ms(s.until_ms),
                s.who,
                s.tty
            ),
        ),
        None => {
            let listening = sockets::has_tcp(listening, ssh.port);
            let keys = ssh.authorized_keys.exists();
            b.check(
                "support SSH",
                !listening && !keys,
                "closed: nothing on port 22, no authorized keys",
                format!(
                    "no open session, yet{}{}",
                    if listening { " port 22 listens" } else { "" },
                    if keys { format!(" {} exists", ssh.authorized_keys.display()) } else { String::new() }
                ),
            );
        }
    }
}

fn processes(b: &mut Builder, cfg: &Config) {
    let allowed = &cfg.system().audit.allowed_processes;
    let mut seen = 0;
    let mut wrong = std::collections::BTreeSet::new();
    for pid in procfs::pids() {
        // Kernel threads have no command line; they are the kernel's own.
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let Some(stat) = procfs::stat(pid).filter(|_| !cmdline.is_empty()) else { continue };
        seen += 1;
        if !allowed.contains(&stat.name) {
            wrong.insert(stat.name);
        }
    }
    b.check(
        "processes",
        wrong.is_empty(),
        format!("{seen} processes, all allowed"),
        format!("not allowed: {}", listed(&wrong)),
    );
}

fn setuid(b: &mut Builder, cfg: &Config) {
    let audit = &cfg.system().audit;
    let mut found = Vec::new();
    let mut scanned = 0u64;
    for entry in walkdir::WalkDir::new(&audit.fs_root).same_file_system(true).into_iter().filter_map(|e| e.ok()) {
        if !entry.file_type().is_file() {
            continue;
        }
        scanned += 1;
        let Ok(meta) = entry.metadata() else { continue };
        if meta.mode() & 0o6000 == 0 {
            continue;
        }
        let relative = entry.path().strip_prefix(&audit.fs_root).unwrap_or(entry.path());
        if !audit.setuid_allowed.iter().any(|a| a == relative) {
            found.push(format!("/{}", relative.display()));
        }
    }
    b.check(
        "setuid files",
        found.is_empty(),
        format!("none outside the allow-list ({scanned} files under {})", audit.fs_root.display()),
        format!("{} not allowed: {}", found.len(), listed(&found)),
    );
}

fn forbidden_programs(b: &mut Builder, cfg: &Config) {
    let root = &cfg.system().audit.fs_root;
    let mut found = Vec::new();
    for dir in PROGRAM_DIRS {
        for program in FORBIDDEN_PROGRAMS {
            let path = root.join(dir).join(program);
            if path.symlink_metadata().is_ok() {
                found.push(format!("/{dir}/{program}"));
            }
        }
    }
    b.check(
        "no compilers, package managers or cron",
        found.is_empty(),
        format!("none under {}", root.display()),
        format!("found {}", listed(&found)),
    );
}

/// The appliance's TLS key is its identity towards the peer: whoever reads
/// it can pose as this appliance. Owner only, like `keygen` writes it.
fn private_key(b: &mut Builder, key: &Path) {
    match std::fs::metadata(key) {
        Ok(meta) => {
            let mode = meta.mode() & 0o7777;
            b.check(
                "private key",
                mode & 0o077 == 0,
                format!("{} is mode {mode:04o} (owner only)", key.display()),
                format!("{} is mode {mode:04o}: group or others may read it (want 0600)", key.display()),
            );
        }
        Err(e) => b.add("private key", Verdict::Fail, format!("{}: {e}", key.display())),
    }
}

/// No kernel NBD device is left by a `verify-checkpoint` that died (a
/// checker killed by a signal cannot detach its device; the next one
/// does).
fn checker_devices(b: &mut Builder) {
    let orphaned: Vec<String> = kernel_nbd::orphaned_checkers()
        .into_iter()
        .map(|(index, identifier)| format!("/dev/nbd{index} ({identifier})"))
        .collect();
    b.check(
        "checker devices",
        orphaned.is_empty(),
        "no kernel NBD device of a verify-checkpoint that is gone",
        format!("left by a verify-checkpoint that died (the next one detaches them): {}", listed(&orphaned)),
    );
}

/// LIO holds exactly the targets the configuration asks for, each with its
/// LUNs on our own devices, one portal, the configured ACLs, CHAP required
/// for sessions and discovery; nothing else. On the recovery side the
/// targets come and go with exports and test failovers: each one present
/// must be ours, on the devices named for it, with those serials, and
/// read-only if it serves a checkpoint.
fn iscsi_targets(b: &mut Builder, cfg: &Config, configfs: &Path) {
    const ITEM: &str = "iscsi targets";
    let present = lio::targets(configfs);
    let Some(config) = cfg.iscsi() else {
        return b.check(
            ITEM,
            present.is_empty(),
            "iSCSI is off and LIO holds no target",
            format!("iSCSI is off, yet LIO holds {}", listed(&present)),
        );
    };
    if !configfs.is_dir() {
        return b.add(
            ITEM,
            Verdict::Fail,
            format!("iSCSI is configured but {} is missing (LIO not loaded)", configfs.display()),
        );
    }
    let node = cfg.node();
    let fingerprint = match crate::wire::tls::fingerprint_of_file(&node.cert) {
        Ok(f) => f,
        Err(e) => {
            return b.add(
                ITEM,
                Verdict::Fail,
                format!("the appliance certificate: {e_chain}", e_chain = crate::error_chain::Chain(&e)),
            )
        }
    };
    let mut problems = Vec::new();
    if let Err(e) = lio::check_mutual_chap_required(Path::new(lio::REQUIRE_MUTUAL_CHAP)) {
        problems.push(e.to_string());
    }
    let (accounted, complete) = accounted_targets(cfg, config, &fingerprint, configfs, &present, &mut problems);
    for spec in &complete {
        problems.extend(lio::differences(configfs, spec));
    }
    let wanted: Vec<&String> = accounted.iter().map(|s| &s.iqn).collect();
    let extra: Vec<String> = present.iter().filter(|t| !wanted.contains(t)).cloned().collect();
    if !extra.is_empty() && matches!(cfg, Config::Protected(_)) {
        problems.push(format!("targets not in the configuration: {}", listed(&extra)));
    }
    let wanted_backstores: Vec<String> = accounted.iter().flat_map(|s| s.luns.iter().map(lio::backstore_key)).collect();
    let extra: Vec<String> = lio::backstores(configfs).into_iter().filter(|b| !wanted_backstores.contains(b)).collect();
    if !extra.is_empty() {
        problems.push(format!("backstores no target of ours uses: {}", listed(&extra)));
    }
    let used: Vec<&Path> = accounted.iter().flat_map(|s| s.luns.iter().map(|l| l.device.as_path())).collect();
    let stray: Vec<String> = kernel_nbd::ours()
        .into_iter()
        .filter(|(index, _)| !used.contains(&kernel_nbd::device_path(*index).as_path()))
        .map(|(index, identifier)| format!("/dev/nbd{index} ({identifier})"))
        .collect();
    if !stray.is_empty() {
        problems.push(format!("kernel NBD devices of ours under no LUN: {}", listed(&stray)));
    }
    let one_way = match config.one_way_chap_initiators.len() {
        0 => String::new(),
        n => format!(" (one-way CHAP for the {n} initiator(s) configured so)"),
    };
    b.check(
        ITEM,
        problems.is_empty(),
        format!("{} target(s) as configured, mutual CHAP required on sessions{one_way} and discovery", accounted.len()),
        listed(&problems),
    );
}

/// The iSCSI targets a configuration accounts for, and of those the ones
/// whose devices all exist (compared with LIO in full). Protected: one per
/// configured VPG; recovery: each target present that an agent of ours
/// served (`iscsi::served_spec`). What does not add up goes to `problems`.
fn accounted_targets(
    cfg: &Config,
    config: &crate::config::IscsiConfig,
    fingerprint: &str,
    configfs: &Path,
    present: &[String],
    problems: &mut Vec<String>,
) -> (Vec<lio::TargetSpec>, Vec<lio::TargetSpec>) {
    let node = cfg.node();
    let mut accounted = Vec::new();
    let mut complete = Vec::new();
    match cfg {
        Config::Protected(p) => {
            for vpg in &p.vpgs {
                let mut devices = Vec::new();
                for volume in &vpg.volumes {
                    match kernel_nbd::find(&iscsi::device_identifier(&vpg.name, &volume.name)) {
                        Some(index) => devices.push((volume.name.as_str(), kernel_nbd::device_path(index))),
                        None => {
                            problems.push(format!("volume {}/{} has no kernel NBD device", vpg.name, volume.name));
                            devices.push((volume.name.as_str(), std::path::PathBuf::new()));
                        }
                    }
                }
                let spec = iscsi::target_spec(config, &node.name, fingerprint, &vpg.name, &devices);
                if spec.luns.iter().all(|l| !l.device.as_os_str().is_empty()) {
                    complete.push(spec.clone());
                }
                accounted.push(spec);
            }
        }
        Config::Recovery(_) => {
            for iqn in present {
                match iscsi::served_spec(config, &node.name, fingerprint, configfs, iqn) {
                    Ok(spec) => {
                        complete.push(spec.clone());
                        accounted.push(spec);
                    }
                    Err(e) => {
                        problems.push(format!("target {iqn}: {e_chain}", e_chain = crate::error_chain::Chain(&e)))
                    }
                }
            }
        }
    }
    (accounted, complete)
}

fn readonly_root(b: &mut Builder, cfg: &Config) {
    if !cfg.system().audit.readonly_root {
        return b.add("read-only root", Verdict::Skip, "audit.readonly_root = false (not an appliance root)");
    }
    match root_mount_options(Path::new("/proc/mounts")) {
        Some(options) => b.check(
            "read-only root",
            options.split(',').any(|o| o == "ro"),
            "/ is mounted ro",
            format!("/ is mounted {options}"),
        ),
        None => b.add("read-only root", Verdict::Fail, "no / in /proc/mounts"),
    }
}

/// The options of the last mount on / (the one in effect).
fn root_mount_options(mounts: &Path) -> Option<String> {
    let text = std::fs::read_to_string(mounts).ok()?;
    text.lines().rev().find_map(|l| {
        let fields: Vec<&str> = l.split_whitespace().collect();
        (fields.get(1) == Some(&"/")).then(|| fields.get(3).map(|s| s.to_string())).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_fails_when_any_item_fails() {
        let mut b = Builder(Vec::new());
        b.add("a", Verdict::Pass, "");
        b.add("b", Verdict::Skip, "");
        assert!(Report { items: b.0.clone() }.passed());
        b.add("c", Verdict::Fail, "why");
        let report = Report { items: b.0 };
        assert!(!report.passed());
        assert!(report.render().contains("FAIL   c"));
        assert!(report.render().ends_with("audit: 1 of 3 items FAIL\n"));
    }

    #[test]
    fn last_root_mount_wins() {
        let dir = tempfile::tempdir().unwrap();
        let mounts = dir.path().join("mounts");
        std::fs::write(
            &mounts,
            "rootfs / rootfs rw 0 0\n/dev/vda / squashfs ro,relatime 0 0\nproc /proc proc rw 0 0\n",
        )
        .unwrap();
        assert_eq!(root_mount_options(&mounts).unwrap(), "ro,relatime");
    }
}
