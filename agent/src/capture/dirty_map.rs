//! The dirty map of bitmap mode (issue 13, docs/bitmap-mode.md): which
//! regions of a VPG's volumes were written without going through the
//! protected log, and so must be read again from the volumes into the
//! stream before the replica can be consistent. One bit per region of
//! `granularity` bytes (64 KiB by default) per volume.
//!
//! The map is kept in memory and stored whole in its file (`MapFile`, a
//! slot file rewritten in place, its blocks taken at a start: bitmap mode
//! stores it on a disk the log has filled) at each activity epoch while it
//! changes; the activity log covers the regions written since
//! the last store (their extents are marked durably before each write, and
//! its resync flag makes the next start read them again). A region's bit
//! is cleared on disk only once its data is durable in the protected log.
//!
//! A map is trusted only if it is whole (crc) and was written for this
//! VPG and exactly these volumes (names and sizes) at this granularity;
//! anything else is a `LoadError` the caller answers with a full resync,
//! never by trusting it.
//!
//! File `dirty.map`: a slot file (`crate::slot_file`) whose payload is
//! empty for an empty map (whatever the volumes are now), or (little
//! endian; a file from before slot files is this alone) `magic [u8;8]
//! "TMDIRTY1"`, `version
//! u32`, `vpg_id u32`, `granularity u64`, `volume_count u32`, then per
//! volume `size u64, name_len u16, name [u8; name_len]`, then per volume
//! its bits as `u64` words (region `r` is bit `r % 64` of word `r / 64`;
//! `ceil(regions / 64)` words, unused high bits zero), then `crc u32`
//! (crc32 of every byte before it).

use crate::io_failure::IoFailure;
use crate::slot_file::{Contents, SlotFile};
use std::path::{Path, PathBuf};

pub const DIRTY_MAP_FILE: &str = "dirty.map";
pub const GRANULARITY_DEFAULT: u64 = 64 << 10;
/// 4 KiB to 1 MiB, as DRBD's bitmap allows; a power of two.
pub const GRANULARITY_MIN: u64 = 4 << 10;
pub const GRANULARITY_MAX: u64 = 1 << 20;
const MAGIC: &[u8; 8] = b"TMDIRTY1";
const VERSION: u32 = 1;
/// Volume names are plain names of at most 64 bytes (`names::is_plain`).
const NAME_BYTES_MAX: usize = 64;

/// A volume as the map must match it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeShape {
    pub name: String,
    pub size: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Io(IoFailure),
    /// Torn, truncated, bit rot, or not a dirty map at all.
    #[error("{path} is damaged: {why}")]
    Damaged { path: String, why: String },
    /// Whole, but for another VPG, other volumes or another granularity.
    #[error("{path} belongs to something else: {why}")]
    Foreign { path: String, why: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirtyMap {
    granularity: u64,
    volumes: Vec<VolumeShape>,
    bits: Vec<Vec<u64>>,
}

impl DirtyMap {
    /// An empty map. `granularity` must be a power of two within
    /// `GRANULARITY_MIN..=GRANULARITY_MAX` (the config checks it).
    pub fn new(granularity: u64, volumes: &[VolumeShape]) -> DirtyMap {
        assert!(
            granularity.is_power_of_two() && (GRANULARITY_MIN..=GRANULARITY_MAX).contains(&granularity),
            "granularity {granularity} out of range"
        );
        let bits = volumes.iter().map(|v| vec![0u64; words(regions(v.size, granularity))]).collect();
        DirtyMap { granularity, volumes: volumes.to_vec(), bits }
    }

    pub fn granularity(&self) -> u64 {
        self.granularity
    }

    /// Marks every region `offset..offset + length` of `volume` touches;
    /// true if a bit changed. A range past the volume's end is a caller's
    /// bug (the NBD layer refuses such requests before they get here).
    pub fn mark(&mut self, volume: u32, offset: u64, length: u64) -> bool {
        let mut changed = false;
        for r in self.regions_of(volume, offset, length) {
            let word = &mut self.bits[volume as usize][(r / 64) as usize];
            changed |= *word & (1 << (r % 64)) == 0;
            *word |= 1 << (r % 64);
        }
        changed
    }

    /// Clears the regions `offset..offset + length` of `volume` touches.
    pub fn clear(&mut self, volume: u32, offset: u64, length: u64) {
        for r in self.regions_of(volume, offset, length) {
            self.bits[volume as usize][(r / 64) as usize] &= !(1 << (r % 64));
        }
    }

    fn regions_of(&self, volume: u32, offset: u64, length: u64) -> std::ops::Range<u64> {
        let size = self.volumes[volume as usize].size;
        let end = offset.checked_add(length).expect("range overflows");
        assert!(end <= size, "range {offset}+{length} past volume {volume}'s end {size}");
        if length == 0 {
            return 0..0;
        }
        offset / self.granularity..end.div_ceil(self.granularity)
    }

    /// Whether any region `offset..offset + length` of `volume` touches is marked.
    pub fn any_marked(&self, volume: u32, offset: u64, length: u64) -> bool {
        self.regions_of(volume, offset, length)
            .any(|r| self.bits[volume as usize][(r / 64) as usize] & (1 << (r % 64)) != 0)
    }

    pub fn is_empty(&self) -> bool {
        self.bits.iter().flatten().all(|w| *w == 0)
    }

    /// Bytes of volume the marked regions cover (the last region of a
    /// volume counts only up to its end).
    pub fn dirty_bytes(&self) -> u64 {
        self.volumes
            .iter()
            .zip(&self.bits)
            .map(|(shape, words)| {
                let set: u64 = words.iter().map(|w| w.count_ones() as u64).sum();
                let n = regions(shape.size, self.granularity);
                let last_set = n > 0 && words[((n - 1) / 64) as usize] & (1 << ((n - 1) % 64)) != 0;
                // The last region counts only up to the volume's end.
                let past_end = if last_set { n * self.granularity - shape.size } else { 0 };
                set * self.granularity - past_end
            })
            .sum()
    }

    /// The marked regions as maximal runs `(volume, offset, length)`, in
    /// volume and offset order, each within its volume.
    pub fn ranges(&self) -> impl Iterator<Item = (u32, u64, u64)> + '_ {
        self.volumes.iter().enumerate().flat_map(move |(v, shape)| {
            let n = regions(shape.size, self.granularity);
            let set = move |r: u64| self.bits[v][(r / 64) as usize] & (1 << (r % 64)) != 0;
            let mut r = 0;
            std::iter::from_fn(move || {
                while r < n && !set(r) {
                    // Whole clear words at once: a map is mostly clear.
                    r = if r % 64 == 0 && self.bits[v][(r / 64) as usize] == 0 { r + 64 } else { r + 1 };
                }
                if r >= n {
                    return None;
                }
                let start = r;
                while r < n && set(r) {
                    // Whole set words at once (bits past the end are clear,
                    // so a full word lies within the volume).
                    r = if r % 64 == 0 && self.bits[v][(r / 64) as usize] == !0 { r + 64 } else { r + 1 };
                }
                let offset = start * self.granularity;
                let end = (r * self.granularity).min(shape.size);
                Some((v as u32, offset, end - offset))
            })
        })
    }

    /// Everything `other` marks is marked here too (same shape).
    pub fn merge(&mut self, other: &DirtyMap) {
        assert_eq!((self.granularity, &self.volumes), (other.granularity, &other.volumes), "maps of other shapes");
        for (mine, theirs) in self.bits.iter_mut().zip(&other.bits) {
            for (a, b) in mine.iter_mut().zip(theirs) {
                *a |= *b;
            }
        }
    }

    pub fn encode(&self, vpg_id: u32) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.bits.iter().map(|b| b.len() * 8).sum::<usize>());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&vpg_id.to_le_bytes());
        out.extend_from_slice(&self.granularity.to_le_bytes());
        out.extend_from_slice(&(self.volumes.len() as u32).to_le_bytes());
        for v in &self.volumes {
            assert!(v.name.len() <= NAME_BYTES_MAX, "volume name {:?} too long for the map", v.name);
            out.extend_from_slice(&v.size.to_le_bytes());
            out.extend_from_slice(&(v.name.len() as u16).to_le_bytes());
            out.extend_from_slice(v.name.as_bytes());
        }
        for words in &self.bits {
            for w in words {
                out.extend_from_slice(&w.to_le_bytes());
            }
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        debug_assert_eq!(DirtyMap::decode(&out, vpg_id, self.granularity, &self.volumes).ok().as_ref(), Some(self));
        out
    }

    /// The map in `bytes`, if it is whole and was written for `vpg_id`,
    /// `granularity` and exactly `volumes`. The error's `path` is empty.
    pub fn decode(bytes: &[u8], vpg_id: u32, granularity: u64, volumes: &[VolumeShape]) -> Result<DirtyMap, LoadError> {
        let damaged = |why: &str| LoadError::Damaged { path: String::new(), why: why.to_string() };
        let foreign = |why: String| LoadError::Foreign { path: String::new(), why };
        let Some((body, crc)) = bytes.len().checked_sub(4).map(|n| bytes.split_at(n)) else {
            return Err(damaged("too short"));
        };
        if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
            return Err(damaged("checksum mismatch (torn or damaged)"));
        }
        let mut r = Reader { bytes: body, at: 0 };
        if r.take(8).ok_or_else(|| damaged("too short"))? != MAGIC {
            return Err(damaged("not a dirty map (bad magic)"));
        }
        let version = r.u32().ok_or_else(|| damaged("too short"))?;
        if version != VERSION {
            return Err(damaged(&format!("version {version}, this build reads {VERSION}")));
        }
        let file_vpg = r.u32().ok_or_else(|| damaged("too short"))?;
        if file_vpg != vpg_id {
            return Err(foreign(format!("written for VPG id {file_vpg:#x}, not {vpg_id:#x}")));
        }
        let file_granularity = r.u64().ok_or_else(|| damaged("too short"))?;
        if file_granularity != granularity {
            return Err(foreign(format!("granularity {file_granularity}, configured {granularity}")));
        }
        let count = r.u32().ok_or_else(|| damaged("too short"))? as usize;
        if count != volumes.len() {
            return Err(foreign(format!("{count} volumes, the VPG has {}", volumes.len())));
        }
        for want in volumes {
            let size = r.u64().ok_or_else(|| damaged("too short"))?;
            let len = r.u16().ok_or_else(|| damaged("too short"))? as usize;
            if len > NAME_BYTES_MAX {
                return Err(damaged("volume name too long"));
            }
            let name = r.take(len).ok_or_else(|| damaged("too short"))?;
            if name != want.name.as_bytes() || size != want.size {
                return Err(foreign(format!(
                    "volume {:?} of {size} bytes, the VPG has {:?} of {} bytes",
                    String::from_utf8_lossy(name),
                    want.name,
                    want.size
                )));
            }
        }
        let mut map = DirtyMap::new(granularity, volumes);
        for (v, words) in map.bits.iter_mut().enumerate() {
            let n = regions(volumes[v].size, granularity);
            for (i, w) in words.iter_mut().enumerate() {
                *w = r.u64().ok_or_else(|| damaged("bits cut short"))?;
                // Bits past the volume's last region must be zero.
                let first = i as u64 * 64;
                if first + 64 > n && *w >> (n - first) != 0 {
                    return Err(damaged("bits set past a volume's end"));
                }
            }
        }
        if r.at != body.len() {
            return Err(damaged("bytes after the bits"));
        }
        Ok(map)
    }
}

/// The file a VPG's dirty map is stored in.
pub struct MapFile {
    path: PathBuf,
    vpg_id: u32,
    /// None until the file is a slot file of this VPG's map's size.
    file: Option<SlotFile>,
}

impl MapFile {
    /// The map file in `dir` (nothing is read yet).
    pub fn new(dir: &Path, vpg_id: u32) -> MapFile {
        MapFile { path: dir.join(DIRTY_MAP_FILE), vpg_id, file: None }
    }

    /// The map stored in the file: None if there is none, or it is empty.
    pub fn load(&mut self, granularity: u64, volumes: &[VolumeShape]) -> Result<Option<DirtyMap>, LoadError> {
        let shown = self.path.display().to_string();
        let (contents, file) = SlotFile::open(&self.path).map_err(LoadError::Io)?;
        self.file = file;
        let bytes = match contents {
            Contents::Missing => return Ok(None),
            Contents::Slots(payload) if payload.is_empty() => return Ok(None),
            Contents::Slots(bytes) | Contents::Other(bytes) => bytes,
            Contents::Damaged(why) => return Err(LoadError::Damaged { path: shown, why }),
        };
        DirtyMap::decode(&bytes, self.vpg_id, granularity, volumes).map(Some).map_err(|e| match e {
            LoadError::Damaged { why, .. } => LoadError::Damaged { path: shown, why },
            LoadError::Foreign { why, .. } => LoadError::Foreign { path: shown, why },
            io => io,
        })
    }

    /// Stores `map` durably, in place once the file has room for every
    /// region of its volumes (`prepare`).
    pub fn store(&mut self, map: &DirtyMap) -> Result<(), IoFailure> {
        self.store_encoded(map.encode(self.vpg_id), map.is_empty())
    }

    /// Stores `map` (which holds whatever the file held, or the start
    /// has durably asked for a new stream) so that the file takes its
    /// full size now: later stores, in bitmap mode on a disk the log
    /// has filled, need no new block.
    pub fn prepare(&mut self, map: &DirtyMap) -> Result<(), IoFailure> {
        let encoded = map.encode(self.vpg_id);
        if self.file.as_ref().is_some_and(|f| !f.fits(encoded.len())) {
            self.file = None;
        }
        self.store_encoded(encoded, map.is_empty())
    }

    /// Stores a map encoded (every region, whether marked or not: the
    /// size a new file's slots take); an empty one as an empty payload.
    fn store_encoded(&mut self, encoded: Vec<u8>, empty: bool) -> Result<(), IoFailure> {
        let payload = if empty { &[][..] } else { &encoded[..] };
        match &mut self.file {
            Some(file) => file.write(payload),
            None => {
                let slots = crate::slot_file::slot_bytes_for(encoded.len() as u64);
                self.file = Some(SlotFile::create(&self.path, payload, slots)?);
                Ok(())
            }
        }
    }
}

fn regions(size: u64, granularity: u64) -> u64 {
    size.div_ceil(granularity)
}

fn words(regions: u64) -> usize {
    regions.div_ceil(64) as usize
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let part = self.bytes.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(part)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const G: u64 = GRANULARITY_DEFAULT;

    fn shapes() -> Vec<VolumeShape> {
        vec![VolumeShape { name: "os".into(), size: 100 * G + 512 }, VolumeShape { name: "data".into(), size: 64 * G }]
    }

    #[test]
    fn marks_cover_every_region_a_write_touches_and_runs_are_maximal() {
        let mut m = DirtyMap::new(G, &shapes());
        assert!(m.is_empty());
        assert!(m.mark(0, G - 1, 2), "a write across a boundary marks both regions");
        assert!(!m.mark(0, G, 1), "already marked");
        assert!(m.mark(0, 100 * G, 512), "the short last region");
        assert!(m.mark(1, 63 * G, G));
        assert!(!m.mark(1, 0, 0), "an empty range marks nothing");
        let runs: Vec<_> = m.ranges().collect();
        assert_eq!(runs, vec![(0, 0, 2 * G), (0, 100 * G, 512), (1, 63 * G, G)]);
        assert_eq!(m.dirty_bytes(), 3 * G + 512);
        m.clear(0, 0, 2 * G);
        m.clear(0, 100 * G, 512);
        m.clear(1, 63 * G, G);
        assert!(m.is_empty());
        // Whole words set: one run per volume, to its exact end.
        m.mark(0, 0, 100 * G + 512);
        m.mark(1, 0, 64 * G);
        assert_eq!(m.ranges().collect::<Vec<_>>(), vec![(0, 0, 100 * G + 512), (1, 0, 64 * G)]);
        assert_eq!(m.dirty_bytes(), 164 * G + 512);
    }

    #[test]
    fn a_stored_map_loads_back_in_place_and_an_empty_one_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = MapFile::new(dir.path(), 9);
        let mut m = DirtyMap::new(G, &shapes());
        file.prepare(&m).unwrap();
        let path = dir.path().join(DIRTY_MAP_FILE);
        let len = std::fs::metadata(&path).unwrap().len();
        assert_eq!(MapFile::new(dir.path(), 9).load(G, &shapes()).unwrap(), None);
        m.mark(1, 5 * G, 3 * G);
        m.mark(0, 100 * G, 1);
        file.store(&m).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), len, "stored in place");
        assert_eq!(MapFile::new(dir.path(), 9).load(G, &shapes()).unwrap(), Some(m.clone()));
        m.clear(1, 5 * G, 3 * G);
        m.clear(0, 100 * G, 1);
        file.store(&m).unwrap();
        assert_eq!(MapFile::new(dir.path(), 9).load(G, &shapes()).unwrap(), None);
        // An empty map is none whatever the volumes are now.
        assert_eq!(MapFile::new(dir.path(), 9).load(G, &shapes()[..1]).unwrap(), None);
    }

    #[test]
    fn a_map_from_before_slot_files_is_read_and_prepare_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = DirtyMap::new(G, &shapes());
        m.mark(0, 3 * G, 1);
        std::fs::write(dir.path().join(DIRTY_MAP_FILE), m.encode(9)).unwrap();
        let mut file = MapFile::new(dir.path(), 9);
        assert_eq!(file.load(G, &shapes()).unwrap(), Some(m.clone()));
        m.mark(1, 0, 1);
        file.prepare(&m).unwrap();
        let bytes = std::fs::read(dir.path().join(DIRTY_MAP_FILE)).unwrap();
        assert!(bytes.starts_with(crate::slot_file::SLOT_MAGIC));
        assert_eq!(MapFile::new(dir.path(), 9).load(G, &shapes()).unwrap(), Some(m));
    }

    #[test]
    fn a_map_of_something_else_is_foreign_and_never_trusted() {
        let mut m = DirtyMap::new(G, &shapes());
        m.mark(0, 0, 1);
        let bytes = m.encode(9);
        let foreign = |r: Result<DirtyMap, LoadError>| matches!(r, Err(LoadError::Foreign { .. }));
        assert!(foreign(DirtyMap::decode(&bytes, 10, G, &shapes())), "another VPG");
        assert!(foreign(DirtyMap::decode(&bytes, 9, 2 * G, &shapes())), "another granularity");
        let mut grown = shapes();
        grown[1].size += G;
        assert!(foreign(DirtyMap::decode(&bytes, 9, G, &grown)), "a resized volume");
        let mut renamed = shapes();
        renamed[0].name = "boot".into();
        assert!(foreign(DirtyMap::decode(&bytes, 9, G, &renamed)), "another volume");
        assert!(foreign(DirtyMap::decode(&bytes, 9, G, &shapes()[..1])), "fewer volumes");
    }

    #[test]
    fn every_cut_and_every_flipped_byte_is_damage() {
        let mut m = DirtyMap::new(G, &shapes());
        m.mark(0, 7 * G, G);
        let bytes = m.encode(9);
        for len in 0..bytes.len() {
            let r = DirtyMap::decode(&bytes[..len], 9, G, &shapes());
            assert!(matches!(r, Err(LoadError::Damaged { .. })), "cut at {len}: {r:?}");
        }
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert!(DirtyMap::decode(&bad, 9, G, &shapes()).is_err(), "flip at {i} accepted");
        }
    }

    #[test]
    fn bits_past_a_volumes_end_are_damage_even_with_a_good_crc() {
        let m = DirtyMap::new(G, &shapes());
        let mut bytes = m.encode(9);
        bytes.truncate(bytes.len() - 4);
        // The bits end with volume 0's two words, then volume 1's one.
        // Volume 0 has 101 regions: bit 37 of its second word is past it.
        let second_word = bytes.len() - 16;
        bytes[second_word + 4] |= 0x20;
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        let r = DirtyMap::decode(&bytes, 9, G, &shapes());
        assert!(matches!(&r, Err(LoadError::Damaged { why, .. }) if why.contains("past")), "{r:?}");
    }

    proptest! {
        /// Whatever is marked decodes to itself, and the runs cover
        /// exactly the marked regions.
        #[test]
        fn marks_round_trip(writes in proptest::collection::vec((0u32..2, 0u64..(101 * G), 0u64..(4 * G)), 0..40)) {
            let mut m = DirtyMap::new(G, &shapes());
            for (v, offset, length) in &writes {
                let size = shapes()[*v as usize].size;
                let offset = (*offset).min(size);
                let length = (*length).min(size - offset);
                m.mark(*v, offset, length);
            }
            prop_assert_eq!(&DirtyMap::decode(&m.encode(3), 3, G, &shapes()).unwrap(), &m);
            prop_assert_eq!(m.dirty_bytes(), m.ranges().map(|r| r.2).sum::<u64>());
            let mut again = DirtyMap::new(G, &shapes());
            for (v, offset, length) in m.ranges() {
                prop_assert!(offset % G == 0 && length > 0);
                again.mark(v, offset, length);
            }
            prop_assert_eq!(&again, &m);
        }
    }
}
