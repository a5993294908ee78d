//! Agent configuration: one TOML file per appliance, `role = "protected"`
//! or `role = "recovery"`. Unknown keys and bad values are refused at start
//! with the file, the key and the reason; nothing runs on a half-read config.

use crate::io_failure::Doing;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

type Result<T, E = ConfigError> = std::result::Result<T, E>;

mod coordination;
mod error;
mod system;

pub use coordination::{
    split_address, CoordinationConfig, GroupConfig, MemberConfig, COORDINATION_PORT_DEFAULT, HOLD_MAX_DEFAULT,
    HOLD_MAX_LIMIT,
};
pub use error::ConfigError;
pub use system::{
    parse_network, validate_interface, ApiConfig, ApplianceConfig, AuditConfig, DiagConfig, LoggingConfig,
    SupportSshConfig, SystemConfig, API_PORT_DEFAULT, DIAG_PORT_DEFAULT,
};

pub const CONTROL_PORT_DEFAULT: u16 = 4007;
pub const DATA_PORT_DEFAULT: u16 = 4008;
pub const NBD_PORT_DEFAULT: u16 = 10809;
pub const CHECKPOINT_INTERVAL_MS_DEFAULT: u64 = 5_000;
pub const CHECKPOINT_INTERVAL_MS_MIN: u64 = 1_000;
pub const LOG_CAPACITY_BYTES_DEFAULT: u64 = 1 << 30;
pub const LOG_CAPACITY_BYTES_MIN: u64 = 64 << 20;
/// The lag status samples once a second: a shorter RPO target means nothing.
const RPO_ALERT_MIN: std::time::Duration = std::time::Duration::from_secs(1);
/// A scheduled verify reads every volume whole: not more often than this.
const VERIFY_INTERVAL_MIN: std::time::Duration = std::time::Duration::from_secs(10);
pub const HISTORY_DEFAULT: std::time::Duration = std::time::Duration::from_secs(4 * 3600);
pub const HISTORY_MIN: std::time::Duration = std::time::Duration::from_secs(60);
pub const HISTORY_MAX: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);
/// Below this a journal could not hold even a few segments.
pub const JOURNAL_LIMIT_MIN: u64 = 64 << 20;

#[derive(Debug, Clone)]
pub enum Config {
    Protected(ProtectedConfig),
    Recovery(RecoveryConfig),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// Human name of this appliance, used in logs and status.
    pub name: String,
    /// Where the protected log or the recovery journal lives.
    pub data_dir: PathBuf,
    /// This appliance's certificate and key (from `tidemark keygen`).
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProtectedConfig {
    pub node: Identity,
    pub capture: CaptureConfig,
    pub peer: PeerConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(rename = "vpg")]
    pub vpgs: Vec<VpgConfig>,
    /// LUNs for ESXi (off when absent).
    #[serde(default)]
    pub iscsi: Option<IscsiConfig>,
    /// Checkpoints taken at one instant with VPGs of other appliances.
    #[serde(default)]
    pub coordination: Option<CoordinationConfig>,
    /// The appliance-level tables, read apart (see `Config::parse`).
    #[serde(skip)]
    pub system: SystemConfig,
}

/// The iSCSI front-end (ESXi): LUNs on the storage interface, mutual CHAP,
/// initiator ACLs. No defaults for anything secret.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IscsiConfig {
    /// The storage interface's address, port 3260 (the port table's).
    pub listen: SocketAddr,
    /// The reversed domain in target names:
    /// `iqn.2026-12.<domain>:tidemark:<appliance>:<vpg>`.
    #[serde(default = "default_iqn_domain")]
    pub domain: String,
    /// The IQNs of the initiators (hypervisors) allowed in.
    pub initiators: Vec<String>,
    /// Those of `initiators` that cannot authenticate the target (QEMU's
    /// iSCSI driver has no setting for it): their ACL carries no mutual
    /// credentials, so they log in with one-way CHAP. Every other
    /// initiator must use mutual CHAP; the appliance's iSCSI target module
    /// refuses its one-way login (docs/iscsi.md). Empty by default.
    #[serde(default)]
    pub one_way_chap_initiators: Vec<String>,
    /// What the initiators present (CHAP).
    pub chap_user: String,
    pub chap_secret: String,
    /// What the appliance presents back to them (mutual CHAP).
    pub mutual_chap_user: String,
    pub mutual_chap_secret: String,
}

/// The iSCSI port of the port table.
pub const ISCSI_PORT: u16 = 3260;
/// LUNs one appliance serves (what the appliance tests exercise): each is
/// one connection of the agent's NBD server from one source (the kernel's),
/// which admits more.
pub const ISCSI_LUNS_MAX: usize = 64;
const _: () = assert!(ISCSI_LUNS_MAX <= crate::nbd::admission::NBD_CONNECTIONS_PER_SOURCE_MAX);
/// CHAP secrets: RFC 3720 wants at least 12 bytes (96 bits); LIO takes 255.
const CHAP_SECRET_BYTES_MIN: usize = 12;
const CHAP_SECRET_BYTES_MAX: usize = 255;

fn default_iqn_domain() -> String {
    "io.tidemark".into()
}

impl IscsiConfig {
    fn validate(&self) -> Result<()> {
        if self.listen.port() != ISCSI_PORT {
            return Err(ConfigError::Invalid(format!(
                "iscsi.listen: the port must be {ISCSI_PORT} (the only one the firewall opens for iSCSI)"
            )));
        }
        if self.initiators.is_empty() {
            return Err(ConfigError::Invalid(
                "iscsi.initiators: name the initiators (IQNs) that may log in; nobody else can".to_string(),
            ));
        }
        for (i, iqn) in self.initiators.iter().enumerate() {
            if self.initiators[..i].contains(iqn) {
                return Err(ConfigError::Invalid(format!("iscsi.initiators[{i}]: {iqn} is listed twice")));
            }
            let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | ':');
            if !(iqn.starts_with("iqn.") || iqn.starts_with("eui.")) || !iqn.chars().all(ok) || iqn.len() > 223 {
                return Err(ConfigError::Invalid(format!(
                    "iscsi.initiators[{i}]: {iqn:?} is not an iSCSI name (iqn.YYYY-MM.domain:..., lower case)"
                )));
            }
        }
        for (i, iqn) in self.one_way_chap_initiators.iter().enumerate() {
            if !self.initiators.contains(iqn) || self.one_way_chap_initiators[..i].contains(iqn) {
                return Err(ConfigError::Invalid(format!(
                    "iscsi.one_way_chap_initiators[{i}]: {iqn:?} must be one of iscsi.initiators, named once"
                )));
            }
        }
        let printable = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic());
        for (key, user) in [("chap_user", &self.chap_user), ("mutual_chap_user", &self.mutual_chap_user)] {
            if !printable(user) || user.len() > CHAP_SECRET_BYTES_MAX {
                return Err(ConfigError::Invalid(format!(
                    "iscsi.{key}: 1-{CHAP_SECRET_BYTES_MAX} printable characters, no spaces"
                )));
            }
        }
        for (key, secret) in [("chap_secret", &self.chap_secret), ("mutual_chap_secret", &self.mutual_chap_secret)] {
            if !printable(secret) || !(CHAP_SECRET_BYTES_MIN..=CHAP_SECRET_BYTES_MAX).contains(&secret.len()) {
                return Err(ConfigError::Invalid(format!(
                    "iscsi.{key}: {CHAP_SECRET_BYTES_MIN}-{CHAP_SECRET_BYTES_MAX} printable characters, no spaces \
                     (it is {} long)",
                    secret.len()
                )));
            }
        }
        if self.chap_secret == self.mutual_chap_secret {
            return Err(ConfigError::Invalid(
                "iscsi.mutual_chap_secret: must differ from chap_secret (each side has its own)".to_string(),
            ));
        }
        if !self.domain.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-') || self.domain.is_empty() {
            return Err(ConfigError::Invalid("iscsi.domain: a reversed domain name such as com.example".to_string()));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureConfig {
    /// Address the NBD exports listen on (the storage interface).
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// Host name or address of the recovery appliance.
    pub address: String,
    #[serde(default = "default_control_port")]
    pub control_port: u16,
    #[serde(default = "default_data_port")]
    pub data_port: u16,
    /// The recovery appliance's certificate fingerprint, `sha256:<hex>`.
    pub fingerprint: String,
    /// Cap on bytes per second sent to the peer; 0 means no cap.
    #[serde(default)]
    pub throttle_bytes_per_sec: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Total bytes the protected log may hold before writes wait.
    #[serde(default = "default_log_capacity")]
    pub capacity_bytes: u64,
    /// Claim the capacity on disk ahead of need, as zero-filled spare
    /// segments made in the background (docs/formats.md): appends then
    /// overwrite allocated blocks. Off on a thin-provisioned data disk
    /// that should not grow to the logs' capacity.
    #[serde(default = "default_true")]
    pub preallocate: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { capacity_bytes: LOG_CAPACITY_BYTES_DEFAULT, preallocate: true }
    }
}

impl LogConfig {
    /// The size of each VPG's log.
    pub fn size(&self) -> crate::log::LogSize {
        let preallocation = match self.preallocate {
            true => crate::log::Preallocation::Background,
            false => crate::log::Preallocation::Off,
        };
        crate::log::LogSize::for_capacity(self.capacity_bytes, preallocation)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplicationMode {
    /// FLUSH/FUA returns once the write is durable in the protected log.
    #[default]
    Async,
    /// FLUSH/FUA returns once the recovery journal has the write (RPO 0).
    Sync,
}

/// How long a FLUSH/FUA in sync mode waits for the recovery journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncTimeout {
    /// Then sync mode is suspended until the link catches up.
    After(std::time::Duration),
    /// For as long as the link is down (strict RPO 0; production waits).
    Never,
}

impl SyncTimeout {
    /// Well under the 30 s a guest's disk driver gives a command before it
    /// resets the disk, and long enough for a WAN's round trips and a
    /// short backlog.
    pub const DEFAULT: SyncTimeout = SyncTimeout::After(std::time::Duration::from_secs(10));
    const MIN: std::time::Duration = std::time::Duration::from_secs(1);
    /// Longer, and the config warns: guests commonly reset a disk whose
    /// command took 30 s.
    const GUEST_PATIENCE: std::time::Duration = std::time::Duration::from_secs(25);
}

impl<'de> Deserialize<'de> for SyncTimeout {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let text = text.trim();
        if text == "never" {
            return Ok(SyncTimeout::Never);
        }
        humantime::parse_duration(text).map(SyncTimeout::After).map_err(|e| {
            serde::de::Error::custom(format!("{text:?} is neither \"never\" nor a duration like \"10s\": {e}"))
        })
    }
}

/// A VPG's claim on a capped link (`peer.throttle_bytes_per_sec`): while
/// VPGs wait for it, each priority gets link time in proportion to its
/// weight (`transfer::link_share`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    High,
    #[default]
    Medium,
    Low,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VpgConfig {
    pub name: String,
    #[serde(default)]
    pub mode: ReplicationMode,
    /// Sync mode only: how long a FLUSH/FUA waits for the recovery journal
    /// before sync mode is suspended until the link catches up ("10s", or
    /// "never": production waits for the link however long it is down).
    /// None: not set (the default, `SyncTimeout::DEFAULT`, in sync mode).
    #[serde(default)]
    pub sync_timeout: Option<SyncTimeout>,
    #[serde(default = "default_checkpoint_interval")]
    pub checkpoint_interval_ms: u64,
    #[serde(default)]
    pub priority: Priority,
    /// The RPO this VPG should keep ("30s", "5min"): longer, and status and
    /// the log warn. None: no target.
    #[serde(default, deserialize_with = "deserialize_optional_duration")]
    pub rpo_alert: Option<std::time::Duration>,
    /// Run an online verify (`tidemark verify`, no repair) this often
    /// ("1day", "12h"); the result is in status. None: only on demand.
    #[serde(default, deserialize_with = "deserialize_optional_duration")]
    pub verify_interval: Option<std::time::Duration>,
    /// The encryption-attack detector (`[vpg.detection]`; on by default).
    #[serde(default)]
    pub detection: DetectionConfig,
    /// Bitmap mode when the protected log fills (`[vpg.bitmap]`; on by
    /// default; docs/bitmap-mode.md).
    #[serde(default)]
    pub bitmap: BitmapConfig,
    #[serde(rename = "volume")]
    pub volumes: Vec<VolumeConfig>,
}

/// The encryption-attack detector of a VPG (see docs/detection.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectionConfig {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// How often each volume's features are closed and judged ("10s").
    #[serde(default = "default_detection_interval", with = "humantime_serde_compat")]
    pub interval: std::time::Duration,
    /// Low-entropy data turned random over three intervals must reach this
    /// many times the volume's baseline ...
    #[serde(default = "default_detection_factor")]
    pub factor: f64,
    /// ... and at least this much ("1MiB") to raise an alert.
    #[serde(default = "default_detection_min_bytes", deserialize_with = "deserialize_bytes_required")]
    pub min_bytes: u64,
}

impl Default for DetectionConfig {
    fn default() -> Self {
        DetectionConfig {
            enabled: true,
            interval: default_detection_interval(),
            factor: default_detection_factor(),
            min_bytes: default_detection_min_bytes(),
        }
    }
}

/// When a VPG stops logging its writes and only marks the regions they
/// change, and when it reads them back (docs/bitmap-mode.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BitmapConfig {
    /// Off: a full protected log holds writers back until the link drains it.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Percent of the log's capacity at which writes switch to bitmap mode.
    #[serde(default = "default_bitmap_high_water")]
    pub high_water: u8,
    /// Percent below which the log must drain before the resync begins.
    #[serde(default = "default_bitmap_low_water")]
    pub low_water: u8,
    /// Bytes of volume one bit of the dirty map stands for ("64KiB").
    #[serde(default = "default_bitmap_granularity", deserialize_with = "deserialize_bytes_required")]
    pub granularity: u64,
}

impl Default for BitmapConfig {
    fn default() -> Self {
        BitmapConfig {
            enabled: true,
            high_water: default_bitmap_high_water(),
            low_water: default_bitmap_low_water(),
            granularity: default_bitmap_granularity(),
        }
    }
}

fn default_bitmap_high_water() -> u8 {
    90
}

fn default_bitmap_low_water() -> u8 {
    50
}

fn default_bitmap_granularity() -> u64 {
    crate::capture::dirty_map::GRANULARITY_DEFAULT
}

fn default_true() -> bool {
    true
}

fn default_detection_interval() -> std::time::Duration {
    std::time::Duration::from_secs(10)
}

fn default_detection_factor() -> f64 {
    8.0
}

fn default_detection_min_bytes() -> u64 {
    1 << 20
}

fn deserialize_bytes_required<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<u64, D::Error> {
    deserialize_bytes(d).map(|b| b.unwrap_or_default())
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeConfig {
    /// Export name on the NBD server; unique on this appliance.
    pub name: String,
    /// The volume: a file or block device that already exists.
    pub path: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoveryConfig {
    pub node: Identity,
    pub listen: ListenConfig,
    /// History settings per VPG; a VPG not listed gets the defaults.
    #[serde(rename = "vpg", default)]
    pub vpgs: Vec<RecoveryVpgConfig>,
    /// Where recovered volumes are served over NBD (point-in-time views,
    /// test failover, failover): the recovery site's storage network.
    #[serde(default)]
    pub exports: Option<RecoveryExportsConfig>,
    /// The same recovered volumes as iSCSI LUNs, for a recovery ESXi host
    /// (off when absent; needs `[exports]`, whose NBD exports they share).
    #[serde(default)]
    pub iscsi: Option<IscsiConfig>,
    /// The appliance-level tables, read apart (see `Config::parse`).
    #[serde(skip)]
    pub system: SystemConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoveryExportsConfig {
    /// Address the NBD exports listen on (port 10809 by design).
    pub listen: SocketAddr,
}

/// How long a VPG's journal keeps history on the recovery side.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoveryVpgConfig {
    pub name: String,
    /// Checkpoints this old stay recoverable ("4h", "30min", "7days").
    #[serde(default = "default_history", with = "humantime_serde_compat")]
    pub history: std::time::Duration,
    /// Bytes the journal may hold ("20GiB", or a number); when it would
    /// pass this, the oldest history is applied early. None: no limit.
    #[serde(default, deserialize_with = "deserialize_bytes")]
    pub journal_limit: Option<u64>,
    /// Bytes the journal never passes, even while a pinned checkpoint (or
    /// an open export) keeps the applier from retiring history: at the cap
    /// batches are refused and the protected site keeps them in its log.
    /// None: the journal's disk is the cap. Needs `journal_limit`.
    #[serde(default, deserialize_with = "deserialize_bytes")]
    pub journal_cap: Option<u64>,
}

impl RecoveryVpgConfig {
    pub fn defaults(name: &str) -> Self {
        RecoveryVpgConfig { name: name.to_string(), history: default_history(), journal_limit: None, journal_cap: None }
    }

    fn validate(&self, i: usize) -> Result<()> {
        if self.history < HISTORY_MIN || self.history > HISTORY_MAX {
            return Err(ConfigError::Invalid(format!(
                "vpg[{i}].history: {} is outside 1 minute to 30 days",
                humantime::format_duration(self.history)
            )));
        }
        if self.journal_limit.is_some_and(|l| l < JOURNAL_LIMIT_MIN) {
            return Err(ConfigError::Invalid(format!("vpg[{i}].journal_limit: must be at least 64MiB")));
        }
        match (self.journal_limit, self.journal_cap) {
            (_, None) => {}
            (None, Some(_)) => {
                return Err(ConfigError::Invalid(format!(
                    "vpg[{i}].journal_cap: set journal_limit too; without it the cap would pause replication \
                 whenever the history window fills the journal"
                )))
            }
            // Room above the limit for the applier to keep it in steps.
            (Some(limit), Some(cap)) if cap < limit + limit / 4 => {
                return Err(ConfigError::Invalid(format!(
                    "vpg[{i}].journal_cap: must be at least 1.25 x journal_limit ({} bytes)",
                    limit + limit / 4
                )))
            }
            _ => {}
        }
        Ok(())
    }
}

impl RecoveryConfig {
    /// The history settings of `vpg` (the defaults when it is not listed).
    pub fn vpg(&self, vpg: &str) -> RecoveryVpgConfig {
        self.vpgs.iter().find(|v| v.name == vpg).cloned().unwrap_or_else(|| RecoveryVpgConfig::defaults(vpg))
    }
}

fn default_history() -> std::time::Duration {
    HISTORY_DEFAULT
}

mod humantime_serde_compat {
    use serde::{Deserialize, Deserializer};
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<std::time::Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map_err(|e| serde::de::Error::custom(format!("{text:?} is not a duration like \"4h\" or \"30min\": {e}")))
    }
}

fn deserialize_optional_duration<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<std::time::Duration>, D::Error> {
    humantime_serde_compat::deserialize(d).map(Some)
}

/// A byte count: a number, or a string with a unit (KiB, MiB, GiB, TiB).
fn deserialize_bytes<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Bytes {
        Number(u64),
        Text(String),
    }
    match Bytes::deserialize(d)? {
        Bytes::Number(n) => Ok(Some(n)),
        Bytes::Text(t) => parse_bytes(&t).map(Some).map_err(serde::de::Error::custom),
    }
}

/// Parses "512MiB", "2 GiB", "1048576".
pub fn parse_bytes(text: &str) -> Result<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 =
        digits.parse().map_err(|_| ConfigError::Invalid(format!("{text:?} is not a byte count like \"20GiB\"")))?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "KiB" | "K" => 10,
        "MiB" | "M" => 20,
        "GiB" | "G" => 30,
        "TiB" | "T" => 40,
        other => {
            return Err(ConfigError::Invalid(format!("{text:?}: unknown unit {other:?} (use KiB, MiB, GiB or TiB)")))
        }
    };
    n.checked_mul(1u64 << shift).ok_or_else(|| ConfigError::Invalid(format!("{text:?} is too large")))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    pub address: std::net::IpAddr,
    #[serde(default = "default_control_port")]
    pub control_port: u16,
    #[serde(default = "default_data_port")]
    pub data_port: u16,
    /// The one protected appliance allowed in (`sha256:<hex>`), which may
    /// replicate any VPG here. With several, list them as `[[listen.peer]]`
    /// instead, each with the VPGs it may use.
    #[serde(default)]
    pub peer_fingerprints: Vec<String>,
    /// Each protected appliance allowed in, and the VPGs it may replicate
    /// here (and receive back, and move here).
    #[serde(default, rename = "peer")]
    pub peers: Vec<PeerAccessConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerAccessConfig {
    pub fingerprint: String,
    pub vpgs: Vec<String>,
}

/// Which pinned protected appliance may use which VPG here. A VPG has one
/// protected site: another pinned peer may neither replace its session,
/// send into its journal, move it, nor receive it back.
#[derive(Debug, Clone)]
pub struct PeerAccess {
    peers: Vec<([u8; 32], Option<std::collections::BTreeSet<String>>)>,
}

impl PeerAccess {
    /// Every fingerprint let through TLS.
    pub fn fingerprints(&self) -> Vec<[u8; 32]> {
        self.peers.iter().map(|(fp, _)| *fp).collect()
    }

    /// Whether the peer with this certificate may use `vpg`.
    pub fn allows(&self, fingerprint: &[u8; 32], vpg: &str) -> bool {
        self.peers.iter().any(|(fp, vpgs)| fp == fingerprint && vpgs.as_ref().is_none_or(|v| v.contains(vpg)))
    }
}

impl ListenConfig {
    /// The peers and what each may use (the config was validated).
    pub fn access(&self) -> Result<PeerAccess> {
        let mut peers = Vec::new();
        for (i, fp) in self.peer_fingerprints.iter().enumerate() {
            peers.push((parse_fingerprint(fp).map_err(|e| e.at(format!("listen.peer_fingerprints[{i}]")))?, None));
        }
        for (i, p) in self.peers.iter().enumerate() {
            let fp = parse_fingerprint(&p.fingerprint).map_err(|e| e.at(format!("listen.peer[{i}].fingerprint")))?;
            peers.push((fp, Some(p.vpgs.iter().cloned().collect())));
        }
        Ok(PeerAccess { peers })
    }

    fn validate(&self) -> Result<()> {
        match (self.peer_fingerprints.len(), self.peers.len()) {
            (0, 0) => {
                return Err(ConfigError::Invalid(
                    "listen: pin at least one protected appliance (peer_fingerprints, or [[listen.peer]])".to_string(),
                ))
            }
            (1, 0) | (0, _) => {}
            (_, 0) => {
                return Err(ConfigError::Invalid(
                    "listen.peer_fingerprints: with more than one protected appliance, say which VPGs each may use: \
                 one [[listen.peer]] per appliance, with fingerprint = \"sha256:...\" and vpgs = [\"...\"]"
                        .to_string(),
                ))
            }
            _ => {
                return Err(ConfigError::Invalid(
                    "listen: use peer_fingerprints (one appliance) or [[listen.peer]], not both".to_string(),
                ))
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        let mut owner: std::collections::BTreeMap<&str, usize> = Default::default();
        for (i, p) in self.peers.iter().enumerate() {
            let fp = parse_fingerprint(&p.fingerprint).map_err(|e| e.at(format!("listen.peer[{i}].fingerprint")))?;
            if !seen.insert(fp) {
                return Err(ConfigError::Invalid(format!(
                    "listen.peer[{i}]: fingerprint {} is listed twice",
                    p.fingerprint
                )));
            }
            if p.vpgs.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "listen.peer[{i}].vpgs: name at least one VPG this appliance may replicate"
                )));
            }
            for v in &p.vpgs {
                validate_name("listen.peer.vpgs", v)?;
                if let Some(other) = owner.insert(v, i) {
                    return Err(ConfigError::Invalid(format!(
                        "VPG {v:?} is given to listen.peer[{other}] and listen.peer[{i}]; a VPG has one protected site"
                    )));
                }
            }
        }
        self.access().map(|_| ())
    }
}

fn default_control_port() -> u16 {
    CONTROL_PORT_DEFAULT
}
fn default_data_port() -> u16 {
    DATA_PORT_DEFAULT
}
fn default_log_capacity() -> u64 {
    LOG_CAPACITY_BYTES_DEFAULT
}
fn default_checkpoint_interval() -> u64 {
    CHECKPOINT_INTERVAL_MS_DEFAULT
}

impl Config {
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).doing(|| format!("reading config {}", path.display()))?;
        Self::parse(&text).map_err(|e| e.at(path.display().to_string()))
    }

    pub fn parse(text: &str) -> Result<Config> {
        let mut table: toml::Table =
            text.parse().map_err(|e: toml::de::Error| ConfigError::Invalid(e.message().to_string()))?;
        let role = match table.remove("role") {
            Some(toml::Value::String(r)) => r,
            Some(_) => {
                return Err(ConfigError::Invalid("role: must be a string, \"protected\" or \"recovery\"".to_string()))
            }
            None => {
                return Err(ConfigError::Invalid(
                    "role: missing; set role = \"protected\" or role = \"recovery\"".to_string(),
                ))
            }
        };
        // The appliance-level tables are the same for both roles: they are
        // read into one struct, and the rest into the role's.
        let mut system_table = toml::Table::new();
        for key in SystemConfig::TABLES {
            if let Some(value) = table.remove(key) {
                system_table.insert(key.to_string(), value);
            }
        }
        let system = SystemConfig::deserialize(toml::Value::Table(system_table)).map_err(explain)?;
        let value = toml::Value::Table(table);
        let config = match role.as_str() {
            "protected" => {
                Config::Protected(ProtectedConfig { system, ..ProtectedConfig::deserialize(value).map_err(explain)? })
            }
            "recovery" => {
                Config::Recovery(RecoveryConfig { system, ..RecoveryConfig::deserialize(value).map_err(explain)? })
            }
            other => {
                return Err(ConfigError::Invalid(format!(
                    "role: unknown role {other:?}; expected \"protected\" or \"recovery\""
                )))
            }
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
        self.system().validate()?;
        match self {
            Config::Protected(p) => p.validate(),
            Config::Recovery(r) => {
                validate_identity(&r.node)?;
                r.listen.validate()?;
                if let Some(iscsi) = &r.iscsi {
                    iscsi.validate()?;
                    if r.exports.is_none() {
                        return Err(ConfigError::Invalid(
                            "iscsi: recovered volumes are served as LUNs only with [exports] listen set as well"
                                .to_string(),
                        ));
                    }
                }
                r.validate_vpgs()
            }
        }
    }

    /// The iSCSI front-end, if this appliance has one (either role).
    pub fn iscsi(&self) -> Option<&IscsiConfig> {
        match self {
            Config::Protected(p) => p.iscsi.as_ref(),
            Config::Recovery(r) => r.iscsi.as_ref(),
        }
    }

    /// The appliance-level sections, the same for both roles.
    pub fn system(&self) -> &SystemConfig {
        match self {
            Config::Protected(p) => &p.system,
            Config::Recovery(r) => &r.system,
        }
    }

    /// Sources allowed on the replication ports: the configured networks,
    /// plus the recovery peer's address on the protected side.
    pub fn peer_networks(&self) -> Vec<ipnet::IpNet> {
        let mut nets = self.system().appliance.peer_networks.clone();
        if let Config::Protected(p) = self {
            if let Ok(ip) = p.peer.address.parse::<std::net::IpAddr>() {
                nets.push(ip.into());
            }
        }
        nets
    }

    pub fn node(&self) -> &Identity {
        match self {
            Config::Protected(p) => &p.node,
            Config::Recovery(r) => &r.node,
        }
    }
}

fn explain(e: toml::de::Error) -> ConfigError {
    ConfigError::Invalid(e.to_string().trim().to_string())
}

fn validate_identity(node: &Identity) -> Result<()> {
    if node.name.trim().is_empty() {
        return Err(ConfigError::Invalid("node.name: must not be empty".to_string()));
    }
    Ok(())
}

/// Names end up in file paths and export names: keep them plain.
pub fn validate_name(key: &str, name: &str) -> Result<()> {
    if !crate::names::is_plain(name) {
        return Err(ConfigError::Invalid(format!(
            "{key}: {name:?} must be 1-64 characters of letters, digits, '-', '_' or '.', not starting with '.'"
        )));
    }
    Ok(())
}

impl RecoveryConfig {
    fn validate_vpgs(&self) -> Result<()> {
        let mut names = std::collections::HashSet::new();
        for (i, vpg) in self.vpgs.iter().enumerate() {
            validate_name(&format!("vpg[{i}].name"), &vpg.name)?;
            if !names.insert(&vpg.name) {
                return Err(ConfigError::Invalid(format!("vpg[{i}].name: {:?} is listed twice", vpg.name)));
            }
            vpg.validate(i)?;
        }
        Ok(())
    }
}

impl ProtectedConfig {
    fn validate(&self) -> Result<()> {
        validate_identity(&self.node)?;
        parse_fingerprint(&self.peer.fingerprint).map_err(|e| e.at("peer.fingerprint".to_string()))?;
        if let Some(iscsi) = &self.iscsi {
            iscsi.validate()?;
            let mut targets: std::collections::HashMap<String, &str> = std::collections::HashMap::new();
            for vpg in &self.vpgs {
                let iqn = crate::iscsi::names::target_iqn(&iscsi.domain, &self.node.name, &vpg.name);
                if iqn.len() > crate::iscsi::names::IQN_BYTES_MAX {
                    return Err(ConfigError::Invalid(format!(
                        "iscsi: the target name of VPG {} is {} bytes, over {} (shorten iscsi.domain, node.name or \
                         the VPG's name): {iqn}",
                        vpg.name,
                        iqn.len(),
                        crate::iscsi::names::IQN_BYTES_MAX
                    )));
                }
                if let Some(other) = targets.insert(iqn.clone(), &vpg.name) {
                    return Err(ConfigError::Invalid(format!(
                        "iscsi: VPGs {other:?} and {:?} would share the target {iqn} (target names are lower case, \
                         with - for _); rename one",
                        vpg.name
                    )));
                }
            }
            let luns: usize = self.vpgs.iter().map(|v| v.volumes.len()).sum();
            if luns > ISCSI_LUNS_MAX {
                return Err(ConfigError::Invalid(format!(
                    "iscsi: {luns} volumes, over the {ISCSI_LUNS_MAX} LUNs one appliance serves"
                )));
            }
        }
        if self.log.capacity_bytes < LOG_CAPACITY_BYTES_MIN {
            return Err(ConfigError::Invalid(format!(
                "log.capacity_bytes: {} is below the minimum of {} (64 MiB)",
                self.log.capacity_bytes, LOG_CAPACITY_BYTES_MIN
            )));
        }
        if self.vpgs.is_empty() {
            return Err(ConfigError::Invalid("vpg: at least one [[vpg]] is required".to_string()));
        }
        let mut exports = std::collections::HashSet::new();
        let mut vpg_names = std::collections::HashSet::new();
        for (i, vpg) in self.vpgs.iter().enumerate() {
            vpg.validate(i, &mut exports)?;
            if !vpg_names.insert(&vpg.name) {
                return Err(ConfigError::Invalid(format!("vpg[{i}].name: {:?} is used twice", vpg.name)));
            }
        }
        if let Some(coordination) = &self.coordination {
            let local: Vec<&str> = self.vpgs.iter().map(|v| v.name.as_str()).collect();
            coordination.validate(&local)?;
        }
        Ok(())
    }
}

impl VpgConfig {
    /// One `[[vpg]]` (`i`, for the messages) on its own; `exports` collects
    /// the volume names, which must be unique across VPGs.
    fn validate(&self, i: usize, exports: &mut std::collections::HashSet<String>) -> Result<()> {
        validate_name(&format!("vpg[{i}].name"), &self.name)?;
        if self.checkpoint_interval_ms < CHECKPOINT_INTERVAL_MS_MIN {
            return Err(ConfigError::Invalid(format!(
                "vpg[{i}].checkpoint_interval_ms: {} is below the minimum of {CHECKPOINT_INTERVAL_MS_MIN} (1 s)",
                self.checkpoint_interval_ms
            )));
        }
        match (self.mode, self.sync_timeout) {
            (ReplicationMode::Async, Some(_)) => {
                return Err(ConfigError::Invalid(format!(
                "vpg[{i}].sync_timeout: only for mode = \"sync\" (this VPG is async: FLUSH never waits for the link)"
            )))
            }
            (_, Some(SyncTimeout::After(t))) if t < SyncTimeout::MIN => {
                return Err(ConfigError::Invalid(format!("vpg[{i}].sync_timeout: must be at least 1s, or \"never\"")))
            }
            (_, Some(SyncTimeout::After(t))) if t > SyncTimeout::GUEST_PATIENCE => tracing::warn!(
                "vpg[{i}].sync_timeout: {} is longer than the {} a guest's disk driver commonly gives a command \
                 before it resets the disk: a lost link may then reset the VMs' disks before sync mode is suspended",
                humantime::format_duration(t),
                humantime::format_duration(SyncTimeout::GUEST_PATIENCE)
            ),
            // Bitmap mode only marks a write's regions: no record a FLUSH
            // could wait for holds it.
            (_, Some(SyncTimeout::Never)) if self.bitmap.enabled => {
                return Err(ConfigError::Invalid(format!(
                    "vpg[{i}].sync_timeout: \"never\" needs [vpg.bitmap] enabled = false (in bitmap mode writes are \
                     only marked, so a FLUSH cannot wait for the recovery journal to hold them; with bitmap mode \
                     off a full log holds the writers instead)"
                )))
            }
            _ => {}
        }
        if self.rpo_alert.is_some_and(|t| t < RPO_ALERT_MIN) {
            return Err(ConfigError::Invalid(format!("vpg[{i}].rpo_alert: must be at least 1s")));
        }
        if self.verify_interval.is_some_and(|t| t < VERIFY_INTERVAL_MIN) {
            return Err(ConfigError::Invalid(format!(
                "vpg[{i}].verify_interval: must be at least 10s (each verify reads every volume)"
            )));
        }
        let d = &self.detection;
        if d.interval < std::time::Duration::from_secs(1) || d.interval > std::time::Duration::from_secs(3600) {
            return Err(ConfigError::Invalid(format!("vpg[{i}].detection.interval: must be between 1s and 1h")));
        }
        if !(d.factor >= 1.0 && d.factor <= 1000.0) {
            return Err(ConfigError::Invalid(format!("vpg[{i}].detection.factor: must be between 1 and 1000")));
        }
        if d.min_bytes < 64 << 10 {
            return Err(ConfigError::Invalid(format!("vpg[{i}].detection.min_bytes: must be at least 64KiB")));
        }
        let b = &self.bitmap;
        // A resync needs room for its reads between the two marks, and the
        // log's current segment (up to a 16th of it and one record) below
        // the high one.
        if !(60..=100).contains(&b.high_water) || b.low_water < 10 || b.low_water + 10 > b.high_water {
            return Err(ConfigError::Invalid(format!(
                "vpg[{i}].bitmap: need 60 <= high_water <= 100 and 10 <= low_water <= high_water - 10 \
                 (percent of the log's capacity)"
            )));
        }
        use crate::capture::dirty_map::{GRANULARITY_MAX, GRANULARITY_MIN};
        if !b.granularity.is_power_of_two() || !(GRANULARITY_MIN..=GRANULARITY_MAX).contains(&b.granularity) {
            return Err(ConfigError::Invalid(format!(
                "vpg[{i}].bitmap.granularity: must be a power of two from 4KiB to 1MiB"
            )));
        }
        if self.volumes.is_empty() {
            return Err(ConfigError::Invalid(format!("vpg[{i}].volume: at least one [[vpg.volume]] is required")));
        }
        if self.volumes.len() > crate::names::VOLUMES_PER_VPG_MAX {
            return Err(ConfigError::Invalid(format!(
                "vpg[{i}].volume: {} volumes, over the {} one VPG may hold (split it into several VPGs)",
                self.volumes.len(),
                crate::names::VOLUMES_PER_VPG_MAX
            )));
        }
        for (j, vol) in self.volumes.iter().enumerate() {
            validate_name(&format!("vpg[{i}].volume[{j}].name"), &vol.name)?;
            if !exports.insert(vol.name.clone()) {
                return Err(ConfigError::Invalid(format!(
                    "vpg[{i}].volume[{j}].name: export {:?} is used twice",
                    vol.name
                )));
            }
        }
        Ok(())
    }
}

/// Parses `sha256:<64 hex digits>` into the 32 digest bytes.
pub fn parse_fingerprint(text: &str) -> Result<[u8; 32]> {
    let hex = text
        .strip_prefix("sha256:")
        .ok_or_else(|| ConfigError::Invalid(format!("{text:?} must start with \"sha256:\"")))?;
    let hex: String = hex.chars().filter(|c| *c != ':').collect();
    if hex.len() != 64 {
        return Err(ConfigError::Invalid(format!("{text:?} must have 64 hex digits after \"sha256:\"")));
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
            .map_err(|_| ConfigError::Invalid(format!("{text:?} is not hexadecimal")))?;
    }
    Ok(out)
}

pub fn format_fingerprint(digest: &[u8]) -> String {
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

    #[test]
    fn a_vpg_holds_at_most_so_many_volumes() {
        let volumes = |n: usize| {
            (1..n).map(|i| format!("[[vpg.volume]]\nname = \"w{i}\"\npath = \"/dev/w{i}\"\n")).collect::<String>()
        };
        let max = crate::names::VOLUMES_PER_VPG_MAX;
        Config::parse(&format!("{}{}", protected(""), volumes(max))).unwrap();
        let err = Config::parse(&format!("{}{}", protected(""), volumes(max + 1))).unwrap_err();
        assert!(err.to_string().contains("257 volumes, over the 256"), "{err}");
    }

    fn protected(extra_vpg: &str) -> String {
        format!(
            r#"role = "protected"
[node]
name = "a"
data_dir = "/tmp/x"
cert = "c"
key = "k"
[capture]
listen = "127.0.0.1:10809"
[peer]
address = "127.0.0.1"
fingerprint = "{FP}"
[[vpg]]
name = "db"
{extra_vpg}
[[vpg.volume]]
name = "v1"
path = "/tmp/v1"
"#
        )
    }

    #[test]
    fn defaults_apply() {
        let Config::Protected(p) = Config::parse(&protected("")).unwrap() else { panic!() };
        assert_eq!(p.peer.control_port, 4007);
        assert_eq!(p.vpgs[0].mode, ReplicationMode::Async);
        assert_eq!(p.vpgs[0].checkpoint_interval_ms, 5000);
        assert_eq!(p.log.capacity_bytes, 1 << 30);
        assert_eq!((p.vpgs[0].priority, p.vpgs[0].rpo_alert), (Priority::Medium, None));
    }

    #[test]
    fn bitmap_mode_is_on_by_default_and_bad_marks_are_named() {
        let Config::Protected(p) = Config::parse(&protected("")).unwrap() else { panic!() };
        let b = &p.vpgs[0].bitmap;
        assert_eq!((b.enabled, b.high_water, b.low_water, b.granularity), (true, 90, 50, 64 << 10));
        let toml = "[vpg.bitmap]\nhigh_water = 80\nlow_water = 30\ngranularity = \"1MiB\"";
        let Config::Protected(p) = Config::parse(&protected(toml)).unwrap() else { panic!() };
        assert_eq!((p.vpgs[0].bitmap.high_water, p.vpgs[0].bitmap.granularity), (80, 1 << 20));
        for bad in
            ["high_water = 50", "low_water = 85", "low_water = 5", "granularity = \"96KiB\"", "granularity = \"2MiB\""]
        {
            let err = Config::parse(&protected(&format!("[vpg.bitmap]\n{bad}"))).unwrap_err();
            assert!(
                crate::error_chain::Chain(&err).to_string().contains("vpg[0].bitmap"),
                "{bad}: {err_chain}",
                err_chain = crate::error_chain::Chain(&err)
            );
        }
    }

    #[test]
    fn sync_timeout_parses_and_bad_ones_are_named() {
        let timeout = |extra: &str| match Config::parse(&protected(extra)) {
            Ok(Config::Protected(p)) => Ok(p.vpgs[0].sync_timeout),
            Ok(_) => panic!("not a protected config"),
            Err(e) => Err(e.to_string()),
        };
        assert_eq!(timeout(""), Ok(None));
        let five = SyncTimeout::After(std::time::Duration::from_secs(5));
        assert_eq!(timeout("mode = \"sync\"\nsync_timeout = \"5s\""), Ok(Some(five)));
        let strict = "mode = \"sync\"\nsync_timeout = \" never \"\n[vpg.bitmap]\nenabled = false";
        assert_eq!(timeout(strict), Ok(Some(SyncTimeout::Never)));
        for (extra, says) in [
            ("sync_timeout = \"5s\"", "vpg[0].sync_timeout: only for mode = \"sync\""),
            ("mode = \"sync\"\nsync_timeout = \"100ms\"", "vpg[0].sync_timeout: must be at least 1s"),
            ("mode = \"sync\"\nsync_timeout = \"soon\"", "neither \"never\" nor a duration"),
            ("mode = \"sync\"\nsync_timeout = \"never\"", "\"never\" needs [vpg.bitmap] enabled = false"),
        ] {
            let e = timeout(extra).expect_err(extra);
            assert!(e.contains(says), "{extra}: {e}");
        }
    }

    #[test]
    fn priority_and_rpo_alert_parse_and_bad_ones_are_named() {
        let Config::Protected(p) = Config::parse(&protected("priority = \"high\"\nrpo_alert = \"30s\"")).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (p.vpgs[0].priority, p.vpgs[0].rpo_alert),
            (Priority::High, Some(std::time::Duration::from_secs(30)))
        );
        for (bad, named) in [
            ("priority = \"urgent\"", "urgent"),
            ("rpo_alert = \"soon\"", "not a duration"),
            ("rpo_alert = \"100ms\"", "vpg[0].rpo_alert: must be at least 1s"),
            ("verify_interval = \"5s\"", "vpg[0].verify_interval: must be at least 10s"),
        ] {
            let err = crate::error_chain::Chain(&Config::parse(&protected(bad)).unwrap_err()).to_string();
            assert!(err.contains(named), "{bad}: {err}");
        }
    }

    #[test]
    fn iscsi_names_that_would_collide_are_refused() {
        let iscsi = |initiators: &str| {
            format!(
                "[iscsi]\nlisten = \"127.0.0.1:3260\"\ninitiators = [{initiators}]\nchap_user = \"esx\"\n\
                 chap_secret = \"initiator-secret\"\nmutual_chap_user = \"tm\"\nmutual_chap_secret = \"target-secret-1\"\n"
            )
        };
        let good = format!("{}{}", protected(""), iscsi("\"iqn.1998-01.com.vmware:esx1\""));
        Config::parse(&good).unwrap();
        let twice =
            format!("{}{}", protected(""), iscsi("\"iqn.1998-01.com.vmware:esx1\", \"iqn.1998-01.com.vmware:esx1\""));
        let err = crate::error_chain::Chain(&Config::parse(&twice).unwrap_err()).to_string();
        assert!(err.contains("listed twice"), "{err}");
        // `DB` and `db` are two VPGs, but one target name.
        let second = "[[vpg]]\nname = \"DB\"\n[[vpg.volume]]\nname = \"v2\"\npath = \"/tmp/v2\"\n";
        let clash = format!("{}{second}{}", protected(""), iscsi("\"iqn.1998-01.com.vmware:esx1\""));
        let err = crate::error_chain::Chain(&Config::parse(&clash).unwrap_err()).to_string();
        assert!(err.contains("would share the target"), "{err}");
        let mut many = protected("");
        for i in 0..ISCSI_LUNS_MAX {
            many.push_str(&format!("[[vpg.volume]]\nname = \"x{i}\"\npath = \"/tmp/x{i}\"\n"));
        }
        let err = crate::error_chain::Chain(
            &Config::parse(&format!("{many}{}", iscsi("\"iqn.1998-01.com.vmware:esx1\""))).unwrap_err(),
        )
        .to_string();
        assert!(err.contains("LUNs one appliance serves"), "{err}");
        let one_way = |listed: &str| {
            format!(
                "{}{}one_way_chap_initiators = [{listed}]\n",
                protected(""),
                iscsi("\"iqn.1998-01.com.vmware:esx1\", \"iqn.2026-12.org.qemu:guest\"")
            )
        };
        let cfg = Config::parse(&one_way("\"iqn.2026-12.org.qemu:guest\"")).unwrap();
        assert_eq!(cfg.iscsi().unwrap().one_way_chap_initiators, ["iqn.2026-12.org.qemu:guest"]);
        for bad in ["\"iqn.1998-01.com.vmware:esx9\"", "\"iqn.2026-12.org.qemu:guest\", \"iqn.2026-12.org.qemu:guest\""]
        {
            let err = crate::error_chain::Chain(&Config::parse(&one_way(bad)).unwrap_err()).to_string();
            assert!(err.contains("must be one of iscsi.initiators, named once"), "{bad}: {err}");
        }
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::parse(&protected("colour = \"red\"")).unwrap_err().to_string();
        assert!(err.contains("colour"), "{err}");
    }

    #[test]
    fn interval_below_minimum_is_refused() {
        let err = Config::parse(&protected("checkpoint_interval_ms = 10")).unwrap_err().to_string();
        assert!(err.contains("vpg[0].checkpoint_interval_ms"), "{err}");
    }

    #[test]
    fn bad_mode_is_refused() {
        let err = Config::parse(&protected("mode = \"eventually\"")).unwrap_err().to_string();
        assert!(err.contains("eventually"), "{err}");
    }

    fn recovery(vpg: &str) -> String {
        format!(
            r#"role = "recovery"
[node]
name = "b"
data_dir = "/tmp/y"
cert = "c"
key = "k"
[listen]
address = "127.0.0.1"
peer_fingerprints = ["{FP}"]
{vpg}
"#
        )
    }

    #[test]
    fn history_defaults_and_limits() {
        let Config::Recovery(r) = Config::parse(&recovery("")).unwrap() else { panic!() };
        assert_eq!(r.vpg("db").history, HISTORY_DEFAULT);
        assert_eq!(r.vpg("db").journal_limit, None);
        let Config::Recovery(r) =
            Config::parse(&recovery("[[vpg]]\nname = \"db\"\nhistory = \"1min\"\njournal_limit = \"2GiB\"")).unwrap()
        else {
            panic!()
        };
        assert_eq!(r.vpg("db").history, HISTORY_MIN);
        assert_eq!(r.vpg("db").journal_limit, Some(2 << 30));
        for bad in [
            "history = \"30s\"",
            "history = \"31days\"",
            "history = \"soon\"",
            "journal_limit = \"1MiB\"",
            "journal_limit = \"2 parsecs\"",
            "journal_cap = \"1GiB\"",
            "journal_limit = \"1GiB\"\njournal_cap = \"1200MiB\"",
        ] {
            let err = Config::parse(&recovery(&format!("[[vpg]]\nname = \"db\"\n{bad}"))).unwrap_err();
            assert!(
                crate::error_chain::Chain(&err).to_string().contains("vpg[0]")
                    || crate::error_chain::Chain(&err).to_string().contains("history")
                    || crate::error_chain::Chain(&err).to_string().contains("journal_limit"),
                "{bad}: {err_chain}",
                err_chain = crate::error_chain::Chain(&err)
            );
        }
        let toml = "[[vpg]]\nname = \"db\"\njournal_limit = \"1GiB\"\njournal_cap = \"1280MiB\"";
        let Config::Recovery(r) = Config::parse(&recovery(toml)).unwrap() else { panic!() };
        assert_eq!(r.vpg("db").journal_cap, Some(1280 << 20));
        let err = Config::parse(&recovery("[[vpg]]\nname = \"db\"\njournal_cap = \"1GiB\"")).unwrap_err();
        assert!(
            crate::error_chain::Chain(&err).to_string().contains("set journal_limit too"),
            "{err_chain}",
            err_chain = crate::error_chain::Chain(&err)
        );
    }

    #[test]
    fn byte_counts() {
        assert_eq!(parse_bytes("1048576").unwrap(), 1 << 20);
        assert_eq!(parse_bytes("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("2 GiB").unwrap(), 2 << 30);
        assert!(parse_bytes("MiB").is_err());
        assert!(parse_bytes("99999999999TiB").is_err());
    }

    #[test]
    fn fingerprint_roundtrip() {
        let fp = format_fingerprint(&[0xab; 32]);
        assert_eq!(parse_fingerprint(&fp).unwrap(), [0xab; 32]);
        assert!(parse_fingerprint("md5:00").is_err());
    }
}
