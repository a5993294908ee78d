//! An error and its causes in one line, `a: b: c`, as anyhow's `{:#}`
//! prints them, for typed errors (whose own `{:#}` prints the first only).

use std::fmt;

pub struct Chain<'a>(pub &'a (dyn std::error::Error + Send + Sync + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_every_cause_as_anyhow_does() {
        let io = std::io::Error::other("disk on fire");
        let e = crate::io_failure::IoFailure::new("syncing /x", io);
        assert_eq!(Chain(&e).to_string(), "syncing /x: disk on fire");
        assert_eq!(Chain(&e).to_string(), format!("{:#}", anyhow::Error::new(e)));
    }
}
