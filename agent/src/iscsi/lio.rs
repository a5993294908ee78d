//! The kernel's LIO iSCSI target, configured through configfs
//! (`/sys/kernel/config/target`; no targetcli on the appliance). One target
//! per VPG, one LUN per volume, each LUN an iblock backstore on the
//! volume's kernel NBD device (`kernel_nbd.rs`). What is wanted is a
//! `TargetSpec`; `apply` makes configfs say exactly that:
//!
//! - a target that already matches is left alone (an agent restart must
//!   not drop the initiators' sessions or change a LUN);
//! - anything else of ours is removed and built again, in order (backstores,
//!   target, portal, LUNs, authentication, ACLs, enable last); if a step
//!   fails, everything of that target is removed again: never a half-built
//!   target, and never one serving without authentication.
//!
//! Every file written and read here is a plain configfs attribute; the
//! layout is the kernel's (Documentation/target/).

use super::IscsiError;
use crate::io_failure::{Doing, IoFailure};
use crate::status::IscsiSession as Session;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

type Result<T, E = IscsiError> = std::result::Result<T, E>;

/// Where configfs shows the target subsystem.
pub const CONFIGFS_TARGET: &str = "/sys/kernel/config/target";
/// Our backstores' prefix, so nothing else on the box is touched.
const BACKSTORE_PREFIX: &str = "tm-";
const IBLOCK_HBA: &str = "iblock_0";
const TPG: &str = "tpgt_1";

/// Tidemark's iSCSI target module (the patch in
/// buildroot-overlay/patches/linux/) has this read-only parameter, `Y`: an
/// ACL with mutual CHAP credentials refuses an initiator that logs in with
/// one-way CHAP, which stock LIO lets in.
pub const REQUIRE_MUTUAL_CHAP: &str = "/sys/module/iscsi_target_mod/parameters/require_mutual_chap";

/// Whether the loaded iSCSI target module requires mutual CHAP where it is
/// configured: `parameter` (`REQUIRE_MUTUAL_CHAP`) reads `Y`.
pub fn check_mutual_chap_required(parameter: &Path) -> Result<()> {
    match read(parameter).as_deref() {
        Some("Y") => Ok(()),
        Some(other) => Err(IscsiError::Refused(format!(
            "{} is {other:?}: the iSCSI target would let initiators in with one-way CHAP where mutual CHAP is configured",
            parameter.display()
        ))),
        None if !parameter.parent().and_then(Path::parent).is_some_and(Path::is_dir) => Err(IscsiError::Refused(
            format!("iscsi_target_mod is not loaded (no {}): the kernel cannot serve iSCSI", parameter.display()),
        )),
        None => Err(IscsiError::Refused(format!(
            "the loaded iscsi_target_mod is not the appliance's (it has no {}): it would let initiators in with \
             one-way CHAP where mutual CHAP is configured (docs/iscsi.md)",
            parameter.display()
        ))),
    }
}

/// Mutual CHAP: what the initiators present, and what the target presents
/// back to them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chap {
    pub user: String,
    pub secret: String,
    pub mutual_user: String,
    pub mutual_secret: String,
}

impl Chap {
    /// The configfs attributes of an `auth` directory (an ACL's, or
    /// discovery's) and what each holds: for one-way CHAP (not `mutual`),
    /// no mutual credentials, as a new ACL has.
    fn attributes(&self, mutual: Mutual) -> [(&'static str, &str); 4] {
        let (mutual_user, mutual_secret) = match mutual {
            Mutual::Required => (self.mutual_user.as_str(), self.mutual_secret.as_str()),
            Mutual::Not => ("", ""),
        };
        [
            ("userid", &self.user),
            ("password", &self.secret),
            ("userid_mutual", mutual_user),
            ("password_mutual", mutual_secret),
        ]
    }

    /// Writes the credentials into a new `auth` directory (the empty ones
    /// of one-way CHAP are left as they are: empty).
    fn write_to(&self, auth: &Path, mutual: Mutual) -> Result<()> {
        self.attributes(mutual)
            .into_iter()
            .filter(|(_, value)| !value.is_empty())
            .try_for_each(|(name, value)| write(&auth.join(name), value))
    }

    /// Whether the `auth` directory holds exactly these credentials, and
    /// LIO says it authenticates the target exactly if `mutual`.
    fn is_in(&self, auth: &Path, mutual: Mutual) -> bool {
        let want = if mutual == Mutual::Required { "1" } else { "0" };
        read(&auth.join("authenticate_target")).as_deref() == Some(want)
            && self.attributes(mutual).into_iter().all(|(name, value)| read(&auth.join(name)).as_deref() == Some(value))
    }
}

/// Whether an `auth` directory carries the mutual credentials, so that the
/// initiator must authenticate the target (with the appliance's module), or
/// not (one-way CHAP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mutual {
    Required,
    Not,
}

/// One LUN: the volume's backstore on its device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LunSpec {
    /// The backstore's name (`backstore_name`).
    pub backstore: String,
    pub device: PathBuf,
    /// VPD 0x80 serial; LIO derives the NAA id (VPD 0x83) from it, so a
    /// stable serial is a stable LUN identity.
    pub serial: String,
    pub read_only: bool,
}

/// One target: a VPG's LUNs behind one IQN and one portal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetSpec {
    pub iqn: String,
    pub portal: SocketAddr,
    pub luns: Vec<LunSpec>,
    pub initiators: Vec<String>,
    /// Those of `initiators` whose ACL carries no mutual credentials: they
    /// log in with one-way CHAP. Discovery always requires mutual CHAP.
    pub one_way: Vec<String>,
    pub chap: Chap,
}

impl TargetSpec {
    fn mutual_for(&self, initiator: &str) -> Mutual {
        if self.one_way.iter().any(|i| i == initiator) {
            Mutual::Not
        } else {
            Mutual::Required
        }
    }
}

/// A LUN's backstore name: `tm-` and the first 16 hex digits of its serial
/// (unique per appliance, VPG and volume; names with dashes cannot collide
/// as `tm-<vpg>-<volume>` could).
pub fn backstore_name(serial: &str) -> String {
    format!("{BACKSTORE_PREFIX}{}", &serial[..serial.len().min(16)])
}

/// Points LIO's state directory (`dbroot`: persistent reservations with
/// APTPL, ALUA state) at `dir` on the data disk; the default, /var/target,
/// is on the read-only root, and LIO then fails every PERSISTENT RESERVE
/// OUT (NOT READY, LOGICAL UNIT COMMUNICATION FAILURE). LIO accepts this
/// only while it has no backstore, so it is done first; if a previous agent
/// of this boot already did, the setting is already there.
pub fn set_state_dir(root: &Path, dir: &Path) -> Result<()> {
    check_loaded(root)?;
    for sub in ["pr", "alua"] {
        std::fs::create_dir_all(dir.join(sub)).doing(|| format!("creating {}", dir.join(sub).display()))?;
    }
    let wanted = dir.to_string_lossy();
    if read(&root.join("dbroot")).as_deref() == Some(&*wanted) {
        return Ok(());
    }
    write(&root.join("dbroot"), &wanted)
        .map_err(|e| e.at("LIO keeps its state in /var/target unless told first".to_string()))
}

/// Makes configfs under `root` hold `spec` (see the module comment).
pub fn apply(root: &Path, spec: &TargetSpec) -> Result<()> {
    check_loaded(root)?;
    if matches(root, spec) {
        tracing::info!(iqn = %spec.iqn, "iSCSI target already configured as wanted; left as it is");
        return Ok(());
    }
    remove(root, spec)?;
    if let Err(e) = build(root, spec) {
        let _ = remove(root, spec);
        return Err(e.at(format!("configuring iSCSI target {} (nothing of it was left)", spec.iqn)));
    }
    tracing::info!(iqn = %spec.iqn, portal = %spec.portal, luns = spec.luns.len(), "iSCSI target configured");
    Ok(())
}

fn check_loaded(root: &Path) -> Result<()> {
    if !root.join("core").is_dir() {
        return Err(IscsiError::Refused(format!(
            "{} is not there: is configfs mounted and target_core_mod loaded?",
            root.display()
        )));
    }
    Ok(())
}

fn tpg(root: &Path, spec: &TargetSpec) -> PathBuf {
    root.join("iscsi").join(&spec.iqn).join(TPG)
}

fn backstore(root: &Path, lun: &LunSpec) -> PathBuf {
    root.join("core").join(IBLOCK_HBA).join(&lun.backstore)
}

fn portal_dir(spec: &TargetSpec) -> String {
    match spec.portal {
        SocketAddr::V4(a) => format!("{}:{}", a.ip(), a.port()),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    }
}

fn write(path: &Path, value: &str) -> Result<()> {
    Ok(std::fs::write(path, value).doing(|| format!("writing {} to {}", shown(path, value), path.display()))?)
}

/// What a write is said to be in an error: never a secret.
fn shown(path: &Path, value: &str) -> String {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name.starts_with("password") {
        "a secret".into()
    } else {
        format!("{value:?}")
    }
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

fn mkdir(path: &Path) -> Result<()> {
    match std::fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(IoFailure::new(format!("creating {}", path.display()), e).into()),
    }
}

fn build(root: &Path, spec: &TargetSpec) -> Result<()> {
    for lun in &spec.luns {
        let dir = backstore(root, lun);
        mkdir(&root.join("core").join(IBLOCK_HBA))?;
        mkdir(&dir)?;
        write(&dir.join("control"), &format!("udev_path={}", lun.device.display()))?;
        // The control key tells iblock what to open; this attribute is what
        // configfs shows back (what `differences` compares), as rtslib does.
        write(&dir.join("udev_path"), &lun.device.to_string_lossy())?;
        if lun.read_only {
            write(&dir.join("control"), "readonly=1")?;
        }
        write(&dir.join("wwn/vpd_unit_serial"), &lun.serial)?;
        write(&dir.join("enable"), "1")?;
        // UNMAP and WRITE SAME (VAAI); COMPARE AND WRITE is on by default.
        // A read-only LUN says it has no thin provisioning: LIO checks write
        // protection by a command's data direction, and a WRITE SAME with
        // UNMAP has no data, so it would reach the device (which refuses
        // it, as a failure rather than DATA PROTECT).
        let thin = if lun.read_only { "0" } else { "1" };
        write(&dir.join("attrib/emulate_tpu"), thin)?;
        write(&dir.join("attrib/emulate_tpws"), thin)?;
    }
    let tpg = tpg(root, spec);
    mkdir(&root.join("iscsi"))?;
    mkdir(&root.join("iscsi").join(&spec.iqn))?;
    mkdir(&tpg)?;
    // Authentication before anything can log in: CHAP required, and only
    // the initiators named in an ACL (no generated ACLs, no demo mode).
    write(&tpg.join("attrib/authentication"), "1")?;
    write(&tpg.join("attrib/generate_node_acls"), "0")?;
    write(&tpg.join("attrib/demo_mode_write_protect"), "1")?;
    write(&tpg.join("attrib/cache_dynamic_acls"), "0")?;
    for (i, lun) in spec.luns.iter().enumerate() {
        let dir = tpg.join(format!("lun/lun_{i}"));
        mkdir(&dir)?;
        let link = dir.join(&lun.backstore);
        std::os::unix::fs::symlink(backstore(root, lun), &link)
            .doing(|| format!("linking {} to its backstore", link.display()))?;
    }
    for initiator in &spec.initiators {
        let acl = tpg.join("acls").join(initiator);
        mkdir(&acl)?;
        spec.chap.write_to(&acl.join("auth"), spec.mutual_for(initiator))?;
        for (i, lun) in spec.luns.iter().enumerate() {
            let mapped = acl.join(format!("lun_{i}"));
            mkdir(&mapped)?;
            std::os::unix::fs::symlink(tpg.join(format!("lun/lun_{i}")), mapped.join("lun"))
                .doing(|| format!("mapping LUN {i} for {initiator}"))?;
            write(&mapped.join("write_protect"), if lun.read_only { "1" } else { "0" })?;
        }
    }
    // Discovery needs mutual CHAP too.
    let discovery = root.join("iscsi/discovery_auth");
    spec.chap.write_to(&discovery, Mutual::Required)?;
    write(&discovery.join("enforce_discovery_auth"), "1")?;
    mkdir(&tpg.join("np").join(portal_dir(spec)))?;
    write(&tpg.join("enable"), "1")?;
    Ok(())
}

/// Removes the target and our backstores named in `spec`, whatever of
/// them exists, children first.
pub fn remove(root: &Path, spec: &TargetSpec) -> Result<()> {
    remove_target(root, &spec.iqn)?;
    for lun in &spec.luns {
        remove_backstore(root, &backstore_key(lun))?;
    }
    Ok(())
}

/// Removes target `iqn`, whatever of it exists, children first (its
/// backstores stay).
pub fn remove_target(root: &Path, iqn: &str) -> Result<()> {
    let target = root.join("iscsi").join(iqn);
    let tpg = target.join(TPG);
    if tpg.is_dir() {
        let _ = std::fs::write(tpg.join("enable"), "0");
        for acl in children(&tpg.join("acls")) {
            for mapped in children(&acl).into_iter().filter(|p| name_of(p).starts_with("lun_")) {
                let _ = std::fs::remove_file(mapped.join("lun"));
                rmdir(&mapped)?;
            }
            rmdir(&acl)?;
        }
        for np in children(&tpg.join("np")) {
            rmdir(&np)?;
        }
        for lun in children(&tpg.join("lun")) {
            for link in children(&lun) {
                if link.is_symlink() {
                    std::fs::remove_file(&link).doing(|| format!("unlinking {}", link.display()))?;
                }
            }
            rmdir(&lun)?;
        }
        rmdir(&tpg)?;
    }
    rmdir(&target)
}

/// Removes one of our backstores, `hba/name` as `backstores` lists them
/// (no LUN may use it any more).
pub fn remove_backstore(root: &Path, key: &str) -> Result<()> {
    if !key.split('/').nth(1).is_some_and(|name| name.starts_with(BACKSTORE_PREFIX)) {
        return Err(IscsiError::Refused(format!("{key} is not one of our backstores")));
    }
    rmdir(&root.join("core").join(key))
}

fn children(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out: Vec<PathBuf> = entries.flatten().map(|e| e.path()).filter(|p| p.is_dir() || p.is_symlink()).collect();
    out.sort();
    out
}

fn name_of(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default()
}

fn rmdir(path: &Path) -> Result<()> {
    match std::fs::remove_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(IoFailure::new(format!("removing {}", path.display()), e).into()),
    }
}

/// Whether configfs already holds exactly `spec` (enabled, with its LUNs on
/// their devices and serials, its portal, its ACLs and CHAP).
pub fn matches(root: &Path, spec: &TargetSpec) -> bool {
    differences(root, spec).is_empty()
}

/// What differs between configfs and `spec`, in words (for the audit).
pub fn differences(root: &Path, spec: &TargetSpec) -> Vec<String> {
    let mut out = Vec::new();
    let tpg = tpg(root, spec);
    if read(&tpg.join("enable")).as_deref() != Some("1") {
        out.push(format!("target {} is not enabled", spec.iqn));
        return out;
    }
    for (key, want) in [("authentication", "1"), ("generate_node_acls", "0"), ("demo_mode_write_protect", "1")] {
        if read(&tpg.join("attrib").join(key)).as_deref() != Some(want) {
            out.push(format!("target {}: attrib/{key} is not {want}", spec.iqn));
        }
    }
    let tpgs: Vec<String> = children(&root.join("iscsi").join(&spec.iqn))
        .iter()
        .map(|p| name_of(p))
        .filter(|n| n.starts_with("tpgt_"))
        .collect();
    if tpgs != [TPG] {
        out.push(format!("target {}: portal groups {tpgs:?}, not [{TPG}]", spec.iqn));
    }
    let want: Vec<String> = (0..spec.luns.len()).map(|i| format!("lun_{i}")).collect();
    let luns = lun_names(&tpg.join("lun"));
    if luns != want {
        out.push(format!("target {}: LUNs {luns:?}, not {want:?}", spec.iqn));
    }
    for (i, lun) in spec.luns.iter().enumerate() {
        // LUN i is this volume's backstore (the very directory), not
        // another's, nor one of the same name on another HBA.
        let linked = children(&tpg.join(format!("lun/lun_{i}")))
            .into_iter()
            .find(|p| p.is_symlink())
            .and_then(|p| std::fs::canonicalize(p).ok());
        if linked.is_none() || linked != std::fs::canonicalize(backstore(root, lun)).ok() {
            out.push(format!("target {}: lun_{i} is {linked:?}, not backstore {}", spec.iqn, lun.backstore));
        }
    }
    for lun in &spec.luns {
        let dir = backstore(root, lun);
        let udev = read(&dir.join("udev_path"));
        if udev.as_deref() != Some(&*lun.device.to_string_lossy()) {
            out.push(format!("backstore {} is on {udev:?}, not {}", lun.backstore, lun.device.display()));
        }
        if read(&dir.join("wwn/vpd_unit_serial")).is_none_or(|s| !s.ends_with(&lun.serial)) {
            out.push(format!("backstore {} does not carry serial {}", lun.backstore, lun.serial));
        }
    }
    let nps: Vec<String> = children(&tpg.join("np")).iter().map(|p| name_of(p)).collect();
    if nps != vec![portal_dir(spec)] {
        out.push(format!("target {}: portals {nps:?}, not [{}]", spec.iqn, portal_dir(spec)));
    }
    out.extend(acl_differences(&tpg, spec, &want));
    let discovery = root.join("iscsi/discovery_auth");
    let same = read(&discovery.join("enforce_discovery_auth")).as_deref() == Some("1")
        && spec.chap.is_in(&discovery, Mutual::Required);
    if !same {
        out.push("discovery does not require the configured CHAP".into());
    }
    out
}

/// What differs in the ACLs of `spec`'s portal group `tpg`: exactly the
/// configured initiators, each with the configured CHAP, mapped to exactly
/// the LUNs `want`, each with its write protection.
fn acl_differences(tpg: &Path, spec: &TargetSpec, want: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let acls: Vec<String> = children(&tpg.join("acls")).iter().map(|p| name_of(p)).collect();
    let mut want_acls = spec.initiators.clone();
    want_acls.sort();
    if acls != want_acls {
        out.push(format!("target {}: ACLs {acls:?}, not {want_acls:?}", spec.iqn));
    }
    for initiator in &spec.initiators {
        let acl = tpg.join("acls").join(initiator);
        let mutual = spec.mutual_for(initiator);
        if !spec.chap.is_in(&acl.join("auth"), mutual) {
            let kind = if mutual == Mutual::Required { "mutual" } else { "one-way" };
            out.push(format!("target {}: CHAP of initiator {initiator} is not the configured ({kind}) one", spec.iqn));
        }
        // An ACL's own setting overrides the target's: -1 is "as the target".
        let authentication = read(&acl.join("attrib/authentication"));
        if !matches!(authentication.as_deref(), Some("-1" | "1")) {
            out.push(format!(
                "target {}: initiator {initiator} has attrib/authentication {authentication:?}, not the target's",
                spec.iqn
            ));
        }
        // Each initiator sees exactly the LUNs, each with its write protection.
        let mapped = lun_names(&acl);
        if mapped != want {
            out.push(format!("target {}: initiator {initiator} is mapped {mapped:?}, not {want:?}", spec.iqn));
        }
        for (i, lun) in spec.luns.iter().enumerate() {
            let mapped = std::fs::canonicalize(acl.join(format!("lun_{i}/lun"))).ok();
            if mapped.is_none() || mapped != std::fs::canonicalize(tpg.join(format!("lun/lun_{i}"))).ok() {
                out.push(format!(
                    "target {}: lun_{i} of {initiator} is {mapped:?}, not the target's lun_{i}",
                    spec.iqn
                ));
            }
            let protect = read(&acl.join(format!("lun_{i}/write_protect")));
            if protect.as_deref() != Some(if lun.read_only { "1" } else { "0" }) {
                out.push(format!("target {}: lun_{i} of {initiator} has write_protect {protect:?}", spec.iqn));
            }
        }
    }
    out
}

/// The `lun_N` entries under `dir`, in LUN order (not text order: `lun_10`
/// comes after `lun_9`).
fn lun_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<(u64, String)> = children(dir)
        .iter()
        .map(|p| name_of(p))
        .filter_map(|n| n.strip_prefix("lun_").and_then(|i| i.parse().ok()).map(|i| (i, n.clone())))
        .collect();
    names.sort();
    names.into_iter().map(|(_, n)| n).collect()
}

/// The devices under target `iqn`'s LUNs, in LUN order (what each LUN's
/// backstore is on).
pub fn lun_devices(root: &Path, iqn: &str) -> Vec<PathBuf> {
    let luns = root.join("iscsi").join(iqn).join(TPG).join("lun");
    lun_names(&luns)
        .iter()
        .filter_map(|lun| children(&luns.join(lun)).into_iter().find(|p| p.is_symlink()))
        .filter_map(|link| read(&link.join("udev_path")))
        .map(PathBuf::from)
        .collect()
}

/// Our backstores that configfs holds, on any HBA, as `hba/name` (for the
/// audit: nothing beyond the configured LUNs', `backstore_key`).
pub fn backstores(root: &Path) -> Vec<String> {
    children(&root.join("core"))
        .iter()
        .flat_map(|hba| children(hba).into_iter().map(move |b| format!("{}/{}", name_of(hba), name_of(&b))))
        .filter(|key| key.split('/').nth(1).is_some_and(|n| n.starts_with(BACKSTORE_PREFIX)))
        .collect()
}

/// How `backstores` names the backstore of `lun`.
pub fn backstore_key(lun: &LunSpec) -> String {
    format!("{IBLOCK_HBA}/{}", lun.backstore)
}

/// The sessions of the target `iqn`, one per ACL that has one.
pub fn sessions(root: &Path, iqn: &str) -> Vec<Session> {
    let acls = root.join("iscsi").join(iqn).join(TPG).join("acls");
    children(&acls)
        .iter()
        .filter_map(|acl| {
            std::fs::read_to_string(acl.join("info")).ok().and_then(|t| parse_acl_info(&name_of(acl), &t))
        })
        .collect()
}

/// Reads an ACL's `info` (iscsi_target_configfs.c): "No active iSCSI
/// Session..." or the session's state line and one "Address" line per
/// connection.
fn parse_acl_info(initiator: &str, text: &str) -> Option<Session> {
    if text.contains("No active iSCSI Session") {
        return None;
    }
    let state = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Session State:"))
        .map(|s| s.trim().trim_start_matches("TARG_SESS_STATE_").to_string())
        .unwrap_or_else(|| "UNKNOWN".into());
    let addresses = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Address "))
        .filter_map(|rest| rest.split_whitespace().next().map(str::to_string))
        .collect();
    Some(Session { initiator: initiator.into(), state, addresses })
}

/// Every iSCSI target configfs holds (for the audit: nothing beyond ours).
pub fn targets(root: &Path) -> Vec<String> {
    children(&root.join("iscsi"))
        .iter()
        .map(|p| name_of(p))
        .filter(|n| n.starts_with("iqn.") || n.starts_with("eui.") || n.starts_with("naa."))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_module_that_requires_mutual_chap_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let parameter = dir.path().join("iscsi_target_mod/parameters/require_mutual_chap");
        let err = check_mutual_chap_required(&parameter).unwrap_err().to_string();
        assert!(err.contains("is not loaded"), "{err}");
        std::fs::create_dir_all(parameter.parent().unwrap()).unwrap();
        let err = check_mutual_chap_required(&parameter).unwrap_err().to_string();
        assert!(err.contains("not the appliance's"), "{err}");
        std::fs::write(&parameter, "N\n").unwrap();
        let err = check_mutual_chap_required(&parameter).unwrap_err().to_string();
        assert!(err.contains("one-way CHAP"), "{err}");
        std::fs::write(&parameter, "Y\n").unwrap();
        check_mutual_chap_required(&parameter).unwrap();
    }

    #[test]
    fn a_one_way_acl_carries_no_mutual_credentials() {
        let chap = Chap {
            user: "esx".into(),
            secret: "initiator-secret".into(),
            mutual_user: "tm".into(),
            mutual_secret: "target-secret-1".into(),
        };
        // What configfs shows of a new ACL's auth directory.
        let auth = tempfile::tempdir().unwrap();
        for name in ["userid", "password", "userid_mutual", "password_mutual"] {
            std::fs::write(auth.path().join(name), "\n").unwrap();
        }
        std::fs::write(auth.path().join("authenticate_target"), "0\n").unwrap();
        chap.write_to(auth.path(), Mutual::Not).unwrap();
        assert_eq!(read(&auth.path().join("userid_mutual")).as_deref(), Some(""));
        assert!(chap.is_in(auth.path(), Mutual::Not));
        assert!(!chap.is_in(auth.path(), Mutual::Required));
        chap.write_to(auth.path(), Mutual::Required).unwrap();
        // LIO sets authenticate_target once both mutual values are there.
        std::fs::write(auth.path().join("authenticate_target"), "1\n").unwrap();
        assert!(chap.is_in(auth.path(), Mutual::Required));
        assert!(!chap.is_in(auth.path(), Mutual::Not));
    }

    #[test]
    fn luns_are_in_lun_order_and_backstores_are_named_by_serial() {
        let dir = tempfile::tempdir().unwrap();
        for i in [10, 2, 0, 1] {
            std::fs::create_dir(dir.path().join(format!("lun_{i}"))).unwrap();
        }
        std::fs::create_dir(dir.path().join("info")).unwrap();
        assert_eq!(lun_names(dir.path()), ["lun_0", "lun_1", "lun_2", "lun_10"]);
        // VPG "a" volume "b-c" and VPG "a-b" volume "c" were both tm-a-b-c.
        assert_eq!(backstore_name("339849c9d35fb41d2ce36c58b0839bc6"), "tm-339849c9d35fb41d");
    }

    #[test]
    fn an_acl_with_a_session_and_one_without() {
        let logged_in = "InitiatorName: iqn.2026-12.test:host1\nInitiatorAlias: \n\
            LIO Session ID: 1   ISID: 0x23d000000000  TSIH: 1  SessionType: Normal\n\
            Session State: TARG_SESS_STATE_LOGGED_IN\n\
            ---------------------[iSCSI Session Values]-----------------------\n\
            ----------------------[iSCSI Connections]-------------------------\n\
            CID: 0  Connection State: TARG_CONN_STATE_LOGGED_IN\n   Address 10.0.4.2 TCP  StatSN: 0x00000004\n";
        assert_eq!(
            parse_acl_info("iqn.2026-12.test:host1", logged_in),
            Some(Session {
                initiator: "iqn.2026-12.test:host1".into(),
                state: "LOGGED_IN".into(),
                addresses: vec!["10.0.4.2".into()],
            })
        );
        let none = "No active iSCSI Session for Initiator Endpoint: iqn.2026-12.test:host1\n";
        assert_eq!(parse_acl_info("iqn.2026-12.test:host1", none), None);
    }
}
