//! The audit trail: who asked for what, when, from where, and how it
//! ended, for every operation that changes something or reads a point in
//! time (docs/audit-trail.md). One file, `<data_dir>/audit/trail.jsonl`,
//! one JSON entry per line. Each entry carries the SHA-256 of the entry
//! before it (`prev`) and its own (`hash`, over the entry with `hash`
//! empty), so an entry edited, removed or moved breaks the chain there,
//! and `tidemark audit-log --verify` names the first broken link.
//!
//! Appends come from the agent (its control socket) and from console
//! commands that work without it (restore, pin, seed, ...): each takes an
//! exclusive `flock` on the file, reads the last entry, writes one line
//! and fdatasyncs it before the operation goes on. A line cut short by a
//! crash or a power cut was never synced, so never acknowledged: the next
//! append cuts it (and says so). Removing whole entries from the end
//! leaves a valid chain; the entry count and last hash in the
//! diagnostics bundle and in `--verify`'s output are the anchor to compare.

use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::io_failure::{Doing, IoFailure};

type Result<T, E = AuditTrailError> = std::result::Result<T, E>;

/// Why the audit trail could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum AuditTrailError {
    #[error(transparent)]
    Storage(#[from] IoFailure),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Refused(String),
}

pub const TRAIL_DIR: &str = "audit";
pub const TRAIL_FILE: &str = "trail.jsonl";
/// The `prev` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// The longest entry line: parameters are names, tags and reasons, each
/// limited far below this.
const LINE_BYTES_MAX: usize = 16 << 10;
/// An outcome's text is cut to this many bytes.
const OUTCOME_BYTES_MAX: usize = 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// 1 for the first entry, then one more each time.
    pub seq: u64,
    pub time_ms: u64,
    pub user: String,
    pub role: String,
    /// Where the request came from (the console, a local socket's peer).
    pub source: String,
    pub op: String,
    pub params: serde_json::Value,
    /// `started`, then in a second entry `ok`, `ok: ...` or `failed: ...`.
    pub outcome: String,
    /// For an outcome: the seq of the entry that started the operation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub of: Option<u64>,
    pub prev: String,
    pub hash: String,
}

impl Entry {
    /// SHA-256 (hex) of the entry as written, with `hash` empty.
    fn digest(&self) -> String {
        let unhashed = Entry { hash: String::new(), ..self.clone() };
        let bytes = serde_json::to_vec(&unhashed).expect("an entry serializes");
        hex(ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Who is asking, as the trail records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub user: String,
    pub role: String,
    pub source: String,
}

impl Actor {
    /// This process, run from the appliance's console (or a test's shell).
    pub fn console() -> Actor {
        let uid = rustix::process::getuid().as_raw();
        let tty = std::fs::read_link("/proc/self/fd/0")
            .ok()
            .map(|p| p.display().to_string())
            .filter(|p| p.starts_with("/dev/tty") || p.starts_with("/dev/pts"));
        let place = match tty.as_deref() {
            // Support SSH sessions get pseudo-terminals; the console is a tty.
            Some(t) if t.starts_with("/dev/pts") => format!("ssh session {t}"),
            Some(t) => format!("console {t}"),
            None => "console, without a terminal".into(),
        };
        Actor {
            user: login_name(std::process::id() as i32, uid),
            role: local_role(uid).into(),
            source: format!("{place} (pid {})", std::process::id()),
        }
    }

    /// The peer of the agent's control socket (root only: mode 0600).
    pub fn local_peer(uid: u32, pid: Option<i32>) -> Actor {
        Actor {
            user: pid.map_or_else(|| user_name(uid), |p| login_name(p, uid)),
            role: local_role(uid).into(),
            source: match pid {
                Some(pid) => format!("control socket (pid {pid})"),
                None => "control socket".into(),
            },
        }
    }
}

/// Who logged in to run process `pid` (its loginuid survives `su` and
/// `sudo`), with the uid it runs as when that differs; `uid` alone when
/// the process has no login (a service, a test).
fn login_name(pid: i32, uid: u32) -> String {
    let login = std::fs::read_to_string(format!("/proc/{pid}/loginuid"))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .filter(|l| *l != u32::MAX);
    match login {
        Some(l) if l != uid => format!("{} (as {})", user_name(l), user_name(uid)),
        _ => user_name(uid),
    }
}

/// Local users are appliance administrators: only root may run commands
/// on the appliance, on its console.
fn local_role(uid: u32) -> &'static str {
    if uid == 0 {
        "admin (console)"
    } else {
        "local user"
    }
}

/// The name of `uid` in /etc/passwd, or `uid N`.
pub(crate) fn user_name(uid: u32) -> String {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let id = f.nth(1)?.parse::<u32>().ok()?;
            (id == uid).then(|| name.to_string())
        })
        .next()
        .unwrap_or_else(|| format!("uid {uid}"))
}

pub fn trail_path(data_dir: &Path) -> PathBuf {
    data_dir.join(TRAIL_DIR).join(TRAIL_FILE)
}

/// Appends one entry and makes it durable; returns its seq.
pub fn append(
    data_dir: &Path,
    actor: &Actor,
    op: &str,
    params: serde_json::Value,
    outcome: &str,
    of: Option<u64>,
) -> Result<u64> {
    let dir = data_dir.join(TRAIL_DIR);
    let path = dir.join(TRAIL_FILE);
    let created = !path.exists();
    std::fs::create_dir_all(&dir).doing(|| format!("creating {}", dir.display()))?;
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .doing(|| format!("opening {}", path.display()))?;
    lock(&file)?;
    if created {
        crate::durable::sync_dir(&dir)?;
        crate::durable::sync_dir(data_dir)?;
    }
    let last = last_entry(&mut file, &path)?;
    let (seq, prev) = match &last {
        Some(e) => (e.seq + 1, e.hash.clone()),
        None => (1, GENESIS.to_string()),
    };
    let mut entry = Entry {
        seq,
        time_ms: crate::record::now_ms(),
        user: actor.user.clone(),
        role: actor.role.clone(),
        source: actor.source.clone(),
        op: op.to_string(),
        params,
        outcome: cut(outcome, OUTCOME_BYTES_MAX),
        of,
        prev,
        hash: String::new(),
    };
    entry.hash = entry.digest();
    let mut line = serde_json::to_vec(&entry)?;
    if line.len() >= LINE_BYTES_MAX {
        // Parameters this long are paths or lists: kept cut, not dropped.
        let text = entry.params.to_string();
        entry.params = serde_json::json!({ "cut": cut(&text, LINE_BYTES_MAX / 4) });
        entry.hash = entry.digest();
        line = serde_json::to_vec(&entry)?;
    }
    line.push(b'\n');
    if line.len() > LINE_BYTES_MAX {
        return Err(AuditTrailError::Refused(format!(
            "an audit entry of {} bytes is over the {LINE_BYTES_MAX}-byte limit",
            line.len()
        )));
    }
    file.seek(SeekFrom::End(0))?;
    file.write_all(&line).doing(|| format!("writing {}", path.display()))?;
    file.sync_data().doing(|| format!("syncing {}", path.display()))?;
    Ok(seq)
}

/// Takes the trail's lock, waiting at most `LOCK_WAIT` for another
/// appender (one stuck in a stalled fsync must not hold an operation up).
fn lock(file: &File) -> Result<()> {
    use rustix::fs::FlockOperation::NonBlockingLockExclusive;
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match rustix::fs::flock(file, NonBlockingLockExclusive) {
            Ok(()) => return Ok(()),
            Err(rustix::io::Errno::WOULDBLOCK) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            Err(rustix::io::Errno::WOULDBLOCK) => {
                return Err(AuditTrailError::Refused(format!(
                    "another process has held the audit trail for {LOCK_WAIT:?}"
                )))
            }
            Err(e) => return Ok(Err(e).doing(|| "locking the audit trail".to_string())?),
        }
    }
}

const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The last complete entry; a torn last line (a crash mid-append, never
/// synced) is cut first.
fn last_entry(file: &mut File, path: &Path) -> Result<Option<Entry>> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(None);
    }
    let window = len.min(2 * LINE_BYTES_MAX as u64);
    let mut tail = vec![0u8; window as usize];
    file.read_exact_at(&mut tail, len - window)?;
    let complete = match tail.iter().rposition(|b| *b == b'\n') {
        Some(i) => i + 1,
        None if window == len => 0,
        None => {
            return Err(AuditTrailError::Refused(format!(
                "{}: its last line is longer than {LINE_BYTES_MAX} bytes",
                path.display()
            )))
        }
    };
    if complete < tail.len() {
        let keep = len - (tail.len() - complete) as u64;
        tracing::warn!(
            "the audit trail's last line was cut short ({} bytes, a crash mid-append; never acknowledged): removed",
            len - keep
        );
        file.set_len(keep)?;
        file.sync_data()?;
        tail.truncate(complete);
    }
    let lines = &tail[..complete];
    let Some(body) = lines.strip_suffix(b"\n") else { return Ok(None) };
    let start = body.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    if start == 0 && window < len {
        return Err(AuditTrailError::Refused(format!(
            "{}: its last line is longer than {LINE_BYTES_MAX} bytes",
            path.display()
        )));
    }
    let last = &body[start..];
    match serde_json::from_slice::<Entry>(last) {
        Ok(entry) => Ok(Some(entry)),
        // Damaged (a bad disk block, an edit): the trail goes on from the
        // damaged line's own hash, one seq on from the entry before it;
        // `--verify` names the damage.
        Err(e) => {
            tracing::error!(
                "{}: the last entry is not readable ({e}); appending after it (run `tidemark audit-log --verify`)",
                path.display()
            );
            let before = body[..start.saturating_sub(1)]
                .rsplit(|b| *b == b'\n')
                .next()
                .and_then(|l| serde_json::from_slice::<Entry>(l).ok())
                .map_or(0, |e| e.seq);
            let digest = hex(ring::digest::digest(&ring::digest::SHA256, last).as_ref());
            Ok(Some(Entry { seq: before + 1, hash: digest, ..placeholder() }))
        }
    }
}

/// An entry that stands for a damaged line (only its seq and hash count).
fn placeholder() -> Entry {
    Entry {
        seq: 0,
        time_ms: 0,
        user: String::new(),
        role: String::new(),
        source: String::new(),
        op: String::new(),
        params: serde_json::Value::Null,
        outcome: String::new(),
        of: None,
        prev: String::new(),
        hash: String::new(),
    }
}

fn cut(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// What `--verify` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// Entries read before the first broken link (all of them if none).
    pub entries: u64,
    /// The hash of the last good entry (the anchor to compare with a
    /// copy kept elsewhere).
    pub last_hash: String,
    /// The first broken link: line, seq and what is wrong.
    pub broken: Option<String>,
    /// The file ends in a line cut short (a crash mid-append).
    pub torn_tail: bool,
}

impl Verdict {
    /// What `tidemark audit-log --verify` prints.
    pub fn render(&self) -> String {
        let head = match &self.broken {
            None => format!("audit trail intact: {} entries, the chain holds", self.entries),
            Some(b) => format!("audit trail BROKEN at {b}; the {} entries before it hold", self.entries),
        };
        let torn = match self.torn_tail {
            true => {
                "\nits last line was cut short by a crash mid-append (never acknowledged; the next entry removes it)"
            }
            false => "",
        };
        format!("{head}\nlast good hash: {}{torn}\n", self.last_hash)
    }
}

/// Reads the whole trail and checks every link.
pub fn verify(path: &Path) -> Result<Verdict> {
    let mut verdict = Verdict { entries: 0, last_hash: GENESIS.into(), broken: None, torn_tail: false };
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(verdict),
        Err(e) => return Ok(Err(e).doing(|| format!("opening {}", path.display()))?),
    };
    let mut reader = BufReader::new(file);
    let mut line = Vec::new();
    for number in 1.. {
        line.clear();
        let n = (&mut reader).take(LINE_BYTES_MAX as u64 + 1).read_until(b'\n', &mut line)?;
        if n == 0 {
            break;
        }
        let Some(body) = line.strip_suffix(b"\n") else {
            if line.len() > LINE_BYTES_MAX {
                verdict.broken = Some(format!("line {number}: longer than {LINE_BYTES_MAX} bytes"));
            } else {
                verdict.torn_tail = true;
            }
            break;
        };
        let expected = verdict.entries + 1;
        let problem = match serde_json::from_slice::<Entry>(body) {
            Err(e) => Some(format!("not an audit entry ({e})")),
            Ok(e) if e.seq != expected => {
                Some(format!("seq {} where {expected} was due (an entry was removed or moved)", e.seq))
            }
            Ok(e) if e.prev != verdict.last_hash => Some(format!(
                "seq {}: its prev hash does not match the entry before it (an entry was removed, moved or edited)",
                e.seq
            )),
            Ok(e) if e.digest() != e.hash => {
                Some(format!("seq {}: its hash does not match its contents (edited)", e.seq))
            }
            // Only the bytes the writer wrote: escapes, spaces or repeated
            // keys would hide an entry from a search and still hash alike.
            Ok(e) if serde_json::to_vec(&e).ok().as_deref() != Some(body) => {
                Some(format!("seq {}: not written as the trail writes it (edited)", e.seq))
            }
            Ok(e) => {
                verdict.entries = e.seq;
                verdict.last_hash = e.hash;
                None
            }
        };
        if let Some(what) = problem {
            verdict.broken = Some(format!("line {number}: {what}"));
            break;
        }
    }
    Ok(verdict)
}

/// Every readable entry, oldest first, and how many lines were not
/// (damaged, or a torn last line).
pub fn read_all(path: &Path) -> Result<(Vec<Entry>, usize)> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Ok(Err(e).doing(|| format!("reading {}", path.display()))?),
    };
    let mut unreadable = 0;
    let entries = bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| serde_json::from_slice(l).inspect_err(|_| unreadable += 1).ok())
        .collect();
    Ok((entries, unreadable))
}

/// Runs `op` as `actor`, with a `started` entry before and its outcome
/// after. A trail that cannot be written does not stop the operation (a
/// disaster must not wait on the audit disk); it is logged as an error.
pub fn audited<T, E: std::fmt::Display>(
    data_dir: &Path,
    actor: &Actor,
    op: &str,
    params: serde_json::Value,
    run: impl FnOnce() -> Result<T, E>,
) -> Result<T, E> {
    let started = append_or_log(data_dir, actor, op, params.clone(), "started", None);
    let result = run();
    let outcome = match &result {
        Ok(_) => "ok".to_string(),
        // The alternate form: with its causes, for an anyhow error.
        Err(e) => format!("failed: {e:#}"),
    };
    append_or_log(data_dir, actor, op, params, &outcome, started);
    result
}

/// `append`, with a failure logged as an error instead of returned: the
/// operation it records goes on either way.
pub fn append_or_log(
    data_dir: &Path,
    actor: &Actor,
    op: &str,
    params: serde_json::Value,
    outcome: &str,
    of: Option<u64>,
) -> Option<u64> {
    append(data_dir, actor, op, params, outcome, of)
        .inspect_err(|e| {
            tracing::error!(
                "audit trail: could not record {op} ({outcome}): {e_chain}",
                e_chain = crate::error_chain::Chain(e)
            )
        })
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn actor() -> Actor {
        Actor { user: "root".into(), role: "admin (console)".into(), source: "test".into() }
    }

    fn trail(n: u64) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..n {
            append(dir.path(), &actor(), "checkpoint", json!({"vpg": "db", "tag": format!("t-{i}-é")}), "ok", None)
                .unwrap();
        }
        let path = trail_path(dir.path());
        (dir, path)
    }

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path).unwrap().lines().map(str::to_string).collect()
    }

    fn write_lines(path: &Path, lines: &[String]) {
        std::fs::write(path, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    }

    #[test]
    fn an_intact_trail_verifies_and_chains() {
        let (_dir, path) = trail(5);
        let v = verify(&path).unwrap();
        assert_eq!((v.entries, v.broken, v.torn_tail), (5, None, false));
        let all = read_all(&path).unwrap().0;
        assert_eq!(all[0].prev, GENESIS);
        assert!(all.windows(2).all(|w| w[1].prev == w[0].hash && w[1].seq == w[0].seq + 1));
        assert_eq!(v.last_hash, all[4].hash);
    }

    #[test]
    fn an_edited_entry_is_found() {
        let (_dir, path) = trail(5);
        let mut l = lines(&path);
        l[2] = l[2].replace("t-2-é", "t-2-x");
        write_lines(&path, &l);
        let broken = verify(&path).unwrap().broken.unwrap();
        assert!(broken.starts_with("line 3: seq 3: its hash does not match"), "{broken}");
    }

    #[test]
    fn an_edited_entry_with_its_hash_recomputed_breaks_the_next_link() {
        let (_dir, path) = trail(5);
        let mut l = lines(&path);
        let mut e: Entry = serde_json::from_str(&l[1]).unwrap();
        e.outcome = "failed: nothing".into();
        e.hash = e.digest();
        l[1] = serde_json::to_string(&e).unwrap();
        write_lines(&path, &l);
        let broken = verify(&path).unwrap().broken.unwrap();
        assert!(broken.starts_with("line 3: seq 3: its prev hash"), "{broken}");
    }

    #[test]
    fn a_removed_or_moved_entry_is_found() {
        let (_dir, path) = trail(5);
        let l = lines(&path);
        write_lines(&path, &[l[0].clone(), l[2].clone(), l[3].clone()]);
        assert!(verify(&path).unwrap().broken.unwrap().starts_with("line 2: seq 3 where 2 was due"));
        write_lines(&path, &[l[0].clone(), l[2].clone(), l[1].clone(), l[3].clone()]);
        assert!(verify(&path).unwrap().broken.unwrap().starts_with("line 2:"));
    }

    #[test]
    fn a_torn_last_line_is_reported_and_cut_by_the_next_append() {
        let (dir, path) = trail(3);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"seq":4,"time_ms":1"#).unwrap();
        let v = verify(&path).unwrap();
        assert_eq!((v.entries, v.broken.as_deref(), v.torn_tail), (3, None, true));
        let seq = append(dir.path(), &actor(), "restore", json!({}), "ok", None).unwrap();
        assert_eq!(seq, 4);
        let v = verify(&path).unwrap();
        assert_eq!((v.entries, v.broken, v.torn_tail), (4, None, false));
    }

    #[test]
    fn the_same_entry_written_another_way_is_found() {
        let (_dir, path) = trail(3);
        let mut l = lines(&path);
        l[1] = l[1].replace("\"op\":\"checkpoint\"", "\"op\":\"ch\\u0065ckpoint\"");
        write_lines(&path, &l);
        let broken = verify(&path).unwrap().broken.unwrap();
        assert!(broken.starts_with("line 2: seq 2: not written as the trail writes it"), "{broken}");
    }

    #[test]
    fn a_damaged_last_line_is_named_and_the_trail_goes_on() {
        let (dir, path) = trail(3);
        let mut l = lines(&path);
        l[2] = "\u{0}\u{0}\u{0}damaged".into();
        write_lines(&path, &l);
        assert_eq!(append(dir.path(), &actor(), "pin", json!({}), "ok", None).unwrap(), 4);
        let v = verify(&path).unwrap();
        assert!(v.broken.unwrap().starts_with("line 3: not an audit entry"));
        assert_eq!(read_all(&path).unwrap().1, 1);
    }

    #[test]
    fn long_parameters_are_cut_not_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let long = "é".repeat(20_000);
        append(dir.path(), &actor(), "seed", json!({ "images": [long] }), "ok", None).unwrap();
        let path = trail_path(dir.path());
        assert_eq!(verify(&path).unwrap().entries, 1);
        assert!(read_all(&path).unwrap().0[0].params["cut"].is_string());
    }

    #[test]
    fn audited_records_start_and_outcome() {
        let dir = tempfile::tempdir().unwrap();
        let out: Result<()> = audited(dir.path(), &actor(), "pin", json!({"checkpoint": "7"}), || {
            Err(AuditTrailError::Refused("no such".into()))
        });
        assert!(out.is_err());
        let all = read_all(&trail_path(dir.path())).unwrap().0;
        assert_eq!(all.len(), 2);
        assert_eq!((all[0].outcome.as_str(), all[1].of), ("started", Some(1)));
        assert!(all[1].outcome.starts_with("failed: no such"));
    }
}
