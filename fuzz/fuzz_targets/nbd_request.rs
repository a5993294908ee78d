//! NBD request headers and option payloads come from the hypervisor.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tidemark::nbd::protocol::{check_bounds, parse_info_request, parse_request, REQUEST_HEADER_BYTES};

fuzz_target!(|data: &[u8]| {
    if data.len() >= REQUEST_HEADER_BYTES {
        let header: [u8; REQUEST_HEADER_BYTES] = data[..REQUEST_HEADER_BYTES].try_into().unwrap();
        if let Ok(request) = parse_request(&header) {
            let size = 1u64 << 40;
            if check_bounds(&request, size).is_ok() {
                assert!(request.offset.checked_add(request.length as u64).is_some());
            }
        }
    }
    let _ = parse_info_request(data);
});
