//! The diagnostics bundle: a tar.zst of what support needs to understand an
//! appliance (logs, the audit report, the redacted config, status, version
//! and system facts) and nothing secret. Served on 4005 (`diag.rs`) and
//! written locally by `tidemark diag --out FILE`.
//!
//! Secrets are kept out twice: the config is redacted by key name, and every
//! text part is scrubbed of the config's secret values before it is packed.

use crate::config::Config;
use crate::harden::{audit, sockets, support_ssh};
use anyhow::{Context, Result};
use std::io::{Read, Write};
use std::path::Path;

/// Bytes of any one file taken into the bundle (the newest end is kept).
const PART_BYTES_MAX: u64 = 64 << 20;
const ZSTD_LEVEL: i32 = 3;
const REDACTED: &str = "<redacted>";

pub fn version_text() -> String {
    format!(
        "tidemark {}\ncommit {}\ntarget {}\nprofile {}\n",
        env!("CARGO_PKG_VERSION"),
        env!("TIDEMARK_GIT_COMMIT"),
        env!("TIDEMARK_TARGET"),
        env!("TIDEMARK_PROFILE")
    )
}

/// Keys whose values are secret wherever they appear in a config.
fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["token", "password", "secret", "passphrase", "private"].iter().any(|s| key.contains(s))
}

/// The config with every secret value replaced, as TOML.
pub fn redact_config(text: &str) -> Result<String> {
    fn walk(value: &mut toml::Value) {
        match value {
            toml::Value::Table(t) => {
                for (k, v) in t.iter_mut() {
                    if is_secret_key(k) {
                        *v = toml::Value::String(REDACTED.into());
                    } else {
                        walk(v);
                    }
                }
            }
            toml::Value::Array(a) => a.iter_mut().for_each(walk),
            _ => {}
        }
    }
    let mut value: toml::Value = text.parse::<toml::Table>().map(toml::Value::Table).context("parsing the config")?;
    walk(&mut value);
    Ok(toml::to_string_pretty(&value)?)
}

/// The secret values in this config (to scrub from every part).
pub fn secret_values(cfg: &Config) -> Vec<String> {
    let mut secrets: Vec<String> = cfg.system().diag.as_ref().map(|d| d.token.clone()).into_iter().collect();
    if let Some(iscsi) = cfg.iscsi() {
        secrets.extend([iscsi.chap_secret.clone(), iscsi.mutual_chap_secret.clone()]);
    }
    secrets
}

fn scrub(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        out = out.replace(s.as_str(), REDACTED);
    }
    out
}

/// Reads at most `PART_BYTES_MAX` from the end of a file.
fn read_tail(path: &Path) -> Result<String> {
    use std::io::Seek;
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let len = f.metadata()?.len();
    if len > PART_BYTES_MAX {
        f.seek(std::io::SeekFrom::Start(len - PART_BYTES_MAX))?;
    }
    let mut bytes = Vec::new();
    f.take(PART_BYTES_MAX).read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The kernel's log device.
const KMSG: &str = "/dev/kmsg";

/// The kernel's log as it stands (LIO's login refusals name the initiator;
/// the NBD driver's messages), read without waiting for more: one record
/// per read, `prio,seq,usec,flags;text`, kept as `[usec] text`, the newest
/// `PART_BYTES_MAX` bytes.
fn kernel_log(kmsg: &Path) -> Result<String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(kmsg)
        .with_context(|| format!("opening {}", kmsg.display()))?;
    let mut lines = std::collections::VecDeque::new();
    let mut bytes = 0usize;
    let mut record = vec![0u8; 8192];
    loop {
        match f.read(&mut record) {
            Ok(0) => break,
            Ok(n) => {
                let text = String::from_utf8_lossy(&record[..n]);
                let Some((head, message)) = text.split_once(';') else { continue };
                let usec = head.split(',').nth(2).unwrap_or("?");
                let line = format!("[{usec}] {}\n", message.lines().next().unwrap_or(""));
                bytes += line.len();
                lines.push_back(line);
                while bytes as u64 > PART_BYTES_MAX {
                    bytes -= lines.pop_front().map_or(0, |l| l.len());
                }
            }
            // EAGAIN: nothing more; EPIPE: a record was overwritten while
            // reading (the next read goes on from the oldest one left).
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::PIPE.raw_os_error()) => continue,
            Err(e) => return Err(e).context("reading the kernel log"),
        }
    }
    Ok(lines.into_iter().collect())
}

struct Packer<W: Write> {
    tar: tar::Builder<W>,
    prefix: String,
    secrets: Vec<String>,
    mtime: u64,
}

impl<W: Write> Packer<W> {
    fn add(&mut self, name: &str, text: &str) -> Result<()> {
        let text = scrub(text, &self.secrets);
        let mut header = tar::Header::new_gnu();
        header.set_size(text.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(self.mtime);
        header.set_cksum();
        let path = format!("{}/{name}", self.prefix);
        self.tar.append_data(&mut header, &path, text.as_bytes()).with_context(|| format!("packing {path}"))
    }

    /// A part that could not be collected says why, instead of vanishing.
    fn add_or_note(&mut self, name: &str, text: Result<String>) -> Result<()> {
        match text {
            Ok(t) => self.add(name, &t),
            Err(e) => self.add(&format!("{name}.unavailable"), &format!("{e:#}\n")),
        }
    }
}

/// Writes the bundle as tar + zstd into `out`.
pub fn write(cfg: &Config, config_path: &Path, out: impl Write) -> Result<()> {
    // Before the bundle's own buffers: the process as it was when asked.
    let process = this_process();
    let system = cfg.system();
    let now_ms = crate::record::now_ms();
    let mut encoder = zstd::Encoder::new(out, ZSTD_LEVEL)?;
    {
        let mut p = Packer {
            tar: tar::Builder::new(&mut encoder),
            prefix: format!("tidemark-diag-{}-{}", cfg.node().name, now_ms / 1000),
            secrets: secret_values(cfg),
            mtime: now_ms / 1000,
        };
        p.add("version.txt", &version_text())?;
        let report = audit::run(cfg);
        p.add("audit.txt", &report.render())?;
        p.add("audit.json", &serde_json::to_string_pretty(&report)?)?;
        let config_text = std::fs::read_to_string(config_path)
            .with_context(|| format!("reading {}", config_path.display()))
            .and_then(|t| redact_config(&t));
        p.add_or_note("config.toml", config_text)?;
        p.add_or_note(
            "status.json",
            crate::status::read_json(&crate::status::path(&cfg.node().data_dir))
                .map(|json| String::from_utf8_lossy(&json).into_owned())
                .context("no status yet"),
        )?;
        p.add_or_note(
            "support-ssh.txt",
            support_ssh::describe(&system.appliance.state_dir).map_err(anyhow::Error::from),
        )?;
        let trail = crate::audit_trail::trail_path(&cfg.node().data_dir);
        p.add_or_note(
            "audit-trail-verify.txt",
            crate::audit_trail::verify(&trail).map(|v| v.render()).map_err(anyhow::Error::from),
        )?;
        p.add_or_note("audit-trail.jsonl", read_tail(&trail))?;
        p.add("system.txt", &system_facts(&process))?;
        logs(&mut p, cfg)?;
        p.tar.finish()?;
    }
    encoder.finish()?.flush()?;
    Ok(())
}

fn logs<W: Write>(p: &mut Packer<W>, cfg: &Config) -> Result<()> {
    let system = cfg.system();
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(&system.logging.dir)
        .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect())
        .unwrap_or_default();
    files.sort();
    for path in &files {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        p.add_or_note(&format!("logs/{name}"), read_tail(path))?;
    }
    let server_log = system.appliance.state_dir.join("support-ssh-server.log");
    if server_log.exists() {
        p.add_or_note("logs/support-ssh-server.log", read_tail(&server_log))?;
    }
    if Path::new(KMSG).exists() {
        p.add_or_note("logs/kernel.txt", kernel_log(Path::new(KMSG)))?;
    }
    if Path::new("/run/systemd/journal/socket").exists() {
        let journal = std::process::Command::new("journalctl")
            .args(["--no-pager", "-o", "short-iso", "-n", "20000", "SYSLOG_IDENTIFIER=tidemark"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .context("running journalctl");
        p.add_or_note("logs/journal.txt", journal)?;
    }
    Ok(())
}

/// The process making the bundle (the agent, when served on 4005): its
/// command line and the memory and thread lines of /proc/self/status.
fn this_process() -> String {
    let cmdline = std::fs::read("/proc/self/cmdline").unwrap_or_default();
    let args: Vec<String> =
        cmdline.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let keep = ["Pid:", "VmPeak:", "VmSize:", "VmHWM:", "VmRSS:", "RssAnon:", "RssFile:", "Threads:"];
    let mut out = format!("Command: {}\n", args.join(" "));
    for line in status.lines().filter(|l| keep.iter().any(|k| l.starts_with(k))) {
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn system_facts(process: &str) -> String {
    let mut out = format!("== this process, when the bundle was asked for\n{process}\n");
    for (title, path) in [
        ("kernel", "/proc/version"),
        ("uptime (s)", "/proc/uptime"),
        ("load", "/proc/loadavg"),
        ("mounts", "/proc/mounts"),
    ] {
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| format!("unavailable: {e}\n"));
        out.push_str(&format!("== {title}\n{text}\n"));
    }
    let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    out.push_str("== memory\n");
    for line in mem.lines().take(5) {
        out.push_str(line);
        out.push('\n');
    }
    out.push_str("\n== listening sockets\n");
    for l in sockets::listeners().unwrap_or_default() {
        out.push_str(&format!("{} {}:{}\n", l.proto, l.address, l.port));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_hides_secret_keys_at_any_depth() {
        let text = "role = \"recovery\"\n[diag]\ntoken = \"s3cr3t-value-0123456789abcdef\"\n\
                    [x]\nadmin_password_hash = \"$6$abc\"\nname = \"ok\"\n";
        let out = redact_config(text).unwrap();
        assert!(!out.contains("s3cr3t"), "{out}");
        assert!(!out.contains("$6$abc"), "{out}");
        assert!(out.contains("name = \"ok\""), "{out}");
    }

    #[test]
    fn scrub_replaces_every_occurrence() {
        let secrets = vec!["tok3n".to_string()];
        assert_eq!(scrub("a tok3n b tok3n", &secrets), "a <redacted> b <redacted>");
    }
}
