//! The names of VPGs and volumes: they end up in file paths, export
//! names, target names and control messages, so they stay plain, and the
//! limits here are the same wherever they are checked.

/// The longest VPG or volume name.
pub const NAME_BYTES_MAX: usize = 64;
/// The most volumes one VPG holds (every control message that lists them
/// must fit `wire::message::CONTROL_BYTES_MAX`).
pub const VOLUMES_PER_VPG_MAX: usize = 256;

/// A pin's reason is for people; it is shown, never parsed (but it crosses
/// the link from the encryption detector, so both sides check it).
pub const PIN_REASON_BYTES_MAX: usize = 256;

/// At most `PIN_REASON_BYTES_MAX` bytes of text on one line.
pub fn is_pin_reason(reason: &str) -> bool {
    reason.len() <= PIN_REASON_BYTES_MAX && !reason.chars().any(char::is_control)
}

/// 1-64 letters, digits, '-', '_' or '.', not starting with '.'.
pub fn is_plain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= NAME_BYTES_MAX
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && !name.starts_with('.')
}
