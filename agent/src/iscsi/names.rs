//! The names an iSCSI initiator sees, derived from the configuration (and
//! checked there: two VPGs must not get one target name).

/// The month in the IQNs (when the naming authority was Tidemark's).
const IQN_DATE: &str = "2026-12";
/// The longest iSCSI name (RFC 3720, 3.2.6.1).
pub const IQN_BYTES_MAX: usize = 223;

/// `iqn.2026-12.<domain>:tidemark:<appliance>:<target>`, lower case, with
/// only the characters an iSCSI name may hold (so `DB` and `db`, or `a_b`
/// and `a-b`, give the same name: the configuration refuses such pairs).
/// `target` is a VPG's name, or on the recovery side a VPG's name, ':' and
/// a purpose (`db:test`); VPG names hold no ':', so the two cannot meet.
pub fn target_iqn(domain: &str, appliance: &str, target: &str) -> String {
    let target: Vec<String> = target.split(':').map(fold).collect();
    format!("iqn.{IQN_DATE}.{}:tidemark:{}:{}", fold(domain), fold(appliance), target.join(":"))
}

/// `name` as an iSCSI name holds it: lower case, and only letters, digits,
/// '.' and '-' (anything else becomes '-').
pub fn fold(name: &str) -> String {
    name.to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '-' })
        .collect()
}
