//! The persisted journal index's writer: the recovery agent's maintenance
//! pass (`Summarizer`) builds the summary of each sealed segment
//! (`summary_file.rs`: its format, and when a reader may trust it), keeps
//! them checked against their segments, and removes the stale ones.

use super::error::JournalError;
use super::lease::ApplyLock;
use super::scan::{scan_segment, SegmentScan, Visit};
pub use super::summary_file::{load_valid, summary_path, Entry, EntryKind, SegmentSummary};
use super::summary_file::{SUMMARY_EXTENSION, TEMP_EXTENSION};
use crate::error_chain::Chain;
use crate::io_failure::Doing;
use crate::segment::{list_segments, SegmentKind};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

type Result<T> = std::result::Result<T, JournalError>;

/// Builds the summary of a sealed segment by reading it in full; None
/// when the segment is damaged (readers then scan it and meet the damage).
pub fn build(segment: &Path, vpg_id: u32, first_seq: u64) -> Result<Option<SegmentSummary>> {
    build_above(segment, vpg_id, first_seq, 0)
}

/// Whether the damage of a segment is only in records at or below
/// `in_replica`, which no reader needs any more (every reader starts from
/// the replica or a lease's base, and neither goes back; a reader from
/// before scans and meets it). Such a segment keeps no new summary (a
/// summary is whole or none), and is not reported.
fn damage_is_harmless(segment: &Path, vpg_id: u32, first_seq: u64, in_replica: u64) -> bool {
    in_replica > 0 && matches!(build_above(segment, vpg_id, first_seq, in_replica), Ok(Some(_)))
}

/// The summary of the records above `in_replica` (all: 0).
fn build_above(segment: &Path, vpg_id: u32, first_seq: u64, in_replica: u64) -> Result<Option<SegmentSummary>> {
    let mut entries = Vec::new();
    let mut last = (0u64, 0u32);
    let outcome = scan_segment(segment, vpg_id, first_seq, in_replica, |rec, at, crcs| {
        entries.push(Entry::of(rec, at, crcs.payload));
        last = (at, crcs.header);
        Visit::Continue
    })?;
    let SegmentScan::Whole { len } = outcome else { return Ok(None) };
    Ok(Some(SegmentSummary {
        vpg_id,
        first_seq,
        segment_len: len,
        last_record_at: last.0,
        last_header_crc: last.1,
        entries,
    }))
}
/// Writes a summary next to its segment: temporary name, then rename. No
/// fsync: a summary lost or torn by a power cut fails `load_valid` and is
/// built again.
fn store(segment: &Path, summary: &SegmentSummary) -> Result<()> {
    let path = summary_path(segment);
    let temp = path.with_extension(TEMP_EXTENSION);
    let bytes = summary.to_bytes();
    // What a power cut can leave, as summaries are not fsynced: the new
    // name with part of the bytes.
    fail::fail_point!("summary-store-torn", |_| {
        let _ = std::fs::write(&path, &bytes[..bytes.len() / 2]);
        std::process::abort()
    });
    std::fs::write(&temp, &bytes).doing(|| format!("writing {}", temp.display()))?;
    fail::fail_point!("summary-store-before-rename", |_| std::process::abort());
    Ok(std::fs::rename(&temp, &path).doing(|| format!("renaming {}", temp.display()))?)
}

/// Removes the summary of a segment that is removed, cut or moved.
pub fn forget(segment: &Path) -> Result<()> {
    forget_file(&summary_path(segment))
}

/// The recovery agent's maintenance of one journal's summaries (it is
/// their only writer). Each pass writes the summary of sealed segments
/// that lack a valid one, a few per pass so the applier stays prompt, and
/// removes summaries whose segment is gone and temporaries a crash left.
/// A summary checked once is checked again only when its file changes; a
/// segment that cannot be summarized (damaged, unreadable) is tried again
/// only when it changes, and never stops the others.
///
/// A pass holds the apply lock shared: a failover (which sets segments
/// aside under it exclusively) or a retire never interleaves with it, so
/// no summary is written for a segment that is going away.
///
/// Each pass also re-reads some summarized segments (`SCRUB_BYTES_PER_PASS`
/// on average, round robin): readers trust a summary, so damage that came
/// after it was written (bit rot) would go unseen by them. A segment found
/// damaged, unreadable or no longer matching its summary loses the
/// summary (readers then scan it and stop at the damage) and is reported
/// in `damage` until it is gone (the agent's start quarantines it).
#[derive(Default)]
pub struct Summarizer {
    seen: HashMap<PathBuf, (u64, SystemTime)>,
    failed: HashMap<PathBuf, (u64, SystemTime)>,
    scrub_budget: u64,
    scrub_next: u64,
    /// The damaged segment and what to tell the operator.
    pub damage: Option<(PathBuf, String)>,
    /// The last pass's `in_replica`.
    in_replica: u64,
    /// The last pass's replica seq (`in_replica` or above: a lease's base
    /// may be below it).
    applied: u64,
    /// The damaged segment's first seq, and `in_replica` when it was last
    /// found damaged.
    damage_at: (u64, u64),
}

impl Summarizer {
    /// Summaries written (or rewritten) in one pass, at most.
    pub const PER_PASS: usize = 4;
    /// Bytes of summarized segments re-verified per pass (once a second),
    /// on average: a 20 GiB journal is checked every 45 minutes.
    pub const SCRUB_BYTES_PER_PASS: u64 = 8 << 20;

    fn report_damage(&mut self, segment: &Path, first_seq: u64, why: &str) {
        let message = format!(
            "journal segment {} {why}; readers now stop there and later checkpoints cannot be restored \
             until the recovery agent restarts and quarantines it (see docs/runbook.md)",
            segment.display()
        );
        tracing::error!("{message}");
        self.damage = Some((segment.to_path_buf(), message));
        self.damage_at = (first_seq, self.in_replica);
    }

    /// The damage reported is forgotten once the replica (and every
    /// lease) passed it: no reader needs those records any more.
    fn forget_passed_damage(&mut self, vpg_id: u32) {
        let Some((path, _)) = &self.damage else { return };
        let (first_seq, floor) = self.damage_at;
        if self.in_replica <= floor {
            return;
        }
        if damage_is_harmless(path, vpg_id, first_seq, self.in_replica) {
            tracing::info!(
                "{}: its damage is now all in records the replica holds; no reader needs them",
                path.display()
            );
            self.failed.remove(path);
            self.damage = None;
        } else {
            self.damage_at.1 = self.in_replica;
        }
    }

    /// Re-verifies summarized segments, round robin, as far as this pass's
    /// share of the budget goes (a budget saved up over passes covers one
    /// segment of the largest size).
    fn scrub(&mut self, sealed: &[(u64, PathBuf)], vpg_id: u32) -> Result<()> {
        self.scrub_budget = (self.scrub_budget + Self::SCRUB_BYTES_PER_PASS)
            .min(super::JOURNAL_SEGMENT_BYTES.max(Self::SCRUB_BYTES_PER_PASS));
        for _ in 0..sealed.len() {
            let summarized = |p: &PathBuf| self.seen.contains_key(p);
            let Some((first_seq, path)) = sealed
                .iter()
                .find(|(f, p)| *f >= self.scrub_next && summarized(p))
                .or_else(|| sealed.iter().find(|(_, p)| summarized(p)))
                .cloned()
            else {
                self.scrub_budget = 0;
                return Ok(());
            };
            let Ok(len) = std::fs::metadata(&path).map(|m| m.len()) else { return Ok(()) };
            if self.scrub_budget < len {
                return Ok(());
            }
            self.scrub_budget -= len;
            self.scrub_next = first_seq + 1;
            self.scrub_one(&path, first_seq, vpg_id)?;
        }
        Ok(())
    }

    fn scrub_one(&mut self, path: &Path, first_seq: u64, vpg_id: u32) -> Result<()> {
        let why = match (build(path, vpg_id, first_seq), load_valid(path, vpg_id, first_seq)) {
            (Ok(Some(fresh)), Some(stored)) if fresh == stored => return Ok(()),
            (_, _) if !path.exists() => return Ok(()),
            // A sound segment its summary no longer describes: summarize
            // it again (readers already refuse the old one).
            (Ok(Some(fresh)), _) => {
                tracing::warn!("{}: its summary no longer described it; rewritten", path.display());
                store(path, &fresh)?;
                self.seen.extend(stamp(&summary_path(path)).map(|s| (path.to_path_buf(), s)));
                return Ok(());
            }
            // The summary made before the rot still serves every reader
            // (each reads the entries above where it starts).
            (Ok(None), _) if damage_is_harmless(path, vpg_id, first_seq, self.in_replica) => return Ok(()),
            // Only a reader from before the replica's seq (an open lease)
            // needs the damaged records. The summary is kept: the start
            // passes such damage only by it (`scan::past_damage`), and
            // once that reader is gone nothing needs those records.
            (Ok(None), _) if damage_is_harmless(path, vpg_id, first_seq, self.applied) => {
                let why = "is damaged in records only an open reader of an older checkpoint still needs (that \
                           reader fails there if it reads the segment itself; readers through its summary, the \
                           replica and later checkpoints are not affected)";
                tracing::error!("journal segment {} {why}", path.display());
                self.damage = Some((path.to_path_buf(), format!("journal segment {} {why}", path.display())));
                self.damage_at = (first_seq, self.in_replica);
                return Ok(());
            }
            (Ok(None), _) => "is damaged (found by the background check)".to_string(),
            // The storage failed, not the data: tried again at a later pass.
            (Err(e), _) if e.is_storage() => {
                tracing::warn!("{}: checking it failed, tried again later: {}", path.display(), Chain(&e));
                return Ok(());
            }
            (Err(e), _) => format!("cannot be read (found by the background check): {e_chain}", e_chain = Chain(&e)),
        };
        forget(path)?;
        self.seen.remove(path);
        self.failed.extend(stamp(path).map(|s| (path.to_path_buf(), s)));
        self.report_damage(path, first_seq, &why);
        Ok(())
    }

    /// Returns how many summaries it wrote. Records at or below
    /// `in_replica` (the replica's seq `applied`, or an older lease's
    /// base) are needed by no reader: damage in them is not reported.
    pub fn pass(&mut self, dir: &Path, vpg_id: u32, applied: u64, in_replica: u64) -> Result<usize> {
        self.in_replica = in_replica;
        self.applied = applied;
        let _lock = ApplyLock::shared(dir)?;
        self.forget_passed_damage(vpg_id);
        if dir.join(super::FAILOVER_RECORD_FILE).exists() {
            return Ok(0);
        }
        let segments = list_segments(dir, SegmentKind::Journal)?;
        let mut written = 0;
        if let Some((_, sealed)) = segments.split_last() {
            for (first_seq, path) in sealed {
                if written == Self::PER_PASS {
                    break;
                }
                let before = stamp(&summary_path(path));
                if before.is_some() && self.seen.get(path) == before.as_ref() {
                    continue;
                }
                let segment_stamp = stamp(path);
                if segment_stamp.is_some() && self.failed.get(path) == segment_stamp.as_ref() {
                    continue;
                }
                if load_valid(path, vpg_id, *first_seq).is_none() {
                    match build(path, vpg_id, *first_seq).and_then(|s| s.map(|s| store(path, &s)).transpose()) {
                        Ok(Some(())) => written += 1,
                        Ok(None) if damage_is_harmless(path, vpg_id, *first_seq, in_replica) => {
                            // Readers scan it, passing over the rot.
                            self.failed.extend(segment_stamp.map(|s| (path.clone(), s)));
                            continue;
                        }
                        Ok(None) => {
                            self.report_damage(path, *first_seq, "is damaged (found while summarizing it)");
                            self.failed.extend(segment_stamp.map(|s| (path.clone(), s)));
                            continue;
                        }
                        // Retired since the listing: nothing to do.
                        Err(_) if !path.exists() => continue,
                        // The storage failed, not the data: tried again
                        // at the next pass.
                        Err(e) if e.is_storage() => {
                            tracing::warn!(
                                "{}: summarizing it failed, tried again later: {}",
                                path.display(),
                                Chain(&e)
                            );
                            continue;
                        }
                        Err(e) => {
                            self.report_damage(
                                path,
                                *first_seq,
                                &format!("cannot be read (found while summarizing it): {e_chain}", e_chain = Chain(&e)),
                            );
                            self.failed.extend(segment_stamp.map(|s| (path.clone(), s)));
                            continue;
                        }
                    }
                }
                if let Some(s) = stamp(&summary_path(path)) {
                    self.seen.insert(path.clone(), s);
                }
            }
        }
        if let Some((_, sealed)) = segments.split_last() {
            self.scrub(sealed, vpg_id)?;
        }
        self.seen.retain(|p, _| p.exists());
        self.failed.retain(|p, _| p.exists());
        if self.damage.as_ref().is_some_and(|(p, _)| !p.exists()) {
            self.damage = None;
        }
        for entry in std::fs::read_dir(dir).doing(|| format!("listing {}", dir.display()))? {
            let path = entry.doing(|| format!("listing {}", dir.display()))?.path();
            let ext = path.extension().and_then(|e| e.to_str());
            let orphan = ext == Some(SUMMARY_EXTENSION) && !path.with_extension("").exists();
            if ext == Some(TEMP_EXTENSION) || orphan {
                forget_file(&path)?;
            }
        }
        Ok(written)
    }
}

/// A summary file's length and modification time, if it exists.
fn stamp(path: &Path) -> Option<(u64, SystemTime)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok()?))
}

fn forget_file(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Ok(Err(e).doing(|| format!("removing {}", path.display()))?)
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn kind_strategy() -> impl Strategy<Value = EntryKind> {
        prop_oneof![
            (any::<u32>(), any::<u64>(), 0u32..4096, 0u64..1 << 20, any::<u32>())
                .prop_map(|(volume, offset, len, at, crc)| EntryKind::Write { volume, offset, len, at, crc }),
            (any::<u32>(), any::<u64>(), any::<u64>()).prop_map(|(volume, offset, length)| EntryKind::Zero {
                volume,
                offset,
                length
            }),
            // Up to 63 characters of any script: at most 252 bytes of UTF-8.
            (any::<u64>(), "\\PC{0,63}", any::<bool>()).prop_map(|(time_ms, tag, resync)| EntryKind::Checkpoint {
                time_ms,
                tag,
                resync
            }),
            any::<u32>().prop_map(|volume| EntryKind::CopyDone { volume }),
            (any::<u64>(), any::<u32>()).prop_map(|(time_ms, stream_id)| EntryKind::StreamStart { time_ms, stream_id }),
        ]
    }

    proptest! {
        #[test]
        fn every_summary_the_encoder_writes_decodes_to_itself(
            first_seq in 1u64..u64::MAX / 2,
            kinds in prop::collection::vec((1u64..1000, kind_strategy()), 0..40),
        ) {
            let mut seq = first_seq - 1;
            let entries = kinds
                .into_iter()
                .map(|(step, kind)| {
                    seq += step;
                    Entry { seq, kind }
                })
                .collect();
            let summary = SegmentSummary {
                vpg_id: 3,
                first_seq,
                segment_len: 2 << 20,
                last_record_at: 77,
                last_header_crc: 5,
                entries,
            };
            let bytes = summary.to_bytes();
            prop_assert_eq!(SegmentSummary::from_bytes(&bytes).unwrap(), summary);
        }
    }
}
