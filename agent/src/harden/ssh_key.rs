//! Validation of the support engineer's public key (openssh-keys): one key,
//! a strong algorithm, no options. The key is written to authorized_keys
//! with our own restrictions in front of it, never with the caller's.

use super::HardenError;
use openssh_keys::{Data, PublicKey};

type Result<T, E = HardenError> = std::result::Result<T, E>;

pub const RSA_BITS_MIN: usize = 3072;

/// Options every support key gets: a shell, nothing tunnelled.
pub const FORCED_OPTIONS: &str = "no-port-forwarding,no-agent-forwarding,no-X11-forwarding";

#[derive(Debug)]
pub struct SupportKey {
    key: PublicKey,
}

impl SupportKey {
    /// Parses the text of a public key file holding exactly one key.
    pub fn parse(text: &str) -> Result<SupportKey> {
        let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
        let line = match lines[..] {
            [line] => line,
            [] => return Err(HardenError::Invalid("the key file holds no public key".to_string())),
            _ => {
                return Err(HardenError::Invalid(format!("the key file holds {} keys; give exactly one", lines.len())))
            }
        };
        let key =
            PublicKey::parse(line).map_err(|e| HardenError::Invalid(format!("not a valid OpenSSH public key: {e}")))?;
        if let Some(options) = &key.options {
            return Err(HardenError::Invalid(format!(
                "the key carries options ({options}); give a plain key, the appliance sets its own restrictions"
            )));
        }
        match &key.data {
            Data::Dsa { .. } => {
                return Err(HardenError::Invalid("DSA keys are refused (weak); use ed25519".to_string()))
            }
            Data::Rsa { modulus, .. } => {
                let bits = modulus_bits(modulus);
                if bits < RSA_BITS_MIN {
                    return Err(HardenError::Invalid(format!(
                        "RSA key of {bits} bits is refused; at least {RSA_BITS_MIN} bits, or use ed25519"
                    )));
                }
            }
            Data::Ed25519 { .. } | Data::Ed25519Sk { .. } | Data::Ecdsa { .. } | Data::EcdsaSk { .. } => {}
        }
        Ok(SupportKey { key })
    }

    /// `SHA256:<base64>`, as ssh-keygen -l prints it; safe to log.
    pub fn fingerprint(&self) -> String {
        format!("SHA256:{}", self.key.fingerprint())
    }

    pub fn keytype(&self) -> &'static str {
        self.key.keytype()
    }

    /// The key alone on one line: no options, no comment.
    pub fn plain_line(&self) -> String {
        let mut key = self.key.clone();
        key.comment = None;
        format!("{}\n", key.to_key_format())
    }

    /// The authorized_keys line: our options, the key, no comment.
    pub fn authorized_line(&self) -> String {
        let mut key = self.key.clone();
        key.comment = None;
        format!("{FORCED_OPTIONS} {}", self.plain_line())
    }
}

/// Significant bits of an RSA modulus (an mpint may carry a leading zero byte).
fn modulus_bits(modulus: &[u8]) -> usize {
    let significant: Vec<u8> = modulus.iter().copied().skip_while(|b| *b == 0).collect();
    match significant.first() {
        Some(first) => significant.len() * 8 - first.leading_zeros() as usize,
        None => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED25519: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAID8FF4Woa4F95uyEzkWMcoQ+PevEsAMsqD/8A3DbxALk support@example";

    #[test]
    fn ed25519_is_accepted_and_restricted() {
        let key = SupportKey::parse(&format!("# engineer\n{ED25519}\n")).unwrap();
        let line = key.authorized_line();
        assert!(line.starts_with(FORCED_OPTIONS));
        assert!(!line.contains("support@example"));
        assert!(key.fingerprint().starts_with("SHA256:"));
    }

    #[test]
    fn options_truncation_and_counts_are_refused() {
        for (text, needle) in [
            (format!("command=\"/bin/sh\" {ED25519}"), "options"),
            (format!("permitopen=\"*:*\" {ED25519}"), "options"),
            (ED25519[..40].to_string(), "not a valid"),
            (String::new(), "no public key"),
            (format!("{ED25519}\n{ED25519}"), "2 keys"),
        ] {
            let err = SupportKey::parse(&text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }

    #[test]
    fn modulus_bits_ignores_the_sign_byte() {
        let mut m = vec![0u8];
        m.extend(std::iter::repeat_n(0xff, 384));
        assert_eq!(modulus_bits(&m), 3072);
        let mut short = vec![0x7fu8];
        short.extend(std::iter::repeat_n(0xff, 383));
        assert_eq!(modulus_bits(&short), 3071);
    }
}
