//! Batch payloads arrive from the peer over the data link. The receiver
//! decodes with a `BatchDecoder` (reused buffer); tools with `decode`: both
//! must refuse or accept alike, and agree on what they accept.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut decoder = tidemark::wire::batch::BatchDecoder::default();
    let reused = decoder.decode(data, 1).map(|b| (b.raw.to_vec(), b.offsets.clone()));
    let fresh = tidemark::wire::batch::decode(data, 1).map(|b| (b.raw.to_vec(), b.offsets.clone()));
    assert_eq!(reused.is_ok(), fresh.is_ok());
    if let (Ok((raw, offsets)), Ok(other)) = (reused, fresh) {
        assert_eq!((&raw, &offsets), (&other.0, &other.1));
        assert!(offsets.iter().all(|o| *o < raw.len()));
    }
});
