//! The recovery side's iSCSI LUNs, for a recovery ESXi host: each set of
//! volumes the recovery agent serves over NBD (a point-in-time export, a
//! test failover, a failover) is served as one iSCSI target as well, built
//! from the very same exports (`iscsi::Frontend`):
//!
//! - `...:<vpg>:cp<id>`: a checkpoint, read-only (LIO refuses writes with
//!   DATA PROTECT, and the export refuses them anyway);
//! - `...:<vpg>:test`: a test failover, writable, its writes discarded at
//!   stop;
//! - `...:<vpg>`: a failed-over VPG, writable, while it is failed over.
//!
//! The serials, and so the NAA ids, come from this appliance's key and the
//! target's name: a test failover's LUN is never the failover's, and
//! neither is ever the production LUN (another appliance's key), which is
//! why ESXi mounts them with a new signature.

use super::RecoveryError;
use crate::iscsi::{lio, Frontend, Lun, Target};
use crate::nbd::export::BlockExport;
use crate::status::IscsiStatus;
use std::collections::BTreeMap;
use std::sync::Arc;

type Result<T, E = RecoveryError> = std::result::Result<T, E>;

/// What a set of LUNs is for; it names the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A point-in-time export of this checkpoint id (read-only).
    Checkpoint(u64),
    TestFailover,
    Failover,
}

impl Purpose {
    fn target_name(self, vpg: &str) -> String {
        let vpg = unfolded(vpg);
        match self {
            Purpose::Checkpoint(id) => format!("{vpg}:cp{id}"),
            Purpose::TestFailover => format!("{vpg}:test"),
            Purpose::Failover => vpg,
        }
    }

    /// The target's identity (`iscsi::target_name`): a test failover's
    /// LUNs get identities of their own each time, so an initiator that
    /// still holds the last one's LUN never takes the next one for it. An
    /// export shows one checkpoint's data, a failover must keep its
    /// identity across restarts: their names are their identities.
    fn identity(self, vpg: &str) -> String {
        match self {
            Purpose::TestFailover => {
                format!("{}#{:016x}", self.target_name(vpg), crate::random::random_u64())
            }
            _ => self.target_name(vpg),
        }
    }
}

/// A VPG's name as it goes into a target name. IQNs are lower case and
/// hold no '_', so `DB` and `db` (from one protected site or two, which the
/// recovery side cannot refuse) would share a target: a name the IQN would
/// change gets 8 hex digits of its SHA-256, the same at every start.
fn unfolded(vpg: &str) -> String {
    if crate::iscsi::names::fold(vpg) == vpg {
        return vpg.to_string();
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, vpg.as_bytes());
    let hex: String = digest.as_ref()[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("{vpg}-{hex}")
}

pub struct RecoveryLuns {
    frontend: Frontend,
    /// Served targets by IQN, with the name each serves; held across a whole
    /// publication or withdrawal, so those never interleave.
    served: tokio::sync::Mutex<BTreeMap<String, (String, Target)>>,
    /// False until what a previous agent left is removed (`remove_strays`):
    /// only a resumed failover is served before.
    ready: tokio::sync::watch::Sender<bool>,
    /// What status shows of each served target, by IQN, with its VPG (kept
    /// apart from `served`, whose lock a publication holds for long).
    shown: std::sync::Mutex<BTreeMap<String, (String, IscsiStatus)>>,
}

impl RecoveryLuns {
    pub fn new(frontend: Frontend) -> RecoveryLuns {
        RecoveryLuns {
            frontend,
            served: Default::default(),
            ready: tokio::sync::watch::channel(false).0,
            shown: Default::default(),
        }
    }

    /// Serves `volumes` (name, export) of `vpg` as the target for
    /// `purpose`; returns their `iscsi://` URIs.
    pub async fn publish(
        &self,
        vpg: &str,
        purpose: Purpose,
        volumes: &[(String, Arc<dyn BlockExport>)],
    ) -> Result<Vec<String>> {
        if purpose != Purpose::Failover {
            let _ = self.ready.subscribe().wait_for(|ready| *ready).await;
        }
        let name = purpose.target_name(vpg);
        let iqn = self.frontend.iqn(&name);
        let mut served = self.served.lock().await;
        if let Some((other, _)) = served.get(&iqn) {
            return Err(RecoveryError::Unavailable(format!(
                "target {iqn} is already served for {other:?} (target names are lower case, '_' becomes '-':                  VPGs whose names differ only so share one)"
            )));
        }
        let luns: usize = served.values().map(|(_, t)| t.spec.luns.len()).sum();
        if luns + volumes.len() > crate::config::ISCSI_LUNS_MAX {
            return Err(RecoveryError::Unavailable(format!(
                "{luns} iSCSI LUNs are served already; {} more would pass the {} this appliance serves \
                 (close an export or stop a test failover first)",
                volumes.len(),
                crate::config::ISCSI_LUNS_MAX
            )));
        }
        let read_only = matches!(purpose, Purpose::Checkpoint(_));
        let luns = volumes
            .iter()
            .map(|(volume, export)| Lun { volume: volume.clone(), export: export.clone(), read_only })
            .collect();
        let target = self.frontend.serve(&purpose.identity(vpg), luns).await?;
        let uris = target.uris();
        let how = if read_only { ", read-only" } else { "" };
        tracing::info!(%vpg, "served over iSCSI as {iqn} ({} LUNs{how})", uris.len());
        self.shown.lock().expect("shown lock").insert(iqn.clone(), (vpg.to_string(), target.status()));
        served.insert(iqn, (name, target));
        Ok(uris)
    }

    /// Takes the target for `purpose` down, if it is served.
    pub async fn withdraw(&self, vpg: &str, purpose: Purpose) {
        let name = purpose.target_name(vpg);
        let mut served = self.served.lock().await;
        let iqn = self.frontend.iqn(&name);
        if served.get(&iqn).is_some_and(|(n, _)| *n == name) {
            let (_, target) = served.remove(&iqn).expect("present");
            self.shown.lock().expect("shown lock").remove(&iqn);
            self.frontend.withdraw(target).await;
        }
    }

    /// Each VPG's served targets, with the initiators logged in now.
    pub fn status(&self) -> BTreeMap<String, Vec<IscsiStatus>> {
        let shown: Vec<(String, IscsiStatus)> = self.shown.lock().expect("shown lock").values().cloned().collect();
        let mut out: BTreeMap<String, Vec<IscsiStatus>> = BTreeMap::new();
        for (vpg, mut target) in shown {
            target.sessions = self.frontend.sessions(&target.target);
            out.entry(vpg).or_default().push(target);
        }
        out
    }

    /// Removes whatever a previous agent left in LIO and the kernel that is
    /// not served now (call after the failovers are served again); then
    /// exports and test failovers may be served.
    pub async fn remove_strays(&self) {
        let served = self.served.lock().await;
        let keep: Vec<lio::TargetSpec> = served.values().map(|(_, t)| t.spec.clone()).collect();
        self.frontend.remove_strays(keep).await;
        self.ready.send_replace(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nbd::export::BoxFuture;

    /// An export of a given size that is never read or written: what a
    /// refusal must happen before.
    struct Untouched(u64);

    impl BlockExport for Untouched {
        fn size(&self) -> u64 {
            self.0
        }
        fn writable(&self) -> bool {
            true
        }
        fn read_at(&self, _: &mut [u8], _: u64) -> crate::nbd::export::Result<()> {
            unreachable!("read")
        }
        fn write(&self, _: u64, _: Vec<u8>) -> BoxFuture<'_, crate::nbd::export::Result<u64>> {
            unreachable!("write")
        }
        fn zero(&self, _: u64, _: u64) -> BoxFuture<'_, crate::nbd::export::Result<u64>> {
            unreachable!("zero")
        }
        fn make_durable(self: Arc<Self>, _: u64) -> BoxFuture<'static, crate::nbd::export::Result<()>> {
            unreachable!("make_durable")
        }
        fn last_token(&self) -> u64 {
            0
        }
    }

    /// What iSCSI cannot serve is refused with the reason before any
    /// device or LIO object is made (configfs here is a plain directory:
    /// anything made would show in it).
    #[tokio::test]
    async fn what_cannot_be_a_lun_is_refused_before_anything_is_made() {
        let configfs = tempfile::tempdir().unwrap();
        std::fs::create_dir(configfs.path().join("core")).unwrap();
        let state = tempfile::tempdir().unwrap();
        let config = crate::config::IscsiConfig {
            listen: "127.0.0.1:3260".parse().unwrap(),
            domain: "io.tidemark".into(),
            initiators: vec!["iqn.1998-01.com.vmware:esx1".into()],
            one_way_chap_initiators: Vec::new(),
            chap_user: "esx".into(),
            chap_secret: "initiator-secret".into(),
            mutual_chap_user: "tidemark".into(),
            mutual_chap_secret: "target-secret-1".into(),
        };
        let luns = |appliance: &str| {
            RecoveryLuns::new(Frontend::new(&config, appliance, "sha256:00", configfs.path(), state.path()).unwrap())
        };
        let one =
            |size: u64| -> Vec<(String, Arc<dyn BlockExport>)> { vec![("disk0".into(), Arc::new(Untouched(size)))] };
        let refused = |result: Result<Vec<String>>| format!("{:#}", result.unwrap_err());

        let err = refused(luns("rec").publish("vm1", Purpose::Failover, &one(1000)).await);
        assert!(err.contains("not a whole number of 512-byte sectors"), "{err}");
        let many: Vec<(String, Arc<dyn BlockExport>)> = (0..=crate::config::ISCSI_LUNS_MAX)
            .map(|i| (format!("d{i}"), Arc::new(Untouched(512)) as Arc<dyn BlockExport>))
            .collect();
        let err = refused(luns("rec").publish("vm1", Purpose::Failover, &many).await);
        assert!(err.contains("would pass the 64"), "{err}");
        let err = refused(luns(&"r".repeat(200)).publish("vm1", Purpose::Failover, &one(512)).await);
        assert!(err.contains("over 223"), "{err}");

        let made: Vec<_> = std::fs::read_dir(configfs.path()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(made.len(), 2, "only core/ and LIO's dbroot setting: {made:?}");
        assert!(luns("rec").status().is_empty());
    }

    #[test]
    fn each_purpose_has_its_own_target_and_so_its_own_lun_identity() {
        let names: Vec<String> =
            [Purpose::Checkpoint(17), Purpose::TestFailover, Purpose::Failover].map(|p| p.target_name("db")).into();
        assert_eq!(names, ["db:cp17", "db:test", "db"]);
        // Names the IQN would fold together stay apart, at every start.
        let iqn = |vpg: &str| crate::iscsi::target_iqn("io.tidemark", "rec", &Purpose::Failover.target_name(vpg));
        assert_ne!(iqn("DB"), iqn("db"));
        assert_ne!(iqn("a_b"), iqn("a-b"));
        assert_eq!(iqn("DB"), iqn("DB"));
        assert_eq!(iqn("db"), "iqn.2026-12.io.tidemark:tidemark:rec:db");
        // Each test failover has LUN identities of its own, under one name.
        let (a, b) = (Purpose::TestFailover.identity("db"), Purpose::TestFailover.identity("db"));
        assert_ne!(a, b);
        assert_eq!(crate::iscsi::target_name(&a), "db:test");
        assert_eq!(Purpose::Failover.identity("db"), "db", "a failover keeps its identity across restarts");
        // A VPG named "db-test" cannot take the test failover's name.
        let iqn = |name: &str| crate::iscsi::target_iqn("io.tidemark", "rec", name);
        assert_eq!(iqn("db:test"), "iqn.2026-12.io.tidemark:tidemark:rec:db:test");
        assert_ne!(iqn("db:test"), iqn("db-test"));
        let serial = |name: &str| crate::iscsi::lun_serial("sha256:recovery", name, "disk0");
        assert_ne!(serial("db:test"), serial("db"));
        assert_ne!(serial("db:cp17"), serial("db"));
        assert_ne!(serial("db"), crate::iscsi::lun_serial("sha256:protected", "db", "disk0"));
    }
}
