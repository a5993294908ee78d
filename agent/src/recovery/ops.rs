//! What the running recovery agent does on request (through its local
//! control socket): serve point-in-time views over NBD, and run test
//! failovers. It is the one place that knows what is running for each VPG,
//! so conflicting requests are refused here with the reason.

use super::exports::{OverlayVolume, PitVolume};
use super::view::PitView;
use crate::journal::index::CheckpointInfo;
use crate::nbd::export::{BlockExport, ExportTable};
use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

const SCRATCH_DIR: &str = "scratch";

/// The NBD exports one request made.
#[derive(Debug, Clone, Serialize)]
pub struct Served {
    pub checkpoint: CheckpointInfo,
    pub names: Vec<String>,
    pub uris: Vec<String>,
}

struct TestFailover {
    served: Served,
    overlays: Vec<Arc<OverlayVolume>>,
    scratch_dir: PathBuf,
}

pub struct RecoveryOps {
    journal_root: PathBuf,
    scratch_root: PathBuf,
    pub exports: ExportTable,
    listen: Option<SocketAddr>,
    tests: Mutex<BTreeMap<String, TestFailover>>,
}

impl RecoveryOps {
    /// A test failover does not outlive the agent: scratch left by a
    /// previous run is removed here.
    pub fn new(data_dir: &Path, listen: Option<SocketAddr>) -> Result<Arc<RecoveryOps>> {
        let scratch_root = data_dir.join(SCRATCH_DIR);
        match std::fs::remove_dir_all(&scratch_root) {
            Ok(()) => tracing::info!("removed test-failover scratch left by the previous run"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", scratch_root.display())),
        }
        Ok(Arc::new(RecoveryOps {
            journal_root: data_dir.join("journal"),
            scratch_root,
            exports: ExportTable::default(),
            listen,
            tests: Mutex::new(BTreeMap::new()),
        }))
    }

    fn uri(&self, name: &str) -> Result<String> {
        let listen = self.listen.ok_or_else(|| {
            anyhow!("no NBD address for recovered volumes: set [exports] listen in the recovery config")
        })?;
        Ok(format!("nbd://{listen}/{name}"))
    }

    async fn open_view(&self, vpg: &str, checkpoint: &str, holder: &'static str) -> Result<Arc<PitView>> {
        self.uri("")?;
        let (root, vpg, checkpoint) = (self.journal_root.clone(), vpg.to_string(), checkpoint.to_string());
        let view = tokio::task::spawn_blocking(move || PitView::open(&root, &vpg, &checkpoint, holder)).await??;
        Ok(Arc::new(view))
    }

    fn publish(&self, view: &PitView, exports: Vec<(String, Arc<dyn BlockExport>)>) -> Result<Served> {
        let names: Vec<String> = exports.iter().map(|(n, _)| n.clone()).collect();
        let uris = names.iter().map(|n| self.uri(n)).collect::<Result<_>>()?;
        self.exports.add(exports)?;
        Ok(Served { checkpoint: view.checkpoint.clone(), names, uris })
    }

    /// Serves every volume of `vpg` at `checkpoint`, read-only, as
    /// `<vpg>/<volume>/<checkpoint id>`, until `unexport`.
    pub async fn export(&self, vpg: &str, checkpoint: &str) -> Result<Served> {
        let view = self.open_view(vpg, checkpoint, "export").await?;
        let exports = (0..view.volumes.len())
            .map(|i| {
                let name = format!("{vpg}/{}/{}", view.volumes[i].name, view.checkpoint.id);
                let export: Arc<dyn BlockExport> = Arc::new(PitVolume { view: view.clone(), volume: i });
                (name, export)
            })
            .collect();
        let served = self.publish(&view, exports)?;
        tracing::info!(%vpg, "serving checkpoint {} read-only: {:?}", served.checkpoint.id, served.names);
        Ok(served)
    }

    pub fn unexport(&self, served: &Served) {
        self.exports.remove(&served.names);
        tracing::info!("stopped serving {:?}", served.names);
    }

    /// Starts a test failover: writable exports `<vpg>/<volume>/test` at
    /// `checkpoint`, whose writes go to scratch files. Replication goes on.
    pub async fn test_failover_start(&self, vpg: &str, checkpoint: &str) -> Result<Served> {
        crate::config::validate_name("--vpg", vpg)?;
        if let Some(t) = self.tests.lock().expect("tests lock").get(vpg) {
            bail!(
                "a test failover of VPG {vpg:?} is already running (checkpoint {}); stop it first with \
                 `tidemark test-failover stop --vpg {vpg}`",
                t.served.checkpoint.id
            );
        }
        let view = self.open_view(vpg, checkpoint, "test-failover").await?;
        let scratch_dir = self.scratch_root.join(vpg);
        std::fs::create_dir_all(&scratch_dir).with_context(|| format!("creating {}", scratch_dir.display()))?;
        let mut overlays = Vec::new();
        let mut exports: Vec<(String, Arc<dyn BlockExport>)> = Vec::new();
        for (i, v) in view.volumes.iter().enumerate() {
            let overlay =
                Arc::new(OverlayVolume::create(view.clone(), i, scratch_dir.join(format!("{}.overlay", v.name)))?);
            exports.push((format!("{vpg}/{}/test", v.name), overlay.clone()));
            overlays.push(overlay);
        }
        let mut tests = self.tests.lock().expect("tests lock");
        if tests.contains_key(vpg) {
            bail!("a test failover of VPG {vpg:?} was started at the same time; stop it first");
        }
        let served = match self.publish(&view, exports) {
            Ok(s) => s,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&scratch_dir);
                return Err(e);
            }
        };
        tracing::info!(%vpg, "test failover started at checkpoint {}: {:?}", served.checkpoint.id, served.names);
        tests.insert(vpg.to_string(), TestFailover { served: served.clone(), overlays, scratch_dir });
        Ok(served)
    }

    /// Stops a test failover and throws its writes away. Returns a report.
    pub fn test_failover_stop(&self, vpg: &str) -> Result<String> {
        let test = self.tests.lock().expect("tests lock").remove(vpg).ok_or_else(|| {
            anyhow!("no test failover of VPG {vpg:?} is running (start one with `tidemark test-failover start`)")
        })?;
        self.exports.remove(&test.served.names);
        let blocks: u64 = test.overlays.iter().map(|o| o.blocks_written()).sum();
        for overlay in &test.overlays {
            overlay.close();
        }
        std::fs::remove_dir_all(&test.scratch_dir)
            .with_context(|| format!("removing scratch {}", test.scratch_dir.display()))?;
        let report = format!(
            "test failover of VPG {vpg:?} at checkpoint {} stopped; {} of test writes discarded",
            test.served.checkpoint.id,
            crate::status::format_bytes(blocks * 4096)
        );
        tracing::info!("{report}");
        Ok(report)
    }

    /// VPG → checkpoint of each running test failover (for status).
    pub fn running_tests(&self) -> BTreeMap<String, u64> {
        self.tests.lock().expect("tests lock").iter().map(|(k, t)| (k.clone(), t.served.checkpoint.id)).collect()
    }
}
