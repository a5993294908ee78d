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

/// A tag is stored in a checkpoint record: its limit, in bytes of UTF-8.
pub const TAG_BYTES_MAX: usize = crate::record::CHECKPOINT_TAG_BYTES_MAX;

/// The label pins of the encryption detector carry (and `--checkpoint` accepts).
pub const LAST_CLEAN: &str = "last-clean";

/// `last-clean` or `last-clean-<time>`: names a detector pin.
pub fn names_last_clean(wanted: &str) -> bool {
    wanted == LAST_CLEAN || wanted.starts_with(&format!("{LAST_CLEAN}-"))
}

/// A checkpoint tag that is refused, and why.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidTag(pub String);

/// Tags name checkpoints wherever an id does: they must not look like one.
pub fn validate_tag(tag: &str) -> Result<(), InvalidTag> {
    if is_group_tag(tag) {
        return Err(InvalidTag(format!(
            "tag: {tag:?} ends in <group>@<UTC time>, the form of coordinated checkpoints' tags; choose another"
        )));
    }
    validate_tag_text(tag)
}

/// A coordinated checkpoint's tag: of the group form, and a valid tag.
pub fn validate_group_tag(tag: &str) -> Result<(), InvalidTag> {
    if !is_group_tag(tag) {
        return Err(InvalidTag(format!(
            "tag: {tag:?} is not of the form [<name>@]<group>@<UTC time>, as coordinators make them"
        )));
    }
    validate_tag_text(tag)
}

/// `[<name>@]<group>@<UTC time to the millisecond>`: the tags of
/// coordinated checkpoints (`crate::coordination`), made only by a
/// coordinator, so that no ordinary checkpoint takes one's name.
pub fn is_group_tag(tag: &str) -> bool {
    let Some((head, time)) = tag.rsplit_once('@') else { return false };
    let group = head.rsplit_once('@').map_or(head, |(_, g)| g);
    is_plain(group) && time.len() == 24 && time.ends_with('Z') && humantime::parse_rfc3339(time).is_ok()
}

fn validate_tag_text(tag: &str) -> Result<(), InvalidTag> {
    if tag.trim().is_empty() {
        return Err(InvalidTag("tag: must not be empty".to_string()));
    }
    if tag.len() > TAG_BYTES_MAX {
        return Err(InvalidTag(format!(
            "tag: {} bytes as UTF-8 ({} characters); at most {TAG_BYTES_MAX} bytes (characters beyond ASCII take 2-4)",
            tag.len(),
            tag.chars().count()
        )));
    }
    if tag.chars().any(char::is_control) {
        return Err(InvalidTag("tag: must not contain control characters".to_string()));
    }
    if tag == "latest" || tag == "head" || names_last_clean(tag) || tag.chars().all(|c| c.is_ascii_digit()) {
        return Err(InvalidTag(format!("tag: {tag:?} would be read as a checkpoint id or keyword; choose another")));
    }
    Ok(())
}

#[cfg(test)]
mod group_tag_tests {
    use super::*;

    #[test]
    fn group_tags_are_made_by_coordinators_only() {
        for tag in [
            "erp@2026-12-04T19:40:01.123Z",
            "nightly@erp@2026-12-04T19:40:01.123Z",
            "a b@c@erp@2026-12-04T19:40:01.123Z",
        ] {
            assert!(is_group_tag(tag), "{tag}");
            validate_group_tag(tag).unwrap();
            assert!(validate_tag(tag).unwrap_err().to_string().contains("coordinated"), "{tag}");
        }
        for tag in [
            "erp",
            "erp@",
            "erp@2026-12-04T19:40:01Z",
            "e/rp@2026-12-04T19:40:01.123Z",
            "erp@2026-13-04T19:40:01.123Z",
            "x@y",
        ] {
            assert!(!is_group_tag(tag), "{tag}");
            assert!(validate_group_tag(tag).is_err(), "{tag}");
        }
        validate_tag("before upgrade @ 10:00").unwrap();
    }
}
