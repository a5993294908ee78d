//! `/etc/securetty`: root may log in only on the console lines.

use super::HardenError;
use crate::io_failure::Doing;
use std::path::Path;

type Result<T, E = HardenError> = std::result::Result<T, E>;

pub const CONSOLE_LINES: [&str; 2] = ["tty1", "ttyS0"];

const HEADER: &str = "# Written by `tidemark harden`: root logs in only on the console.\n";

/// Rewrites the file atomically (temporary file, fsync, rename).
pub fn write(path: &Path) -> Result<()> {
    let mut text = HEADER.to_string();
    for line in CONSOLE_LINES {
        text.push_str(line);
        text.push('\n');
    }
    Ok(crate::durable::replace_file(path, text.as_bytes(), crate::durable::FileMode::Public)?)
}

/// The lines that should not be there (empty when the file is right), or
/// an error if it cannot be read.
pub fn unexpected_lines(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).doing(|| format!("reading {}", path.display()))?;
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    let mut wrong: Vec<String> = lines.iter().filter(|l| !CONSOLE_LINES.contains(l)).map(|l| l.to_string()).collect();
    for line in CONSOLE_LINES {
        if !lines.contains(&line) {
            wrong.push(format!("(missing {line})"));
        }
    }
    Ok(wrong)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_file_checks_clean_and_a_stray_line_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("securetty");
        std::fs::write(&path, "tty1\ntty2\npts/0\n").unwrap();
        write(&path).unwrap();
        assert!(unexpected_lines(&path).unwrap().is_empty());
        std::fs::write(&path, std::fs::read_to_string(&path).unwrap() + "pts/0\n").unwrap();
        assert_eq!(unexpected_lines(&path).unwrap(), vec!["pts/0".to_string()]);
    }
}
