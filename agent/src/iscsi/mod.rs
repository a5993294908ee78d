//! The iSCSI front-end, for hypervisors that cannot open NBD (ESXi): the
//! kernel's LIO target serves each volume of each VPG as a LUN, one target
//! (IQN) per VPG, with mutual CHAP and initiator ACLs. The agent stays the
//! only writer of the volumes: each LUN's backstore is a kernel NBD device
//! attached to the agent's own export of the volume (`kernel_nbd`), so an
//! iSCSI write takes the same path, in the same write order, into the same
//! protected log as an NBD write. `lio` writes the target into configfs.
//!
//! LUN identity: the serial (and the NAA id LIO derives from it) comes from
//! the appliance's key, the VPG and the volume: stable across restarts and
//! reboots, different on every appliance.

mod error;
pub mod genetlink;
pub mod kernel_nbd;
pub mod lio;
pub mod names;
pub mod vpg_targets;

pub use error::IscsiError;

pub use names::target_iqn;

use crate::capture::export::CaptureExport;
use crate::capture::vpg::VpgCapture;
use crate::config::IscsiConfig;
use crate::nbd::admission::Admission;
use crate::nbd::export::BlockExport;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use vpg_targets::{VpgTargets, Wanted};

type Result<T, E = IscsiError> = std::result::Result<T, E>;

/// The LUN's serial: 32 hex digits of SHA-256 over the appliance's
/// certificate fingerprint, the VPG and the volume.
pub fn lun_serial(appliance_fingerprint: &str, vpg: &str, volume: &str) -> String {
    let mut input = appliance_fingerprint.as_bytes().to_vec();
    for part in [vpg, volume] {
        input.push(0);
        input.extend_from_slice(part.as_bytes());
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, &input);
    digest.as_ref()[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// The NAA id (VPD 0x83) LIO derives from a LUN's serial: NAA type 6, its
/// IEEE company id 00-14-05, then the serial's first 25 hex digits.
pub fn lun_naa(serial: &str) -> String {
    let digits: String = serial.chars().filter(char::is_ascii_hexdigit).take(25).collect();
    format!("naa.6001405{}", digits.to_ascii_lowercase())
}

/// The target name in a target identity: a VPG's name, or on the recovery
/// side `<vpg>:<purpose>`, the part before any `#` (a test failover adds
/// `#<instance>` so that each one has LUN identities of its own).
pub fn target_name(identity: &str) -> &str {
    identity.split('#').next().unwrap_or(identity)
}

/// The backend identifier a volume's kernel NBD device carries: how a
/// restarted agent finds (and re-attaches) the same device.
pub fn device_identifier(vpg: &str, volume: &str) -> String {
    format!("{}{vpg}/{volume}", kernel_nbd::IDENTIFIER_PREFIX)
}

/// The target LIO must hold for `identity` (a VPG's name on the protected
/// side; see `target_name`), given the device of each of its volumes (LUN i
/// is volume i). The IQN comes from the target name, the serials from the
/// whole identity.
pub fn target_spec(
    config: &IscsiConfig,
    appliance: &str,
    fingerprint: &str,
    identity: &str,
    volumes: &[(&str, PathBuf)],
) -> lio::TargetSpec {
    lio::TargetSpec {
        iqn: target_iqn(&config.domain, appliance, target_name(identity)),
        portal: config.listen,
        luns: volumes
            .iter()
            .map(|(volume, device)| {
                let serial = lun_serial(fingerprint, identity, volume);
                lio::LunSpec {
                    backstore: lio::backstore_name(&serial),
                    device: device.clone(),
                    serial,
                    read_only: false,
                }
            })
            .collect(),
        initiators: config.initiators.clone(),
        one_way: config.one_way_chap_initiators.clone(),
        chap: lio::Chap {
            user: config.chap_user.clone(),
            secret: config.chap_secret.clone(),
            mutual_user: config.mutual_chap_user.clone(),
            mutual_secret: config.mutual_chap_secret.clone(),
        },
    }
}

/// What LIO should hold for target `iqn` as a recovery agent serves it:
/// each LUN on the device an agent attached for this very target, with the
/// serial that target's name and the device's volume give, read-only if it
/// serves a checkpoint (`recovery::luns`). For the audit.
pub fn served_spec(
    config: &IscsiConfig,
    appliance: &str,
    fingerprint: &str,
    configfs: &Path,
    iqn: &str,
) -> Result<lio::TargetSpec> {
    let mut identity: Option<String> = None;
    let mut devices = Vec::new();
    for device in lio::lun_devices(configfs, iqn) {
        let identifier = kernel_nbd::identifier_of(&device)
            .ok_or_else(|| IscsiError::Refused(format!("{} is not a kernel NBD device of ours", device.display())))?;
        let (target, volume) = identifier
            .strip_prefix(kernel_nbd::IDENTIFIER_PREFIX)
            .and_then(|rest| rest.split_once('/'))
            .ok_or_else(|| IscsiError::Refused(format!("{}: backend {identifier:?} is not ours", device.display())))?;
        if target_iqn(&config.domain, appliance, target_name(target)) != iqn {
            return Err(IscsiError::Refused(format!(
                "{} serves {target}/{volume}, which belongs to another target",
                device.display()
            )));
        }
        if identity.as_deref().is_some_and(|i| i != target) {
            return Err(IscsiError::Refused(format!(
                "its LUNs are on the devices of two targets ({} and {target})",
                identity.unwrap_or_default()
            )));
        }
        identity = Some(target.to_string());
        devices.push((volume.to_string(), device));
    }
    let identity = identity.ok_or_else(|| IscsiError::Refused("a target with no LUN".to_string()))?;
    let devices: Vec<(&str, PathBuf)> = devices.iter().map(|(v, d)| (v.as_str(), d.clone())).collect();
    let mut spec = target_spec(config, appliance, fingerprint, &identity, &devices);
    let read_only = target_name(&identity).split_once(':').is_some_and(|(_, purpose)| purpose.starts_with("cp"));
    for lun in &mut spec.luns {
        lun.read_only = read_only;
    }
    Ok(spec)
}

/// Who serves LUNs here and how they are named: the configuration, the
/// appliance's name and certificate fingerprint (the LUN serials), LIO's
/// configfs, and the admission of the kernel's NBD connections.
pub struct Frontend {
    pub config: IscsiConfig,
    appliance: String,
    fingerprint: String,
    configfs: PathBuf,
    /// The kernel's connections are admitted apart from the hypervisors'
    /// NBD clients (one per LUN).
    admission: Arc<Admission>,
    /// Held while a target is served.
    serving: tokio::sync::Mutex<()>,
    /// The targets this process has tried to serve: one found in LIO that
    /// is not among them was left by the agent before.
    tried: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// One LUN to serve: a volume, and the export that holds it.
pub struct Lun {
    pub volume: String,
    pub export: Arc<dyn BlockExport>,
    pub read_only: bool,
}

/// A target being served: what LIO holds, the volume of each LUN, and the
/// devices under them.
pub struct Target {
    pub spec: lio::TargetSpec,
    volumes: Vec<String>,
    devices: Vec<Arc<Device>>,
}

impl Target {
    /// What status shows of the target that never changes: its name and
    /// LUNs (every initiator in the ACLs sees every LUN of the target). The
    /// sessions are read anew for each report (`lio::sessions`).
    pub fn status(&self) -> crate::status::IscsiStatus {
        crate::status::IscsiStatus {
            target: self.spec.iqn.clone(),
            luns: self
                .spec
                .luns
                .iter()
                .zip(&self.volumes)
                .enumerate()
                .map(|(i, (lun, volume))| crate::status::LunStatus {
                    lun: i as u32,
                    volume: volume.clone(),
                    naa: lun_naa(&lun.serial),
                    serial: lun.serial.clone(),
                })
                .collect(),
            sessions: Vec::new(),
            error: None,
        }
    }

    /// `iscsi://<portal>/<target>/<lun>` for each LUN, as initiators name them.
    pub fn uris(&self) -> Vec<String> {
        (0..self.spec.luns.len()).map(|i| format!("iscsi://{}/{}/{i}", self.spec.portal, self.spec.iqn)).collect()
    }
}

impl Frontend {
    /// The front-end on this machine's LIO (`lio::CONFIGFS_TARGET`), once
    /// its iSCSI target module is shown to refuse one-way CHAP where mutual
    /// CHAP is configured (`lio::check_mutual_chap_required`).
    pub fn on_this_kernel(
        config: &IscsiConfig,
        appliance: &str,
        fingerprint: &str,
        state_dir: &Path,
    ) -> Result<Frontend> {
        lio::check_mutual_chap_required(Path::new(lio::REQUIRE_MUTUAL_CHAP))?;
        Frontend::new(config, appliance, fingerprint, Path::new(lio::CONFIGFS_TARGET), state_dir)
    }

    /// Points LIO's state directory at `state_dir` (before any backstore).
    pub fn new(
        config: &IscsiConfig,
        appliance: &str,
        fingerprint: &str,
        configfs: &Path,
        state_dir: &Path,
    ) -> Result<Frontend> {
        lio::set_state_dir(configfs, state_dir)?;
        Ok(Frontend {
            config: config.clone(),
            appliance: appliance.to_string(),
            fingerprint: fingerprint.to_string(),
            configfs: configfs.to_path_buf(),
            admission: Admission::new(),
            serving: tokio::sync::Mutex::new(()),
            tried: std::sync::Mutex::new(std::collections::HashSet::new()),
        })
    }

    /// The initiators logged in to target `iqn` now.
    pub fn sessions(&self, iqn: &str) -> Vec<crate::status::IscsiSession> {
        lio::sessions(&self.configfs, iqn)
    }

    /// The IQN of the target for `identity` (`names::target_iqn`).
    pub fn iqn(&self, identity: &str) -> String {
        target_iqn(&self.config.domain, &self.appliance, target_name(identity))
    }

    /// Serves `luns` (LUN i is `luns[i]`) behind the target for `identity`
    /// (`target_spec`): attaches (or re-attaches) each LUN's kernel NBD
    /// device, serves it, and makes LIO hold the target. If a step fails, a
    /// target this call built is removed again; one that was there before
    /// (a previous agent's, still serving the initiators through the
    /// kernel's dead-connection wait) is left to the next attempt.
    pub async fn serve(&self, identity: &str, luns: Vec<Lun>) -> Result<Target> {
        // One target at a time: targets retried apart (`vpg_targets`)
        // would otherwise write LIO's shared settings together.
        let _one = self.serving.lock().await;
        let iqn = self.iqn(identity);
        if iqn.len() > names::IQN_BYTES_MAX {
            return Err(IscsiError::Refused(format!(
                "the iSCSI target name {iqn} is {} bytes, over {}",
                iqn.len(),
                names::IQN_BYTES_MAX
            )));
        }
        if let Some(lun) = luns.iter().find(|l| !l.export.size().is_multiple_of(kernel_nbd::LUN_BLOCK_BYTES)) {
            return Err(IscsiError::Refused(format!(
                "volume {} is {} bytes, not a whole number of {}-byte sectors: it cannot be a LUN",
                lun.volume,
                lun.export.size(),
                kernel_nbd::LUN_BLOCK_BYTES
            )));
        }
        let existed = lio::targets(&self.configfs).contains(&iqn);
        // Left by the agent before (its initiators' I/O held by the kernel
        // for the next agent), not by an attempt of this process that
        // could not remove what it built.
        let first_try = self.tried.lock().expect("tried targets").insert(iqn.clone());
        let left_before = existed && first_try;
        let mut target = Target {
            spec: target_spec(&self.config, &self.appliance, &self.fingerprint, identity, &[]),
            volumes: luns.iter().map(|l| l.volume.clone()).collect(),
            devices: Vec::new(),
        };
        if let Err(e) = self.build(identity, luns, &mut target).await {
            if left_before {
                self.abandon(target).await;
                return Err(IscsiError::LeftBehind { iqn, source: Box::new(e) });
            }
            self.withdraw(target).await;
            return Err(e);
        }
        Ok(target)
    }

    /// After a failed serve of a target that was there before: its LIO
    /// configuration and the devices a previous agent left stay as they
    /// are (still holding the initiators' I/O through the kernel's
    /// dead-connection wait, for the next agent); devices this serve
    /// connected anew are disconnected.
    async fn abandon(&self, target: Target) {
        for device in &target.devices {
            if let Err(e) = device.close(|d| !d.reconnected.load(Ordering::SeqCst)).await {
                tracing::error!("{}: {e_chain}", device.identifier, e_chain = crate::error_chain::Chain(&e));
            }
        }
    }

    async fn build(&self, identity: &str, luns: Vec<Lun>, target: &mut Target) -> Result<()> {
        let mut devices = Vec::new();
        for lun in &luns {
            let device = Arc::new(Device {
                identifier: device_identifier(identity, &lun.volume),
                size: lun.export.size(),
                export: lun.export.clone(),
                admission: self.admission.clone(),
                closed: AtomicBool::new(false),
                index: AtomicU32::new(u32::MAX),
                reconnected: AtomicBool::new(false),
                attaching: tokio::sync::Mutex::new(()),
                gate: Default::default(),
            });
            // Blocking netlink; the connection is served before the kernel
            // is asked to use it (it reads the device at once).
            let d = device.clone();
            let ended = tokio::task::spawn_blocking(move || d.attach())
                .await
                .map_err(|source| IscsiError::Task { what: "attaching a kernel NBD device", source })??;
            tokio::spawn(device.clone().supervise(ended));
            devices.push((lun.volume.as_str(), kernel_nbd::device_path(device.index.load(Ordering::SeqCst))));
            target.devices.push(device);
        }
        let mut spec = target_spec(&self.config, &self.appliance, &self.fingerprint, identity, &devices);
        for (spec_lun, lun) in spec.luns.iter_mut().zip(&luns) {
            spec_lun.read_only = lun.read_only;
        }
        target.spec = spec.clone();
        let root = self.configfs.clone();
        tokio::task::spawn_blocking(move || lio::apply(&root, &spec))
            .await
            .map_err(|source| IscsiError::Task { what: "configuring LIO", source })?
    }

    /// Takes a target down: LIO first (its sessions end and the commands in
    /// flight complete, still served, a lost connection still replaced),
    /// then each device, once no new connection is being made for it: its
    /// server ends with the kernel's disconnect, and no other follows.
    pub async fn withdraw(&self, target: Target) {
        let root = self.configfs.clone();
        let spec = target.spec.clone();
        let mut problems = match tokio::task::spawn_blocking(move || lio::remove(&root, &spec)).await {
            Ok(Ok(())) => Vec::new(),
            Ok(Err(e)) => vec![crate::error_chain::Chain(&e).to_string()],
            Err(e) => vec![e.to_string()],
        };
        for device in &target.devices {
            if let Err(e) = device.close(|_| true).await {
                problems.push(format!("{}: {e_chain}", device.identifier, e_chain = crate::error_chain::Chain(&e)));
            }
        }
        match problems.is_empty() {
            true => tracing::info!(iqn = %target.spec.iqn, "iSCSI target withdrawn"),
            false => tracing::error!(iqn = %target.spec.iqn, "withdrawing the iSCSI target: {}", problems.join("; ")),
        }
    }

    /// Removes every target of this appliance, backstore of ours and kernel
    /// NBD device of ours that `keep` does not hold (left by a previous
    /// agent of this boot). The devices go first: nothing serves them, and
    /// LIO could otherwise wait for their commands until the
    /// dead-connection timeout. What cannot be removed is logged, and the
    /// audit reports it: it never stops the agent.
    pub async fn remove_strays(&self, keep: Vec<lio::TargetSpec>) {
        let root = self.configfs.clone();
        let ours = self.iqn("");
        let done = tokio::task::spawn_blocking(move || {
            let kept_devices: Vec<PathBuf> =
                keep.iter().flat_map(|t| t.luns.iter().map(|l| l.device.clone())).collect();
            for (index, identifier) in kernel_nbd::ours() {
                if !kept_devices.contains(&kernel_nbd::device_path(index)) {
                    match kernel_nbd::detach(index) {
                        Ok(()) => {
                            tracing::info!("{identifier}: /dev/nbd{index} left by the previous agent; disconnected")
                        }
                        Err(e) => tracing::error!("{identifier}: /dev/nbd{index} left by the previous agent: {e_chain}", e_chain = crate::error_chain::Chain(&e)),
                    }
                }
            }
            let kept_targets: Vec<&str> = keep.iter().map(|t| t.iqn.as_str()).collect();
            let strays =
                lio::targets(&root).into_iter().filter(|t| t.starts_with(&ours) && !kept_targets.contains(&t.as_str()));
            for iqn in strays {
                match lio::remove_target(&root, &iqn) {
                    Ok(()) => tracing::info!(%iqn, "iSCSI target left by the previous agent; removed"),
                    Err(e) => tracing::error!(%iqn, "iSCSI target left by the previous agent: {e_chain}", e_chain = crate::error_chain::Chain(&e)),
                }
            }
            let kept_backstores: Vec<String> =
                keep.iter().flat_map(|t| t.luns.iter().map(lio::backstore_key)).collect();
            for key in lio::backstores(&root).into_iter().filter(|b| !kept_backstores.contains(b)) {
                if let Err(e) = lio::remove_backstore(&root, &key) {
                    tracing::error!("backstore {key} left by the previous agent: {e_chain}", e_chain = crate::error_chain::Chain(&e));
                }
            }
        })
        .await;
        if let Err(e) = done {
            tracing::error!("removing iSCSI targets left behind: {e}");
        }
    }
}

/// Serves every VPG's volumes as LUNs, one target per VPG (the protected
/// side: for as long as the agent runs, so the caller keeps the targets),
/// each apart: one that cannot be served is tried again while the others
/// are served (`vpg_targets`).
/// A target a previous agent left that cannot be taken over stops the
/// agent, as before: the next agent takes it over within the kernel's
/// dead-connection wait (`IscsiError::LeftBehind`).
pub async fn start(frontend: Arc<Frontend>, captures: Vec<Arc<VpgCapture>>) -> Result<Arc<VpgTargets<Target>>> {
    let wanted = captures.iter().map(|c| Wanted { vpg: c.name.clone(), iqn: frontend.iqn(&c.name) }).collect();
    let left_behind = |e: &IscsiError| matches!(e, IscsiError::LeftBehind { .. });
    VpgTargets::serve_each(wanted, left_behind, move |i| {
        let (frontend, capture) = (frontend.clone(), captures[i].clone());
        async move {
            let luns = (0..capture.volumes.len())
                .map(|v| Lun {
                    volume: capture.volumes[v].name.clone(),
                    export: Arc::new(CaptureExport { vpg: capture.clone(), volume: v as u32 }),
                    read_only: false,
                })
                .collect();
            frontend.serve(&capture.name, luns).await
        }
    })
    .await
}

/// One volume's kernel NBD device, and what serves it.
struct Device {
    identifier: String,
    size: u64,
    export: Arc<dyn BlockExport>,
    admission: Arc<Admission>,
    /// Withdrawn: its connection ends for good.
    closed: AtomicBool,
    /// The device's index, as the last attach found or made it.
    index: AtomicU32,
    /// The last attach found the device left by a previous agent.
    reconnected: AtomicBool,
    /// Held while a connection is being made (withdrawal waits for it).
    attaching: tokio::sync::Mutex<()>,
    /// Closed before the device is detached: no update of its connection
    /// is applied after that (a test failover's scratch file, a failover's
    /// replica that a switch-back reopens next).
    gate: crate::nbd::export::ServingGate,
}

/// Resolves when the connection of one attach has ended.
type Ended = tokio::sync::oneshot::Receiver<()>;

/// Pauses between attempts to give a device a new connection; a connection
/// that served this long resets the pause.
const REATTACH_PAUSE: Duration = Duration::from_secs(1);
const REATTACH_PAUSE_MAX: Duration = Duration::from_secs(30);
const CONNECTION_LIVED: Duration = Duration::from_secs(10);

impl Device {
    /// Ends the device's service for good: no new connection after this;
    /// once none is being made, the device is disconnected if `detach`
    /// says so (asked then, when the last attach's outcome is known).
    async fn close(&self, detach: impl Fn(&Device) -> bool) -> Result<()> {
        self.closed.store(true, Ordering::SeqCst);
        let _attaching = self.attaching.lock().await;
        if !detach(self) {
            return Ok(());
        }
        // LIO completed the commands in flight (withdraw removes it first).
        self.gate.close().await;
        let index = self.index.load(Ordering::SeqCst);
        tokio::task::spawn_blocking(move || kernel_nbd::detach(index))
            .await
            .map_err(|source| IscsiError::Task { what: "disconnecting", source })?
    }

    /// Attaches the device (blocking), its connection served at once, and
    /// notes its index; the receiver resolves when that connection ends (at
    /// once, if the kernel did not keep it).
    fn attach(self: &Arc<Self>) -> Result<Ended> {
        let (tx, ended) = tokio::sync::oneshot::channel();
        let tx = std::sync::Mutex::new(Some(tx));
        let device = self.clone();
        let attached = kernel_nbd::attach(&self.identifier, self.size, move |connection| {
            let done = tx.lock().expect("ended lock").take();
            device.clone().serve(connection, done)
        })?;
        self.index.store(attached.index, Ordering::SeqCst);
        self.reconnected.store(attached.reconnected, Ordering::SeqCst);
        Ok(ended)
    }

    /// Serves the kernel's side of one connection (called from a blocking
    /// thread: it spawns onto the runtime); `done` fires when it ends.
    fn serve(
        self: Arc<Self>,
        connection: std::os::unix::net::UnixStream,
        done: Option<tokio::sync::oneshot::Sender<()>>,
    ) {
        let handle = tokio::runtime::Handle::current();
        handle.spawn(async move {
            let serving = self.gate.serving();
            let result =
                crate::nbd::server::serve_kernel_connection(connection, self.export.clone(), serving, &self.admission)
                    .await;
            if let Err(e) = result {
                tracing::debug!(
                    "{}: kernel NBD connection: {e_chain}",
                    self.identifier,
                    e_chain = crate::error_chain::Chain(&e)
                );
            }
            if let Some(done) = done {
                let _ = done.send(());
            }
        });
    }

    /// The one loop per device that keeps it served: whenever the current
    /// connection ends while the agent runs (an error, a reply the kernel
    /// did not take, a reconnect the kernel did not keep), the device gets a
    /// new one; the kernel holds the LUN's I/O meanwhile. Attempts that fail
    /// or end at once back off, up to `REATTACH_PAUSE_MAX`.
    async fn supervise(self: Arc<Self>, mut ended: Ended) {
        let mut pause = REATTACH_PAUSE;
        loop {
            let since = tokio::time::Instant::now();
            let _ = (&mut ended).await;
            if self.closed.load(Ordering::SeqCst) {
                return;
            }
            if since.elapsed() >= CONNECTION_LIVED {
                pause = REATTACH_PAUSE;
            }
            tracing::warn!("{}: its kernel NBD connection ended; giving the device a new one", self.identifier);
            loop {
                tokio::time::sleep(pause).await;
                // A withdrawal sets `closed`, then waits for this lock: it
                // detaches whatever device the attach below left.
                let _attaching = self.attaching.lock().await;
                if self.closed.load(Ordering::SeqCst) {
                    return;
                }
                pause = (pause * 2).min(REATTACH_PAUSE_MAX);
                let device = self.clone();
                match tokio::task::spawn_blocking(move || device.attach()).await {
                    Ok(Ok(next)) => {
                        ended = next;
                        break;
                    }
                    Ok(Err(e)) => tracing::error!(
                        "{}: no new connection yet: {e_chain}",
                        self.identifier,
                        e_chain = crate::error_chain::Chain(&e)
                    ),
                    Err(e) => tracing::error!("{}: reattaching: {e}", self.identifier),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_serials_are_stable_and_distinct() {
        assert_eq!(target_iqn("io.Example", "tm-prot_1", "DB"), "iqn.2026-12.io.example:tidemark:tm-prot-1:db");
        let a = lun_serial("sha256:aa", "db", "disk0");
        assert_eq!(a.len(), 32);
        assert_eq!(a, lun_serial("sha256:aa", "db", "disk0"));
        assert_ne!(a, lun_serial("sha256:bb", "db", "disk0"), "another appliance, another identity");
        assert_ne!(a, lun_serial("sha256:aa", "db", "disk1"));
        assert_ne!(lun_serial("sha256:aa", "d", "bdisk0"), lun_serial("sha256:aa", "db", "disk0"));
        assert_eq!(lun_naa("339849c9d35fb41d2ce36c58b0839bc6"), "naa.6001405339849c9d35fb41d2ce36c58b");
    }
}
