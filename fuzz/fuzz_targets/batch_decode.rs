//! Batch payloads arrive from the peer over the data link.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(batch) = tidemark::wire::batch::decode(data, 1) {
        assert_eq!(batch.records.len(), batch.offsets.len());
        assert!(batch.offsets.iter().all(|o| *o < batch.raw.len()));
    }
});
