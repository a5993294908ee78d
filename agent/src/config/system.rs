//! The parts of the config that are about the appliance itself rather than
//! the pipeline: which networks may reach which port, hardening paths,
//! support SSH, the diagnostics endpoint, logging and the audit. Both
//! roles share them. Every path has the appliance's value as its default;
//! the tests point them into scratch directories.

use super::ConfigError;
use ipnet::IpNet;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

type Result<T, E = ConfigError> = std::result::Result<T, E>;

pub const DIAG_PORT_DEFAULT: u16 = 4005;
pub const API_PORT_DEFAULT: u16 = 4006;
/// A bundle token shorter than this is refused: it would be guessable.
pub const DIAG_TOKEN_CHARS_MIN: usize = 24;
pub const LOG_FILE_BYTES_DEFAULT: usize = 8 << 20;
pub const LOG_FILES_KEPT_DEFAULT: usize = 4;

/// The tables both roles share: `[appliance]`, `[diag]`, `[api]`,
/// `[logging]`, `[audit]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemConfig {
    #[serde(default)]
    pub appliance: ApplianceConfig,
    /// Without it nothing listens on 4005: there is no default token.
    #[serde(default)]
    pub diag: Option<DiagConfig>,
    /// Without it nothing listens on 4006.
    #[serde(default)]
    pub api: Option<ApiConfig>,
    #[serde(default)]
    pub logging: LoggingConfig,
    #[serde(default)]
    pub audit: AuditConfig,
}

impl SystemConfig {
    pub const TABLES: [&'static str; 5] = ["appliance", "diag", "api", "logging", "audit"];

    pub fn validate(&self) -> Result<()> {
        self.appliance.validate()?;
        if let Some(diag) = &self.diag {
            diag.validate()?;
        }
        if let Some(api) = &self.api {
            api.validate()?;
        }
        self.logging.validate()
    }
}

/// Every field of these tables has a default: an absent table is an empty one.
macro_rules! default_from_empty_table {
    ($($ty:ty),*) => {$(
        impl Default for $ty {
            fn default() -> Self {
                toml::Value::Table(Default::default()).try_into().expect("an empty table takes every default")
            }
        }
    )*};
}
default_from_empty_table!(ApplianceConfig, SupportSshConfig, ApiConfig, LoggingConfig, AuditConfig);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplianceConfig {
    /// Sources allowed to reach the diagnostics (4005), management API
    /// (4006) and checkpoint coordination (4009) ports.
    #[serde(default, deserialize_with = "networks")]
    pub management_networks: Vec<IpNet>,
    /// Sources allowed to reach replication control and data (4007, 4008).
    /// On the protected side the peer's address is added when it is an IP.
    #[serde(default, deserialize_with = "networks")]
    pub peer_networks: Vec<IpNet>,
    /// The interface the hypervisor's NBD traffic (10809) arrives on.
    #[serde(default)]
    pub storage_interface: Option<String>,
    /// Rule file to apply; default: the copy of `firewall/tidemark.rules`
    /// built into the binary.
    #[serde(default)]
    pub firewall_rules: Option<PathBuf>,
    /// sysctl file to apply; default: the built-in `sysctl/90-tidemark.conf`.
    #[serde(default)]
    pub sysctl_file: Option<PathBuf>,
    /// Where per-network-namespace keys (`net.*`) are written.
    #[serde(default = "default_proc_sys")]
    pub sysctl_root: PathBuf,
    /// Where kernel-wide keys (`kernel.*`, `fs.*`, `vm.*`, `net.core.bpf_*`)
    /// are written; separate so tests in a namespace never touch the host's.
    #[serde(default = "default_proc_sys")]
    pub global_sysctl_root: PathBuf,
    #[serde(default = "default_securetty")]
    pub securetty: PathBuf,
    /// Runtime state (support SSH session); on tmpfs so a reboot clears it.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    #[serde(default)]
    pub support_ssh: SupportSshConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupportSshConfig {
    /// The SSH server: dropbear (small, no configuration file to drift).
    #[serde(default = "default_dropbear")]
    pub server: PathBuf,
    /// Makes the server's host key on first use (kept in the state dir).
    #[serde(default = "default_dropbearkey")]
    pub keygen: PathBuf,
    /// The file the server reads root's keys from; on the appliance
    /// `/root/.ssh` is a link into tmpfs.
    #[serde(default = "default_authorized_keys")]
    pub authorized_keys: PathBuf,
    #[serde(default = "default_ssh_port")]
    pub port: u16,
    /// Longest session one `enable` may open.
    #[serde(default = "default_ssh_minutes_max")]
    pub minutes_max: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiagConfig {
    #[serde(default = "default_diag_listen")]
    pub listen: SocketAddr,
    /// The bundle token. Secret: never logged, never in the bundle.
    pub token: String,
}

/// The management API (4006): HTTPS, users and roles, sessions, the login
/// throttle (see `access::throttle`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    #[serde(default = "default_api_listen")]
    pub listen: SocketAddr,
    /// A session ends after this long without a request.
    #[serde(default = "default_session_idle", with = "super::humantime_serde_compat")]
    pub session_idle: Duration,
    /// And this long after its login, however busy.
    #[serde(default = "default_session_max", with = "super::humantime_serde_compat")]
    pub session_max: Duration,
    /// Wrong logins (per user and per source) answered without delay.
    #[serde(default = "default_login_free_failures")]
    pub login_free_failures: u32,
    /// The first delay after those; each further failure doubles it.
    #[serde(default = "default_login_delay", with = "super::humantime_serde_compat")]
    pub login_delay: Duration,
    #[serde(default = "default_login_delay_max", with = "super::humantime_serde_compat")]
    pub login_delay_max: Duration,
    /// Consecutive wrong logins that lock an account (an admin unlocks it).
    #[serde(default = "default_lock_after")]
    pub lock_after: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingConfig {
    /// Size-capped log files go here when journald is not running.
    #[serde(default = "default_log_dir")]
    pub dir: PathBuf,
    #[serde(default = "default_log_file_bytes")]
    pub file_bytes: usize,
    #[serde(default = "default_log_files_kept")]
    pub files_kept: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Root of the file system checked for setuid files and forbidden
    /// programs (compilers, package managers, cron).
    #[serde(default = "default_fs_root")]
    pub fs_root: PathBuf,
    /// Process names (`/proc/PID/comm`) allowed to run.
    #[serde(default = "default_allowed_processes")]
    pub allowed_processes: Vec<String>,
    /// setuid/setgid files allowed under `fs_root` (paths relative to it).
    #[serde(default)]
    pub setuid_allowed: Vec<PathBuf>,
    /// The appliance's root is read-only; a development host's is not.
    #[serde(default = "default_true")]
    pub readonly_root: bool,
}

/// A list of `address/prefix` (or a bare address, meaning that one host),
/// normalised to the network address as iptables prints it.
fn networks<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
    let texts = Vec::<String>::deserialize(d)?;
    texts.iter().map(|t| parse_network(t).map_err(serde::de::Error::custom)).collect()
}

pub fn parse_network(text: &str) -> Result<IpNet> {
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    match text.parse::<std::net::IpAddr>() {
        Ok(ip) => Ok(ip.into()),
        Err(_) => Err(ConfigError::Invalid(format!("{text:?} is not a network (like 10.0.0.0/24) or an address"))),
    }
}

fn default_proc_sys() -> PathBuf {
    "/proc/sys".into()
}
fn default_securetty() -> PathBuf {
    "/etc/securetty".into()
}
fn default_state_dir() -> PathBuf {
    "/run/tidemark".into()
}
fn default_dropbear() -> PathBuf {
    "/usr/sbin/dropbear".into()
}
fn default_dropbearkey() -> PathBuf {
    "/usr/bin/dropbearkey".into()
}
fn default_authorized_keys() -> PathBuf {
    "/root/.ssh/authorized_keys".into()
}
fn default_ssh_port() -> u16 {
    22
}
fn default_ssh_minutes_max() -> u64 {
    8 * 60
}
fn default_diag_listen() -> SocketAddr {
    ([0, 0, 0, 0], DIAG_PORT_DEFAULT).into()
}
fn default_api_listen() -> SocketAddr {
    ([0, 0, 0, 0], API_PORT_DEFAULT).into()
}
fn default_session_idle() -> Duration {
    Duration::from_secs(30 * 60)
}
fn default_session_max() -> Duration {
    Duration::from_secs(12 * 3600)
}
fn default_login_free_failures() -> u32 {
    3
}
fn default_login_delay() -> Duration {
    Duration::from_secs(1)
}
fn default_login_delay_max() -> Duration {
    Duration::from_secs(30)
}
fn default_lock_after() -> u32 {
    10
}
fn default_log_dir() -> PathBuf {
    "/var/log/tidemark".into()
}
fn default_log_file_bytes() -> usize {
    LOG_FILE_BYTES_DEFAULT
}
fn default_log_files_kept() -> usize {
    LOG_FILES_KEPT_DEFAULT
}
fn default_fs_root() -> PathBuf {
    "/".into()
}
fn default_true() -> bool {
    true
}
fn default_allowed_processes() -> Vec<String> {
    ["init", "sh", "ash", "getty", "tidemark", "dropbear", "udhcpc"].map(String::from).to_vec()
}

impl ApplianceConfig {
    pub fn validate(&self) -> Result<()> {
        if let Some(iface) = &self.storage_interface {
            validate_interface(iface).map_err(|e| e.at("appliance.storage_interface".to_string()))?;
        }
        if self.support_ssh.port != 22 {
            return Err(ConfigError::Invalid(format!(
                "appliance.support_ssh.port: {} is not in the port table; support SSH uses 22",
                self.support_ssh.port
            )));
        }
        if self.support_ssh.minutes_max == 0 {
            return Err(ConfigError::Invalid("appliance.support_ssh.minutes_max: must be at least 1".to_string()));
        }
        Ok(())
    }
}

impl DiagConfig {
    pub fn validate(&self) -> Result<()> {
        if self.listen.port() != DIAG_PORT_DEFAULT {
            return Err(ConfigError::Invalid(format!(
                "diag.listen: port {} is not in the port table; the diagnostics bundle uses 4005",
                self.listen.port()
            )));
        }
        let chars = self.token.chars().count();
        if chars < DIAG_TOKEN_CHARS_MIN || self.token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            // Never echo the token itself.
            return Err(ConfigError::Invalid(format!(
                "diag.token: must be at least {DIAG_TOKEN_CHARS_MIN} characters without spaces (got {chars}); \
                 make one with `head -c 24 /dev/urandom | base64`"
            )));
        }
        Ok(())
    }
}

impl ApiConfig {
    pub fn validate(&self) -> Result<()> {
        if self.listen.port() != API_PORT_DEFAULT {
            return Err(ConfigError::Invalid(format!(
                "api.listen: port {} is not in the port table; the management API uses 4006",
                self.listen.port()
            )));
        }
        if self.session_idle.is_zero() || self.session_idle > self.session_max {
            return Err(ConfigError::Invalid(
                "api.session_idle: must be more than zero and at most api.session_max".to_string(),
            ));
        }
        if self.session_max > Duration::from_secs(24 * 3600) {
            return Err(ConfigError::Invalid("api.session_max: at most 24h".to_string()));
        }
        if self.lock_after == 0 || self.lock_after <= self.login_free_failures {
            return Err(ConfigError::Invalid("api.lock_after: must be more than api.login_free_failures".to_string()));
        }
        if self.login_delay.is_zero()
            || self.login_delay > self.login_delay_max
            || self.login_delay_max > Duration::from_secs(300)
        {
            return Err(ConfigError::Invalid(
                "api.login_delay: must be more than zero and at most api.login_delay_max (itself at most 5min)"
                    .to_string(),
            ));
        }
        Ok(())
    }

    pub fn throttle_policy(&self) -> crate::access::throttle::Policy {
        crate::access::throttle::Policy {
            free: self.login_free_failures,
            delay: self.login_delay,
            delay_max: self.login_delay_max,
            lock_after: self.lock_after,
        }
    }
}

impl LoggingConfig {
    pub fn validate(&self) -> Result<()> {
        if self.file_bytes < 64 << 10 || self.files_kept == 0 {
            return Err(ConfigError::Invalid(
                "logging: file_bytes must be at least 65536 and files_kept at least 1".to_string(),
            ));
        }
        Ok(())
    }
}

/// Interface names go into firewall rules: the kernel allows 15 bytes.
pub fn validate_interface(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if !ok {
        return Err(ConfigError::Invalid(format!(
            "{name:?} is not an interface name (1-15 letters, digits, '-', '_' or '.')"
        )));
    }
    Ok(())
}
