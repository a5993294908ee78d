//! Each running agent writes `status.json` into its data directory once a
//! second; `tidemark status` reads it. A file, not a socket: it works with
//! no port open and shows the last state after the agent has stopped.

use crate::io_failure::IoFailure;
use crate::slot_file::{Contents, SlotFile};

type Result<T, E = StatusError> = std::result::Result<T, E>;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const STATUS_FILE: &str = "status.json";
pub const STATUS_INTERVAL_MS: u64 = 1000;
/// Older than this, the agent is reported as not running.
const STATUS_STALE_MS: u64 = 5000;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentStatus {
    pub role: String,
    pub node: String,
    pub pid: u32,
    pub updated_ms: u64,
    pub vpgs: Vec<VpgStatus>,
    /// The checkpoint groups this appliance coordinates (protected side).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<GroupStatus>,
}

/// A group of VPGs, on this and other appliances, whose checkpoints this
/// appliance takes at one instant (`crate::coordination`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GroupStatus {
    pub name: String,
    /// `vpg` (this appliance) or `vpg@host:port`.
    pub members: Vec<String>,
    pub interval_seconds: Option<f64>,
    /// Checkpoints taken on every member, and attempts that were not.
    pub complete: u64,
    pub failed: u64,
    pub last_complete: Option<GroupCheckpointSummary>,
    /// Why the last attempt failed, if it did.
    pub last_error: Option<String>,
    /// The longest any member's writes were held, over this run.
    pub hold_max_us: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupCheckpointSummary {
    pub tag: String,
    pub time_ms: u64,
    /// How long writes were held (the longest of the members).
    pub held_us: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VpgStatus {
    pub name: String,
    pub state: String,
    pub lag_bytes: u64,
    pub lag_seconds: f64,
    pub throughput_bytes_per_sec: u64,
    /// Record bytes sent (protected) or received (recovery) since the
    /// agent started, before compression.
    #[serde(default)]
    pub transferred_bytes: u64,
    /// Protected side: whether the replication link is up.
    #[serde(default)]
    pub link_connected: Option<bool>,
    /// Protected side: last seq appended; recovery side: last seq durable.
    pub head_seq: u64,
    /// Protected side: last seq the recovery site acknowledged.
    pub acked_seq: u64,
    pub last_checkpoint: Option<CheckpointSummary>,
    pub note: String,
    /// Recovery side: the history window and the journal's size.
    #[serde(default)]
    pub history: Option<HistoryStatus>,
    /// With iSCSI: the VPG's targets, their LUNs and sessions (protected:
    /// one; recovery: one per export, test failover or failover served).
    #[serde(default, deserialize_with = "one_or_many")]
    pub iscsi: Vec<IscsiStatus>,
    /// Protected side: the VPG's priority on the link ("high", "medium",
    /// "low"), its RPO target, and whether the lag is over it now.
    #[serde(default)]
    pub priority: String,
    #[serde(default)]
    pub rpo_target_seconds: Option<f64>,
    #[serde(default)]
    pub rpo_over_target: bool,
    /// Protected side: the encryption detector's alert, if it raised one.
    #[serde(default)]
    pub alert: Option<String>,
    /// Protected side: bitmap mode or a resync, while one is under way.
    #[serde(default)]
    pub bitmap: Option<BitmapStatus>,
    /// Protected side, sync mode: suspended since a FLUSH waited too long
    /// for the recovery journal (`capture::sync_gate`), until the link
    /// catches up.
    #[serde(default)]
    pub sync_suspended: Option<crate::capture::sync_gate::SyncSuspended>,
    /// Protected side: the last online verify (`tidemark verify`), in one line.
    #[serde(default)]
    pub last_verify: Option<String>,
    /// Protected side: the protected log's space.
    #[serde(default)]
    pub log: Option<crate::log::LogSpaceStatus>,
}

/// A VPG in bitmap mode or resyncing (docs/bitmap-mode.md).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BitmapStatus {
    /// "bitmap" or "resync".
    pub mode: String,
    /// Why the VPG entered this mode.
    pub why: String,
    pub since_seconds: u64,
    /// Bytes of volume marked in the dirty map (not yet read back).
    pub dirty_bytes: u64,
    /// Resync: bytes read back so far, of about this many in all.
    pub resynced_bytes: u64,
    pub resync_total_bytes: u64,
    pub resync_rate_bytes_per_sec: u64,
    pub resync_eta_seconds: Option<u64>,
}

/// `iscsi` as this build writes it (a list), or as the build before wrote
/// it (one target or null): a status file outlives the agent that wrote it.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<IscsiStatus>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Many(Vec<IscsiStatus>),
        One(IscsiStatus),
    }
    Ok(match Option::<Either>::deserialize(d)? {
        None => Vec::new(),
        Some(Either::Many(v)) => v,
        Some(Either::One(t)) => vec![t],
    })
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct IscsiStatus {
    pub target: String,
    pub luns: Vec<LunStatus>,
    /// The initiators logged in (each sees every LUN of the target).
    pub sessions: Vec<IscsiSession>,
    /// Why the target is not served (it is tried again); no LUNs then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One initiator's session on a target, as LIO shows it in the ACL's
/// `info` (only logged-in or logging-in sessions are shown).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IscsiSession {
    pub initiator: String,
    /// LIO's session state without its prefix: `LOGGED_IN`, `FAILED`...
    pub state: String,
    /// The initiator's address of each connection.
    pub addresses: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LunStatus {
    pub lun: u32,
    pub volume: String,
    pub naa: String,
    pub serial: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct HistoryStatus {
    pub configured_seconds: u64,
    /// How far back the oldest recoverable checkpoint is now.
    pub window_seconds: u64,
    pub oldest_checkpoint: Option<CheckpointSummary>,
    /// The replica holds every record up to this seq.
    pub replica_seq: u64,
    pub journal_bytes: u64,
    pub journal_limit: Option<u64>,
    /// Set when the window is shorter than configured, and why.
    pub warning: String,
    /// The byte limit moved the replica to this seq, between checkpoints,
    /// and it is still at no checkpoint; whether it is an image there.
    #[serde(skip)]
    pub between_checkpoints: Option<(u64, bool)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointSummary {
    pub id: u64,
    pub time_ms: u64,
    pub tag: String,
}

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(STATUS_FILE)
}

/// The status file as this agent writes it: a slot file
/// (`crate::slot_file`) rewritten in place, without a sync (it must be
/// current, not durable). A full data disk then still takes it; a new
/// file each second went stale there, and status called the running
/// agent stopped.
pub struct StatusFile {
    path: PathBuf,
    file: Option<SlotFile>,
}

impl StatusFile {
    pub fn new(data_dir: &Path) -> StatusFile {
        StatusFile { path: path(data_dir), file: None }
    }

    pub fn write(&mut self, status: &AgentStatus) -> Result<()> {
        let json = serde_json::to_vec_pretty(status).map_err(StatusError::Encoding)?;
        if self.file.is_none() {
            // An agent before this one left its file: rewritten in place.
            self.file = SlotFile::open(&self.path)?.1;
        }
        match &mut self.file {
            Some(file) => file.write_unsynced(&json)?,
            // Room to grow: VPGs come and go.
            None => self.file = Some(SlotFile::create(&self.path, &json, 2 * json.len() as u64)?),
        }
        Ok(())
    }
}

/// Why the status file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(transparent)]
    Storage(#[from] IoFailure),
    #[error("encoding the status")]
    Encoding(#[source] serde_json::Error),
    #[error("parsing {}", path.display())]
    Parse {
        path: std::path::PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// Writes this agent's status now; a failure is logged, never fatal.
pub fn publish(
    file: &mut StatusFile,
    node: &crate::config::Identity,
    role: &str,
    vpgs: Vec<VpgStatus>,
    groups: Vec<GroupStatus>,
) {
    let status = AgentStatus {
        role: role.into(),
        node: node.name.clone(),
        pid: std::process::id(),
        updated_ms: crate::record::now_ms(),
        vpgs,
        groups,
    };
    if let Err(e) = file.write(&status) {
        tracing::warn!("{}", crate::error_chain::Chain(&e));
    }
}

pub fn read(data_dir: &Path) -> Result<AgentStatus> {
    let path = path(data_dir);
    let text = read_json(&path).map_err(|e| e.within(|| "has the agent run with this config?".to_string()))?;
    serde_json::from_slice(&text).map_err(|source| StatusError::Parse { path, source })
}

/// The JSON text of the status file at `path` (a slot file, or a plain
/// one an agent from before slot files wrote).
pub fn read_json(path: &Path) -> std::result::Result<Vec<u8>, IoFailure> {
    match SlotFile::read(path)? {
        Contents::Slots(json) | Contents::Other(json) => Ok(json),
        Contents::Missing => {
            Err(IoFailure::new(format!("reading {}", path.display()), std::io::ErrorKind::NotFound.into()))
        }
        Contents::Damaged(why) => {
            Err(IoFailure::new(format!("reading {}: {why}", path.display()), std::io::ErrorKind::InvalidData.into()))
        }
    }
}

pub fn format_time_ms(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t).to_string()
}

pub fn format_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// One line on bitmap mode or a resync.
fn describe_bitmap(b: &BitmapStatus) -> String {
    let since = humantime::format_duration(std::time::Duration::from_secs(b.since_seconds));
    match b.mode.as_str() {
        "resync" => format!(
            "{} of {} read back, {} left at {}/s{} (since {since}: {}); checkpoints resume when done",
            format_bytes(b.resynced_bytes),
            format_bytes(b.resync_total_bytes),
            format_bytes(b.dirty_bytes),
            format_bytes(b.resync_rate_bytes_per_sec),
            b.resync_eta_seconds
                .map(|s| format!(", about {} more", humantime::format_duration(std::time::Duration::from_secs(s))))
                .unwrap_or_default(),
            b.why
        ),
        _ => format!(
            "{} of changed regions marked, not logged: write order is given up for them, checkpoints are held \
             until a resync, and FLUSH/FUA wait for the protected log only (sync mode, where set, is suspended) \
             (since {since}: {})",
            format_bytes(b.dirty_bytes),
            b.why
        ),
    }
}

pub fn render(status: &AgentStatus) -> String {
    let age = crate::record::now_ms().saturating_sub(status.updated_ms);
    let mut out = String::new();
    // The pid must be alive too: an agent that just stopped left a fresh file.
    let alive = Path::new(&format!("/proc/{}", status.pid)).exists();
    let running = if !alive {
        format!("NOT RUNNING (pid {} has exited; last report at {})", status.pid, format_time_ms(status.updated_ms))
    } else if age > STATUS_STALE_MS {
        format!(
            "NOT RUNNING (last report {} ago)",
            humantime::format_duration(std::time::Duration::from_secs(age / 1000))
        )
    } else {
        format!("running (pid {})", status.pid)
    };
    out.push_str(&format!("{} appliance {:?}: {running}\n", status.role, status.node));
    if status.vpgs.is_empty() {
        out.push_str("  no VPGs yet\n");
    }
    for v in &status.vpgs {
        out.push_str(&format!("VPG {}\n", v.name));
        out.push_str(&format!("  state:           {}\n", v.state));
        if let Some(alert) = &v.alert {
            out.push_str(&format!("  ALERT:           {alert}\n"));
        }
        if let Some(b) = &v.bitmap {
            out.push_str(&format!("  {:<17}{}\n", format!("{}:", b.mode), describe_bitmap(b)));
        }
        if let Some(s) = &v.sync_suspended {
            let now = match s.resuming {
                true => "resuming: FLUSH/FUA wait for the recovery journal again",
                false => "FLUSH/FUA wait for the protected log only until the link catches up",
            };
            out.push_str(&format!(
                "  sync:            SUSPENDED for {}: {}; {now}\n",
                humantime::format_duration(std::time::Duration::from_secs(s.since_seconds)),
                s.why
            ));
        }
        if let Some(verify) = &v.last_verify {
            out.push_str(&format!("  last verify:     {verify}\n"));
        }
        out.push_str(&format!("  lag:             {} / {:.1} s\n", format_bytes(v.lag_bytes), v.lag_seconds));
        if let Some(l) = &v.log {
            let capped = l.disk_full_cap_bytes.map_or(String::new(), |c| {
                format!("; its disk did not take a record: high-water mark capped to {}", format_bytes(c))
            });
            out.push_str(&format!(
                "  log:             {} held of {}, {} in spare segments{capped}\n",
                format_bytes(l.held_bytes),
                format_bytes(l.capacity_bytes),
                format_bytes(l.spare_bytes)
            ));
        }
        if !v.priority.is_empty() {
            out.push_str(&format!("  priority:        {}\n", v.priority));
        }
        if let Some(target) = v.rpo_target_seconds {
            out.push_str(&format!("  RPO target:      {target:.0} s\n"));
            if v.rpo_over_target {
                out.push_str(&format!(
                    "  WARNING:         RPO target missed: the oldest write not yet at the recovery site is {:.1} s \
                     old, over the {target:.0} s target\n",
                    v.lag_seconds
                ));
            }
        }
        out.push_str(&format!("  throughput:      {}/s\n", format_bytes(v.throughput_bytes_per_sec)));
        out.push_str(&format!("  head seq:        {}\n", v.head_seq));
        if status.role == "protected" {
            out.push_str(&format!("  acked seq:       {}\n", v.acked_seq));
        }
        match &v.last_checkpoint {
            Some(c) => out.push_str(&format!(
                "  last checkpoint: {} at {}{}\n",
                c.id,
                format_time_ms(c.time_ms),
                if c.tag.is_empty() { String::new() } else { format!(" ({})", c.tag) }
            )),
            None => out.push_str("  last checkpoint: none\n"),
        }
        if let Some(h) = &v.history {
            let secs = |s: u64| humantime::format_duration(std::time::Duration::from_secs(s)).to_string();
            out.push_str(&format!(
                "  history:         {} of {} configured (oldest checkpoint {})\n",
                secs(h.window_seconds),
                secs(h.configured_seconds),
                h.oldest_checkpoint.as_ref().map_or("none yet".into(), |c| c.id.to_string())
            ));
            out.push_str(&format!(
                "  journal:         {}{}, replica at seq {}\n",
                format_bytes(h.journal_bytes),
                h.journal_limit.map_or(String::new(), |l| format!(" of {} limit", format_bytes(l))),
                h.replica_seq
            ));
            if !h.warning.is_empty() {
                out.push_str(&format!("  WARNING:         {}\n", h.warning));
            }
        }
        for t in &v.iscsi {
            if let Some(error) = &t.error {
                out.push_str(&format!("  iSCSI target:    {} NOT SERVED (tried again): {error}\n", t.target));
                continue;
            }
            out.push_str(&format!("  iSCSI target:    {}\n", t.target));
            let sessions = if t.sessions.is_empty() {
                "no initiator logged in".to_string()
            } else {
                t.sessions
                    .iter()
                    .map(|s| format!("{} ({}, from {})", s.initiator, s.state.to_lowercase(), s.addresses.join(", ")))
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            for l in &t.luns {
                out.push_str(&format!("    LUN {} {}: {} serial {}; {sessions}\n", l.lun, l.volume, l.naa, l.serial));
            }
        }
        if !v.note.is_empty() {
            out.push_str(&format!("  note:            {}\n", v.note));
        }
    }
    for g in &status.groups {
        out.push_str(&format!("checkpoint group {} ({})\n", g.name, g.members.join(", ")));
        let every = g.interval_seconds.map_or("on demand".to_string(), |s| format!("every {s} s"));
        out.push_str(&format!("  checkpoints:     {every}; {} taken on every member, {} not\n", g.complete, g.failed));
        if let Some(c) = &g.last_complete {
            out.push_str(&format!(
                "  last:            {:?} at {} (writes held {:.2} ms; at most {:.2} ms this run)\n",
                c.tag,
                format_time_ms(c.time_ms),
                c.held_us as f64 / 1e3,
                g.hold_max_us as f64 / 1e3
            ));
        }
        if let Some(e) = &g.last_error {
            out.push_str(&format!("  WARNING:         the last one was not taken: {e}\n"));
        }
    }
    out
}

#[cfg(test)]
mod iscsi_field_tests {
    use super::*;

    /// A status file written by the build before (one target, or null)
    /// still reads.
    #[test]
    fn iscsi_reads_as_a_list_a_single_target_or_null() {
        let vpg = |iscsi: &str| {
            format!(
                r#"{{"name":"vm1","state":"s","lag_bytes":0,"lag_seconds":0.0,"throughput_bytes_per_sec":0,
                "head_seq":0,"acked_seq":0,"last_checkpoint":null,"note":""{iscsi}}}"#
            )
        };
        let target = r#"{"target":"iqn.2026-12.io.tidemark:tidemark:a:vm1","luns":[],"sessions":[]}"#;
        for (iscsi, targets) in [
            (String::new(), 0),
            (",\"iscsi\":null".to_string(), 0),
            (format!(",\"iscsi\":{target}"), 1),
            (format!(",\"iscsi\":[{target},{target}]"), 2),
        ] {
            let v: VpgStatus = serde_json::from_str(&vpg(&iscsi)).unwrap_or_else(|e| panic!("{iscsi}: {e}"));
            assert_eq!(v.iscsi.len(), targets, "{iscsi}");
        }
        // A target not served says why; one served has no error field.
        let not_served = r#"{"target":"iqn.t:vm1","luns":[],"sessions":[],"error":"no kernel NBD device left"}"#;
        let mut v: VpgStatus = serde_json::from_str(&vpg(&format!(",\"iscsi\":[{not_served}]"))).unwrap();
        let status = AgentStatus {
            role: "protected".into(),
            node: "a".into(),
            pid: 1,
            updated_ms: 0,
            vpgs: vec![v.clone()],
            groups: Vec::new(),
        };
        let text = render(&status);
        assert!(
            text.contains("iSCSI target:    iqn.t:vm1 NOT SERVED (tried again): no kernel NBD device left"),
            "{text}"
        );
        v.iscsi[0].error = None;
        assert!(!serde_json::to_string(&v).unwrap().contains("error"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(pid: u32, vpgs: usize) -> AgentStatus {
        let vpg: VpgStatus = serde_json::from_str(r#"{"name":"vpg1","state":"replicating","lag_bytes":0,"lag_seconds":0,"throughput_bytes_per_sec":0,"head_seq":1,"acked_seq":1,"last_checkpoint":null,"note":""}"#)
            .expect("a minimal VPG status");
        AgentStatus {
            role: "protected".into(),
            node: "a".into(),
            pid,
            updated_ms: 1,
            vpgs: vec![vpg; vpgs],
            groups: Vec::new(),
        }
    }

    #[test]
    fn the_status_file_is_rewritten_in_place_and_read_back() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        // An agent from before slot files wrote plain JSON: it is read, and replaced.
        std::fs::write(path(dir.path()), serde_json::to_vec(&status(7, 1)).unwrap()).unwrap();
        assert_eq!(read(dir.path()).unwrap().pid, 7);
        let mut file = StatusFile::new(dir.path());
        file.write(&status(8, 1)).unwrap();
        let ino = std::fs::metadata(path(dir.path())).unwrap().ino();
        for pid in 9..12 {
            file.write(&status(pid, 1)).unwrap();
            assert_eq!(read(dir.path()).unwrap().pid, pid);
        }
        assert_eq!(std::fs::metadata(path(dir.path())).unwrap().ino(), ino, "rewritten in place");
        // A later agent writes in place too; more VPGs than the slots hold grow the file.
        let mut again = StatusFile::new(dir.path());
        again.write(&status(12, 1)).unwrap();
        assert_eq!(std::fs::metadata(path(dir.path())).unwrap().ino(), ino);
        again.write(&status(13, 200)).unwrap();
        assert_eq!(read(dir.path()).unwrap().vpgs.len(), 200);
    }
}
