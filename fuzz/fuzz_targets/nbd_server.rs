//! The NBD server's whole request loop, handshake and transmission, fed
//! the fuzzer's bytes as one client (`tidemark::nbd::one_client`): it must
//! never panic, never hang, and never hold more than its admission allows
//! (run with -rss_limit_mb=256: `make fuzz` does).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = tidemark::nbd::one_client::run(data);
});
