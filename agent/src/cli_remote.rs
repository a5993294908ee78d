//! `tidemark --server https://HOST:4006 --fingerprint sha256:... COMMAND`:
//! the operations of the appliance's console run from a workstation
//! through its management API, with the same output and exit statuses.
//!
//! Credentials: an API token or a session in `TIDEMARK_TOKEN` (from
//! `tidemark --server ... login`), or a login per command: the user from
//! `TIDEMARK_USER` or a prompt, the password from `TIDEMARK_PASSWORD` or a
//! prompt without echo, and, for roles that need one, the TOTP code from
//! `TIDEMARK_TOTP` or a prompt. The fingerprint may come from
//! `TIDEMARK_FINGERPRINT`; without one nothing is sent.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use serde_json::json;
use std::time::Duration;
use tidemark::api::local::Request;
use tidemark::api::remote::Remote;

#[derive(Parser)]
#[command(
    name = "tidemark",
    about = "Run an operation on a Tidemark appliance through its management API (port 4006).",
    after_help = "Credentials: TIDEMARK_TOKEN (an API token, or a session from `login`), or a login per \
command (TIDEMARK_USER, TIDEMARK_PASSWORD and TIDEMARK_TOTP, else prompts). The fingerprint is the \
appliance's: `tidemark fingerprint --cert /etc/tidemark/cert.pem` on its console, or its agent's log."
)]
pub struct RemoteCli {
    /// The appliance's API: https://HOST or https://HOST:PORT (4006).
    #[arg(long, value_name = "URL")]
    server: String,
    /// Its certificate's sha256 fingerprint (sha256:...); or TIDEMARK_FINGERPRINT.
    #[arg(long)]
    fingerprint: Option<String>,
    #[command(subcommand)]
    command: RemoteCommand,
}

#[derive(Subcommand)]
enum RemoteCommand {
    /// Log in and print a session for TIDEMARK_TOKEN (it ends after the
    /// appliance's idle time, 30 minutes by default).
    Login,
    /// End the session in TIDEMARK_TOKEN.
    Logout,
    /// Who the credentials are, and their role.
    Whoami,
    /// The appliance's status (as `tidemark status`).
    Status {
        #[arg(long)]
        json: bool,
    },
    /// List a VPG's checkpoints (recovery appliance).
    Checkpoints {
        #[arg(long)]
        vpg: String,
        #[arg(long)]
        json: bool,
    },
    /// Insert a tagged checkpoint (protected appliance); exit status 75 if
    /// only the protected log has it when --wait runs out.
    Checkpoint {
        #[arg(long)]
        vpg: String,
        #[arg(long)]
        tag: String,
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        wait: Duration,
    },
    /// Take one checkpoint across a checkpoint group (the coordinating
    /// protected appliance).
    GroupCheckpoint {
        #[arg(long)]
        group: String,
        #[arg(long)]
        tag: Option<String>,
    },
    /// Clear the encryption detector's alert (protected appliance).
    ClearAlert {
        #[arg(long)]
        vpg: String,
    },
    /// Serve a checkpoint read-only until Ctrl-C (recovery appliance). The
    /// export stays open if this process is killed: `exports` lists them,
    /// `export-close` closes one.
    Export {
        #[arg(long)]
        vpg: String,
        #[arg(long, default_value = "latest")]
        checkpoint: String,
    },
    /// The exports open through the API (recovery appliance).
    Exports,
    /// Close an export opened through the API (its number from `exports`).
    ExportClose {
        #[arg(long)]
        id: u64,
    },
    /// Fail over to a checkpoint (recovery appliance; dr-admin).
    Failover {
        #[arg(long)]
        vpg: String,
        #[arg(long)]
        checkpoint: String,
        /// Leave the volumes as files instead of serving them.
        #[arg(long)]
        files: bool,
    },
    /// A test failover (recovery appliance).
    #[command(subcommand)]
    TestFailover(RemoteTestFailover),
    /// Planned migration (protected appliance; dr-admin).
    Move {
        #[arg(long)]
        vpg: String,
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        wait: Duration,
        #[arg(long)]
        cancel: bool,
    },
    /// Reverse protection (old protected appliance; dr-admin).
    Reverse {
        #[arg(long)]
        vpg: String,
        #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
        wait: Duration,
    },
    /// Switch-back (old protected appliance; dr-admin).
    MoveBack {
        #[arg(long)]
        vpg: String,
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        wait: Duration,
        #[arg(long)]
        cancel: bool,
    },
    /// Compare the replica with the source (protected appliance).
    Verify {
        #[arg(long)]
        vpg: String,
        #[arg(long)]
        repair: bool,
        #[arg(long)]
        json: bool,
    },
    /// The audit trail (the newest 10,000 entries), or its verdict.
    AuditLog {
        #[arg(long)]
        verify: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum RemoteTestFailover {
    Start {
        #[arg(long)]
        vpg: String,
        #[arg(long, default_value = "latest")]
        checkpoint: String,
    },
    Stop {
        #[arg(long)]
        vpg: String,
    },
}

/// Whether the command line asks for the remote form (`--server` first).
pub fn wanted(args: &[std::ffi::OsString]) -> bool {
    args.get(1).and_then(|a| a.to_str()).is_some_and(|a| a == "--server" || a.starts_with("--server="))
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn prompt(text: &str) -> Result<String> {
    use std::io::Write;
    eprint!("{text}");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    Ok(line.trim().to_string())
}

/// Logs in unless a token is given; returns whether this process made the
/// session (and so should end it).
fn authenticate(remote: &mut Remote) -> Result<bool> {
    if let Some(token) = env("TIDEMARK_TOKEN") {
        remote.bearer = Some(token);
        return Ok(false);
    }
    let user = match env("TIDEMARK_USER") {
        Some(u) => u,
        None => prompt("user: ")?,
    };
    let password = match env("TIDEMARK_PASSWORD") {
        Some(p) => p,
        None => crate::cli_access::prompt_hidden("password: ")?,
    };
    let mut body = json!({ "user": user, "password": password });
    if let Some(code) = env("TIDEMARK_TOTP") {
        body["totp"] = code.into();
    }
    let mut answer = remote.call(http::Method::POST, "login", Some(body.clone()), Duration::ZERO)?;
    if answer.body.get("totp_required").and_then(|v| v.as_bool()) == Some(true) && body.get("totp").is_none() {
        body["totp"] = prompt("TOTP code: ")?.into();
        answer = remote.call(http::Method::POST, "login", Some(body), Duration::ZERO)?;
    }
    let session = answer.ok().context("logging in")?;
    remote.bearer = Some(session["token"].as_str().context("the login answer has no session")?.to_string());
    Ok(true)
}

pub fn run(cli: RemoteCli) -> Result<()> {
    let fingerprint = cli.fingerprint.or_else(|| env("TIDEMARK_FINGERPRINT")).context(
        "--fingerprint (or TIDEMARK_FINGERPRINT) is required: the appliance's certificate is pinned, \
         never trusted on first sight",
    )?;
    let mut remote = Remote::new(&cli.server, &fingerprint)?;
    let ours = authenticate(&mut remote)?;
    let result = run_command(&remote, cli.command, ours);
    if ours && result.is_ok() {
        // Best effort: an unended session expires by itself.
        let _ = remote.call(http::Method::POST, "logout", None, Duration::ZERO);
    }
    result
}

fn run_command(remote: &Remote, command: RemoteCommand, ours: bool) -> Result<()> {
    let get = |path: &str| remote.call(http::Method::GET, path, None, Duration::ZERO)?.ok();
    let ask = |request: Request| crate::ok_reply(remote.ask(&request)?);
    match command {
        RemoteCommand::Login => {
            if !ours {
                bail!("TIDEMARK_TOKEN is set already; unset it to log in");
            }
            println!("{}", remote.bearer.as_deref().unwrap_or_default());
            // The session is the output: it must outlive this process.
            std::process::exit(0);
        }
        RemoteCommand::Logout => {
            remote.call(http::Method::POST, "logout", None, Duration::ZERO)?.ok()?;
            println!("logged out");
        }
        RemoteCommand::Whoami => {
            let me = get("whoami")?;
            println!("{} ({})", me["user"].as_str().unwrap_or("?"), me["role"].as_str().unwrap_or("?"));
        }
        RemoteCommand::Status { json } => crate::print_status(&serde_json::from_value(get("status")?)?, json)?,
        RemoteCommand::Checkpoints { vpg, json } => {
            let listed = get(&format!("vpgs/{vpg}/checkpoints"))?;
            crate::print_checkpoints(&serde_json::from_value::<Vec<_>>(listed["checkpoints"].clone())?, json)?;
            for warning in listed["warnings"].as_array().into_iter().flatten() {
                eprintln!("WARNING: {}", warning.as_str().unwrap_or_default());
            }
        }
        RemoteCommand::Checkpoint { vpg, tag, wait } => {
            tidemark::api::local::validate_tag(&tag)?;
            let request = Request::Checkpoint { vpg, tag: tag.clone(), wait_ms: wait.as_millis() as u64 };
            crate::report_checkpoint(ask(request)?, &tag, wait)?;
        }
        RemoteCommand::GroupCheckpoint { group, tag } => {
            if let Some(tag) = &tag {
                tidemark::api::local::validate_tag(tag)?;
            }
            println!("{}", ask(Request::GroupCheckpoint { group, tag })?.message.unwrap_or_default());
        }
        RemoteCommand::ClearAlert { vpg } => {
            println!("{}", ask(Request::ClearAlert { vpg, by: String::new() })?.message.unwrap_or_default());
        }
        RemoteCommand::Export { vpg, checkpoint } => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            // Signals are taken before the export opens: none may end this
            // process between the open and the close.
            let mut stop = runtime.block_on(async { Signals::new() })?;
            let (export, reply) = remote.open_export(&vpg, &checkpoint)?;
            crate::report_export(&reply);
            // A request now and then keeps the session from idling out, so
            // the close below is still allowed.
            while !runtime.block_on(stop.within(KEEP_ALIVE)) {
                let _ = get("whoami");
            }
            match remote.close_export(export) {
                Ok(()) => eprintln!("export closed"),
                Err(e) => {
                    bail!("export {export} could not be closed ({e:#}); close it with `export-close --id {export}`")
                }
            }
        }
        RemoteCommand::Exports => {
            let open = get("exports")?;
            for e in open.as_array().into_iter().flatten() {
                println!(
                    "{}\t{}\tcheckpoint {}\topened by {}",
                    e["id"],
                    e["vpg"].as_str().unwrap_or("?"),
                    e["checkpoint"],
                    e["by"].as_str().unwrap_or("?")
                );
                for uri in e["exports"].as_array().into_iter().flatten() {
                    println!("  {}", uri.as_str().unwrap_or_default());
                }
            }
        }
        RemoteCommand::ExportClose { id } => {
            remote.close_export(id)?;
            println!("export {id} closed");
        }
        RemoteCommand::Failover { vpg, checkpoint, files } => {
            print!("{}", ask(Request::Failover { vpg, checkpoint, serve: !files })?.message.unwrap_or_default());
        }
        RemoteCommand::TestFailover(RemoteTestFailover::Start { vpg, checkpoint }) => {
            crate::report_test_failover(&vpg, &ask(Request::TestFailoverStart { vpg: vpg.clone(), checkpoint })?);
        }
        RemoteCommand::TestFailover(RemoteTestFailover::Stop { vpg }) => {
            println!("{}", ask(Request::TestFailoverStop { vpg })?.message.unwrap_or_default());
        }
        RemoteCommand::Move { vpg, wait, cancel } => {
            eprintln!(
                "{}",
                match cancel {
                    true => format!("cancelling the move: asking the recovery side (up to {wait:?})"),
                    false => format!(
                        "moving: writes are refused from now on; waiting for the recovery side (up to {wait:?})"
                    ),
                }
            );
            let request = Request::Move { vpg, wait_ms: wait.as_millis() as u64, cancel };
            println!("{}", ask(request)?.message.unwrap_or_default());
        }
        RemoteCommand::Reverse { vpg, wait } => {
            eprintln!("reverse protection: comparing extent hashes with the recovery site and receiving what differs");
            println!(
                "{}",
                ask(Request::Reverse { vpg, wait_ms: wait.as_millis() as u64 })?.message.unwrap_or_default()
            );
        }
        RemoteCommand::MoveBack { vpg, wait, cancel } => {
            let request = Request::MoveBack { vpg, wait_ms: wait.as_millis() as u64, cancel };
            println!("{}", ask(request)?.message.unwrap_or_default().trim_end());
        }
        RemoteCommand::Verify { vpg, repair, json } => {
            if !json {
                eprintln!("verify of {vpg}: taking a checkpoint and comparing every volume with the recovery site's image there");
            }
            crate::report_verify(&vpg, ask(Request::Verify { vpg: vpg.clone(), repair })?, json)?
        }
        RemoteCommand::AuditLog { verify: true, json } => {
            crate::print_audit_verdict(&serde_json::from_value(get("audit/verify")?)?, json)?
        }
        RemoteCommand::AuditLog { verify: false, json } => {
            let answer = get("audit?limit=10000")?;
            let unreadable = answer["unreadable_lines"].as_u64().unwrap_or(0);
            if unreadable > 0 {
                eprintln!("WARNING: {unreadable} lines of the trail are not readable entries (run --verify)");
            }
            let entries: Vec<tidemark::audit_trail::Entry> = serde_json::from_value(answer["entries"].clone())?;
            crate::print_audit_entries(&entries, json, "the audit trail is empty")?;
        }
    }
    Ok(())
}

/// SIGINT, SIGTERM and SIGHUP (a closed terminal or SSH session), taken
/// before anything is opened.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Whether one of them arrives within `time`.
    async fn within(&mut self, time: Duration) -> bool {
        tokio::select! {
            _ = self.int.recv() => true,
            _ = self.term.recv() => true,
            _ = self.hup.recv() => true,
            _ = tokio::time::sleep(time) => false,
        }
    }
}

/// How often a held export touches its session (the idle limit is 30
/// minutes by default, at least a minute by config).
const KEEP_ALIVE: Duration = Duration::from_secs(30);
