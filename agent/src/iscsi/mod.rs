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

pub mod genetlink;
pub mod kernel_nbd;
pub mod lio;
pub mod names;

pub use names::target_iqn;

use crate::capture::export::CaptureExport;
use crate::capture::vpg::VpgCapture;
use crate::config::IscsiConfig;
use crate::nbd::admission::Admission;
use crate::nbd::export::BlockExport;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

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

/// What status shows of one VPG's target that never changes: its name and
/// LUNs (every initiator in the ACLs sees every LUN of the target). The
/// sessions are read anew for each report (`lio::sessions`).
pub fn target_status(
    config: &IscsiConfig,
    appliance: &str,
    fingerprint: &str,
    vpg: &str,
    volumes: &[&str],
) -> crate::status::IscsiStatus {
    crate::status::IscsiStatus {
        target: target_iqn(&config.domain, appliance, vpg),
        luns: volumes
            .iter()
            .enumerate()
            .map(|(i, volume)| {
                let serial = lun_serial(fingerprint, vpg, volume);
                crate::status::LunStatus { lun: i as u32, volume: volume.to_string(), naa: lun_naa(&serial), serial }
            })
            .collect(),
        sessions: Vec::new(),
    }
}

/// The backend identifier a volume's kernel NBD device carries: how a
/// restarted agent finds (and re-attaches) the same device.
pub fn device_identifier(vpg: &str, volume: &str) -> String {
    format!("tidemark:{vpg}/{volume}")
}

/// The target LIO must hold for one VPG, given the device of each of its
/// volumes (in the VPG's order: LUN i is volume i).
pub fn target_spec(
    config: &IscsiConfig,
    appliance: &str,
    fingerprint: &str,
    vpg: &str,
    volumes: &[(&str, PathBuf)],
) -> lio::TargetSpec {
    lio::TargetSpec {
        iqn: target_iqn(&config.domain, appliance, vpg),
        portal: config.listen,
        luns: volumes
            .iter()
            .map(|(volume, device)| {
                let serial = lun_serial(fingerprint, vpg, volume);
                lio::LunSpec {
                    backstore: lio::backstore_name(&serial),
                    device: device.clone(),
                    serial,
                    read_only: false,
                }
            })
            .collect(),
        initiators: config.initiators.clone(),
        chap: lio::Chap {
            user: config.chap_user.clone(),
            secret: config.chap_secret.clone(),
            mutual_user: config.mutual_chap_user.clone(),
            mutual_secret: config.mutual_chap_secret.clone(),
        },
    }
}

/// Serves every VPG's volumes as LUNs: attaches (or re-attaches) each
/// volume's kernel NBD device, serves it, and makes LIO hold the targets.
pub async fn start(
    config: &IscsiConfig,
    appliance: &str,
    fingerprint: &str,
    captures: &[Arc<VpgCapture>],
    configfs: &Path,
    state_dir: &Path,
) -> Result<()> {
    lio::set_state_dir(configfs, state_dir)?;
    // The kernel's connections are admitted apart from the hypervisors' NBD
    // clients (one per LUN; the configuration bounds the LUNs).
    let admission = Admission::new();
    for capture in captures {
        let mut devices = Vec::new();
        for (i, volume) in capture.volumes.iter().enumerate() {
            let device = Arc::new(Device {
                identifier: device_identifier(&capture.name, &volume.name),
                size: volume.size,
                export: Arc::new(CaptureExport { vpg: capture.clone(), volume: i as u32 }),
                admission: admission.clone(),
            });
            // Blocking netlink; the connection is served before the kernel
            // is asked to use it (it reads the device at once).
            let d = device.clone();
            let (attached, ended) =
                tokio::task::spawn_blocking(move || d.attach()).await.context("attaching a kernel NBD device")??;
            tokio::spawn(device.supervise(ended));
            devices.push((volume.name.as_str(), attached.device()));
        }
        let spec = target_spec(config, appliance, fingerprint, &capture.name, &devices);
        let root = configfs.to_path_buf();
        tokio::task::spawn_blocking(move || lio::apply(&root, &spec)).await.context("configuring LIO")??;
    }
    Ok(())
}

/// One volume's kernel NBD device, and what serves it.
struct Device {
    identifier: String,
    size: u64,
    export: Arc<dyn BlockExport>,
    admission: Arc<Admission>,
}

/// Resolves when the connection of one attach has ended.
type Ended = tokio::sync::oneshot::Receiver<()>;

/// Pauses between attempts to give a device a new connection; a connection
/// that served this long resets the pause.
const REATTACH_PAUSE: Duration = Duration::from_secs(1);
const REATTACH_PAUSE_MAX: Duration = Duration::from_secs(30);
const CONNECTION_LIVED: Duration = Duration::from_secs(10);

impl Device {
    /// Attaches the device (blocking), its connection served at once; the
    /// receiver resolves when that connection ends (at once, if the kernel
    /// did not keep it).
    fn attach(self: &Arc<Self>) -> Result<(kernel_nbd::Attached, Ended)> {
        let (tx, ended) = tokio::sync::oneshot::channel();
        let tx = std::sync::Mutex::new(Some(tx));
        let device = self.clone();
        let attached = kernel_nbd::attach(&self.identifier, self.size, move |connection| {
            let done = tx.lock().expect("ended lock").take();
            device.clone().serve(connection, done)
        })?;
        Ok((attached, ended))
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
            let result = async {
                connection.set_nonblocking(true)?;
                let stream = tokio::net::UnixStream::from_std(connection)?;
                let admitted = self
                    .admission
                    .admit(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
                    .await
                    .context("no slot for the kernel's connection")?;
                crate::nbd::server::serve_kernel(stream, self.export.clone(), admitted).await
            }
            .await;
            if let Err(e) = result {
                tracing::debug!("{}: kernel NBD connection: {e:#}", self.identifier);
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
            if since.elapsed() >= CONNECTION_LIVED {
                pause = REATTACH_PAUSE;
            }
            tracing::warn!("{}: its kernel NBD connection ended; giving the device a new one", self.identifier);
            loop {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(REATTACH_PAUSE_MAX);
                let device = self.clone();
                match tokio::task::spawn_blocking(move || device.attach()).await {
                    Ok(Ok((_, next))) => {
                        ended = next;
                        break;
                    }
                    Ok(Err(e)) => tracing::error!("{}: no new connection yet: {e:#}", self.identifier),
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
