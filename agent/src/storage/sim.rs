//! An in-memory file system for the seeded fault simulator (`simulator`),
//! modelled on TigerBeetle's `src/testing/storage.zig`: every file keeps
//! what the process sees (`data`, the page cache) apart from what a power
//! cut leaves (`durable`, as of its last fsync), and every directory entry
//! likewise (`names` apart from `durable_names`, as of the directory's
//! last sync). From the seed it
//! - fails operations (EIO on reads, opens, renames, removals, directory
//!   and file syncs; ENOSPC on creations and appends, an append leaving
//!   any strict prefix of its bytes behind) while faults are on;
//! - on a failed fsync, does what Linux does: the dirty pages it could not
//!   write back are marked clean, the page cache goes on showing their
//!   bytes, the disk holds zeros there, and no later fsync writes them
//!   (it succeeds: nothing is dirty). A process that trusts the page
//!   cache after that, even a successor after a kill, is lied to;
//! - on `power_cut`, drops every name and byte not made durable, keeping
//!   of the unsynced name changes any prefix (in their order), of an
//!   unsynced append any prefix, sometimes with a garbled byte (a
//!   torn sector), and of each page written over in place (`write_at`)
//!   its old bytes, its new ones, or a new prefix of it;
//! - on `crash` (SIGKILL), keeps everything: the page cache survives a
//!   process.
//!
//! After either, the handles opened before fail (EBADF): a dead process's
//! threads must not write into its successor's files.
//!
//! Directories are created durable and never removed (the log makes its
//! directory once).

use super::{FsSpace, Storage, StorageFile};
use crate::simulator::rng::SimRng;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Error, ErrorKind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

const EIO: i32 = 5;
const EBADF: i32 = 9;
const ENOSPC: i32 = 28;
/// The simulated disk's size by default: what `space` counts files against.
const SIM_DISK_BYTES: u64 = 64 << 20;

/// What was done to the storage, for the simulator's report.
#[derive(Debug, Default, Clone, Copy)]
pub struct SimStorageStats {
    pub faults: u64,
    pub power_cuts: u64,
    pub crashes: u64,
    /// Power cuts that left part of an unsynced append behind.
    pub torn_tails: u64,
    /// File fsyncs failed (their dirty pages dropped).
    pub failed_syncs: u64,
    /// Removals failed.
    pub failed_removals: u64,
}

#[derive(Clone)]
pub struct SimStorage {
    state: Arc<Mutex<SimState>>,
}

struct SimState {
    rng: SimRng,
    /// Chance, per thousand, that a fallible operation fails (0: off).
    fault_per_mille: u32,
    /// The disk's size, for `space`.
    disk_bytes: u64,
    files: HashMap<u64, FileData>,
    names: BTreeMap<PathBuf, u64>,
    durable_names: BTreeMap<PathBuf, u64>,
    /// Name changes not yet made durable, oldest first, each atomic (a
    /// rename is two): a name given an id, or (None) taken away. A power
    /// cut keeps any prefix of them (a file system journal commits in
    /// order, and on its own schedule).
    unsynced_names: Vec<Vec<(PathBuf, Option<u64>)>>,
    dirs: BTreeSet<PathBuf>,
    next_id: u64,
    /// Bumped by every crash and power cut: older handles are dead.
    generation: u64,
    /// Operations left before the process dies (a crash inside a step).
    death_in: Option<u64>,
    /// The process died: every operation fails until `crash` or
    /// `power_cut` starts its successor.
    dead: bool,
    stats: SimStorageStats,
}

#[derive(Default)]
struct FileData {
    /// What the process reads: the page cache.
    data: Vec<u8>,
    /// What the disk holds as of the last fsync, successful or not.
    durable: Vec<u8>,
    /// `data[..clean_to]` is clean: the disk holds `durable` there, which
    /// differs where a failed fsync dropped dirty pages. The rest is
    /// dirty, written back by the next fsync.
    clean_to: usize,
    /// Pages below `clean_to` written over in place since: dirty too.
    overwritten: BTreeSet<usize>,
}

/// The unit in which pages written over in place reach the disk.
const PAGE_BYTES: usize = 4096;

impl FileData {
    /// What the disk holds once every dirty page is written back.
    fn written_back(&self) -> Vec<u8> {
        let mut image = self.durable.clone();
        image.resize(self.clean_to, 0);
        for range in self.overwritten_ranges(self.clean_to) {
            image[range.clone()].copy_from_slice(&self.data[range]);
        }
        image.extend_from_slice(&self.data[self.clean_to..]);
        image
    }

    /// The byte ranges of the pages written over in place, below `end`.
    fn overwritten_ranges(&self, end: usize) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
        self.overwritten
            .iter()
            .map(move |p| p * PAGE_BYTES..((p + 1) * PAGE_BYTES).min(end))
            .filter(|r| r.start < r.end)
    }

    /// A successful fsync.
    fn synced(&mut self) {
        self.durable = self.written_back();
        self.clean_to = self.data.len();
        self.overwritten.clear();
    }

    /// A failed fsync: the dirty pages are dropped (marked clean, never
    /// written: the disk keeps what it had there, or zeros past its end),
    /// the size reaches the disk.
    fn sync_failed(&mut self) {
        self.durable.resize(self.data.len(), 0);
        self.clean_to = self.data.len();
        self.overwritten.clear();
    }

    /// Writes `bytes` at `offset`, over the data and past its end.
    fn write(&mut self, offset: usize, bytes: &[u8]) {
        let end = offset + bytes.len();
        if self.data.len() < end {
            self.data.resize(end, 0);
        }
        self.data[offset..end].copy_from_slice(bytes);
        let over = offset.min(self.clean_to)..end.min(self.clean_to);
        if over.start < over.end {
            self.overwritten.extend(over.start / PAGE_BYTES..=(over.end - 1) / PAGE_BYTES);
        }
    }
}

struct SimFile {
    state: Arc<Mutex<SimState>>,
    id: u64,
    generation: u64,
    /// Reads what the disk holds (O_DIRECT), not the page cache.
    direct: bool,
    /// Opened to append (O_APPEND): `write_at` writes at the end, as Linux
    /// does whatever the offset.
    appending: bool,
}

impl SimStorage {
    pub fn new(seed: u64) -> Self {
        SimStorage {
            state: Arc::new(Mutex::new(SimState {
                rng: SimRng::new(seed),
                fault_per_mille: 0,
                disk_bytes: SIM_DISK_BYTES,
                files: HashMap::new(),
                names: BTreeMap::new(),
                durable_names: BTreeMap::new(),
                unsynced_names: Vec::new(),
                dirs: BTreeSet::new(),
                next_id: 1,
                generation: 0,
                death_in: None,
                dead: false,
                stats: SimStorageStats::default(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, SimState> {
        self.state.lock().expect("sim storage lock")
    }

    /// An existing file, `direct` or through the page cache, `appending`
    /// or not.
    fn open(&self, path: &Path, direct: bool, appending: bool) -> std::io::Result<Arc<dyn StorageFile>> {
        let mut s = self.lock();
        s.fail(EIO)?;
        let id = s.id_of(path)?;
        Ok(s.handle(&self.state, id, direct, appending))
    }

    /// Faults from now on, per thousand fallible operations (0: none).
    /// The disk's size, which `space` reports (nothing else is refused
    /// for it: ENOSPC comes as an injected fault).
    pub fn set_disk_bytes(&self, bytes: u64) {
        self.lock().disk_bytes = bytes;
    }

    pub fn set_fault_per_mille(&self, per_mille: u32) {
        assert!(per_mille <= 1000);
        self.lock().fault_per_mille = per_mille;
    }

    pub fn stats(&self) -> SimStorageStats {
        self.lock().stats
    }

    /// The process dies after `ops` more operations, in the middle of
    /// whatever it is doing: from then on nothing it does reaches storage.
    pub fn die_after(&self, ops: u64) {
        self.lock().death_in = Some(ops);
    }

    /// Bytes the files named in `dir` hold, as the process sees them (for
    /// the simulator's checks: takes no step and never fails).
    pub fn bytes_in(&self, dir: &Path) -> u64 {
        let s = self.lock();
        s.names.iter().filter(|(p, _)| p.parent() == Some(dir)).map(|(_, id)| s.files[id].data.len() as u64).sum()
    }

    pub fn is_dead(&self) -> bool {
        self.lock().dead
    }

    /// The process dies: its handles go, the page cache stays.
    pub fn crash(&self) {
        let mut s = self.lock();
        s.restart();
        s.stats.crashes += 1;
    }

    /// The machine loses power: what was not fsynced goes (see the module
    /// comment), and the process with it.
    pub fn power_cut(&self) {
        let mut s = self.lock();
        s.restart();
        s.stats.power_cuts += 1;
        let unsynced = std::mem::take(&mut s.unsynced_names);
        let kept = s.rng.below(unsynced.len() as u64 + 1) as usize;
        for (path, id) in unsynced.into_iter().take(kept).flatten() {
            s.name_durably(path, id);
        }
        s.names = s.durable_names.clone();
        let alive: BTreeSet<u64> = s.names.values().copied().collect();
        s.files.retain(|id, _| alive.contains(id));
        let mut ids: Vec<u64> = s.files.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let SimState { files, rng, stats, .. } = &mut *s;
            let file = files.get_mut(&id).expect("listed");
            let after = survivor(file, rng);
            if after.len() > file.durable.len() {
                stats.torn_tails += 1;
            }
            file.clean_to = after.len();
            file.data = after.clone();
            file.durable = after;
        }
    }
}

/// What of `file` a power cut leaves: its durable bytes, and of an
/// unsynced append any prefix (now and then with one byte garbled);
/// of an unsynced truncation, either side; of each page written over in
/// place, its old bytes, its new ones or a new prefix (a torn page).
fn survivor(file: &FileData, rng: &mut SimRng) -> Vec<u8> {
    if !file.overwritten.is_empty() {
        return survivor_of_overwrites(file, rng);
    }
    let (data, durable) = (&file.written_back(), &file.durable);
    if data.len() > durable.len() && data.starts_with(durable) {
        let kept = unsynced_kept(data.len() - durable.len(), rng);
        let mut after = data[..durable.len() + kept].to_vec();
        if kept > 0 && rng.below(8) == 0 {
            let at = durable.len() + rng.below(kept as u64) as usize;
            after[at] ^= 1 << rng.below(8);
        }
        after
    } else if rng.below(2) == 0 {
        durable.clone()
    } else {
        data.clone()
    }
}

/// How many of `unsynced` appended bytes a power cut leaves: none, all, or
/// any number between.
fn unsynced_kept(unsynced: usize, rng: &mut SimRng) -> usize {
    match rng.below(3) {
        0 => 0,
        1 => unsynced,
        _ => rng.below(unsynced as u64 + 1) as usize,
    }
}

/// `survivor` of a file with pages written over in place: each of them
/// is decided apart, then an unsynced append or truncation as there.
fn survivor_of_overwrites(file: &FileData, rng: &mut SimRng) -> Vec<u8> {
    let data = file.written_back();
    let mut after = file.durable.clone();
    let common = after.len().min(data.len());
    for range in file.overwritten_ranges(common) {
        let kept_to = match rng.below(4) {
            0 => range.start,
            3 => range.start + rng.below((range.end - range.start) as u64) as usize,
            _ => range.end,
        };
        after[range.start..kept_to].copy_from_slice(&data[range.start..kept_to]);
    }
    if data.len() > after.len() {
        let kept = unsynced_kept(data.len() - after.len(), rng);
        after.extend_from_slice(&data[common..common + kept]);
    } else if rng.below(2) == 0 {
        after.truncate(data.len());
    }
    // Now and then a torn sector: one byte of what reached the disk since
    // the last fsync garbled.
    let changed: Vec<usize> = (0..after.len()).filter(|&i| file.durable.get(i) != Some(&after[i])).collect();
    if !changed.is_empty() && rng.below(8) == 0 {
        let at = changed[rng.below(changed.len() as u64) as usize];
        after[at] ^= 1 << rng.below(8);
    }
    after
}

impl SimState {
    /// A new process: older handles are dead, and it is alive.
    fn restart(&mut self) {
        self.generation += 1;
        self.dead = false;
        self.death_in = None;
    }

    /// One operation of the process: refused if it is dead, and the one
    /// that kills it when its death is due.
    fn tick(&mut self) -> std::io::Result<()> {
        match self.death_in {
            _ if self.dead => return Err(dead()),
            Some(0) => {
                self.dead = true;
                self.death_in = None;
                return Err(dead());
            }
            Some(n) => self.death_in = Some(n - 1),
            None => {}
        }
        Ok(())
    }

    /// Whether this operation fails (counted).
    fn fault(&mut self) -> bool {
        let hit = self.fault_per_mille > 0 && self.rng.below(1000) < self.fault_per_mille as u64;
        if hit {
            self.stats.faults += 1;
        }
        hit
    }

    fn fail(&mut self, errno: i32) -> std::io::Result<()> {
        self.tick()?;
        if self.fault() {
            return Err(Error::from_raw_os_error(errno));
        }
        Ok(())
    }

    /// Gives each path its file id, or (None) takes the name away, as one
    /// atomic change, durable once its directory is synced.
    fn change_names(&mut self, change: Vec<(PathBuf, Option<u64>)>) {
        for (path, id) in &change {
            match id {
                Some(id) => self.names.insert(path.clone(), *id),
                None => self.names.remove(path),
            };
        }
        self.unsynced_names.push(change);
    }

    fn name_durably(&mut self, path: PathBuf, id: Option<u64>) {
        match id {
            Some(id) => self.durable_names.insert(path, id),
            None => self.durable_names.remove(&path),
        };
    }

    fn id_of(&self, path: &Path) -> std::io::Result<u64> {
        self.names.get(path).copied().ok_or_else(|| not_found(path))
    }

    /// A handle of this process on file `id`; a `direct` one reads what
    /// the disk holds.
    fn handle(&mut self, state: &Arc<Mutex<SimState>>, id: u64, direct: bool, appending: bool) -> Arc<dyn StorageFile> {
        Arc::new(SimFile { state: state.clone(), id, generation: self.generation, direct, appending })
    }
}

fn dead() -> Error {
    Error::other("the simulated process is dead")
}

fn not_found(path: &Path) -> Error {
    Error::new(ErrorKind::NotFound, format!("{}: no such file", path.display()))
}

fn parent(path: &Path) -> PathBuf {
    path.parent().map(Path::to_path_buf).unwrap_or_default()
}

impl Storage for SimStorage {
    fn space(&self, dir: &Path) -> std::io::Result<FsSpace> {
        let mut s = self.lock();
        s.fail(EIO)?;
        if !s.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        let used: u64 = s.files.values().map(|f| f.data.len() as u64).sum();
        Ok(FsSpace { available: s.disk_bytes.saturating_sub(used), total: s.disk_bytes })
    }

    fn create_dir_all(&self, dir: &Path) -> std::io::Result<()> {
        let mut s = self.lock();
        s.tick()?;
        for d in dir.ancestors() {
            s.dirs.insert(d.to_path_buf());
        }
        Ok(())
    }

    fn list(&self, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
        let mut s = self.lock();
        s.fail(EIO)?;
        if !s.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        Ok(s.names.keys().filter(|p| p.parent() == Some(dir)).cloned().collect())
    }

    fn exists(&self, path: &Path) -> bool {
        self.lock().names.contains_key(path)
    }

    fn size_of(&self, path: &Path) -> std::io::Result<u64> {
        let mut s = self.lock();
        s.fail(EIO)?;
        let id = s.id_of(path)?;
        Ok(s.files[&id].data.len() as u64)
    }

    fn create_new(&self, path: &Path) -> std::io::Result<Arc<dyn StorageFile>> {
        let mut s = self.lock();
        s.fail(ENOSPC)?;
        if s.names.contains_key(path) {
            return Err(Error::new(ErrorKind::AlreadyExists, format!("{} exists", path.display())));
        }
        if !s.dirs.contains(&parent(path)) {
            return Err(not_found(&parent(path)));
        }
        let id = s.next_id;
        s.next_id += 1;
        s.files.insert(id, FileData::default());
        s.change_names(vec![(path.to_path_buf(), Some(id))]);
        Ok(s.handle(&self.state, id, false, true))
    }

    fn open_append(&self, path: &Path) -> std::io::Result<Arc<dyn StorageFile>> {
        self.open(path, false, true)
    }

    fn open_rw(&self, path: &Path) -> std::io::Result<Arc<dyn StorageFile>> {
        self.open(path, false, false)
    }

    fn open_read(&self, path: &Path) -> std::io::Result<Arc<dyn StorageFile>> {
        self.open(path, false, false)
    }

    fn open_direct(&self, path: &Path) -> std::io::Result<Arc<dyn StorageFile>> {
        self.open(path, true, false)
    }

    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        let mut s = self.lock();
        s.fail(EIO)?;
        let id = s.id_of(from)?;
        s.change_names(vec![(from.to_path_buf(), None), (to.to_path_buf(), Some(id))]);
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> std::io::Result<()> {
        let mut s = self.lock();
        s.tick()?;
        if s.fault() {
            s.stats.failed_removals += 1;
            return Err(Error::from_raw_os_error(EIO));
        }
        s.id_of(path)?;
        s.change_names(vec![(path.to_path_buf(), None)]);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        let mut s = self.lock();
        s.fail(EIO)?;
        // The entries of `dir`; a rename into another directory is made
        // durable whole (not done by the code simulated).
        let (done, pending): (Vec<_>, Vec<_>) = std::mem::take(&mut s.unsynced_names)
            .into_iter()
            .partition(|change| change.iter().any(|(p, _)| p.parent() == Some(dir)));
        for (path, id) in done.into_iter().flatten() {
            s.name_durably(path, id);
        }
        s.unsynced_names = pending;
        Ok(())
    }

    fn stop_process(&self, _why: &str) {
        self.lock().dead = true;
    }
}

impl SimFile {
    /// The state, if this handle's process is still alive.
    fn live(&self) -> std::io::Result<MutexGuard<'_, SimState>> {
        let mut s = self.state.lock().expect("sim storage lock");
        if s.generation != self.generation {
            return Err(Error::from_raw_os_error(EBADF));
        }
        s.tick()?;
        Ok(s)
    }

    /// Either fsync: a failure drops the dirty pages (see the module).
    fn sync(&self) -> std::io::Result<()> {
        let mut s = self.live()?;
        let failed = s.fault();
        s.stats.failed_syncs += failed as u64;
        let file = s.files.get_mut(&self.id).expect("open file");
        if failed {
            file.sync_failed();
            return Err(Error::from_raw_os_error(EIO));
        }
        file.synced();
        Ok(())
    }
}

impl StorageFile for SimFile {
    fn append(&self, parts: &[&[u8]]) -> std::io::Result<()> {
        assert!(!self.direct, "appending through a direct-read handle");
        // Linux would write at the handle's position (from 0), or refuse.
        assert!(self.appending, "appending through a handle not opened to append");
        // An appending handle writes at the end, whatever the offset.
        self.write_at(parts, 0)
    }

    fn write_at(&self, parts: &[&[u8]], offset: u64) -> std::io::Result<()> {
        assert!(!self.direct, "writing through a direct-read handle");
        let mut s = self.live()?;
        let bytes = parts.concat();
        let end = s.files[&self.id].data.len();
        let offset = if self.appending { end } else { offset as usize };
        if s.fault() {
            let kept = s.rng.below(bytes.len() as u64) as usize;
            s.files.get_mut(&self.id).expect("open file").write(offset, &bytes[..kept]);
            return Err(Error::from_raw_os_error(ENOSPC));
        }
        s.files.get_mut(&self.id).expect("open file").write(offset, &bytes);
        Ok(())
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        let mut s = self.live()?;
        s.fail(EIO)?;
        let file = &s.files[&self.id];
        // A direct read writes the dirty pages back first, then reads the disk.
        let image;
        let data = match self.direct {
            true => {
                image = file.written_back();
                &image
            }
            false => &file.data,
        };
        let start = (offset as usize).min(data.len());
        let n = buf.len().min(data.len() - start);
        buf[..n].copy_from_slice(&data[start..start + n]);
        Ok(n)
    }

    fn size(&self) -> std::io::Result<u64> {
        Ok(self.live()?.files[&self.id].data.len() as u64)
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        let mut s = self.live()?;
        s.fail(EIO)?;
        let file = s.files.get_mut(&self.id).expect("open file");
        file.data.resize(len as usize, 0);
        file.clean_to = file.clean_to.min(file.data.len());
        let pages = file.data.len().div_ceil(PAGE_BYTES);
        file.overwritten.retain(|p| *p < pages);
        Ok(())
    }

    fn sync_data(&self) -> std::io::Result<()> {
        self.sync()
    }

    fn sync_all(&self) -> std::io::Result<()> {
        self.sync()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        PathBuf::from("/log")
    }

    #[test]
    fn a_power_cut_keeps_only_what_was_synced() {
        let fs = SimStorage::new(1);
        fs.create_dir_all(&dir()).unwrap();
        let synced = fs.create_new(&dir().join("a")).unwrap();
        synced.append(&[b"kept"]).unwrap();
        synced.sync_all().unwrap();
        fs.sync_dir(&dir()).unwrap();
        let unnamed = fs.create_new(&dir().join("b")).unwrap();
        unnamed.append(&[b"data"]).unwrap();
        unnamed.sync_all().unwrap();
        fs.power_cut();
        let listed = fs.list(&dir()).unwrap();
        assert!(listed.starts_with(&[dir().join("a")]) && listed.len() <= 2, "{listed:?}");
        let mut buf = [0u8; 16];
        let n = fs.open_read(&dir().join("a")).unwrap().read_at(&mut buf, 0).unwrap();
        assert_eq!(&buf[..n], b"kept");
        assert!(synced.size().is_err(), "a handle of the dead process still works");
    }

    #[test]
    fn a_failed_fsync_drops_the_dirty_pages_for_good() {
        let fs = SimStorage::new(3);
        fs.create_dir_all(&dir()).unwrap();
        let f = fs.create_new(&dir().join("a")).unwrap();
        f.append(&[b"synced|"]).unwrap();
        f.sync_data().unwrap();
        fs.sync_dir(&dir()).unwrap();
        f.append(&[b"dropped"]).unwrap();
        fs.set_fault_per_mille(1000);
        assert!(f.sync_data().is_err());
        fs.set_fault_per_mille(0);
        fs.crash();
        let mut buf = [0u8; 32];
        let again = fs.open_read(&dir().join("a")).unwrap();
        let n = again.read_at(&mut buf, 0).unwrap();
        assert_eq!(&buf[..n], b"synced|dropped", "the page cache still shows the bytes");
        again.sync_all().expect("nothing is dirty: the retry succeeds");
        let n = fs.open_direct(&dir().join("a")).unwrap().read_at(&mut buf, 0).unwrap();
        assert_eq!(&buf[..n], b"synced|\0\0\0\0\0\0\0", "a direct read shows the disk");
        fs.power_cut();
        let n = fs.open_read(&dir().join("a")).unwrap().read_at(&mut buf, 0).unwrap();
        assert_eq!(&buf[..n], b"synced|\0\0\0\0\0\0\0", "the disk never got them");
    }

    #[test]
    fn a_power_cut_keeps_unsynced_name_changes_in_order() {
        let mut outcomes = std::collections::BTreeSet::new();
        for seed in 0..64 {
            let fs = SimStorage::new(seed);
            fs.create_dir_all(&dir()).unwrap();
            fs.create_new(&dir().join("b")).unwrap();
            fs.rename(&dir().join("b"), &dir().join("c")).unwrap();
            fs.power_cut();
            let listed: Vec<String> = (fs.list(&dir()).unwrap().iter())
                .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                .collect();
            outcomes.insert(listed.join(","));
        }
        // Nothing, the creation, or the rename too (atomic: never neither
        // name once the creation is kept).
        let want: std::collections::BTreeSet<String> = ["", "b", "c"].map(String::from).into();
        assert_eq!(outcomes, want);
    }

    #[test]
    fn a_crash_keeps_the_page_cache() {
        let fs = SimStorage::new(2);
        fs.create_dir_all(&dir()).unwrap();
        let f = fs.create_new(&dir().join("a")).unwrap();
        f.append(&[b"cached"]).unwrap();
        fs.crash();
        assert_eq!(fs.size_of(&dir().join("a")).unwrap(), 6);
        assert!(f.append(&[b"more"]).is_err());
    }

    #[test]
    fn an_unsynced_append_leaves_a_prefix_at_most() {
        for seed in 0..64 {
            let fs = SimStorage::new(seed);
            fs.create_dir_all(&dir()).unwrap();
            let f = fs.create_new(&dir().join("a")).unwrap();
            f.append(&[b"durable|"]).unwrap();
            f.sync_data().unwrap();
            fs.sync_dir(&dir()).unwrap();
            f.append(&[b"unsynced tail"]).unwrap();
            fs.power_cut();
            let len = fs.size_of(&dir().join("a")).unwrap() as usize;
            assert!((8..=21).contains(&len), "{len}");
        }
    }
}
