//! Records come from disk (log, journal) and, inside batches, from the
//! peer: decoding arbitrary bytes must never panic, and whatever decodes
//! must re-encode to the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tidemark::record::Record;

fuzz_target!(|data: &[u8]| {
    if let Ok((record, used)) = Record::decode(data) {
        assert_eq!(record.encode(), &data[..used]);
    }
});
