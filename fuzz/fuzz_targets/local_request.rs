//! Requests on the protected agent's local control socket.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tidemark::api::local::{validate_tag, Request};

fuzz_target!(|data: &[u8]| {
    if let Ok(Request::Checkpoint { tag, .. }) = serde_json::from_slice::<Request>(data) {
        let _ = validate_tag(&tag);
    }
});
