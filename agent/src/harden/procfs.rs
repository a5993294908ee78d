//! Processes as /proc shows them, for the audit (which programs run) and for
//! support SSH (is the server still alive, what did it start).

/// One process's name, state, parent and controlling terminal, from
/// /proc/PID/stat.
pub struct ProcStat {
    /// The kernel's `comm`: the program name, cut at 15 bytes.
    pub name: String,
    pub state: String,
    pub ppid: i32,
    /// The controlling terminal's (major, minor), if it has one.
    pub tty: Option<(u32, u32)>,
}

impl ProcStat {
    /// Running, not a zombie: a killed process whose parent has not reaped
    /// it yet still answers kill(pid, 0).
    pub fn alive(&self) -> bool {
        !matches!(self.state.as_str(), "Z" | "X")
    }
}

pub fn stat(pid: i32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The name may hold spaces and parentheses: it ends at the last ')'.
    let (open, close) = (text.find('(')?, text.rfind(')')?);
    let mut rest = text[close + 1..].split_whitespace();
    let state = rest.next()?.to_string();
    let ppid = rest.next()?.parse().ok()?;
    // pgrp, session, then tty_nr.
    let tty = decode_tty_nr(rest.nth(2)?.parse::<i64>().ok()? as u32);
    Some(ProcStat { name: text[open + 1..close].to_string(), state, ppid, tty })
}

/// /proc's `tty_nr`: major in bits 8-15, minor in bits 0-7 and 20-31; 0 is
/// no controlling terminal.
fn decode_tty_nr(tty_nr: u32) -> Option<(u32, u32)> {
    (tty_nr != 0).then_some(((tty_nr >> 8) & 0xfff, (tty_nr & 0xff) | ((tty_nr >> 12) & 0xfff00)))
}

/// Every process id in this PID namespace.
pub fn pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .collect()
}

pub fn alive(pid: i32) -> bool {
    stat(pid).is_some_and(|s| s.alive())
}

/// Alive and running a program named `comm` (a pid in a stale state file
/// may have been reused).
pub fn alive_as(pid: i32, comm: &str) -> bool {
    let comm = &comm[..comm.len().min(15)];
    stat(pid).is_some_and(|s| s.alive() && s.name == comm)
}

/// The process and all its descendants, root first.
pub fn tree(root: i32) -> Vec<i32> {
    let parents: Vec<(i32, i32)> = pids().into_iter().filter_map(|p| Some((p, stat(p)?.ppid))).collect();
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(parents.iter().filter(|(_, pp)| *pp == parent).map(|(p, _)| *p));
        i += 1;
    }
    tree
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controlling_terminals_decode() {
        assert_eq!(decode_tty_nr(0), None);
        assert_eq!(decode_tty_nr(0x0401), Some((4, 1)), "tty1");
        assert_eq!(decode_tty_nr(0x0440), Some((4, 64)), "ttyS0");
        assert_eq!(decode_tty_nr(0x8803), Some((136, 3)), "pts/3");
        assert_eq!(decode_tty_nr(0x0010_8800), Some((136, 256)), "pts/256");
    }

    #[test]
    fn this_process_is_alive_and_in_its_parents_tree() {
        let me = std::process::id() as i32;
        let s = stat(me).unwrap();
        assert!(s.alive());
        assert!(alive_as(me, &s.name));
        assert!(!alive_as(me, "no-such-program"));
        assert!(tree(s.ppid).contains(&me));
    }
}
