//! Time-based one-time passwords (RFC 6238 over RFC 4226's HOTP): SHA-1,
//! six digits, 30-second steps — what common authenticator apps expect.
//! A code is accepted for the step before, the current and the next one
//! (clock drift), and never twice: the caller keeps the last step used.

use super::AccessError;
use ring::hmac;

type Result<T, E = AccessError> = std::result::Result<T, E>;

pub const STEP_SECS: u64 = 30;
pub const DIGITS: u32 = 6;
/// 160 bits, as RFC 4226 recommends for HMAC-SHA-1.
pub const SECRET_BYTES: usize = 20;
/// Steps either side of now that still count.
const DRIFT_STEPS: u64 = 1;

pub fn new_secret() -> [u8; SECRET_BYTES] {
    let mut secret = [0u8; SECRET_BYTES];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret).expect("system randomness");
    secret
}

/// The secret as authenticator apps take it: base32, no padding.
pub fn encode_secret(secret: &[u8]) -> String {
    data_encoding::BASE32_NOPAD.encode(secret)
}

pub fn decode_secret(text: &str) -> Result<Vec<u8>> {
    data_encoding::BASE32_NOPAD
        .decode(text.as_bytes())
        .map_err(|e| AccessError::Refused(format!("a TOTP secret is not base32: {e}")))
}

/// The enrolment URI (shown once, as text or a QR code). `account` is a
/// user name, which `config::validate_name` keeps to URI-safe characters.
pub fn otpauth_uri(issuer: &str, account: &str, secret: &[u8]) -> String {
    format!(
        "otpauth://totp/{issuer}:{account}?secret={}&issuer={issuer}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECS}",
        encode_secret(secret)
    )
}

/// HOTP: the code for counter `step`.
pub fn code_at(secret: &[u8], step: u64) -> u32 {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    let mac = hmac::sign(&key, &step.to_be_bytes());
    let mac = mac.as_ref();
    let offset = (mac[mac.len() - 1] & 0x0f) as usize;
    let word = u32::from_be_bytes(mac[offset..offset + 4].try_into().expect("4 bytes")) & 0x7fff_ffff;
    word % 10u32.pow(DIGITS)
}

#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not six digits.
    Malformed,
    /// No step within the drift has this code.
    Wrong,
    /// The code's step was used already (a replay, or a second login
    /// within the same 30 seconds).
    Replayed,
}

/// Checks `code` at `now_secs`; on success returns the step it matched,
/// which the caller stores as `last_used`.
pub fn check(secret: &[u8], code: &str, now_secs: u64, last_used: Option<u64>) -> Result<u64, Refusal> {
    if code.len() != DIGITS as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Refusal::Malformed);
    }
    let wanted: u32 = code.parse().map_err(|_| Refusal::Malformed)?;
    let now = now_secs / STEP_SECS;
    let steps = now.saturating_sub(DRIFT_STEPS)..=now + DRIFT_STEPS;
    // Every step is computed, match or not: the time taken says nothing.
    let matched = steps.filter(|s| constant_time_eq(code_at(secret, *s), wanted)).max();
    match matched {
        None => Err(Refusal::Wrong),
        Some(step) if last_used.is_some_and(|used| step <= used) => Err(Refusal::Replayed),
        Some(step) => Ok(step),
    }
}

fn constant_time_eq(a: u32, b: u32) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(a.to_be_bytes().ct_eq(&b.to_be_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RFC_SECRET: &[u8] = b"12345678901234567890";

    #[test]
    fn rfc_6238_sha1_vectors_in_six_digits() {
        // RFC 6238 appendix B gives eight digits; six are their last six.
        for (time, eight) in [
            (59u64, 94287082u32),
            (1111111109, 7081804),
            (1111111111, 14050471),
            (1234567890, 89005924),
            (2000000000, 69279037),
        ] {
            assert_eq!(code_at(RFC_SECRET, time / STEP_SECS), eight % 1_000_000, "time {time}");
        }
    }

    #[test]
    fn drift_replay_and_malformed_codes() {
        let now = 1_700_000_000u64;
        let code = |t: u64| format!("{:06}", code_at(RFC_SECRET, t / STEP_SECS));
        let step = check(RFC_SECRET, &code(now), now, None).unwrap();
        assert_eq!(step, now / STEP_SECS);
        assert_eq!(check(RFC_SECRET, &code(now), now, Some(step)), Err(Refusal::Replayed));
        // The previous step's code still counts once, unless a later one was used.
        assert!(check(RFC_SECRET, &code(now - 30), now, None).is_ok());
        assert_eq!(check(RFC_SECRET, &code(now - 30), now, Some(step)), Err(Refusal::Replayed));
        assert_eq!(check(RFC_SECRET, &code(now - 90), now, None), Err(Refusal::Wrong));
        for bad in ["", "12345", "1234567", "12a456", " 12345", "+12345"] {
            assert_eq!(check(RFC_SECRET, bad, now, None), Err(Refusal::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn secret_round_trips_through_base32_and_the_uri() {
        let secret = new_secret();
        assert_eq!(decode_secret(&encode_secret(&secret)).unwrap(), secret);
        let uri = otpauth_uri("Tidemark", "alice", &secret);
        assert!(uri.starts_with("otpauth://totp/Tidemark:alice?secret="), "{uri}");
        assert!(uri.contains(&encode_secret(&secret)));
        assert!(decode_secret("not base32!").is_err());
    }
}
