//! The journal's segment files, reached through the `Storage` seam so the
//! simulator can tear, fail and power-cut them: what a start makes of what
//! a stop left (`recover`), and appending a batch's bytes durably, or not
//! at all (`SegmentFiles::append`). What the records mean (the index, the
//! stream rules, the cap, the apply) is `Journal`'s, in `mod.rs`.

use super::error::JournalError;
use super::scan::{scan_journal_on, Damage, RecordAt, ScanOutcome};
use crate::io_failure::{Doing, IoFailure};
use crate::record::Record;
use crate::segment::{create_segment_on, list_segments_on, remove_unfinished_creations_on, segment_path, SegmentKind};
use crate::storage::{Storage, StorageFile};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

type Result<T> = std::result::Result<T, JournalError>;

/// Where damaged segments are kept, in the journal's directory.
pub(super) const QUARANTINE_DIR: &str = "quarantine";

/// Called with each segment that goes away at open (a creation without
/// its header, a quarantined or cut one), before it goes: whatever was
/// derived from it (its summary) must not outlive it.
pub type Forget<'a> = &'a mut dyn FnMut(&Path) -> Result<()>;

/// Makes whole what a stop left in `dir`, and reads every verified record
/// in order into `visit`:
/// 1. every segment is fsynced, then the directory: a killed predecessor's
///    appends, and the name of a segment it created, may be only in the
///    page cache, and nothing may be advertised or retired on the strength
///    of them (records fsynced into a segment whose name is not durable
///    vanish with the name in a power cut);
/// 2. a newest segment without a whole header is a creation a crash cut
///    short (earlier builds named it before writing it): it is removed;
/// 3. the records are scanned, the newest segment from the disk (see
///    `scan_journal_on`); a torn tail is cut, and a corrupt record moves
///    the damaged segment's original and every later segment to
///    `quarantine/` and the journal continues from the last good record.
///    Records at or below `in_replica` (in the replica already) are not
///    checked: damage in them harms nothing.
pub fn recover(
    fs: &dyn Storage,
    dir: &Path,
    vpg_id: u32,
    in_replica: u64,
    forget: Forget<'_>,
    visit: impl FnMut(&Record, RecordAt),
) -> Result<ScanOutcome> {
    remove_unfinished_creations_on(fs, dir)?;
    let segments = list_segments_on(fs, dir, SegmentKind::Journal)?;
    for (_, path) in &segments {
        fs.open_read(path)
            .and_then(|f| f.sync_all())
            .doing(|| format!("syncing {} (written before this start)", path.display()))?;
    }
    sync_dir(fs, dir)?;
    if let Some((_, newest)) = segments.last() {
        let len = fs.size_of(newest).doing(|| format!("sizing {}", newest.display()))?;
        if len < crate::segment::SEGMENT_HEADER_BYTES as u64 {
            tracing::warn!("journal: removing {}, created without its header", newest.display());
            forget(newest)?;
            fs.remove_file(newest).doing(|| format!("removing {}", newest.display()))?;
            sync_dir(fs, dir)?;
        }
    }
    let outcome = scan_journal_on(fs, dir, vpg_id, in_replica, visit)?;
    if let Some(damage) = &outcome.damage {
        repair(fs, dir, damage, &outcome.segments, forget)?;
    }
    Ok(outcome)
}

/// Cuts the journal back to its last good record (see `recover`).
fn repair(
    fs: &dyn Storage,
    dir: &Path,
    damage: &Damage,
    segments: &[(u64, PathBuf)],
    forget: Forget<'_>,
) -> Result<()> {
    let position = segments.iter().position(|(_, p)| *p == damage.path).expect("damage is found in a listed segment");
    let is_last = position + 1 == segments.len();
    if damage.torn && is_last {
        tracing::warn!("journal: cutting torn tail: {damage}");
    } else {
        tracing::error!("journal: damage found, quarantining: {damage}");
        let quarantine = dir.join(QUARANTINE_DIR);
        fs.create_dir_all(&quarantine).doing(|| format!("creating {}", quarantine.display()))?;
        let name = damage.path.file_name().expect("a listed segment has a name");
        copy(fs, &damage.path, &quarantine.join(name))
            .doing(|| format!("keeping the damaged segment {} in {}", damage.path.display(), quarantine.display()))?;
        for (_, later) in &segments[position + 1..] {
            let name = later.file_name().expect("a listed segment has a name");
            // What was derived from it first: a crash between leaves
            // nothing of a segment that is gone.
            forget(later)?;
            fs.rename(later, &quarantine.join(name)).doing(|| "quarantining a later segment".to_string())?;
        }
        // The quarantine and its names are durable before the original is
        // cut: they are the only evidence of the damage.
        sync_dir(fs, &quarantine)?;
        sync_dir(fs, dir)?;
    }
    forget(&damage.path)?;
    let f = fs.open_append(&damage.path).doing(|| format!("opening {}", damage.path.display()))?;
    f.set_len(damage.offset).doing(|| format!("cutting {}", damage.path.display()))?;
    f.sync_all().doing(|| format!("syncing {}", damage.path.display()))?;
    sync_dir(fs, dir)
}

/// A durable copy of `from` at `to` (replaced if there).
fn copy(fs: &dyn Storage, from: &Path, to: &Path) -> std::io::Result<()> {
    let source = fs.open_read(from)?;
    let mut bytes = vec![0u8; source.size()? as usize];
    let read = source.read_at(&mut bytes, 0)?;
    bytes.truncate(read);
    if fs.exists(to) {
        fs.remove_file(to)?;
    }
    let copy = fs.create_new(to)?;
    copy.append(&[&bytes])?;
    copy.sync_all()?;
    Ok(())
}

fn sync_dir(fs: &dyn Storage, dir: &Path) -> Result<()> {
    Ok(fs.sync_dir(dir).doing(|| format!("syncing directory {}", dir.display()))?)
}

/// When the newest segment is closed and a new one started.
#[derive(Debug, Clone, Copy)]
pub struct Rolling {
    pub segment_bytes: u64,
    /// A segment holding records is closed once this old, so retiring
    /// history is not held up by a slow stream.
    pub segment_age: Duration,
}

/// The newest segment, which batches are appended to.
pub struct SegmentFiles {
    fs: Arc<dyn Storage>,
    dir: PathBuf,
    vpg_id: u32,
    current: Arc<dyn StorageFile>,
    current_len: u64,
    current_opened: Instant,
    rolling: Rolling,
}

impl SegmentFiles {
    /// The newest segment of the journal `recover` made whole, or a first
    /// one whose records start at `next_seq`.
    pub fn open(fs: Arc<dyn Storage>, dir: &Path, vpg_id: u32, rolling: Rolling, next_seq: u64) -> Result<Self> {
        let newest = list_segments_on(&*fs, dir, SegmentKind::Journal)?.pop().map(|(_, p)| p);
        let current = match newest {
            Some(path) => fs.open_append(&path).doing(|| format!("opening {}", path.display()))?,
            None => create_segment_on(&*fs, dir, SegmentKind::Journal, vpg_id, next_seq, 0, &[])?.1,
        };
        let current_len = current.size().doing(|| "sizing the journal's newest segment".to_string())?;
        Ok(SegmentFiles {
            fs,
            dir: dir.to_path_buf(),
            vpg_id,
            current,
            current_len,
            current_opened: Instant::now(),
            rolling,
        })
    }

    /// Appends the bytes of verified records, the first with seq
    /// `first_seq`, and fsyncs them: durable when this returns. On an
    /// error nothing of them stays in the journal (a partial write is cut
    /// off and that is made durable), so the batch can come again; when
    /// even that fails the process stops, as it can promise nothing.
    pub fn append(&mut self, bytes: &[u8], first_seq: u64) -> Result<()> {
        assert!(first_seq > 0 && bytes.len() >= crate::record::RECORD_HEADER_BYTES, "a batch of no record");
        let holds_records = self.current_len > crate::segment::SEGMENT_HEADER_BYTES as u64;
        let old = self.current_opened.elapsed() >= self.rolling.segment_age;
        if self.current_len >= self.rolling.segment_bytes || (old && holds_records) {
            // A roll that failed after naming its segment (the directory's
            // sync failed, and then its removal) left it, empty: no record
            // was appended there. Without this, every later roll at this
            // seq, so every resending of the batch, would fail on it.
            let leftover = segment_path(&self.dir, SegmentKind::Journal, first_seq);
            if self.fs.exists(&leftover) {
                tracing::warn!("journal: removing {}, left by a roll that failed", leftover.display());
                self.fs.remove_file(&leftover).doing(|| format!("removing {}", leftover.display()))?;
            }
            let (_, f) = create_segment_on(&*self.fs, &self.dir, SegmentKind::Journal, self.vpg_id, first_seq, 0, &[])?;
            self.current_len = f.size().doing(|| "sizing a new journal segment".to_string())?;
            self.current = f;
            self.current_opened = Instant::now();
        }
        let written = (|| {
            // Half the batch reaches the file, then the disk is full.
            fail::fail_point!("journal-append-torn", |_| {
                let _ = self.current.append(&[&bytes[..bytes.len() / 2]]);
                Err(std::io::Error::from_raw_os_error(28))
            });
            self.current.append(&[bytes])?;
            self.current.sync_data()
        })();
        if let Err(e) = written {
            // Nothing of a failed batch may stay in front of its resending.
            let undone = self.current.set_len(self.current_len).and_then(|()| self.current.sync_all());
            if let Err(undo) = undone {
                // Durability can no longer be promised: stop rather than lie.
                self.fs.stop_process(&format!("journal append failed ({e}) and could not be undone ({undo})"));
            }
            return Err(IoFailure::new("appending to the journal (undone)", e).into());
        }
        self.current_len += bytes.len() as u64;
        Ok(())
    }

    #[cfg(test)]
    pub(super) fn set_segment_bytes(&mut self, bytes: u64) {
        self.rolling.segment_bytes = bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Record, RecordBody};
    use crate::storage::sim::SimStorage;

    const VPG_ID: u32 = 5;

    fn write(seq: u64) -> Vec<u8> {
        let body = RecordBody::Write { volume: 0, offset: seq * 4096, data: vec![seq as u8; 4096] };
        Record { seq, vpg_id: VPG_ID, body }.encode()
    }

    /// What a quarantine keeps, the damaged segment's original and every
    /// later segment, is still there after a power cut: it is the only
    /// evidence of the damage (the journal itself is cut back).
    #[test]
    fn a_quarantine_survives_a_power_cut() {
        for seed in 0..32 {
            let fs = SimStorage::new(seed);
            let dir = Path::new("/sim/journal");
            fs.create_dir_all(dir).unwrap();
            let rolling = Rolling { segment_bytes: 6000, segment_age: Duration::from_secs(3600) };
            let mut files = SegmentFiles::open(Arc::new(fs.clone()), dir, VPG_ID, rolling, 1).unwrap();
            let mut damaged = [write(1), write(2)].concat();
            let last = damaged.len() - 1;
            damaged[last] ^= 0x40;
            files.append(&damaged, 1).unwrap();
            files.append(&write(3), 3).unwrap();
            drop(files);
            let segments = list_segments_on(&fs, dir, SegmentKind::Journal).unwrap();
            assert_eq!(segments.len(), 2, "seed {seed}: the third record starts a segment of its own");
            let outcome = recover(&fs, dir, VPG_ID, 0, &mut |_| Ok(()), |_, _| {}).unwrap();
            assert!(outcome.damage.is_some_and(|d| !d.torn), "seed {seed}: a corrupt record in a closed segment");
            fs.power_cut();
            let quarantine = dir.join(QUARANTINE_DIR);
            for (_, path) in &segments {
                let kept = quarantine.join(path.file_name().unwrap());
                assert!(fs.exists(&kept), "seed {seed}: {} is gone from the quarantine", kept.display());
            }
            assert_eq!(list_segments_on(&fs, dir, SegmentKind::Journal).unwrap().len(), 1, "seed {seed}");
        }
    }
}
