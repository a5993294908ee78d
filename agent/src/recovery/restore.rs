//! Restore: replay a VPG's journal up to one checkpoint into fresh image
//! files, one per volume: the replica (the window's start) is copied, then
//! the journal after it is replayed. Only verified records are applied, in seq order,
//! so the result is exactly the volumes at that point of the write order.

use super::JournalView;
use super::RecoveryError;
use crate::journal::replica::VolumeFiles;
use crate::journal::scan::{scan_journal_until, Visit};
use crate::status::format_bytes;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

type Result<T, E = RecoveryError> = std::result::Result<T, E>;

const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

pub struct RestoreReport {
    pub checkpoint: u64,
    pub files: Vec<PathBuf>,
    pub bytes_applied: u64,
    /// Bytes copied from the replica (the history window's start).
    pub bytes_copied: u64,
    /// Set when corruption made a later checkpoint unreachable.
    pub warning: Option<String>,
}

pub fn restore(journal_root: &Path, vpg: &str, wanted: &str, out_dir: &Path, progress: bool) -> Result<RestoreReport> {
    // The lease comes first: the applier cannot move the replica past
    // what is listed while the checkpoint is chosen.
    let mut view = JournalView::open_leased(journal_root, vpg, "restore")?;
    let (target, lease) = view.pin(wanted)?;
    let warning = view.corruption.as_ref().map(|d| {
        format!(
            "journal damaged: {d}; nothing after it is used; restoring checkpoint {} (the last good one asked for)",
            target.id
        )
    });
    let base = lease.info.base;
    let outputs = VolumeFiles::create_new(out_dir, &view.meta.volumes)?;
    let started = Instant::now();
    let mut last_report = Instant::now();
    let mut report = |phase: &str, bytes: u64| {
        if progress && last_report.elapsed() >= PROGRESS_INTERVAL {
            last_report = Instant::now();
            eprint!("\rrestore: {phase} {}, {:.0} s   ", format_bytes(bytes), started.elapsed().as_secs_f64());
        }
    };
    let copied = match VolumeFiles::open_base(&view.dir, &view.meta.volumes, base)? {
        Some(replica) => outputs.copy_from(&replica, |n| report("replica copied", n))?,
        None => 0,
    };
    let mut applied = 0u64;
    let mut failure: Option<RecoveryError> = None;
    let mut last_seq = base;
    // Records at or below `base` are in the replica: the scan passes them.
    scan_journal_until(&view.dir, view.meta.vpg_id, base, |rec, _| {
        if rec.seq > target.id {
            return Visit::Stop;
        }
        if let Err(e) = outputs.apply(&rec.body) {
            failure = Some(RecoveryError::from(e).at(format!("applying seq {}", rec.seq)));
            return Visit::Stop;
        }
        last_seq = rec.seq;
        applied += rec.data_bytes();
        report("journal applied", applied);
        Visit::Continue
    })?;
    if let Some(e) = failure {
        return Err(e);
    }
    if last_seq < target.id {
        return Err(RecoveryError::Unavailable(format!(
            "journal ended at seq {last_seq} before checkpoint {}",
            target.id
        )));
    }
    outputs.sync_all()?;
    drop(lease);
    if progress {
        eprintln!(
            "\rrestore: {} from the replica and {} from the journal in {:.1} s",
            format_bytes(copied),
            format_bytes(applied),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(RestoreReport {
        checkpoint: target.id,
        files: outputs.files.into_iter().map(|f| f.path).collect(),
        bytes_applied: applied,
        bytes_copied: copied,
        warning,
    })
}

/// Prints a report line for the CLI.
pub fn describe(report: &RestoreReport) -> String {
    let mut out = String::new();
    if let Some(w) = &report.warning {
        out.push_str(&format!("WARNING: {w}\n"));
    }
    out.push_str(&format!(
        "restored checkpoint {} ({} from the replica, {} of journal writes applied):\n",
        report.checkpoint,
        format_bytes(report.bytes_copied),
        format_bytes(report.bytes_applied)
    ));
    for f in &report.files {
        out.push_str(&format!("  {}\n", f.display()));
    }
    let _ = std::io::stdout().flush();
    out
}
