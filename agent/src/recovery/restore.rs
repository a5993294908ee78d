//! Restore: replay a VPG's journal up to one checkpoint into fresh image
//! files, one per volume. Only verified records are applied, in seq order,
//! so the result is exactly the volumes at that point of the write order.

use super::JournalView;
use crate::capture::volume::zero_file_range;
use crate::journal::scan::{scan_journal_until, Visit};
use crate::record::RecordBody;
use crate::status::format_bytes;
use anyhow::{bail, Context, Result};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

pub struct RestoreReport {
    pub checkpoint: u64,
    pub files: Vec<PathBuf>,
    pub bytes_applied: u64,
    /// Set when corruption made a later checkpoint unreachable.
    pub warning: Option<String>,
}

pub fn restore(journal_root: &Path, vpg: &str, wanted: &str, out_dir: &Path, progress: bool) -> Result<RestoreReport> {
    let view = JournalView::open(journal_root, vpg)?;
    let target = view.resolve(wanted)?;
    let warning = view.corruption.as_ref().map(|d| {
        format!(
            "journal damaged: {d}; nothing after it is used; restoring checkpoint {} (the last good one asked for)",
            target.id
        )
    });
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let mut outputs = Vec::new();
    for v in &view.meta.volumes {
        let path = out_dir.join(format!("{}.img", v.name));
        let file = OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("creating {} (remove it or pick another --out)", path.display()))?;
        file.set_len(v.size)?;
        outputs.push((path, file, v.size));
    }
    let started = Instant::now();
    let mut last_report = Instant::now();
    let mut applied = 0u64;
    let mut failure: Option<anyhow::Error> = None;
    let outcome = scan_journal_until(&view.dir, view.meta.vpg_id, |rec, _| {
        if rec.seq > target.id {
            return Visit::Stop;
        }
        if let Err(e) = apply(&outputs, &rec.body) {
            failure = Some(e.context(format!("applying seq {}", rec.seq)));
            return Visit::Stop;
        }
        applied += rec.data_bytes();
        if progress && last_report.elapsed() >= PROGRESS_INTERVAL {
            last_report = Instant::now();
            eprint!("\rrestore: {} applied, {:.0} s", format_bytes(applied), started.elapsed().as_secs_f64());
        }
        Visit::Continue
    })?;
    if let Some(e) = failure {
        return Err(e);
    }
    if outcome.last_seq < target.id {
        bail!("journal ended at seq {} before checkpoint {}", outcome.last_seq, target.id);
    }
    for (path, file, _) in &outputs {
        file.sync_all().with_context(|| format!("syncing {}", path.display()))?;
    }
    if progress {
        eprintln!("\rrestore: {} applied in {:.1} s", format_bytes(applied), started.elapsed().as_secs_f64());
    }
    Ok(RestoreReport {
        checkpoint: target.id,
        files: outputs.into_iter().map(|(p, _, _)| p).collect(),
        bytes_applied: applied,
        warning,
    })
}

fn apply(outputs: &[(PathBuf, File, u64)], body: &RecordBody) -> Result<()> {
    let (volume, offset, length) = match body {
        RecordBody::Write { volume, offset, data } => (*volume, *offset, data.len() as u64),
        RecordBody::Zero { volume, offset, length } => (*volume, *offset, *length),
        _ => return Ok(()),
    };
    let Some((path, file, size)) = outputs.get(volume as usize) else { bail!("record for unknown volume {volume}") };
    if offset.checked_add(length).is_none_or(|end| end > *size) {
        bail!("record [{offset}, +{length}) lies outside {} ({size} bytes)", path.display());
    }
    match body {
        RecordBody::Write { data, .. } => file.write_all_at(data, offset)?,
        _ => zero_file_range(file, offset, length)?,
    }
    Ok(())
}

/// Prints a report line for the CLI.
pub fn describe(report: &RestoreReport) -> String {
    let mut out = String::new();
    if let Some(w) = &report.warning {
        out.push_str(&format!("WARNING: {w}\n"));
    }
    out.push_str(&format!(
        "restored checkpoint {} ({} of writes applied):\n",
        report.checkpoint,
        format_bytes(report.bytes_applied)
    ));
    for f in &report.files {
        out.push_str(&format!("  {}\n", f.display()));
    }
    let _ = std::io::stdout().flush();
    out
}
