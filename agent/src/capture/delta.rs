//! Delta sync by extent hashes: both sides hash their volumes in 64 KiB
//! extents (SHA-256); the side that sends puts into its stream only the
//! extents whose hashes differ. Used by reverse protection after a
//! failover, where the two sites hold nearly the same volumes: a full copy
//! would send everything, this sends what changed.
//!
//! The sending side reads each extent under the write-order lock (like the
//! initial copy), so the stream holds, in order, every extent as it was at
//! that point followed by every later write: the receiver ends identical.

use super::error::CaptureError;
use super::volume::Volume;
use super::vpg::VpgCapture;
use crate::extent_hash::{extent_count, hash, ExtentHash, EXTENT_BYTES};
use crate::record::{RecordBody, RECORD_HEADER_BYTES};
use std::sync::atomic::Ordering;

type Result<T, E = CaptureError> = std::result::Result<T, E>;

/// Every extent hash of a volume, in order (blocking; reads it all).
pub fn hash_volume(volume: &Volume) -> Result<Vec<ExtentHash>> {
    let mut out = Vec::with_capacity(extent_count(volume.size) as usize);
    let mut buf = vec![0u8; EXTENT_BYTES as usize];
    let mut offset = 0;
    while offset < volume.size {
        let len = (volume.size - offset).min(EXTENT_BYTES) as usize;
        volume.read_at(&mut buf[..len], offset)?;
        out.push(hash(&buf[..len]));
        volume.drop_cache(offset, len as u64);
        offset += len as u64;
    }
    Ok(out)
}

#[derive(Debug, Default, Clone, Copy)]
pub struct DeltaReport {
    pub extents: u64,
    pub extents_sent: u64,
    pub bytes_sent: u64,
}

impl VpgCapture {
    /// Starts the stream a delta copy goes into (dropping what the log
    /// held, and stopping any copy under way): before the receiving side
    /// attaches, so it gets nothing of the old stream after its hashes.
    pub async fn start_delta_stream(&self) -> Result<u64> {
        let _order = self.order.lock().await;
        self.copy_generation.fetch_add(1, Ordering::SeqCst);
        Ok(self.log.start_stream(0)?)
    }

    /// Appends, per volume, into the stream `start_delta_stream` began, the
    /// extents whose hash differs from `theirs[volume]` (a missing hash
    /// counts as different), then the volume's CopyDone.
    pub async fn copy_differing_extents(&self, theirs: &[Vec<ExtentHash>]) -> Result<DeltaReport> {
        let mut report = DeltaReport::default();
        for (index, volume) in self.volumes.iter().enumerate() {
            for e in 0..extent_count(volume.size) {
                let offset = e * EXTENT_BYTES;
                let len = (volume.size - offset).min(EXTENT_BYTES);
                // Room first, then the lock: writes wait at most one read.
                let space = self.log.reserve_bytes(RECORD_HEADER_BYTES as u64 + len).await?;
                let _order = self.order.lock().await;
                let mut buf = vec![0u8; len as usize];
                volume.read_at(&mut buf, offset)?;
                report.extents += 1;
                if theirs.get(index).and_then(|h| h.get(e as usize)) == Some(&hash(&buf)) {
                    continue;
                }
                report.extents_sent += 1;
                report.bytes_sent += len;
                self.append_data(space, index as u32, offset, buf)?;
            }
            let done = RecordBody::CopyDone { volume: index as u32 };
            let space = self.log.reserve(&done).await?;
            let _order = self.order.lock().await;
            self.log.append_reserved(space, &done)?;
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_a_volume() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v");
        std::fs::write(&path, vec![7u8; (EXTENT_BYTES * 2 + 100) as usize]).unwrap();
        let hashes = hash_volume(&Volume::open("v", &path).unwrap()).unwrap();
        assert_eq!(hashes.len(), 3);
        assert_eq!(hashes[0], hashes[1]);
        assert_eq!(hashes[2], hash(&[7u8; 100]));
    }
}
