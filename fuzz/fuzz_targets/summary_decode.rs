//! Segment summaries (`<segment>.tmjrn.idx`) come from disk: decoding
//! arbitrary bytes must never panic, and whatever decodes must re-encode
//! to the same bytes (the crc covers them all).
#![no_main]
use libfuzzer_sys::fuzz_target;
use tidemark::journal::summary::SegmentSummary;

fuzz_target!(|data: &[u8]| {
    if let Ok(summary) = SegmentSummary::from_bytes(data) {
        assert_eq!(summary.to_bytes(), data);
    }
});
