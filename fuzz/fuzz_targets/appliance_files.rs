//! The firewall rule file, the sysctl file and config redaction (the
//! bundle's copy of the config): none may panic on any text.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = tidemark::harden::rules::parse(text, "fuzz");
        let _ = tidemark::harden::sysctl::parse(text, "fuzz");
        // Redacting twice changes nothing more: the output is valid TOML
        // with every secret already replaced.
        if let Ok(redacted) = tidemark::api::bundle::redact_config(text) {
            assert_eq!(tidemark::api::bundle::redact_config(&redacted).unwrap(), redacted);
        }
    }
});
