//! Whether compressing a batch pays on the link it goes to. It pays when
//! the link is what holds the stream back (a WAN, a throttle, a link
//! shared with busier VPGs): every byte compression saves is link time
//! saved. It does not when the link takes bytes faster than zstd makes
//! them (a LAN, loopback): there compression only spends the CPU that
//! capture and replication need, and slows the stream it is meant to
//! speed up (zstd at level 1 was 45 % of the protected agent's CPU in
//! `make bench`'s replicated 1 MiB writes on loopback).
//!
//! The sender says how long each batch took to go out (its turns on the
//! link, its writes and the flush, timed after compression: waits for the
//! recovery site's acks are its journal's as much as the link's), per
//! byte that went on the wire; the encoder says how long compression took
//! per raw byte, and what share of the bytes it left. A batch is compressed when the link time it would save is more
//! than the time compressing it costs: `(1 - ratio) * link > compress`.
//! Each figure is a moving average over the last batches, so the choice
//! follows a link that slows down or speeds up within a few batches, in
//! either mode (the link's time per byte is measured on raw and on
//! compressed batches alike; compression's figures, which raw batches do
//! not measure, by compressing one batch in `PROBE_EVERY` anyway). The
//! encoder asks only for the batches of a backlog, and measures the link
//! and compression only on them (`batch.rs`): a stream that keeps up is
//! compressed anyway, and a small batch's time is mostly its system calls
//! and zstd's fixed cost. One sample counts at most
//! `SAMPLE_SECONDS_PER_BYTE_MAX`, so one stalled write does not hold
//! compression on for long.

use std::time::Duration;

/// Weight of the newest batch in each moving average.
const NEWEST_WEIGHT: f64 = 0.2;
/// Until measured: a 100 Mbit/s link (compress, as a WAN wants)...
const LINK_SECONDS_PER_BYTE_FIRST: f64 = 8.0 / 100e6;
/// ...and zstd at level 1 at 500 MB/s, leaving half of the bytes.
const COMPRESS_SECONDS_PER_BYTE_FIRST: f64 = 1.0 / 500e6;
const RATIO_FIRST: f64 = 0.5;
/// While compression does not pay, one batch in this many is compressed
/// anyway, so a stream whose data turned compressible, or a compressor
/// that only looked slow once, is seen again.
pub const PROBE_EVERY: u32 = 16;
/// A sample's most: 100 kB/s.
const SAMPLE_SECONDS_PER_BYTE_MAX: f64 = 1e-5;

/// What one link's batches cost to send and to compress.
#[derive(Debug, Clone)]
pub struct LinkPace {
    link_seconds_per_wire_byte: f64,
    compress_seconds_per_raw_byte: f64,
    /// Compressed bytes over raw bytes.
    ratio: f64,
    /// Batches not compressed since the last one that was.
    raw_since_compressed: u32,
}

impl Default for LinkPace {
    fn default() -> Self {
        LinkPace {
            link_seconds_per_wire_byte: LINK_SECONDS_PER_BYTE_FIRST,
            compress_seconds_per_raw_byte: COMPRESS_SECONDS_PER_BYTE_FIRST,
            ratio: RATIO_FIRST,
            raw_since_compressed: 0,
        }
    }
}

fn moved(average: f64, newest: f64) -> f64 {
    average + NEWEST_WEIGHT * (newest - average)
}

/// One sample: `took` over `bytes`, at most `SAMPLE_SECONDS_PER_BYTE_MAX`.
fn per_byte(took: Duration, bytes: usize) -> f64 {
    (took.as_secs_f64() / bytes as f64).min(SAMPLE_SECONDS_PER_BYTE_MAX)
}

impl LinkPace {
    /// Whether compressing pays, as measured.
    pub fn compression_pays(&self) -> bool {
        (1.0 - self.ratio) * self.link_seconds_per_wire_byte > self.compress_seconds_per_raw_byte
    }

    /// Whether to compress the next batch: while it pays, and one batch
    /// in `PROBE_EVERY` while it does not.
    pub fn compress_next(&mut self) -> bool {
        if self.compression_pays() || self.raw_since_compressed + 1 >= PROBE_EVERY {
            self.raw_since_compressed = 0;
            return true;
        }
        self.raw_since_compressed += 1;
        false
    }

    /// A batch of `wire_bytes` took `took` to go out on the link.
    pub fn sent(&mut self, wire_bytes: usize, took: Duration) {
        if wire_bytes > 0 {
            self.link_seconds_per_wire_byte = moved(self.link_seconds_per_wire_byte, per_byte(took, wire_bytes));
        }
    }

    /// Compressing `raw_bytes` into `compressed_bytes` took `took`.
    pub fn compressed(&mut self, raw_bytes: usize, compressed_bytes: usize, took: Duration) {
        if raw_bytes > 0 {
            self.compress_seconds_per_raw_byte = moved(self.compress_seconds_per_raw_byte, per_byte(took, raw_bytes));
            let ratio = (compressed_bytes as f64 / raw_bytes as f64).min(1.0);
            self.ratio = moved(self.ratio, ratio);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BATCH: usize = 4 << 20;

    /// `pace` after `n` batches whose data compression leaves `leaves` of
    /// (at 500 MB/s), going out at `link_bytes_per_second` per wire byte,
    /// each compressed when `compress_next` says so.
    fn after(mut pace: LinkPace, n: usize, leaves: f64, link_bytes_per_second: f64) -> LinkPace {
        for _ in 0..n {
            let wire = if pace.compress_next() {
                let wire = (BATCH as f64 * leaves) as usize;
                pace.compressed(BATCH, wire, Duration::from_secs_f64(BATCH as f64 / 500e6));
                wire
            } else {
                BATCH
            };
            pace.sent(wire, Duration::from_secs_f64(wire as f64 / link_bytes_per_second));
        }
        pace
    }

    #[test]
    fn a_new_link_compresses_as_a_wan_wants() {
        assert!(LinkPace::default().compression_pays());
    }

    /// Loopback or a 10 Gbit/s LAN takes bytes faster than zstd saves
    /// them; a 1 Gbit/s link or a 100 Mbit/s WAN does not.
    #[test]
    fn a_link_faster_than_compression_gets_raw_batches() {
        for (bytes_per_second, pays) in [(5e9, false), (1.25e9, false), (125e6, true), (12.5e6, true)] {
            let pace = after(LinkPace::default(), 20, 0.5, bytes_per_second);
            assert_eq!(pace.compression_pays(), pays, "at {bytes_per_second} B/s");
        }
    }

    /// The choice follows the link both ways, measured in either mode.
    #[test]
    fn the_choice_follows_a_link_that_slows_down_and_speeds_up() {
        let fast = after(LinkPace::default(), 20, 0.5, 5e9);
        assert!(!fast.compression_pays());
        let slowed = after(fast, 10, 0.5, 12.5e6);
        assert!(slowed.compression_pays(), "raw batches on a slow link show its pace: {slowed:?}");
        let fast_again = after(slowed, 20, 0.5, 5e9);
        assert!(!fast_again.compression_pays(), "{fast_again:?}");
    }

    /// While compression does not pay, one batch in `PROBE_EVERY` is
    /// compressed anyway: data that turned compressible on a slow link is
    /// compressed again (raw batches alone never measure it).
    #[test]
    fn a_probe_sees_data_that_turned_compressible() {
        // A 1 Gbit/s link and data that does not compress: raw.
        let mut pace = after(LinkPace::default(), 40, 1.0, 125e6);
        assert!(!pace.compression_pays(), "{pace:?}");
        let probes = (0..PROBE_EVERY * 2).filter(|_| pace.compress_next()).count();
        assert_eq!(probes, 2, "one batch in {PROBE_EVERY}");
        // The data halves now: the probes see it, and compression pays again.
        let pace = after(pace, PROBE_EVERY as usize * 8, 0.5, 125e6);
        assert!(pace.compression_pays(), "{pace:?}");
    }

    /// One stalled write counts as a slow link, not as an hour-long one.
    #[test]
    fn one_stalled_write_does_not_hold_compression_on() {
        let mut pace = after(LinkPace::default(), 40, 0.5, 5e9);
        pace.sent(BATCH, Duration::from_secs(300));
        let pace = after(pace, 40, 0.5, 5e9);
        assert!(!pace.compression_pays(), "{pace:?}");
    }

    /// Data that barely compresses is not worth it on a link that would
    /// be worth it for data that halves.
    #[test]
    fn what_compression_leaves_counts() {
        let pace = after(LinkPace::default(), 20, 0.95, 125e6);
        assert!(!pace.compression_pays(), "{pace:?}");
    }
}
