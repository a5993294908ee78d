//! Console-only support SSH. `enable` (from the local console) validates the
//! engineer's key, starts dropbear with keys only and no forwarding, opens
//! port 22 for one network, and starts a warden process that closes it all
//! when the time runs out. The session lives in the state dir (tmpfs on the
//! appliance), so a reboot forgets it and the boot's firewall has no 22.
//!
//! Dropbear rather than OpenSSH: one small static-friendly binary with no
//! configuration file, privilege-separation user or host-key directory to
//! keep right on a read-only root; the flags below are the whole policy.

use super::firewall::Firewall;
use super::procfs;
use super::rules::{family_of, support_rule};
use super::sockets;
use super::ssh_key::SupportKey;
use super::HardenError;
use crate::config::{Config, SystemConfig};
use crate::durable::{replace_file, FileMode};
use crate::io_failure::Doing;
use ipnet::IpNet;
use rustix::process::{Pid, Signal};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

type Result<T, E = HardenError> = std::result::Result<T, E>;

const STATE_FILE: &str = "support-ssh.json";
const HOST_KEY_FILE: &str = "ssh_host_ed25519_key";
const SERVER_LOG_FILE: &str = "support-ssh-server.log";
/// How long `enable` waits for the server to listen.
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `disable` waits for the warden to close the session.
const WARDEN_STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle sessions are cut after this long (dropbear -I).
const IDLE_TIMEOUT_SECS: u32 = 30 * 60;
const AUTH_TRIES_MAX: u32 = 3;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    pub network: IpNet,
    pub port: u16,
    pub opened_ms: u64,
    pub until_ms: u64,
    pub who: String,
    pub tty: String,
    pub key_fingerprint: String,
    pub server_pid: i32,
    pub warden_pid: Option<i32>,
}

pub struct EnableRequest {
    pub duration_ms: u64,
    pub network: IpNet,
    pub key_text: String,
    /// Where the request was typed: the console line, or a test's note.
    pub tty: String,
    pub config_path: PathBuf,
}

fn state_path(state_dir: &Path) -> PathBuf {
    state_dir.join(STATE_FILE)
}

fn load(state_dir: &Path) -> Result<Option<Session>> {
    let path = state_path(state_dir);
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(
            serde_json::from_slice(&bytes)
                .map_err(|e| HardenError::from(e).at(format!("reading support session {}", path.display())))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).doing(|| format!("reading {}", path.display())).map_err(HardenError::from),
    }
}

fn store(state_dir: &Path, session: &Session) -> Result<()> {
    std::fs::create_dir_all(state_dir).doing(|| format!("creating {}", state_dir.display()))?;
    Ok(replace_file(&state_path(state_dir), &serde_json::to_vec_pretty(session)?, FileMode::Public)?)
}

fn server_comm(system: &SystemConfig) -> String {
    system.appliance.support_ssh.server.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// The session that is open now: its time has not run out, and its server
/// and the warden that will close it both run.
pub fn open_session(state_dir: &Path) -> Result<Option<Session>> {
    Ok(load(state_dir)?.filter(|s| {
        s.until_ms > crate::record::now_ms() && procfs::alive(s.server_pid) && s.warden_pid.is_some_and(warden_alive)
    }))
}

fn warden_alive(pid: i32) -> bool {
    procfs::alive_as(pid, "tidemark")
}

/// The console line this command runs on, or an error saying why not:
/// stdin must be a console line and this process's controlling terminal
/// (a shell elsewhere that redirects `</dev/tty1` is not at the console).
pub fn console_tty() -> Result<String> {
    let stdin = std::io::stdin();
    let name = rustix::termios::ttyname(&stdin, Vec::new()).map_err(|_| {
        HardenError::Invalid(
            "stdin is not a terminal; support SSH can only be enabled at the local console".to_string(),
        )
    })?;
    let name = name.to_string_lossy().into_owned();
    if !is_console_line(&name) {
        return Err(HardenError::Invalid(format!(
            "{name} is not a local console line; support SSH can only be enabled at the console (tty1 or ttyS0)"
        )));
    }
    let rdev = rustix::fs::fstat(&stdin).doing(|| "reading stdin's device".to_string())?.st_rdev;
    let device = (rustix::fs::major(rdev), rustix::fs::minor(rdev));
    let controlling = procfs::stat(std::process::id() as i32).and_then(|s| s.tty);
    if controlling != Some(device) {
        return Err(HardenError::Invalid(format!(
            "{name} is not this command's controlling terminal (stdin was redirected from it); \
             support SSH can only be enabled by someone logged in at the console"
        )));
    }
    Ok(name)
}

fn is_console_line(name: &str) -> bool {
    let line = name.strip_prefix("/dev/").unwrap_or(name);
    let numbered = |prefix: &str| {
        line.strip_prefix(prefix).is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
    };
    line == "console" || numbered("tty") || numbered("ttyS") || numbered("hvc")
}

/// The person asking, as the kernel knows them: the login uid (set at
/// login, kept across su and sudo) or else the real uid, by name. Never an
/// environment variable, which the caller sets at will.
pub fn who() -> String {
    let loginuid = std::fs::read_to_string("/proc/self/loginuid").ok().and_then(|s| s.trim().parse::<u32>().ok());
    let uid = loginuid.filter(|u| *u != u32::MAX).unwrap_or_else(|| rustix::process::getuid().as_raw());
    crate::audit_trail::user_name(uid)
}

/// The narrowest a support session's network may be: wider is the world.
const FROM_PREFIX_MIN: u8 = 8;

pub fn enable(cfg: &Config, request: EnableRequest) -> Result<Session> {
    let system = cfg.system();
    let ssh = &system.appliance.support_ssh;
    let state_dir = &system.appliance.state_dir;
    let key = SupportKey::parse(&request.key_text).map_err(|e| e.at("--key".to_string()))?;
    if let Some(open) = open_session(state_dir)? {
        return Err(HardenError::Invalid(format!(
            "a support session is already open from {} until {} (opened by {}); run `tidemark support-ssh disable` first",
            open.network,
            crate::status::format_time_ms(open.until_ms),
            open.who
        )));
    }
    if request.network.prefix_len() < FROM_PREFIX_MIN {
        return Err(HardenError::Invalid(format!(
            "--from {}: that opens SSH to far too many addresses; give the engineer's network (a /{FROM_PREFIX_MIN} at most)",
            request.network
        )));
    }
    let firewall = Firewall::open()?;
    if !firewall.families().any(|f| f == family_of(&request.network)) {
        return Err(HardenError::Invalid(format!("--from {}: IPv6 is disabled on this appliance", request.network)));
    }
    clear_stale(cfg)?;
    if sockets::is_listening_tcp(ssh.port) {
        return Err(HardenError::Invalid(format!(
            "something already listens on port {}; refusing to start a second SSH server",
            ssh.port
        )));
    }
    std::fs::create_dir_all(state_dir).doing(|| format!("creating {}", state_dir.display()))?;
    let host_key = ensure_host_key(system, state_dir)?;
    write_authorized_keys(&ssh.authorized_keys, &key)?;
    let now = crate::record::now_ms();
    let mut session = Session {
        network: request.network,
        port: ssh.port,
        opened_ms: now,
        until_ms: now + request.duration_ms,
        who: who(),
        tty: request.tty,
        key_fingerprint: key.fingerprint(),
        server_pid: 0,
        warden_pid: None,
    };
    let opened = (|| -> Result<()> {
        session.server_pid = start_server(system, state_dir, &host_key)?;
        store(state_dir, &session)?;
        firewall.append(family_of(&session.network), &support_rule(session.network, session.port))?;
        session.warden_pid = Some(start_warden(&request.config_path)?);
        store(state_dir, &session)
    })();
    if let Err(e) = opened {
        close(cfg, &session, "enable failed").ok();
        return Err(e);
    }
    tracing::info!(
        "support SSH enabled by {} on {} from {} until {} ({} s, {} key {})",
        session.who,
        session.tty,
        session.network,
        crate::status::format_time_ms(session.until_ms),
        request.duration_ms / 1000,
        key.keytype(),
        session.key_fingerprint
    );
    Ok(session)
}

/// The session's length from `--minutes` (1 to the configured maximum), or
/// from the tests' `--seconds`.
pub fn session_length_ms(cfg: &Config, minutes: u64, seconds: Option<u64>) -> Result<u64> {
    let max = cfg.system().appliance.support_ssh.minutes_max;
    if let Some(seconds) = seconds {
        if seconds == 0 || seconds > max * 60 {
            return Err(HardenError::Invalid(format!("--seconds: {seconds} is outside 1..={}", max * 60)));
        }
        return Ok(seconds * 1000);
    }
    if minutes == 0 || minutes > max {
        return Err(HardenError::Invalid(format!(
            "--minutes: {minutes} is outside 1..={max} (appliance.support_ssh.minutes_max)"
        )));
    }
    Ok(minutes * 60_000)
}

fn ensure_host_key(system: &SystemConfig, state_dir: &Path) -> Result<PathBuf> {
    let path = state_dir.join(HOST_KEY_FILE);
    if path.exists() {
        return Ok(path);
    }
    let keygen = &system.appliance.support_ssh.keygen;
    let output = Command::new(keygen)
        .args(["-t", "ed25519", "-f"])
        .arg(&path)
        .output()
        .doing(|| format!("running {} to make the SSH host key", keygen.display()))?;
    if !output.status.success() {
        return Err(HardenError::Failed(format!(
            "{} failed: {}",
            keygen.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(path)
}

fn write_authorized_keys(path: &Path, key: &SupportKey) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let dir = path.parent().ok_or_else(|| HardenError::Failed(format!("{}: no parent directory", path.display())))?;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .doing(|| format!("securing {}", dir.display()))?;
    Ok(replace_file(path, key.authorized_line().as_bytes(), FileMode::OwnerOnly)?)
}

fn start_server(system: &SystemConfig, state_dir: &Path, host_key: &Path) -> Result<i32> {
    use std::os::unix::process::CommandExt;
    let ssh = &system.appliance.support_ssh;
    let log_path = state_dir.join(SERVER_LOG_FILE);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .doing(|| format!("opening {}", log_path.display()))?;
    let mut child = Command::new(&ssh.server)
        // Foreground, log to stderr, keys only (no passwords at all), no
        // local or remote port forwarding, few auth tries, idle cut-off.
        .args(["-F", "-E", "-s", "-j", "-k", "-m"])
        .args(["-T", &AUTH_TRIES_MAX.to_string(), "-I", &IDLE_TIMEOUT_SECS.to_string()])
        .arg("-r")
        .arg(host_key)
        .args(["-p", &ssh.port.to_string()])
        .arg("-P")
        .arg(state_dir.join("support-ssh-server.pid"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: the console's hang-up does not reach it.
        .process_group(0)
        .spawn()
        .doing(|| format!("starting {}", ssh.server.display()))?;
    let pid = child.id() as i32;
    let deadline = std::time::Instant::now() + SERVER_START_TIMEOUT;
    while !sockets::is_listening_tcp(ssh.port) {
        if let Some(status) = child.try_wait()? {
            let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(3).collect();
            return Err(HardenError::Failed(format!(
                "{} exited ({status}) before listening: {}",
                ssh.server.display(),
                tail.join(" | ")
            )));
        }
        if std::time::Instant::now() > deadline {
            kill_tree(pid);
            return Err(HardenError::Failed(format!(
                "{} did not listen on port {} within {:?}",
                ssh.server.display(),
                ssh.port,
                SERVER_START_TIMEOUT
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(pid)
}

fn start_warden(config_path: &Path) -> Result<i32> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().doing(|| "finding the tidemark binary".to_string())?;
    let child = Command::new(exe)
        .args(["support-ssh", "warden", "--config"])
        .arg(config_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .doing(|| "starting the support SSH warden".to_string())?;
    Ok(child.id() as i32)
}

/// Stops the server and every session it runs (dropbear gives each
/// connection its own session, so a process group would not reach them):
/// TERM, then KILL.
fn kill_tree(pid: i32) {
    let tree = procfs::tree(pid);
    let signal_all = |signal| {
        for p in tree.iter().filter_map(|p| Pid::from_raw(*p)) {
            let _ = rustix::process::kill_process(p, signal);
        }
    };
    signal_all(Signal::TERM);
    for _ in 0..40 {
        if !tree.iter().any(|p| procfs::alive(*p)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    signal_all(Signal::KILL);
}

/// Closes a session: port 22 first, then the server and every session it
/// runs, then the key and the state.
fn close(cfg: &Config, session: &Session, reason: &str) -> Result<()> {
    let system = cfg.system();
    let firewall_result = Firewall::open()
        .and_then(|fw| fw.remove(family_of(&session.network), &support_rule(session.network, session.port)));
    if session.server_pid > 0 && procfs::alive_as(session.server_pid, &server_comm(system)) {
        kill_tree(session.server_pid);
    }
    let keys = &system.appliance.support_ssh.authorized_keys;
    match std::fs::remove_file(keys) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Ok(Err(e).doing(|| format!("removing {}", keys.display()))?),
    }
    firewall_result.map_err(|e| e.at("closing port 22".to_string()))?;
    let state = state_path(&system.appliance.state_dir);
    match std::fs::remove_file(&state) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).doing(|| format!("removing {}", state.display())).map_err(HardenError::from),
    }
    tracing::info!(
        "support SSH closed ({reason}): it was opened by {} on {} from {}",
        session.who,
        session.tty,
        session.network
    );
    Ok(())
}

/// Removes what a session left behind when its warden is gone (a crash) or
/// its time ran out unnoticed.
pub fn clear_stale(cfg: &Config) -> Result<()> {
    let state_dir = &cfg.system().appliance.state_dir;
    if let Some(session) = load(state_dir)? {
        if !session.warden_pid.is_some_and(warden_alive) || session.until_ms <= crate::record::now_ms() {
            close(cfg, &session, "stale session found")?;
        }
    }
    Ok(())
}

/// Closes the open session, if any. Returns it.
pub fn disable(cfg: &Config, by: &str, tty: &str) -> Result<Option<Session>> {
    let state_dir = &cfg.system().appliance.state_dir;
    let Some(session) = load(state_dir)? else { return Ok(None) };
    tracing::info!("support SSH disable requested by {by} on {tty}");
    if let Some(warden) = session.warden_pid.filter(|p| warden_alive(*p)) {
        if let Some(pid) = Pid::from_raw(warden) {
            let _ = rustix::process::kill_process(pid, Signal::TERM);
        }
        let deadline = std::time::Instant::now() + WARDEN_STOP_TIMEOUT;
        while state_path(state_dir).exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    if state_path(state_dir).exists() {
        close(cfg, &session, &format!("disabled by {by} on {tty}"))?;
    }
    Ok(Some(session))
}

/// The warden: waits for the end of the session (time, `disable`, or the
/// server dying) and closes it. Runs as its own process.
pub fn warden(cfg: &Config) -> Result<()> {
    let state_dir = cfg.system().appliance.state_dir.clone();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let reason = runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut hangup = signal(SignalKind::hangup())?;
        loop {
            let Some(session) = load(&state_dir)? else { return Ok::<_, HardenError>(None) };
            if crate::record::now_ms() >= session.until_ms {
                return Ok(Some((session, "time ran out".to_string())));
            }
            if !procfs::alive(session.server_pid) {
                return Ok(Some((session, "the SSH server exited".to_string())));
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = term.recv() => return Ok(Some((session, "disabled".to_string()))),
                _ = hangup.recv() => {}
            }
        }
    })?;
    if let Some((session, reason)) = reason {
        close(cfg, &session, &reason)?;
    }
    Ok(())
}

/// One line for `support-ssh status`.
pub fn describe(state_dir: &Path) -> Result<String> {
    Ok(match open_session(state_dir)? {
        Some(s) => format!(
            "support SSH: OPEN from {} on port {} until {} ({} min left); opened by {} on {}; key {}",
            s.network,
            s.port,
            crate::status::format_time_ms(s.until_ms),
            s.until_ms.saturating_sub(crate::record::now_ms()).div_ceil(60_000),
            s.who,
            s.tty,
            s.key_fingerprint
        ),
        None => "support SSH: closed".to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn who_is_the_login_not_what_the_environment_claims() {
        let before = who();
        std::env::set_var("SUDO_USER", "mallory");
        std::env::set_var("LOGNAME", "mallory");
        let after = who();
        std::env::remove_var("SUDO_USER");
        std::env::remove_var("LOGNAME");
        assert_eq!(after, before);
        assert!(!after.contains("mallory"));
    }

    #[test]
    fn console_lines_are_named() {
        for line in ["/dev/tty1", "/dev/ttyS0", "/dev/hvc0", "/dev/console"] {
            assert!(is_console_line(line), "{line}");
        }
        for line in ["/dev/pts/0", "/dev/tty", "/dev/ttyUSB0", "/dev/ttyS", "/dev/null"] {
            assert!(!is_console_line(line), "{line}");
        }
    }
}
