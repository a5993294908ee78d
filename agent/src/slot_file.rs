//! A small file rewritten in place, so that a rewrite needs no new block
//! and a full disk still takes it (docs/formats.md, "Slot files"). Bitmap
//! mode's own files (the activity log, the dirty map) are slot files: they
//! are written exactly when the log's disk may have filled.
//!
//! The file is two slots of `slot_bytes` each (a multiple of 4 KiB; the
//! file is exactly two slots long). A slot is `magic [u8;8] "TMSLOT01",
//! slot_bytes u64, generation u64, payload_len u32, crc u32` (crc32 of the
//! 28 bytes before it and of the payload), then the payload. A write goes
//! to the slot that does not hold the newest generation, with the next
//! generation, and is fdatasynced; the other slot is not touched, so after
//! a torn write a reader finds the old payload whole, and after a write
//! that returned, the new one. The whole file is written once when it is
//! made (`durable::replace_file`, zeros included, so its blocks are
//! allocated); only a payload larger than a slot makes a new, larger file.
//!
//! On a copy-on-write file system an overwrite takes new blocks too: the
//! appliance's data disk is ext4.

use crate::durable::{replace_file, FileMode};
use crate::io_failure::{Doing, IoFailure};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub const SLOT_MAGIC: &[u8; 8] = b"TMSLOT01";
const HEADER_BYTES: u64 = 32;
const BLOCK: u64 = 4096;

type Result<T> = std::result::Result<T, IoFailure>;

/// What a file holds, as a slot file.
pub enum Contents {
    Missing,
    /// A slot file: the newest whole slot's payload.
    Slots(Vec<u8>),
    /// A file that is not a slot file (a format from before slot files):
    /// its bytes, for the caller's own parser.
    Other(Vec<u8>),
    /// A slot file with no whole slot.
    Damaged(String),
}

pub struct SlotFile {
    path: PathBuf,
    file: File,
    slot_bytes: u64,
    /// The slot holding the newest generation (0 or 1).
    current: u64,
    generation: u64,
    /// A new file was being made (`make`) and failed, perhaps after it
    /// was named: `file` may be a file no one reads any more, so the next
    /// write makes the file again rather than write to it.
    remake: bool,
}

/// Where the newest whole slot is.
struct Layout {
    slot_bytes: u64,
    current: u64,
    generation: u64,
}

/// Reads `path`: what it holds, and where, if it is a slot file.
fn read_newest(path: &Path) -> Result<(Contents, Option<Layout>)> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Contents::Missing, None)),
        Err(e) => return Err(IoFailure::new(format!("reading {}", path.display()), e)),
    };
    let half = bytes.len() / 2;
    // Either slot's magic says what the file is (a torn write of slot 0
    // leaves its magic, which is the same bytes; bit rot may not).
    let slot_1_magic = half >= BLOCK as usize && bytes[half..].starts_with(SLOT_MAGIC);
    if !bytes.starts_with(SLOT_MAGIC) && !slot_1_magic {
        return Ok((Contents::Other(bytes), None));
    }
    let slot_bytes = half as u64;
    if bytes.len() as u64 != 2 * slot_bytes || slot_bytes < BLOCK || !slot_bytes.is_multiple_of(BLOCK) {
        return Ok((Contents::Damaged(format!("{} bytes is not two slots", bytes.len())), None));
    }
    let newest = (0..2u64)
        .filter_map(|i| {
            let at = (i * slot_bytes) as usize;
            parse_slot(&bytes[at..at + slot_bytes as usize], slot_bytes).map(|(g, p)| (g, i, p))
        })
        .max_by_key(|(generation, ..)| *generation);
    let Some((generation, current, payload)) = newest else {
        return Ok((Contents::Damaged("neither slot is whole".into()), None));
    };
    Ok((Contents::Slots(payload.to_vec()), Some(Layout { slot_bytes, current, generation })))
}

impl SlotFile {
    /// What `path` holds, without opening it for writing (a reader such
    /// as `tidemark status` may not be allowed to write it).
    pub fn read(path: &Path) -> Result<Contents> {
        Ok(read_newest(path)?.0)
    }

    /// What `path` holds, and, if it is a slot file, the file opened to be
    /// written in place.
    pub fn open(path: &Path) -> Result<(Contents, Option<SlotFile>)> {
        let (contents, layout) = read_newest(path)?;
        let Some(Layout { slot_bytes, current, generation }) = layout else { return Ok((contents, None)) };
        let file = open_rw(path)?;
        let path = path.to_path_buf();
        Ok((contents, Some(SlotFile { path, file, slot_bytes, current, generation, remake: false })))
    }

    /// Makes `path` a new slot file holding `payload`, its slots of at
    /// least `slot_min` bytes, replacing whatever was there atomically.
    pub fn create(path: &Path, payload: &[u8], slot_min: u64) -> Result<SlotFile> {
        Self::make(path, payload, slot_min, 1)
    }

    fn make(path: &Path, payload: &[u8], slot_min: u64, generation: u64) -> Result<SlotFile> {
        let slot_bytes = slot_bytes_for(payload.len() as u64).max(slot_min).next_multiple_of(BLOCK);
        let mut image = slot_image(slot_bytes, generation, payload);
        image.resize(2 * slot_bytes as usize, 0);
        fail::fail_point!("slot-make-before-rename", |_| Err(IoFailure::new(
            format!("writing {}", path.display()),
            std::io::Error::from_raw_os_error(28)
        )));
        replace_file(path, &image, FileMode::Public)?;
        fail::fail_point!("slot-make-after-rename", |_| Err(IoFailure::new(
            format!("opening {}", path.display()),
            std::io::Error::from_raw_os_error(24)
        )));
        let file = open_rw(path)?;
        Ok(SlotFile { path: path.to_path_buf(), file, slot_bytes, current: 0, generation, remake: false })
    }

    /// Writes `payload` durably in place of the current one. A payload
    /// larger than a slot makes a new file with slots twice as large
    /// (new blocks, which a full disk refuses).
    pub fn write(&mut self, payload: &[u8]) -> Result<()> {
        self.write_slot(payload, true)
    }

    /// `write` without the sync: readers see the new payload (or, after
    /// a power cut, either), for a file that must be current, not durable.
    pub fn write_unsynced(&mut self, payload: &[u8]) -> Result<()> {
        self.write_slot(payload, false)
    }

    fn write_slot(&mut self, payload: &[u8], sync: bool) -> Result<()> {
        let outgrown = HEADER_BYTES + payload.len() as u64 > self.slot_bytes;
        if outgrown || self.remake {
            let slot_min = if outgrown { 2 * self.slot_bytes } else { self.slot_bytes };
            match Self::make(&self.path, payload, slot_min, self.generation + 1) {
                Ok(made) => *self = made,
                Err(e) => {
                    // Failed before its rename (a full disk refused the
                    // new file): this file is still the one read, and
                    // takes the next write in place.
                    self.remake = !self.is_the_named_file();
                    return Err(e);
                }
            }
            return Ok(());
        }
        let target = 1 - self.current;
        let image = slot_image(self.slot_bytes, self.generation + 1, payload);
        let written: std::io::Result<()> = (|| {
            fail::fail_point!("slot-write-torn", |_| {
                self.file.write_all_at(&image[..image.len() / 2], target * self.slot_bytes)?;
                Err(std::io::Error::from_raw_os_error(28))
            });
            self.file.write_all_at(&image, target * self.slot_bytes)?;
            if sync {
                self.file.sync_data()?;
            }
            Ok(())
        })();
        written.doing(|| format!("writing {}", self.path.display()))?;
        self.current = target;
        self.generation += 1;
        Ok(())
    }

    /// Whether a payload of `len` bytes is written in place.
    pub fn fits(&self, len: usize) -> bool {
        HEADER_BYTES + len as u64 <= self.slot_bytes
    }

    /// Whether the path still names the file this handle writes.
    fn is_the_named_file(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        match (self.file.metadata(), std::fs::metadata(&self.path)) {
            (Ok(open), Ok(named)) => (open.dev(), open.ino()) == (named.dev(), named.ino()),
            _ => false,
        }
    }
}

/// Slots that hold a payload of `len` bytes.
pub fn slot_bytes_for(len: u64) -> u64 {
    (HEADER_BYTES + len).next_multiple_of(BLOCK)
}

fn open_rw(path: &Path) -> Result<File> {
    OpenOptions::new().read(true).write(true).open(path).doing(|| format!("opening {}", path.display()))
}

fn slot_image(slot_bytes: u64, generation: u64, payload: &[u8]) -> Vec<u8> {
    let mut image = Vec::with_capacity(HEADER_BYTES as usize + payload.len());
    image.extend_from_slice(SLOT_MAGIC);
    image.extend_from_slice(&slot_bytes.to_le_bytes());
    image.extend_from_slice(&generation.to_le_bytes());
    image.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&image);
    crc.update(payload);
    image.extend_from_slice(&crc.finalize().to_le_bytes());
    image.extend_from_slice(payload);
    image
}

/// A slot's generation and payload, if it is whole.
fn parse_slot(slot: &[u8], slot_bytes: u64) -> Option<(u64, &[u8])> {
    let u64_at = |at: usize| u64::from_le_bytes(slot[at..at + 8].try_into().expect("8 bytes"));
    let u32_at = |at: usize| u32::from_le_bytes(slot[at..at + 4].try_into().expect("4 bytes"));
    if &slot[..8] != SLOT_MAGIC || u64_at(8) != slot_bytes {
        return None;
    }
    let len = u32_at(24) as usize;
    let payload = slot.get(HEADER_BYTES as usize..HEADER_BYTES as usize + len)?;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&slot[..28]);
    crc.update(payload);
    (crc.finalize() == u32_at(28)).then_some((u64_at(16), payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload_at(path: &Path) -> Vec<u8> {
        match SlotFile::open(path).unwrap() {
            (Contents::Slots(payload), Some(_)) => payload,
            _ => panic!("not a whole slot file"),
        }
    }

    #[test]
    fn writes_alternate_in_place_and_read_back_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut f = SlotFile::create(&path, b"one", 0).unwrap();
        let len = std::fs::metadata(&path).unwrap().len();
        assert_eq!(len, 2 * BLOCK);
        for text in [&b"two"[..], b"three", b"", b"four"] {
            f.write(text).unwrap();
            assert_eq!(payload_at(&path), text);
        }
        assert_eq!(std::fs::metadata(&path).unwrap().len(), len, "written in place");
        // The same inode: nothing was renamed over it.
        use std::os::unix::fs::MetadataExt;
        let ino = std::fs::metadata(&path).unwrap().ino();
        f.write(b"five").unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().ino(), ino);
    }

    #[test]
    fn a_torn_write_leaves_the_old_payload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut f = SlotFile::create(&path, b"old", 0).unwrap();
        f.write(b"older is gone").unwrap();
        // The slot being written is torn: half the new image, the rest the
        // older generation's bytes.
        let new = vec![7u8; 3000];
        let image = slot_image(f.slot_bytes, f.generation + 1, &new);
        f.file.write_all_at(&image[..image.len() / 2], (1 - f.current) * f.slot_bytes).unwrap();
        assert_eq!(payload_at(&path), b"older is gone");
        // The next write goes to that slot again and is read back.
        f.write(&new).unwrap();
        assert_eq!(payload_at(&path), new);
    }

    #[test]
    fn a_payload_larger_than_a_slot_makes_a_larger_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut f = SlotFile::create(&path, b"small", 0).unwrap();
        assert!(!f.fits(5000));
        let big = vec![3u8; 5000];
        f.write(&big).unwrap();
        assert_eq!(payload_at(&path), big);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 4 * BLOCK);
        f.write(b"small again").unwrap();
        assert_eq!(payload_at(&path), b"small again");
    }

    /// Storage faults at exact points (`--features test-build`).
    #[cfg(feature = "test-build")]
    mod failpoints {
        use super::*;

        /// A larger file made and named, then not opened (EMFILE): the
        /// handle is on the file it replaced, which no one reads. The
        /// next write, though it fits the old slots, makes the file again
        /// (it once went to the replaced file and was lost).
        #[test]
        fn a_growth_that_failed_after_its_rename_makes_the_file_again() {
            let scenario = fail::FailScenario::setup();
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("f");
            let mut f = SlotFile::create(&path, b"small", 0).unwrap();
            fail::cfg("slot-make-after-rename", "1*return").unwrap();
            assert!(f.write(&vec![1u8; 5000]).is_err());
            fail::remove("slot-make-after-rename");
            f.write(b"after").unwrap();
            assert_eq!(payload_at(&path), b"after");
            f.write(b"and again").unwrap();
            assert_eq!(payload_at(&path), b"and again");
            scenario.teardown();
        }

        /// The same refused before anything was named (a full disk): the
        /// file is still the one read, and a write that fits its slots goes
        /// in place, full disk or not (review of helper-45).
        #[test]
        fn a_growth_refused_before_its_rename_leaves_writes_in_place() {
            let scenario = fail::FailScenario::setup();
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("f");
            let mut f = SlotFile::create(&path, b"small", 0).unwrap();
            use std::os::unix::fs::MetadataExt;
            let ino = std::fs::metadata(&path).unwrap().ino();
            fail::cfg("slot-make-before-rename", "return").unwrap();
            assert!(f.write(&vec![1u8; 5000]).is_err());
            f.write(b"fits").unwrap();
            fail::remove("slot-make-before-rename");
            assert_eq!(payload_at(&path), b"fits");
            assert_eq!(std::fs::metadata(&path).unwrap().ino(), ino);
            scenario.teardown();
        }
    }

    #[test]
    fn slot_0_damaged_is_still_a_slot_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut f = SlotFile::create(&path, b"one", 0).unwrap();
        f.write(b"two").unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[..8].copy_from_slice(b"rotted!!");
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(SlotFile::read(&path).unwrap(), Contents::Slots(p) if p == b"two"));
    }

    #[test]
    fn other_files_and_damaged_ones_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        assert!(matches!(SlotFile::open(&path).unwrap(), (Contents::Missing, None)));
        std::fs::write(&path, b"TMACTLOG an older format").unwrap();
        assert!(matches!(SlotFile::open(&path).unwrap(), (Contents::Other(b), None) if b.starts_with(b"TMACTLOG")));
        SlotFile::create(&path, b"x", 0).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[32] ^= 1; // slot 0's payload: bit rot, and slot 1 never written
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(SlotFile::open(&path).unwrap(), (Contents::Damaged(_), None)));
        std::fs::write(&path, &bytes[..5000]).unwrap();
        assert!(matches!(SlotFile::open(&path).unwrap(), (Contents::Damaged(_), None)));
    }
}
