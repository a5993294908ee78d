//! `tidemark verify-checkpoint`: checks the file systems of every volume
//! of a VPG as they were at one checkpoint, with each file system's own
//! checker, without copying anything. The checkpoint is opened as a
//! point-in-time view (which holds a lease, so the applier keeps what it
//! reads); each partition that holds ext2/3/4 or XFS becomes a read-only
//! kernel NBD device served by this process from the view, and
//! `e2fsck -fn` or `xfs_repair -n` reads it. Nothing is written anywhere
//! but the verdict, in `<vpg>/verified.json`, which `tidemark checkpoints`
//! shows.
//!
//! A checkpoint is `verified` when every region of every volume holds a
//! file system that checked clean; `failed` when a checker found damage or
//! a partition table contradicts itself; `unverifiable` when nothing
//! failed but something could not be checked (NTFS, an encrypted or empty
//! volume, a checker that is not installed).

use super::disk_layout::{self, FileSystem, Layout, Region, SECTOR_BYTES};
use super::exports::PitVolume;
use super::view::PitView;
use super::RecoveryError;
use crate::durable::{replace_file, FileMode};
use crate::io_failure::Doing;
use crate::iscsi::kernel_nbd;
use crate::journal::apply_state::ApplyState;
use crate::journal::lease::ApplyLock;
use crate::nbd::admission::Admission;
use crate::nbd::export::BlockExport;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

type Result<T, E = RecoveryError> = std::result::Result<T, E>;

const VERDICTS_FILE: &str = "verified.json";
/// Beside the journal root (`<data_dir>/verify.lock`).
const VERIFY_LOCK_FILE: &str = "verify.lock";
/// Lines of a checker's output kept in the report and the verdicts file.
const OUTPUT_LINES_MAX: usize = 12;
const OUTPUT_LINE_BYTES_MAX: usize = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Verified,
    Failed,
    Unverifiable,
}

impl Verdict {
    pub fn as_str(&self) -> &'static str {
        match self {
            Verdict::Verified => "verified",
            Verdict::Failed => "failed",
            Verdict::Unverifiable => "unverifiable",
        }
    }
}

/// What became of one region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", content = "detail", rename_all = "snake_case")]
pub enum Outcome {
    Clean,
    /// The checker's (or the partition table's) findings.
    Failed(String),
    /// Why it was not checked.
    NotChecked(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegionReport {
    pub volume: String,
    pub region: String,
    pub file_system: String,
    pub bytes: u64,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// The verdict on one checkpoint, as stored and as printed with `--json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub checkpoint: u64,
    pub tag: String,
    pub verdict: Verdict,
    pub checked_ms: u64,
    pub regions: Vec<RegionReport>,
}

fn verdict_of(regions: &[RegionReport]) -> Verdict {
    if regions.iter().any(|r| matches!(r.outcome, Outcome::Failed(_))) {
        Verdict::Failed
    } else if regions.is_empty() || regions.iter().any(|r| matches!(r.outcome, Outcome::NotChecked(_))) {
        Verdict::Unverifiable
    } else {
        Verdict::Verified
    }
}

/// Checks `wanted` (an id, a tag, `latest`, `last-clean`) of `vpg`,
/// telling `progress` about each region as it goes, and stores the verdict.
pub fn verify(
    journal_root: &Path,
    vpg: &str,
    wanted: &str,
    timeout: Duration,
    progress: &dyn Fn(&str),
) -> Result<Report> {
    // The checkpoint first: a wrong name is the error to show, on any host.
    let view = Arc::new(PitView::open(journal_root, vpg, wanted, "verify")?);
    kernel_nbd::check_available()
        .map_err(|e| e.at("verify-checkpoint reads through a kernel NBD device".to_string()))?;
    let lock = VerifyLock::take(journal_root, progress)?;
    remove_stale_devices(&lock);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .doing(|| "starting the checker's runtime".to_string())?;
    let mut regions = Vec::new();
    for (volume, info) in view.volumes.iter().enumerate() {
        let read_at = |buf: &mut [u8], offset: u64| view.read_at(volume, buf, offset);
        let found = match disk_layout::layout(&read_at, info.size)
            .map_err(|e| e.at(format!("reading volume {}'s first sectors", info.name)))?
        {
            Layout::Whole(region) => vec![region],
            Layout::Table { kind, regions: parts, skipped } => {
                progress(&format!("{}: {kind} partition table, {} partition(s)", info.name, parts.len()));
                for s in skipped {
                    regions.push(region_report(&info.name, "extended", "-", 0, Outcome::NotChecked(s)));
                }
                if parts.is_empty() {
                    regions.push(region_report(
                        &info.name,
                        "table",
                        kind,
                        0,
                        Outcome::NotChecked("no partitions".into()),
                    ));
                }
                parts
            }
            Layout::Damaged(why) => {
                progress(&format!("{}: FAILED: partition table: {why}", info.name));
                regions.push(region_report(&info.name, "partition table", "-", info.size, Outcome::Failed(why)));
                continue;
            }
        };
        for region in found {
            let report = runtime.block_on(check_region(&view, volume, &region, timeout))?;
            progress(&describe(&report));
            regions.push(report);
        }
    }
    let report = Report {
        checkpoint: view.checkpoint.id,
        tag: view.checkpoint.tag.clone(),
        verdict: verdict_of(&regions),
        checked_ms: crate::record::now_ms(),
        regions,
    };
    store(&crate::journal::vpg_dir(journal_root, vpg), &report)?;
    Ok(report)
}

fn region_report(volume: &str, region: &str, fs: &str, bytes: u64, outcome: Outcome) -> RegionReport {
    RegionReport { volume: volume.into(), region: region.into(), file_system: fs.into(), bytes, outcome }
}

/// One line for the progress output.
pub fn describe(r: &RegionReport) -> String {
    let what = format!("{} {} ({}, {})", r.volume, r.region, r.file_system, crate::status::format_bytes(r.bytes));
    match &r.outcome {
        Outcome::Clean => format!("{what}: clean"),
        Outcome::Failed(why) => format!("{what}: FAILED:\n    {}", why.replace('\n', "\n    ")),
        Outcome::NotChecked(why) => format!("{what}: not checked: {why}"),
    }
}

async fn check_region(view: &Arc<PitView>, volume: usize, region: &Region, timeout: Duration) -> Result<RegionReport> {
    let name = view.volumes[volume].name.clone();
    let head_len = disk_layout::PROBE_BYTES.min(region.bytes) as usize;
    let mut head = vec![0u8; head_len];
    let read = view.read_at(volume, &mut head, region.offset);
    let fs = disk_layout::probe(&head);
    let report = |fs: FileSystem, outcome| region_report(&name, &region.name, fs.name(), region.bytes, outcome);
    if let Err(e) = read {
        let why = format!(
            "reading its first bytes from the checkpoint failed: {e_chain}",
            e_chain = crate::error_chain::Chain(&e)
        );
        return Ok(report(FileSystem::Unknown, Outcome::NotChecked(why)));
    }
    let tool: &'static [&'static str] = match fs {
        FileSystem::Ext { .. } => &["e2fsck", "-fn"],
        FileSystem::Xfs => &["xfs_repair", "-n"],
        FileSystem::Unchecked(_) => {
            return Ok(report(fs, Outcome::NotChecked("no checker for this file system".into())))
        }
        FileSystem::Empty => return Ok(report(fs, Outcome::NotChecked("no file system: nothing but zeros".into()))),
        FileSystem::Unknown => return Ok(report(fs, Outcome::NotChecked("no file system recognised".into()))),
    };
    // The kernel's device is sector-sized; a partial last sector holds no
    // file system data.
    let bytes = region.bytes / SECTOR_BYTES * SECTOR_BYTES;
    let window = Arc::new(PitVolume::window(view.clone(), volume, region.offset, bytes)?);
    let device = attach(window.clone(), bytes).await?;
    let outcome = run_checker(tool, &device.path, timeout).await;
    let connection_ended = device.ended.load(std::sync::atomic::Ordering::SeqCst);
    device.detach().await;
    let outcome = outcome?;
    // A checker that could not read the checkpoint reports what it could
    // not read, not the file system's state.
    if window.read_errors() > 0 || connection_ended {
        let why = format!(
            "reading the checkpoint failed during the check ({} read error(s){}); the checker's findings say \
             nothing about the file system",
            window.read_errors(),
            if connection_ended { ", the device's connection ended" } else { "" }
        );
        return Ok(report(fs, Outcome::NotChecked(why)));
    }
    // e2fsck -n does not replay a journal: findings on a file system that
    // was mounted when the checkpoint was taken may be what a mount would
    // repair. Not `failed`, not `verified`.
    if let (FileSystem::Ext { needs_recovery: true }, Outcome::Failed(why)) = (fs, &outcome) {
        return Ok(report(
            fs,
            Outcome::NotChecked(format!(
                "its journal needs recovery (the checkpoint was taken while it was mounted) and e2fsck -n does not \
                 replay it, so these findings may be what a mount repairs; a checkpoint taken after a sync or an \
                 unmount checks cleanly:\n{why}"
            )),
        ));
    }
    Ok(report(fs, outcome))
}

/// Runs `tool DEVICE`; its exit status says clean (0) or damaged (e2fsck:
/// 4; xfs_repair: 1). Anything else means it could not check.
async fn run_checker(tool: &'static [&'static str], device: &Path, timeout: Duration) -> Result<Outcome> {
    let device = device.to_path_buf();
    tokio::task::spawn_blocking(move || run_checker_blocking(tool, &device, timeout))
        .await
        .map_err(|source| RecoveryError::Task { what: "the checker", source })?
}

/// How often a running checker is looked at (for its timeout).
const CHECKER_POLL: Duration = Duration::from_millis(50);

fn run_checker_blocking(tool: &[&str], device: &Path, timeout: Duration) -> Result<Outcome> {
    use std::io::Read as _;
    let started = Instant::now();
    let spawned = std::process::Command::new(tool[0])
        .args(&tool[1..])
        .arg(device)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Outcome::NotChecked(format!("{} is not installed on this machine", tool[0])))
        }
        result => result.doing(|| format!("running {}", tool[0]))?,
    };
    // Read both pipes while it runs, so a chatty checker never blocks on
    // a full pipe.
    let mut pipes = [
        child.stdout.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        child.stderr.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    ];
    let readers: Vec<_> = pipes
        .iter_mut()
        .filter_map(Option::take)
        .map(|mut pipe| {
            std::thread::spawn(move || {
                let mut out = Vec::new();
                let _ = pipe.read_to_end(&mut out);
                out
            })
        })
        .collect();
    let status = loop {
        if let Some(status) = child.try_wait().doing(|| "waiting for the checker".to_string())? {
            break Some(status);
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(CHECKER_POLL);
    };
    let output: Vec<u8> = readers.into_iter().flat_map(|r| r.join().unwrap_or_default()).collect();
    let Some(status) = status else {
        return Ok(Outcome::NotChecked(format!("{} did not finish within {timeout:?}", tool.join(" "))));
    };
    let said = tail(&output);
    tracing::info!("{} {}: {status} in {:.2?}", tool.join(" "), device.display(), started.elapsed());
    // e2fsck's exit status is a bit set: 4 is "errors left uncorrected",
    // even when 8 ("operational error": it could not go on) is set too;
    // xfs_repair -n exits 1 when it found corruption.
    let damaged = match tool[0] {
        "e2fsck" => |code: i32| code & 4 != 0,
        _ => |code: i32| code == 1,
    };
    Ok(match status.code() {
        Some(0) => Outcome::Clean,
        Some(code) if damaged(code) => Outcome::Failed(format!("{} exit {code}:\n{said}", tool.join(" "))),
        _ => Outcome::NotChecked(format!("{} could not check ({status}):\n{said}", tool.join(" "))),
    })
}

/// The last lines of a checker's output, each cut to a sane length.
fn tail(output: &[u8]) -> String {
    let text = String::from_utf8_lossy(output);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(OUTPUT_LINES_MAX);
    lines[start..]
        .iter()
        .map(|l| match l.char_indices().nth(OUTPUT_LINE_BYTES_MAX) {
            Some((cut, _)) => format!("{}…", &l[..cut]),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A read-only kernel NBD device served from this process.
struct Device {
    index: u32,
    path: std::path::PathBuf,
    /// Set when the connection serving the device ended.
    ended: Arc<std::sync::atomic::AtomicBool>,
}

impl Device {
    async fn detach(self) {
        let index = self.index;
        match tokio::task::spawn_blocking(move || kernel_nbd::detach(index)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("{}: {e_chain}", self.path.display(), e_chain = crate::error_chain::Chain(&e)),
            Err(e) => tracing::warn!("{}: {e}", self.path.display()),
        }
    }
}

async fn attach(export: Arc<dyn BlockExport>, bytes: u64) -> Result<Device> {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let identifier = format!("{}{}:{n}", kernel_nbd::CHECK_IDENTIFIER_PREFIX, std::process::id());
    let handle = tokio::runtime::Handle::current();
    let admission = Admission::new();
    let ended = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = ended.clone();
    let attached = tokio::task::spawn_blocking(move || {
        kernel_nbd::attach_read_only(&identifier, bytes, move |connection| {
            let (export, admission, flag) = (export.clone(), admission.clone(), flag.clone());
            handle.spawn(async move {
                // Read-only, and detached only once the check is done.
                let serving = crate::nbd::export::Serving::for_good();
                let result = crate::nbd::server::serve_kernel_connection(connection, export, serving, &admission).await;
                if let Err(e) = result {
                    tracing::warn!(
                        "checker's kernel NBD connection: {e_chain}",
                        e_chain = crate::error_chain::Chain(&e)
                    );
                }
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
            });
        })
    })
    .await
    .map_err(|source| RecoveryError::Task { what: "attaching a kernel NBD device", source })?
    .map_err(|e| e.at("the checkers read the checkpoint through a kernel NBD device".to_string()))?;
    Ok(Device { index: attached.index, path: attached.device(), ended })
}

/// Detaches the devices a checker that died left attached. Under the
/// verify lock, so no other checker is between attaching a device and
/// serving it.
fn remove_stale_devices(_lock: &VerifyLock) {
    for (index, identifier) in kernel_nbd::orphaned_checkers() {
        match kernel_nbd::detach(index) {
            Ok(()) => tracing::info!("/dev/nbd{index}: detached ({identifier}: its checker is gone)"),
            Err(e) => {
                tracing::warn!("/dev/nbd{index} ({identifier}): {e_chain}", e_chain = crate::error_chain::Chain(&e))
            }
        }
    }
}

/// One verify at a time per appliance: they share the kernel's NBD
/// devices, and one's clean-up must not race another's attach.
struct VerifyLock {
    _file: std::fs::File,
}

impl VerifyLock {
    fn take(journal_root: &Path, progress: &dyn Fn(&str)) -> Result<VerifyLock> {
        use rustix::fs::{flock, FlockOperation};
        let path = journal_root.parent().unwrap_or(journal_root).join(VERIFY_LOCK_FILE);
        let file = crate::journal::lease::open_lock_file(&path)?;
        if flock(&file, FlockOperation::NonBlockingLockExclusive).is_err() {
            progress("another verify-checkpoint is running; waiting for it to finish");
            flock(&file, FlockOperation::LockExclusive).doing(|| format!("locking {}", path.display()))?;
        }
        Ok(VerifyLock { _file: file })
    }
}

/// Every stored verdict of the VPG, by checkpoint id.
pub fn load(vpg_dir: &Path) -> Result<BTreeMap<u64, Report>> {
    let path = vpg_dir.join(VERDICTS_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).map_err(|e| RecoveryError::from(e).at(format!("parsing {}", path.display())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(e).doing(|| format!("reading {}", path.display())).map_err(Into::into),
    }
}

/// Adds `report`, dropping the verdicts of checkpoints the replica has
/// passed (no longer restorable). Under the apply lock: two checkers never
/// lose each other's verdicts.
fn store(vpg_dir: &Path, report: &Report) -> Result<()> {
    let _lock = ApplyLock::exclusive(vpg_dir)?;
    let applied = ApplyState::load(vpg_dir)?.applied_seq;
    let mut verdicts = load(vpg_dir).unwrap_or_else(|e| {
        tracing::warn!("{e_chain}: starting the verdicts afresh", e_chain = crate::error_chain::Chain(&e));
        BTreeMap::new()
    });
    verdicts.retain(|id, _| *id >= applied);
    verdicts.insert(report.checkpoint, report.clone());
    Ok(replace_file(&vpg_dir.join(VERDICTS_FILE), &serde_json::to_vec_pretty(&verdicts)?, FileMode::Public)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(outcome: Outcome) -> RegionReport {
        RegionReport { volume: "d".into(), region: "r".into(), file_system: "ext4".into(), bytes: 1, outcome }
    }

    #[test]
    fn a_checkpoint_is_verified_only_when_everything_checked_clean() {
        assert_eq!(verdict_of(&[]), Verdict::Unverifiable);
        assert_eq!(verdict_of(&[region(Outcome::Clean)]), Verdict::Verified);
        let unchecked = region(Outcome::NotChecked("NTFS".into()));
        assert_eq!(verdict_of(&[region(Outcome::Clean), unchecked.clone()]), Verdict::Unverifiable);
        let failed = region(Outcome::Failed("bad".into()));
        assert_eq!(verdict_of(&[unchecked, failed]), Verdict::Failed);
    }

    #[test]
    fn verdicts_persist_and_retired_checkpoints_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let report = |checkpoint, verdict| Report {
            checkpoint,
            tag: String::new(),
            verdict,
            checked_ms: 1,
            regions: vec![region(Outcome::Failed("Root inode is not a directory".into()))],
        };
        store(dir.path(), &report(5, Verdict::Failed)).unwrap();
        store(dir.path(), &report(9, Verdict::Verified)).unwrap();
        ApplyState { applied_seq: 6, ..Default::default() }.store(dir.path()).unwrap();
        store(dir.path(), &report(12, Verdict::Unverifiable)).unwrap();
        let stored = load(dir.path()).unwrap();
        assert_eq!(stored.keys().copied().collect::<Vec<_>>(), [9, 12]);
        assert_eq!(stored[&9].regions[0].outcome, Outcome::Failed("Root inode is not a directory".into()));
    }

    #[test]
    fn a_checkers_output_is_cut_to_its_last_lines() {
        let output: String = (0..40).map(|i| format!("line {i}\n\n")).collect::<String>() + &"é".repeat(500);
        let kept = tail(output.as_bytes());
        assert_eq!(kept.lines().count(), OUTPUT_LINES_MAX);
        assert!(kept.starts_with("line 29"), "{kept}");
        assert!(kept.ends_with('…') && kept.lines().last().unwrap().chars().count() == OUTPUT_LINE_BYTES_MAX + 1);
    }
}
