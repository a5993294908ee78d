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
    hash_extents(volume, 0, extent_count(volume.size))
}

/// The hashes of `count` extents of a volume from `first` (fewer at its
/// end), in order (blocking; reads them).
pub fn hash_extents(volume: &Volume, first: u64, count: u64) -> Result<Vec<ExtentHash>> {
    let end = extent_count(volume.size).min(first.saturating_add(count));
    let mut out = Vec::with_capacity(end.saturating_sub(first) as usize);
    let mut buf = vec![0u8; EXTENT_BYTES as usize];
    for extent in first..end {
        // A slow disk.
        fail::fail_point!("hash-extent");
        let offset = extent * EXTENT_BYTES;
        let len = (volume.size - offset).min(EXTENT_BYTES) as usize;
        volume.read_at(&mut buf[..len], offset)?;
        out.push(hash(&buf[..len]));
        volume.drop_cache(offset, len as u64);
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
    /// Returns the copy generation the delta copy of this stream runs as.
    /// Its seqs start above `receiver_applied`, what the receiving side
    /// says it applied: that side skips a record at or below it as one it
    /// has (a resend), and its seq may come from an older log than this
    /// one (a fresh log starts at its clock's time, which can have gone
    /// back since).
    pub async fn start_delta_stream(&self, receiver_applied: u64) -> Result<u64> {
        let _order = self.order.lock().await;
        let generation = self.copy_generation.fetch_add(1, Ordering::SeqCst) + 1;
        self.log.start_stream(receiver_applied.saturating_add(1))?;
        Ok(generation)
    }

    /// The delta copy of `generation` starts (it is running, or done).
    pub fn delta_copy_runs(&self, generation: u64) {
        self.delta_copy.store(generation, Ordering::SeqCst);
    }

    /// The delta copy of `generation` failed: none is running or done.
    pub fn delta_copy_failed(&self, generation: u64) {
        let _ = self.delta_copy.compare_exchange(generation, 0, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// Whether the delta copy of the stream the log holds runs or ran in
    /// this process.
    pub fn delta_copy_alive(&self) -> bool {
        let copy = self.delta_copy.load(Ordering::SeqCst);
        copy != 0 && copy == self.copy_generation.load(Ordering::SeqCst)
    }

    /// Appends, per volume, into the stream `start_delta_stream` began as
    /// `generation`, the extents whose hash differs from `theirs[volume]`
    /// (a missing hash counts as different), then the volume's CopyDone.
    /// None, appending nothing more, once a newer stream replaced it: the
    /// copy of a session that ended must not go on into the next session's
    /// stream, whose old site hashed its volumes afresh and takes any
    /// CopyDone as its own (review of helper-51).
    pub async fn copy_differing_extents(
        &self,
        theirs: &[Vec<ExtentHash>],
        generation: u64,
    ) -> Result<Option<DeltaReport>> {
        let mut report = DeltaReport::default();
        let replaced = || self.copy_generation.load(Ordering::SeqCst) != generation;
        for (index, volume) in self.volumes.iter().enumerate() {
            for e in 0..extent_count(volume.size) {
                let offset = e * EXTENT_BYTES;
                let len = (volume.size - offset).min(EXTENT_BYTES);
                // Room first, then the lock: writes wait at most one read.
                let space = self.log.reserve_bytes(RECORD_HEADER_BYTES as u64 + len).await?;
                let _order = self.order.lock().await;
                if replaced() {
                    return Ok(None);
                }
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
            if replaced() {
                return Ok(None);
            }
            self.log.append_reserved(space, &done)?;
            // The process stops (as by SIGKILL) a while after the first
            // volume's copy is done, the old site having applied it.
            fail::fail_point!("reverse-delta-volume-done", index == 0, |_| {
                std::thread::sleep(std::time::Duration::from_secs(3));
                std::process::abort()
            });
        }
        Ok(Some(report))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::sync_gate::SyncPolicy;
    use crate::capture::vpg::StreamTo;
    use crate::log::{LogSize, Preallocation};
    use std::time::Duration;

    /// The delta copy of a session that ended stops when the next
    /// session starts its own stream: none of its extents or CopyDones go
    /// into the new stream (review of helper-51: the old site took a late
    /// copy's CopyDone for the new copy's and said "in sync" early).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_replaced_delta_copy_appends_nothing_to_the_new_stream() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v");
        std::fs::write(&path, vec![7u8; (EXTENT_BYTES * 4) as usize]).unwrap();
        let volumes = vec![Volume::open("v", &path).unwrap()];
        let size = LogSize::for_capacity(64 << 20, Preallocation::Off);
        let log_dir = dir.path().join("log");
        let capture =
            VpgCapture::open("vpg".into(), SyncPolicy::default(), volumes, 9, &log_dir, size, StreamTo::OldSite)
                .unwrap();
        let first = capture.start_delta_stream(0).await.unwrap();
        // The first copy waits for the write-order lock with its first
        // extent's room reserved; the second stream's start waits behind it.
        let held = capture.order.lock().await;
        let copy = tokio::spawn({
            let capture = capture.clone();
            async move { capture.copy_differing_extents(&[], first).await }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let second = tokio::spawn({
            let capture = capture.clone();
            async move { capture.start_delta_stream(0).await }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(held);
        let second = second.await.unwrap().unwrap();
        assert_eq!(second, first + 1);
        let stream_start = capture.log.appended_seq();
        assert!(copy.await.unwrap().unwrap().is_none(), "the replaced copy says it was replaced");
        assert_eq!(capture.log.appended_seq(), stream_start, "the replaced copy appended to the new stream");
        let report = capture.copy_differing_extents(&[], second).await.unwrap().expect("the current copy");
        assert_eq!(report.extents_sent, 4);
    }

    /// The receiving side skips records at or below what it applied: a new
    /// stream's seqs start above that, whatever this log's seqs were.
    #[tokio::test]
    async fn a_delta_stream_starts_above_what_the_receiver_applied() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v");
        std::fs::write(&path, vec![7u8; EXTENT_BYTES as usize]).unwrap();
        let volumes = vec![Volume::open("v", &path).unwrap()];
        let size = LogSize::for_capacity(64 << 20, Preallocation::Off);
        let capture = VpgCapture::open(
            "vpg".into(),
            SyncPolicy::default(),
            volumes,
            9,
            &dir.path().join("log"),
            size,
            StreamTo::OldSite,
        )
        .unwrap();
        let ahead = capture.log.appended_seq() + 1_000_000_000;
        capture.start_delta_stream(ahead).await.unwrap();
        assert_eq!(capture.log.appended_seq(), ahead + 1, "the stream's start is the first seq above it");
        // Below this log's own seqs, the log's next seq wins.
        capture.start_delta_stream(5).await.unwrap();
        assert_eq!(capture.log.appended_seq(), ahead + 2);
    }

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
