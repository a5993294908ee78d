//! Control messages (JSON in control frames) come from the peer.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tidemark::wire::message::ControlMessage;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = ControlMessage::from_bytes(data) {
        assert_eq!(ControlMessage::from_bytes(&message.to_bytes().expect("a decoded message encodes")).unwrap(), message);
    }
});
